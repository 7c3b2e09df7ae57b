//! Membership across servers as the resident: templates for a remote user, accepting the
//! signed join or leave back, and the joining side's checks on a resident's template.
use std::collections::BTreeMap;

use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonValue, OwnedUserId, RoomVersionId};

use crate::persist::rules_for;
use crate::tests::{create, setup, user};
use crate::*;

const REMOTE: &str = "remote.example";

fn remote_user(local: &str) -> OwnedUserId {
    OwnedUserId::try_from(format!("@{local}:{REMOTE}")).expect("user id")
}

struct Remote {
    pair: Ed25519KeyPair,
}

impl Remote {
    fn new() -> Remote {
        let doc = Ed25519KeyPair::generate();
        Remote {
            pair: Ed25519KeyPair::from_der(&doc, "r1".into()).expect("key pair"),
        }
    }
    fn keys(&self) -> StaticKeys {
        let mut m = BTreeMap::new();
        m.insert("ed25519:r1".to_owned(), self.pair.public_key().to_vec());
        let mut k = BTreeMap::new();
        k.insert(REMOTE.try_into().expect("server name"), m);
        StaticKeys(k)
    }
    /// What the joining server does with a template: timestamp, hash, sign, event ID.
    fn sign(
        &self,
        version: &RoomVersionId,
        mut obj: ruma::CanonicalJsonObject,
    ) -> (ruma::OwnedEventId, ruma::CanonicalJsonObject) {
        let rules = rules_for(version).expect("rules");
        obj.insert("origin".into(), CanonicalJsonValue::String(REMOTE.into()));
        ruma::signatures::hash_and_sign_event(REMOTE, &self.pair, &mut obj, &rules.redaction)
            .expect("sign");
        let id = event_id_for(version, &obj).expect("event id");
        (id, obj)
    }
}

fn origin() -> ruma::OwnedServerName {
    REMOTE.try_into().expect("server name")
}

#[test]
fn remote_user_joins_through_a_template_and_gets_the_state() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = remote_user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    let (version, template) = svc
        .member_template(&room, &bob, Membership::Join, &supported_room_versions())
        .expect("template");
    assert_eq!(
        Some(version.clone()),
        svc.room_version(&room).expect("version")
    );
    assert!(!template.contains_key("signatures") && !template.contains_key("hashes"));
    let remote = Remote::new();
    let (event_id, signed) = remote.sign(&version, template);
    let accepted = svc
        .accept_remote_member(
            &origin(),
            &room,
            &event_id,
            signed,
            Membership::Join,
            &remote.keys(),
        )
        .expect("send_join");
    assert_eq!(accepted.event_id, event_id);
    assert!(svc.is_joined(&room, &bob).expect("membership"));
    let types: Vec<String> = accepted
        .state
        .iter()
        .filter_map(|e| match e.get("type") {
            Some(CanonicalJsonValue::String(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert!(types.iter().any(|t| t == "m.room.create"), "{types:?}");
    // The state is from before the join: bob's member event is not in it.
    assert!(accepted.state.iter().all(|e| {
        !matches!(e.get("state_key"), Some(CanonicalJsonValue::String(k)) if k == bob.as_str())
    }));
    assert!(!accepted.auth_chain.is_empty());
    let mut servers = accepted.servers_in_room.clone();
    servers.sort();
    assert_eq!(servers, vec![REMOTE.to_owned(), "test.local".to_owned()]);

    // Then bob leaves the same way.
    let (_, template) = svc
        .member_template(&room, &bob, Membership::Leave, &supported_room_versions())
        .expect("leave template");
    let (leave_id, signed) = remote.sign(&version, template);
    svc.accept_remote_member(
        &origin(),
        &room,
        &leave_id,
        signed,
        Membership::Leave,
        &remote.keys(),
    )
    .expect("send_leave");
    assert_eq!(
        svc.membership_state(&room, &bob).expect("membership"),
        Some(Membership::Leave)
    );
}

#[test]
fn templates_are_refused_when_the_join_is_not_allowed() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = remote_user("bob");
    let private = create(&svc, &alice, Preset::PrivateChat);
    assert!(matches!(
        svc.member_template(&private, &bob, Membership::Join, &supported_room_versions()),
        Err(RoomError::Forbidden(_))
    ));
    let public = create(&svc, &alice, Preset::PublicChat);
    assert!(matches!(
        svc.member_template(&public, &bob, Membership::Join, &[RoomVersionId::V1]),
        Err(RoomError::UnsupportedRoomVersion(_))
    ));
    assert!(matches!(
        svc.member_template(
            &public,
            &alice,
            Membership::Join,
            &supported_room_versions()
        ),
        Err(RoomError::InvalidParam(_))
    ));
    let unknown = ruma::OwnedRoomId::try_from("!nope:test.local").expect("room id");
    assert!(
        svc.member_template(&unknown, &bob, Membership::Join, &supported_room_versions())
            .is_err()
    );
}

#[test]
fn send_join_refuses_tampered_or_foreign_events() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = remote_user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    let remote = Remote::new();
    let (version, template) = svc
        .member_template(&room, &bob, Membership::Join, &supported_room_versions())
        .expect("template");
    let (event_id, signed) = remote.sign(&version, template.clone());

    // The path's event ID must be the event's reference hash.
    let other =
        ruma::OwnedEventId::try_from("$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").expect("id");
    assert!(matches!(
        svc.accept_remote_member(
            &origin(),
            &room,
            &other,
            signed.clone(),
            Membership::Join,
            &remote.keys()
        ),
        Err(RoomError::InvalidParam(_))
    ));
    // A leave sent to send_join.
    assert!(matches!(
        svc.accept_remote_member(
            &origin(),
            &room,
            &event_id,
            signed.clone(),
            Membership::Leave,
            &remote.keys()
        ),
        Err(RoomError::InvalidParam(_))
    ));
    // A signature by a key the server does not know.
    assert!(
        svc.accept_remote_member(
            &origin(),
            &room,
            &event_id,
            signed.clone(),
            Membership::Join,
            &StaticKeys::default()
        )
        .is_err()
    );
    // A field the reference hash covers changed after signing: the event ID no longer matches.
    let mut tampered = signed.clone();
    tampered.insert("depth".into(), CanonicalJsonValue::Integer(999u32.into()));
    assert!(matches!(
        svc.accept_remote_member(
            &origin(),
            &room,
            &event_id,
            tampered,
            Membership::Join,
            &remote.keys()
        ),
        Err(RoomError::InvalidParam(_))
    ));
    assert!(!svc.is_joined(&room, &bob).expect("membership"));
    // Content outside the redacted form changed: signatures still hold, the content hash
    // does not, so the join is kept in its redacted form (spec: redact and continue).
    let mut tampered = signed;
    if let Some(CanonicalJsonValue::Object(c)) = tampered.get_mut("content") {
        c.insert(
            "displayname".into(),
            CanonicalJsonValue::String("mallory".into()),
        );
    }
    let accepted = svc
        .accept_remote_member(
            &origin(),
            &room,
            &event_id,
            tampered,
            Membership::Join,
            &remote.keys(),
        )
        .expect("send_join");
    assert!(svc.is_joined(&room, &bob).expect("membership"));
    let stored = svc
        .event(&accepted.event_id)
        .expect("read")
        .expect("stored");
    assert_eq!(stored.content().get("displayname"), None);
}

#[test]
fn a_resident_template_is_checked_before_we_sign_it() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PublicChat);
    let version = svc.room_version(&room).expect("version").expect("known");
    let carol = user("carol");
    // A template as a resident would send it for our carol (here: built by hand).
    let good = ruma::CanonicalJsonObject::from_iter([
        (
            "type".to_owned(),
            CanonicalJsonValue::String("m.room.member".into()),
        ),
        (
            "room_id".to_owned(),
            CanonicalJsonValue::String(room.to_string()),
        ),
        (
            "sender".to_owned(),
            CanonicalJsonValue::String(carol.to_string()),
        ),
        (
            "state_key".to_owned(),
            CanonicalJsonValue::String(carol.to_string()),
        ),
        (
            "content".to_owned(),
            CanonicalJsonValue::Object(ruma::CanonicalJsonObject::from_iter([(
                "membership".to_owned(),
                CanonicalJsonValue::String("join".into()),
            )])),
        ),
        ("prev_events".to_owned(), CanonicalJsonValue::Array(vec![])),
        ("auth_events".to_owned(), CanonicalJsonValue::Array(vec![])),
        ("depth".to_owned(), CanonicalJsonValue::Integer(5u32.into())),
    ]);
    let extra = serde_json::json!({"displayname": "Carol", "membership": "leave",
        "join_authorised_via_users_server": "@x:test.local"});
    let (_, signed) = svc
        .sign_member_template(
            &version,
            &room,
            &carol,
            Membership::Join,
            good.clone(),
            extra.as_object().cloned(),
        )
        .expect("signed");
    let content = match signed.get("content") {
        Some(CanonicalJsonValue::Object(c)) => c.clone(),
        _ => panic!("no content"),
    };
    // Extra content is merged, but never the membership or a self-made authorisation.
    assert_eq!(
        content.get("displayname"),
        Some(&CanonicalJsonValue::String("Carol".into()))
    );
    assert_eq!(
        content.get("membership"),
        Some(&CanonicalJsonValue::String("join".into()))
    );
    assert!(!content.contains_key("join_authorised_via_users_server"));
    assert!(signed.contains_key("signatures") && signed.contains_key("hashes"));

    for (field, value) in [
        ("sender", CanonicalJsonValue::String(alice.to_string())),
        ("state_key", CanonicalJsonValue::String(alice.to_string())),
        (
            "room_id",
            CanonicalJsonValue::String("!other:test.local".into()),
        ),
        ("type", CanonicalJsonValue::String("m.room.message".into())),
    ] {
        let mut bad = good.clone();
        bad.insert(field.to_owned(), value);
        assert!(
            svc.sign_member_template(&version, &room, &carol, Membership::Join, bad, None)
                .is_err(),
            "a template with a changed {field} was signed"
        );
    }
    let mut no_prev = good.clone();
    no_prev.remove("prev_events");
    assert!(
        svc.sign_member_template(&version, &room, &carol, Membership::Join, no_prev, None)
            .is_err()
    );
    assert!(
        svc.sign_member_template(&version, &room, &carol, Membership::Leave, good, None)
            .is_err()
    );
}
