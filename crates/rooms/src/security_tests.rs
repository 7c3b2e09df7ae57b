//! Tests for the room-engine findings of the security review (issue 13).
use crate::MemberProfile as Profile;
use ruma::OwnedUserId;
use serde_json::{Map, Value, json};

use crate::*;

use crate::tests::{SERVER, create, setup, user};

fn is_forbidden<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(RoomError::Forbidden(_)))
}

fn forged(alice: &OwnedUserId) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert(
        "join_authorised_via_users_server".into(),
        Value::from(alice.as_str()),
    );
    c
}

#[test]
fn restricted_join_cannot_be_forged_by_a_local_user() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let space = create(&svc, &alice, Preset::PublicChat);
    let room = create(&svc, &alice, Preset::PrivateChat);
    svc.send_state_event(
        &alice,
        &room,
        "m.room.join_rules",
        "",
        json!({"join_rule": "restricted",
               "allow": [{"type": "m.room_membership", "room_id": space.as_str()}]}),
    )
    .expect("restricted join rule");

    // Bob is in no allowed room: naming Alice (who may invite) must not let him in,
    // neither through /join nor through PUT /state/m.room.member.
    assert!(is_forbidden(svc.join(
        &bob,
        room.as_str(),
        &Profile::default(),
        Some(forged(&alice))
    )));
    let mut c = forged(&alice);
    c.insert("membership".into(), Value::from("join"));
    assert!(is_forbidden(svc.send_state_event(
        &bob,
        &room,
        "m.room.member",
        bob.as_str(),
        Value::Object(c)
    )));
    assert_eq!(svc.membership_state(&room, &bob).expect("m"), None);

    // Once in the allowed room, the server itself authorises the join.
    svc.join(&bob, space.as_str(), &Profile::default(), None)
        .expect("join space");
    let (_, sent) = svc
        .join(&bob, room.as_str(), &Profile::default(), None)
        .expect("restricted join");
    let ev = svc.event(&sent.event_id).expect("e").expect("event");
    assert_eq!(
        ev.content()["join_authorised_via_users_server"],
        json!(alice.as_str())
    );
}

#[test]
fn redacted_state_does_not_leak_through_prev_content() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PublicChat);
    let first = svc
        .send_state_event(
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({"topic": "secret"}),
        )
        .expect("topic");
    let second = svc
        .send_state_event(
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({"topic": "public"}),
        )
        .expect("topic 2");
    let before = svc.event(&second.event_id).expect("e").expect("event");
    assert_eq!(
        before.to_client_event(None, 0)["unsigned"]["prev_content"]["topic"],
        json!("secret")
    );
    svc.redact(&alice, &room, &first.event_id, None, None)
        .expect("redact");
    let after = svc.event(&second.event_id).expect("e").expect("event");
    let served = after.to_client_event(None, 0);
    assert_eq!(served["unsigned"]["prev_content"], json!({}));
    assert!(!served.to_string().contains("secret"));
}

#[test]
fn redaction_through_the_state_path_needs_the_redact_power_level() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    svc.join(&bob, room.as_str(), &Profile::default(), None)
        .expect("join");
    let mut pl = svc
        .current_state_event(&room, "m.room.power_levels", "")
        .expect("pl")
        .expect("pl event")
        .content();
    pl["users"][bob.as_str()] = json!(50);
    pl["redact"] = json!(100);
    svc.send_state_event(&alice, &room, "m.room.power_levels", "", pl)
        .expect("power levels");
    let msg = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "secret", "msgtype": "m.text"}),
            None,
        )
        .expect("send");
    // Bob may send state (50 >= state_default) but may not redact (50 < 100).
    assert!(is_forbidden(svc.send_state_event(
        &bob,
        &room,
        "m.room.redaction",
        "",
        json!({"redacts": msg.event_id.as_str()})
    )));
    let ev = svc.event(&msg.event_id).expect("e").expect("event");
    assert_eq!(ev.content()["body"], json!("secret"));
    assert!(ev.redacted_because.is_none());
    // His own event he may redact, by the same path.
    let own = svc
        .send_message_event(&bob, &room, "m.room.message", json!({"body": "mine"}), None)
        .expect("send own");
    svc.send_state_event(
        &bob,
        &room,
        "m.room.redaction",
        "",
        json!({"redacts": own.event_id.as_str()}),
    )
    .expect("own redaction");
    let ev = svc.event(&own.event_id).expect("e").expect("event");
    assert!(ev.redacted_because.is_some());
}

#[test]
fn failed_create_room_leaves_no_room_behind() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let bad: InitialStateEvent = serde_json::from_value(json!({
        "type": "m.room.topic", "state_key": "", "content": {"topic": "t", "weight": 1.5}
    }))
    .expect("initial state");
    let good: InitialStateEvent = serde_json::from_value(json!({
        "type": "m.room.name", "state_key": "", "content": {"name": "half"}
    }))
    .expect("initial state");
    let req = CreateRoomRequest {
        preset: Some(Preset::PublicChat),
        visibility: Some(Visibility::Public),
        room_alias_name: Some("half".into()),
        invite: vec![bob.to_string()],
        initial_state: vec![good, bad],
        ..Default::default()
    };
    assert!(svc.create_room(&alice, req).is_err());
    // Nobody's room list (what /sync reads) holds the room, the alias is free again and
    // the directory is empty.
    assert!(
        svc.rooms_for_user_with_forgotten(&alice)
            .expect("rooms")
            .is_empty()
    );
    assert!(
        svc.rooms_for_user_with_forgotten(&bob)
            .expect("rooms")
            .is_empty()
    );
    let alias = ruma::RoomAliasId::parse(format!("#half:{SERVER}")).expect("alias");
    assert_eq!(svc.resolve_alias(&alias).expect("alias"), None);
    assert!(svc.public_rooms().expect("public").is_empty());
    // The alias can be used for a complete room.
    let req = CreateRoomRequest {
        room_alias_name: Some("half".into()),
        ..Default::default()
    };
    let room = svc.create_room(&alice, req).expect("create");
    assert_eq!(
        svc.resolve_alias(&alias).expect("alias"),
        Some(room.clone())
    );
    assert!(svc.is_joined(&room, &alice).expect("joined"));
}
