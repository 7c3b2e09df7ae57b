use std::collections::BTreeMap;
use std::sync::Arc;

use crate::MemberProfile as Profile;
use ruma::serde::Base64;
use ruma::signatures::{Verified, verify_event};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, RoomVersionId};
use serde_json::{Value, json};
use storage::Db;

use crate::persist::{AppendOpts, NewEvent, rules_for};
use crate::*;

pub(crate) const SERVER: &str = "test.local";

pub(crate) fn setup() -> (tempfile::TempDir, RoomService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open"));
    let svc = RoomService::new(db, SERVER.try_into().expect("server")).expect("service");
    (dir, svc)
}

pub(crate) fn user(local: &str) -> OwnedUserId {
    OwnedUserId::try_from(format!("@{local}:{SERVER}")).expect("user id")
}

pub(crate) fn create(svc: &RoomService, creator: &OwnedUserId, preset: Preset) -> OwnedRoomId {
    let req = CreateRoomRequest {
        preset: Some(preset),
        ..Default::default()
    };
    svc.create_room(creator, req).expect("create room")
}

fn all_events(svc: &RoomService, room: &RoomId) -> Vec<StoredEvent> {
    svc.timeline(room, None, u64::MAX - 1, 10_000)
        .expect("timeline")
        .0
}

fn is_forbidden<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(RoomError::Forbidden(_)))
}

#[test]
fn signing_key_is_persisted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, pk) = {
        let db = Arc::new(Db::open(dir.path(), false).expect("open"));
        let svc = RoomService::new(db, SERVER.try_into().expect("server")).expect("service");
        assert!(svc.signing_key_id().starts_with("ed25519:"));
        (svc.signing_key_id().to_owned(), svc.public_key())
    };
    let db = Arc::new(Db::open(dir.path(), false).expect("reopen"));
    let svc = RoomService::new(db, SERVER.try_into().expect("server")).expect("service");
    assert_eq!(svc.signing_key_id(), id);
    assert_eq!(svc.public_key(), pk);
}

#[test]
fn create_room_builds_a_valid_signed_auth_chain() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let req = CreateRoomRequest {
        preset: Some(Preset::PrivateChat),
        name: Some("Room".into()),
        topic: Some("Topic".into()),
        invite: vec![bob.to_string()],
        creator_profile: Profile {
            displayname: Some("Alice".into()),
            avatar_url: None,
        },
        // The v10 format is checked here; tests_versions.rs covers the others.
        room_version: Some("10".into()),
        ..Default::default()
    };
    let room = svc.create_room(&alice, req).expect("create");
    let events = all_events(&svc, &room);
    let kinds: Vec<(String, Option<String>)> = events
        .iter()
        .map(|e| (e.kind().to_owned(), e.state_key().map(str::to_owned)))
        .collect();
    let expected = [
        ("m.room.create", Some("")),
        ("m.room.member", Some(alice.as_str())),
        ("m.room.power_levels", Some("")),
        ("m.room.join_rules", Some("")),
        ("m.room.history_visibility", Some("")),
        ("m.room.guest_access", Some("")),
        ("m.room.name", Some("")),
        ("m.room.topic", Some("")),
        ("m.room.member", Some(bob.as_str())),
    ];
    let expected: Vec<(String, Option<String>)> = expected
        .iter()
        .map(|(t, k)| (t.to_string(), k.map(str::to_owned)))
        .collect();
    assert_eq!(kinds, expected);

    let rules = rules_for(&RoomVersionId::V10).expect("rules");
    let mut keys = BTreeMap::new();
    keys.insert(
        svc.signing_key_id().to_owned(),
        Base64::new(svc.public_key().to_vec()),
    );
    let mut key_map = BTreeMap::new();
    key_map.insert(SERVER.to_owned(), keys);

    let create_id = events[0].event_id.clone();
    let mut depth = 0;
    let mut last: Option<OwnedEventId> = None;
    for ev in &events {
        // Signature and content hash.
        assert_eq!(
            verify_event(&key_map, &ev.pdu, &rules).expect("verify"),
            Verified::All,
            "{}",
            ev.event_id
        );
        // Reference-hash event id.
        let hash = ruma::signatures::reference_hash(&ev.pdu, &rules).expect("hash");
        assert_eq!(ev.event_id.as_str(), format!("${hash}"));
        // Linear DAG, increasing depth.
        assert!(ev.depth() > depth);
        depth = ev.depth();
        let prev: Vec<String> =
            serde_json::from_value(Value::from(ev.pdu["prev_events"].clone())).expect("prev");
        let auth: Vec<String> =
            serde_json::from_value(Value::from(ev.pdu["auth_events"].clone())).expect("auth");
        match &last {
            None => {
                assert!(prev.is_empty() && auth.is_empty());
                assert_eq!(ev.content()["creator"], json!(alice.as_str()));
                assert_eq!(ev.content()["room_version"], json!("10"));
            }
            Some(l) => {
                assert_eq!(prev, vec![l.to_string()]);
                assert!(
                    auth.contains(&create_id.to_string()),
                    "create in auth events of {}",
                    ev.kind()
                );
                // Every auth event is in the state before the event.
                let before = svc.state_before(&ev.event_id).expect("state before");
                for a in &auth {
                    assert!(
                        before.values().any(|v| v.as_str() == a),
                        "auth event {a} not in state"
                    );
                }
            }
        }
        last = Some(ev.event_id.clone());
    }
    // Creator's member event carries the profile; the invite has the right auth events.
    assert_eq!(events[1].content()["displayname"], json!("Alice"));
    let invite = &events[8];
    let auth: Vec<String> =
        serde_json::from_value(Value::from(invite.pdu["auth_events"].clone())).expect("auth");
    let before = svc.state_before(&invite.event_id).expect("before");
    for key in [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.member", alice.as_str()),
    ] {
        let id = &before[&(key.0.to_owned(), key.1.to_owned())];
        assert!(auth.contains(&id.to_string()), "{key:?}");
    }
    assert_eq!(auth.len(), 4);

    let state = svc.current_state(&room).expect("state");
    assert_eq!(state.len(), 9);
    assert_eq!(
        svc.membership_state(&room, &bob).expect("m"),
        Some(Membership::Invite)
    );
    assert_eq!(svc.joined_members(&room).expect("j"), vec![alice.clone()]);
    let rooms = svc.rooms_for_user(&bob).expect("rooms");
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].membership, Membership::Invite);
    assert_eq!(rooms[0].event_id, invite.event_id);
    assert_eq!(rooms[0].pos, invite.pos);
    let stripped = svc.invite_state(&room, &bob).expect("invite state");
    let types: Vec<&str> = stripped.iter().filter_map(|v| v["type"].as_str()).collect();
    assert!(
        types.contains(&"m.room.create")
            && types.contains(&"m.room.join_rules")
            && types.contains(&"m.room.name")
    );
    assert!(
        stripped
            .iter()
            .any(|v| v["type"] == "m.room.member" && v["state_key"] == bob.as_str())
    );
}

#[test]
fn room_version_11_and_unsupported_versions() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let req = CreateRoomRequest {
        room_version: Some("11".into()),
        ..Default::default()
    };
    let room = svc.create_room(&alice, req).expect("v11");
    assert_eq!(
        svc.room_version(&room).expect("v"),
        Some(RoomVersionId::V11)
    );
    let create = &all_events(&svc, &room)[0];
    assert!(create.content().get("creator").is_none());
    let sent = svc
        .send_message_event(&alice, &room, "m.room.message", json!({"body": "hi"}), None)
        .expect("send");
    let red = svc
        .redact(&alice, &room, &sent.event_id, Some("oops"), None)
        .expect("redact v11");
    let red_ev = svc.event(&red.event_id).expect("get").expect("exists");
    assert_eq!(red_ev.content()["redacts"], json!(sent.event_id.as_str()));
    assert!(!red_ev.pdu.contains_key("redacts"));
    assert_eq!(red_ev.redacts(), Some(sent.event_id.as_str()));
    for v in ["13", "foo", "org.matrix.msc2870"] {
        let req = CreateRoomRequest {
            room_version: Some(v.into()),
            ..Default::default()
        };
        assert!(
            matches!(
                svc.create_room(&alice, req),
                Err(RoomError::UnsupportedRoomVersion(_))
            ),
            "{v}"
        );
    }
}

#[test]
fn auth_rejections() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let carol = user("carol");
    let room = create(&svc, &alice, Preset::PrivateChat);
    let p = Profile::default();

    // Non-member cannot send.
    assert!(is_forbidden(svc.send_message_event(
        &bob,
        &room,
        "m.room.message",
        json!({"body": "x"}),
        None
    )));
    // Join to an invite-only room without an invite.
    assert!(is_forbidden(svc.join(&bob, room.as_str(), &p, None)));
    // With an invite it works.
    svc.invite(&alice, &room, &bob, None).expect("invite");
    svc.join(&bob, room.as_str(), &p, None).expect("join");
    svc.send_message_event(&bob, &room, "m.room.message", json!({"body": "x"}), None)
        .expect("member can send");
    // Insufficient power: name needs 50, power levels 100.
    assert!(is_forbidden(svc.send_state_event(
        &bob,
        &room,
        "m.room.name",
        "",
        json!({"name": "n"})
    )));
    assert!(is_forbidden(svc.send_state_event(
        &bob,
        &room,
        "m.room.power_levels",
        "",
        json!({"users": {bob.as_str(): 100}})
    )));
    // A private chat lets every member invite (Synapse's preset); once the room asks 50
    // for invites, a plain member cannot.
    svc.invite(&bob, &room, &carol, None)
        .expect("member invites in a private chat");
    let mut pl = svc
        .current_state_event(&room, "m.room.power_levels", "")
        .unwrap()
        .unwrap()
        .content();
    pl["invite"] = json!(50);
    svc.send_state_event(&alice, &room, "m.room.power_levels", "", pl)
        .expect("admin raises the invite level");
    assert!(is_forbidden(svc.invite(&bob, &room, &user("dave"), None)));
    // Kick/ban by a non-moderator.
    assert!(is_forbidden(svc.kick(&bob, &room, &alice, None)));
    assert!(is_forbidden(svc.ban(&bob, &room, &alice, None)));
    // State key of another user.
    assert!(is_forbidden(svc.send_state_event(
        &bob,
        &room,
        "m.custom",
        alice.as_str(),
        json!({})
    )));
    // Ban, then the banned user cannot join or send.
    svc.ban(&alice, &room, &bob, Some("spam")).expect("ban");
    assert_eq!(
        svc.membership_state(&room, &bob).expect("m"),
        Some(Membership::Ban)
    );
    assert!(is_forbidden(svc.send_message_event(
        &bob,
        &room,
        "m.room.message",
        json!({"body": "x"}),
        None
    )));
    assert!(is_forbidden(svc.join(&bob, room.as_str(), &p, None)));
    assert!(is_forbidden(svc.invite(&alice, &room, &bob, None)));
    svc.unban(&alice, &room, &bob, None).expect("unban");
    assert_eq!(
        svc.membership_state(&room, &bob).expect("m"),
        Some(Membership::Leave)
    );
    // Kick by a moderator.
    svc.invite(&alice, &room, &carol, None).expect("invite");
    svc.join(&carol, room.as_str(), &p, None).expect("join");
    svc.kick(&alice, &room, &carol, Some("bye")).expect("kick");
    assert_eq!(
        svc.membership_state(&room, &carol).expect("m"),
        Some(Membership::Leave)
    );
    // Unknown room.
    let unknown: OwnedRoomId = "!nope:test.local".try_into().expect("id");
    assert!(matches!(
        svc.send_message_event(&alice, &unknown, "m.room.message", json!({}), None),
        Err(RoomError::UnknownRoom(_))
    ));
    assert!(matches!(
        svc.join(&alice, unknown.as_str(), &p, None),
        Err(RoomError::UnknownRoom(_))
    ));
}

#[test]
fn public_room_join_leave_rejoin_forget() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    let prof = Profile {
        displayname: Some("Bob".into()),
        avatar_url: Some("mxc://x/y".into()),
    };
    let (_, joined) = svc.join(&bob, room.as_str(), &prof, None).expect("join");
    let ev = svc.event(&joined.event_id).expect("e").expect("exists");
    assert_eq!(ev.content()["displayname"], json!("Bob"));
    assert_eq!(ev.content()["avatar_url"], json!("mxc://x/y"));
    // Joining again with the same profile is a no-op.
    let (_, again) = svc
        .join(&bob, room.as_str(), &prof, None)
        .expect("join again");
    assert_eq!(again, joined);
    assert!(matches!(
        svc.forget(&bob, &room),
        Err(RoomError::BadState(_))
    ));
    let left = svc.leave(&bob, &room, None).expect("leave");
    assert!(left.pos > joined.pos);
    assert_eq!(svc.leave(&bob, &room, None).expect("leave again"), left);
    assert_eq!(
        svc.room_access(&room, &bob).expect("access"),
        RoomAccess::Former {
            until_pos: left.pos,
            membership: Membership::Leave
        }
    );
    svc.forget(&bob, &room).expect("forget");
    assert!(svc.rooms_for_user(&bob).expect("rooms").is_empty());
    svc.join(&bob, room.as_str(), &prof, None).expect("rejoin");
    assert_eq!(svc.rooms_for_user(&bob).expect("rooms").len(), 1);
    // Leaving a room one was never in is refused by the auth rules.
    let carol = user("carol");
    assert!(is_forbidden(svc.leave(&carol, &room, None)));
}

#[test]
fn txn_idempotency() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PrivateChat);
    let dev: ruma::OwnedDeviceId = "DEV1".into();
    let dev2: ruma::OwnedDeviceId = "DEV2".into();
    let a = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "1"}),
            Some((&dev, "t1")),
        )
        .expect("send");
    let b = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "1"}),
            Some((&dev, "t1")),
        )
        .expect("send");
    assert_eq!(a, b);
    let c = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "1"}),
            Some((&dev2, "t1")),
        )
        .expect("send");
    assert_ne!(a.event_id, c.event_id);
    let d = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "1"}),
            Some((&dev, "t2")),
        )
        .expect("send");
    assert_ne!(a.event_id, d.event_id);
    // transaction_id only for the sending device.
    let ev = svc.event(&a.event_id).expect("e").expect("exists");
    let mine = ev.to_client_event(Some((&alice, &dev)), ruma_now());
    assert_eq!(mine["unsigned"]["transaction_id"], json!("t1"));
    let other = ev.to_client_event(Some((&alice, &dev2)), ruma_now());
    assert!(other["unsigned"].get("transaction_id").is_none());
    assert_eq!(mine["room_id"], json!(room.as_str()));
    assert_eq!(mine["content"]["body"], json!("1"));
    assert!(mine["unsigned"]["age"].as_u64().is_some());
}

fn ruma_now() -> u64 {
    crate::now_ms()
}

#[test]
fn state_events_prev_content_and_dedupe() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PrivateChat);
    let a = svc
        .send_state_event(&alice, &room, "m.room.topic", "", json!({"topic": "one"}))
        .expect("topic");
    let b = svc
        .send_state_event(&alice, &room, "m.room.topic", "", json!({"topic": "two"}))
        .expect("topic");
    let again = svc
        .send_state_event(&alice, &room, "m.room.topic", "", json!({"topic": "two"}))
        .expect("topic");
    assert_eq!(b, again);
    let ev = svc.event(&b.event_id).expect("e").expect("exists");
    let client = ev.to_client_event(None, ruma_now());
    assert_eq!(client["unsigned"]["prev_content"], json!({"topic": "one"}));
    assert_eq!(
        client["unsigned"]["replaces_state"],
        json!(a.event_id.as_str())
    );
    assert_eq!(client["state_key"], json!(""));
    // state_before / state_at_position
    let before = svc.state_before(&b.event_id).expect("before");
    assert_eq!(
        before[&("m.room.topic".to_owned(), String::new())],
        a.event_id
    );
    let at_a = svc.state_at_position(&room, a.pos).expect("at");
    assert_eq!(
        at_a[&("m.room.topic".to_owned(), String::new())],
        a.event_id
    );
    let now = svc.current_state(&room).expect("current");
    assert_eq!(now[&("m.room.topic".to_owned(), String::new())], b.event_id);
}

#[test]
fn many_state_events_use_snapshots_and_deltas() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PublicChat);
    let mut last = None;
    for i in 0..(MAX_STATE_DELTA * 2 + 7) {
        let s = svc
            .send_state_event(&alice, &room, "m.custom", &format!("k{i}"), json!({"i": i}))
            .expect("state");
        if i % 10 == 0 {
            svc.send_message_event(&alice, &room, "m.room.message", json!({"body": "x"}), None)
                .expect("msg");
        }
        last = Some(s);
    }
    let last = last.expect("sent");
    let before = svc.state_before(&last.event_id).expect("before");
    let current = svc.current_state(&room).expect("current");
    assert_eq!(before.len() + 1, current.len());
    for (k, v) in &before {
        if k.1 != format!("k{}", MAX_STATE_DELTA * 2 + 6) {
            assert_eq!(current.get(k), Some(v));
        }
    }
    let after = svc.state_at_position(&room, last.pos).expect("at");
    assert_eq!(after, current);
}

#[test]
fn redaction() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    svc.join(&bob, room.as_str(), &Profile::default(), None)
        .expect("join");
    let msg = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "secret", "msgtype": "m.text"}),
            None,
        )
        .expect("send");
    // Bob (power 0) may not redact Alice's event.
    assert!(is_forbidden(svc.redact(
        &bob,
        &room,
        &msg.event_id,
        None,
        None
    )));
    // Bob may redact his own.
    let own = svc
        .send_message_event(&bob, &room, "m.room.message", json!({"body": "mine"}), None)
        .expect("send");
    svc.redact(&bob, &room, &own.event_id, None, None)
        .expect("own redaction");
    let dev: ruma::OwnedDeviceId = "D".into();
    let r1 = svc
        .redact(
            &alice,
            &room,
            &msg.event_id,
            Some("spoiler"),
            Some((&dev, "r1")),
        )
        .expect("redact");
    let r2 = svc
        .redact(
            &alice,
            &room,
            &msg.event_id,
            Some("spoiler"),
            Some((&dev, "r1")),
        )
        .expect("redact again");
    assert_eq!(r1, r2);
    let ev = svc.event(&msg.event_id).expect("e").expect("exists");
    assert_eq!(ev.content(), json!({}));
    let client = ev.to_client_event(None, ruma_now());
    assert_eq!(
        client["unsigned"]["redacted_because"]["event_id"],
        json!(r1.event_id.as_str())
    );
    assert_eq!(
        client["unsigned"]["redacted_because"]["content"]["reason"],
        json!("spoiler")
    );
    let red = svc.event(&r1.event_id).expect("e").expect("exists");
    assert_eq!(
        red.to_client_event(None, 0)["redacts"],
        json!(msg.event_id.as_str())
    );
    // The redacted event still verifies (hashes and signatures survive redaction).
    let rules = rules_for(&RoomVersionId::V10).expect("rules");
    let mut keys = BTreeMap::new();
    keys.insert(
        svc.signing_key_id().to_owned(),
        Base64::new(svc.public_key().to_vec()),
    );
    let key_map = BTreeMap::from([(SERVER.to_owned(), keys)]);
    assert_eq!(
        verify_event(&key_map, &ev.pdu, &rules).expect("verify"),
        Verified::Signatures
    );
}

#[test]
fn oversized_events_are_rejected() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PrivateChat);
    let big = "x".repeat(70_000);
    let r = svc.send_message_event(&alice, &room, "m.room.message", json!({"body": big}), None);
    assert!(matches!(r, Err(RoomError::TooLarge(_))), "{r:?}");
    let long_type = "t".repeat(300);
    assert!(matches!(
        svc.send_message_event(&alice, &room, &long_type, json!({}), None),
        Err(RoomError::TooLarge(_))
    ));
    // Floats are not canonical JSON.
    assert!(matches!(
        svc.send_message_event(&alice, &room, "m.room.message", json!({"n": 1.5}), None),
        Err(RoomError::BadJson(_))
    ));
}

#[test]
fn timeline_ranges_and_limits() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PrivateChat);
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            svc.send_message_event(&alice, &room, "m.room.message", json!({"body": i}), None)
                .expect("send"),
        );
    }
    let top = sent[4].pos;
    let (evs, limited) = svc
        .timeline(&room, Some(sent[0].pos), top, 2)
        .expect("timeline");
    assert!(limited);
    assert_eq!(
        evs.iter().map(|e| e.pos).collect::<Vec<_>>(),
        vec![sent[3].pos, sent[4].pos]
    );
    let (evs, limited) = svc
        .timeline(&room, Some(sent[0].pos), top, 10)
        .expect("timeline");
    assert!(!limited);
    assert_eq!(evs.len(), 4);
    let back = svc
        .paginate(&room, sent[3].pos, Some(sent[0].pos), true, 10)
        .expect("back");
    assert_eq!(
        back.iter().map(|e| e.pos).collect::<Vec<_>>(),
        vec![sent[3].pos, sent[2].pos, sent[1].pos]
    );
    let fwd = svc
        .paginate(&room, sent[1].pos, None, false, 2)
        .expect("fwd");
    assert_eq!(
        fwd.iter().map(|e| e.pos).collect::<Vec<_>>(),
        vec![sent[2].pos, sent[3].pos]
    );
}

#[test]
fn history_visibility() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    let early = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "early"}),
            None,
        )
        .expect("send");
    let early = svc.event(&early.event_id).expect("e").expect("exists");
    // shared: Bob, not joined, cannot see; once joined he can.
    assert!(!svc.visible_to(&bob, &early).expect("vis"));
    svc.join(&bob, room.as_str(), &Profile::default(), None)
        .expect("join");
    assert!(svc.visible_to(&bob, &early).expect("vis"));
    // joined: events before his join become invisible.
    svc.send_state_event(
        &alice,
        &room,
        "m.room.history_visibility",
        "",
        json!({"history_visibility": "joined"}),
    )
    .expect("hv");
    svc.leave(&bob, &room, None).expect("leave");
    let while_away = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "away"}),
            None,
        )
        .expect("send");
    let while_away = svc.event(&while_away.event_id).expect("e").expect("exists");
    svc.join(&bob, room.as_str(), &Profile::default(), None)
        .expect("rejoin");
    assert!(!svc.visible_to(&bob, &while_away).expect("vis"));
    let after = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "after"}),
            None,
        )
        .expect("send");
    let after = svc.event(&after.event_id).expect("e").expect("exists");
    assert!(svc.visible_to(&bob, &after).expect("vis"));
    // world_readable: anyone.
    svc.send_state_event(
        &alice,
        &room,
        "m.room.history_visibility",
        "",
        json!({"history_visibility": "world_readable"}),
    )
    .expect("hv");
    let open = svc
        .send_message_event(
            &alice,
            &room,
            "m.room.message",
            json!({"body": "open"}),
            None,
        )
        .expect("send");
    let open = svc.event(&open.event_id).expect("e").expect("exists");
    assert!(svc.visible_to(&user("stranger"), &open).expect("vis"));
    assert_eq!(
        svc.room_access(&room, &user("stranger")).expect("access"),
        RoomAccess::WorldReadable
    );
}

#[test]
fn aliases() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let req = CreateRoomRequest {
        room_alias_name: Some("lobby".into()),
        preset: Some(Preset::PublicChat),
        ..Default::default()
    };
    let room = svc.create_room(&alice, req).expect("create");
    let lobby = RoomAliasId::parse("#lobby:test.local").expect("alias");
    assert_eq!(
        svc.resolve_alias(&lobby).expect("resolve"),
        Some(room.clone())
    );
    let canonical = svc
        .current_state_event(&room, "m.room.canonical_alias", "")
        .expect("s")
        .expect("exists");
    assert_eq!(canonical.content()["alias"], json!("#lobby:test.local"));
    let req = CreateRoomRequest {
        room_alias_name: Some("lobby".into()),
        ..Default::default()
    };
    assert!(matches!(
        svc.create_room(&alice, req),
        Err(RoomError::AliasInUse(_))
    ));
    let req = CreateRoomRequest {
        room_alias_name: Some("bad:name".into()),
        ..Default::default()
    };
    assert!(matches!(
        svc.create_room(&alice, req),
        Err(RoomError::InvalidParam(_))
    ));

    let other = RoomAliasId::parse("#other:test.local").expect("alias");
    assert!(is_forbidden(svc.set_alias(&bob, &other, &room)));
    svc.set_alias(&alice, &other, &room).expect("set");
    assert!(matches!(
        svc.set_alias(&alice, &other, &room),
        Err(RoomError::AliasInUse(_))
    ));
    let remote = RoomAliasId::parse("#x:elsewhere.org").expect("alias");
    assert!(matches!(
        svc.set_alias(&alice, &remote, &room),
        Err(RoomError::InvalidParam(_))
    ));
    let mut aliases = svc.room_aliases(&room).expect("aliases");
    aliases.sort();
    assert_eq!(aliases, vec![lobby.to_owned(), other.to_owned()]);
    // Canonical alias must point at the room.
    assert!(matches!(
        svc.send_state_event(
            &alice,
            &room,
            "m.room.canonical_alias",
            "",
            json!({"alias": "#nothere:test.local"})
        ),
        Err(RoomError::BadAlias(_))
    ));
    assert!(matches!(
        svc.send_state_event(
            &alice,
            &room,
            "m.room.canonical_alias",
            "",
            json!({"alias": "not an alias"})
        ),
        Err(RoomError::InvalidParam(_))
    ));
    svc.send_state_event(
        &alice,
        &room,
        "m.room.canonical_alias",
        "",
        json!({"alias": "#lobby:test.local", "alt_aliases": ["#other:test.local"]}),
    )
    .expect("canonical");
    // Join by alias.
    let (joined, _) = svc
        .join(&bob, "#lobby:test.local", &Profile::default(), None)
        .expect("join by alias");
    assert_eq!(joined, room);
    assert!(matches!(
        svc.join(&bob, "#missing:test.local", &Profile::default(), None),
        Err(RoomError::NotFound(_))
    ));
    // Bob (power 0) may not delete Alice's alias; Alice may.
    assert!(is_forbidden(svc.delete_alias(&bob, &other)));
    svc.delete_alias(&alice, &other).expect("delete");
    assert_eq!(svc.resolve_alias(&other).expect("resolve"), None);
    assert!(matches!(
        svc.delete_alias(&alice, &other),
        Err(RoomError::NotFound(_))
    ));
}

#[test]
fn profile_updates_reach_every_joined_room() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let r1 = create(&svc, &alice, Preset::PrivateChat);
    let r2 = create(&svc, &alice, Preset::PublicChat);
    let r3 = create(&svc, &alice, Preset::PublicChat);
    svc.leave(&alice, &r3, None).expect("leave");
    let p = Profile {
        displayname: Some("New".into()),
        avatar_url: None,
    };
    let updated = svc.update_member_profile(&alice, &p).expect("update");
    let rooms: Vec<&OwnedRoomId> = updated.iter().map(|(r, _)| r).collect();
    assert_eq!(updated.len(), 2);
    assert!(rooms.contains(&&r1) && rooms.contains(&&r2));
    for (room, pos) in &updated {
        let ev = svc
            .current_state_event(room, "m.room.member", alice.as_str())
            .expect("s")
            .expect("exists");
        assert_eq!(ev.pos, *pos);
        assert_eq!(ev.content()["displayname"], json!("New"));
        assert_eq!(ev.content()["membership"], json!("join"));
    }
    // Same profile again: nothing to send.
    assert!(
        svc.update_member_profile(&alice, &p)
            .expect("update")
            .is_empty()
    );
}

#[test]
fn create_room_options() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let req: CreateRoomRequest = serde_json::from_value(json!({
        "preset": "trusted_private_chat",
        // v10: invitees of a trusted chat get 100 in the power levels (v12: creators).
        "room_version": "10",
        "invite": [bob.as_str()],
        "is_direct": true,
        "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                          {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}],
        "creation_content": {"m.federate": false},
        "power_level_content_override": {"events_default": 10},
        "visibility": "public"
    }))
    .expect("parse");
    let room = svc.create_room(&alice, req).expect("create");
    let state = |t: &str, k: &str| {
        svc.current_state_event(&room, t, k)
            .expect("s")
            .expect("exists")
            .content()
    };
    assert_eq!(state("m.room.create", "")["m.federate"], json!(false));
    assert_eq!(
        state("m.room.power_levels", "")["users"][bob.as_str()],
        json!(100)
    );
    assert_eq!(
        state("m.room.power_levels", "")["events_default"],
        json!(10)
    );
    assert_eq!(
        state("m.room.history_visibility", "")["history_visibility"],
        json!("joined")
    );
    assert_eq!(state("m.room.join_rules", "")["join_rule"], json!("invite"));
    assert_eq!(
        state("m.room.member", bob.as_str())["is_direct"],
        json!(true)
    );
    assert_eq!(
        state("m.room.encryption", "")["algorithm"],
        json!("m.megolm.v1.aes-sha2")
    );
    assert!(svc.room_is_public(&room).expect("public"));
    let bad: std::result::Result<CreateRoomRequest, _> =
        serde_json::from_value(json!({"preset": "nope"}));
    assert!(bad.is_err());
    let req = CreateRoomRequest {
        invite: vec!["not-a-user".into()],
        ..Default::default()
    };
    assert!(matches!(
        svc.create_room(&alice, req),
        Err(RoomError::InvalidParam(_))
    ));
}

/// A synthetic fork: Alice demotes Bob on one branch while Bob, still a moderator on
/// the other, renames the room. State resolution v2 applies the power-levels change
/// first, so Bob's rename fails auth against the resolved state and is dropped.
#[test]
fn state_resolution_on_a_fork() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    svc.join(&bob, room.as_str(), &Profile::default(), None)
        .expect("join");
    let mut pl = svc
        .current_state_event(&room, "m.room.power_levels", "")
        .expect("s")
        .expect("pl")
        .content();
    pl["users"][bob.as_str()] = json!(50);
    let promote = svc
        .send_state_event(&alice, &room, "m.room.power_levels", "", pl.clone())
        .expect("promote");
    let fork_point = svc.event(&promote.event_id).expect("e").expect("exists");
    let state_at_fork = svc.state_after(&fork_point).expect("state");
    let version = svc.room_version(&room).expect("v").expect("known");

    let _guard = svc.lock_room(&room);
    // Branch A: Alice demotes Bob.
    pl["users"][bob.as_str()] = json!(0);
    let a = NewEvent::state("m.room.power_levels", "", pl.clone());
    let (a_id, a_obj) = svc
        .build_event_on(
            &version,
            &room,
            &alice,
            &a,
            std::slice::from_ref(&promote.event_id),
            |t, k| Ok(state_at_fork.get(&(t.to_owned(), k.to_owned())).cloned()),
        )
        .expect("build a");
    svc.append(a_id.clone(), a_obj, AppendOpts::default())
        .expect("append a");
    // Branch B: Bob renames, on the fork point (where he still has power 50).
    let b = NewEvent::state("m.room.name", "", json!({"name": "Bob's room"}));
    let (b_id, b_obj) = svc
        .build_event_on(
            &version,
            &room,
            &bob,
            &b,
            std::slice::from_ref(&promote.event_id),
            |t, k| Ok(state_at_fork.get(&(t.to_owned(), k.to_owned())).cloned()),
        )
        .expect("build b");
    svc.append(b_id.clone(), b_obj, AppendOpts::default())
        .expect("B is valid against its own state");
    let summary = svc.require_summary(&room).expect("summary");
    assert_eq!(summary.extremities.len(), 2);
    // Current state is the resolution of both branches.
    let current = svc.current_state(&room).expect("current");
    assert_eq!(
        current[&("m.room.power_levels".to_owned(), String::new())],
        a_id
    );
    assert!(
        !current.contains_key(&("m.room.name".to_owned(), String::new())),
        "rename must lose"
    );
    // A merge event built on both extremities sees the resolved state.
    let merge = svc
        .send_locked(
            &room,
            &alice,
            NewEvent::state("m.room.topic", "", json!({"topic": "merged"})),
            AppendOpts::default(),
        )
        .expect("merge");
    let merge_ev = svc.event(&merge.event_id).expect("e").expect("exists");
    let prev: Vec<String> =
        serde_json::from_value(Value::from(merge_ev.pdu["prev_events"].clone())).expect("prev");
    assert_eq!(prev.len(), 2);
    let before = svc.state_before(&merge.event_id).expect("before");
    assert_eq!(
        before[&("m.room.power_levels".to_owned(), String::new())],
        a_id
    );
    assert!(!before.contains_key(&("m.room.name".to_owned(), String::new())));
    assert_eq!(
        svc.require_summary(&room).expect("summary").extremities,
        vec![merge.event_id.clone()]
    );
    drop(_guard);
    // And Bob, demoted, cannot rename any more.
    assert!(is_forbidden(svc.send_state_event(
        &bob,
        &room,
        "m.room.name",
        "",
        json!({"name": "again"})
    )));
    // The resolution helper agrees.
    let after_a = svc
        .state_after(&svc.event(&a_id).expect("e").expect("a"))
        .expect("after a");
    let after_b = svc
        .state_after(&svc.event(&b_id).expect("e").expect("b"))
        .expect("after b");
    let resolved = svc
        .resolve_states(&room, &[after_a, after_b])
        .expect("resolve");
    assert_eq!(
        resolved[&("m.room.power_levels".to_owned(), String::new())],
        a_id
    );
}

#[test]
fn events_with_bad_auth_events_are_rejected() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PublicChat);
    let version = svc.room_version(&room).expect("v").expect("known");
    let summary = svc.require_summary(&room).expect("summary");
    let _guard = svc.lock_room(&room);
    // No auth events at all: missing m.room.create.
    let (id, obj) = svc
        .build_event_on(
            &version,
            &room,
            &alice,
            &NewEvent::state("m.room.topic", "", json!({"topic": "t"})),
            &summary.extremities,
            |_, _| Ok(None),
        )
        .expect("build");
    assert!(matches!(
        svc.append(id, obj, AppendOpts::default()),
        Err(RoomError::Forbidden(_))
    ));
}

#[test]
fn directory_forgotten_rooms_and_unsigned_membership() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    // Public directory index.
    assert!(svc.public_rooms().expect("list").is_empty());
    svc.set_room_public(&room, true).expect("publish");
    assert_eq!(svc.public_rooms().expect("list"), vec![room.clone()]);
    svc.set_room_public(&room, false).expect("unpublish");
    assert!(svc.public_rooms().expect("list").is_empty());
    // Deleting the canonical alias's alias clears it from m.room.canonical_alias.
    let alias = RoomAliasId::parse("#canon:test.local").expect("alias");
    svc.set_alias(&alice, &alias, &room).expect("set");
    svc.send_state_event(
        &alice,
        &room,
        "m.room.canonical_alias",
        "",
        json!({"alias": alias.as_str(), "alt_aliases": [alias.as_str()]}),
    )
    .expect("canonical");
    let (r, sent) = svc
        .delete_alias(&alice, &alias)
        .expect("delete")
        .expect("canonical alias updated");
    assert_eq!(r, room);
    assert_eq!(
        svc.event(&sent.event_id)
            .expect("e")
            .expect("exists")
            .content(),
        json!({})
    );
    // Join with custom content keeps it; the profile fills in only what is missing.
    let prof = Profile {
        displayname: Some("Bob".into()),
        avatar_url: None,
    };
    let extra =
        serde_json::from_value(json!({"foo": "bar", "displayname": "Custom"})).expect("map");
    let (_, joined) = svc
        .join(&bob, room.as_str(), &prof, Some(extra))
        .expect("join");
    let ev = svc.event(&joined.event_id).expect("e").expect("exists");
    assert_eq!(
        ev.content(),
        json!({"membership": "join", "foo": "bar", "displayname": "Custom"})
    );
    // unsigned.membership: Bob's membership at each event.
    let before_join = all_events(&svc, &room)
        .into_iter()
        .find(|e| e.kind() == "m.room.name" || e.kind() == "m.room.join_rules")
        .expect("event");
    let v = svc
        .client_event_for(&before_join, &bob, None, 0)
        .expect("client");
    assert_eq!(v["unsigned"]["membership"], json!("leave"));
    let v = svc.client_event_for(&ev, &bob, None, 0).expect("client");
    assert_eq!(v["unsigned"]["membership"], json!("join"));
    // Forgotten rooms: hidden from rooms_for_user, flagged in the _with_forgotten variant.
    let left = svc.leave(&bob, &room, None).expect("leave");
    svc.forget(&bob, &room).expect("forget");
    assert!(svc.rooms_for_user(&bob).expect("rooms").is_empty());
    let all = svc.rooms_for_user_with_forgotten(&bob).expect("rooms");
    assert_eq!(all.len(), 1);
    assert!(all[0].forgotten);
    assert_eq!(all[0].pos, left.pos);
    assert_eq!(
        svc.room_access(&room, &bob).expect("access"),
        RoomAccess::None
    );
}

#[test]
fn receive_pdu_accepts_valid_and_rejects_unauthorised_events() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    let room = create(&svc, &alice, Preset::PublicChat);
    let version = svc.room_version(&room).expect("v").expect("known");
    let summary = svc.require_summary(&room).expect("summary");
    let current = |t: &str, k: &str| svc.current_state_event_id(&room, t, k);
    // A valid event built elsewhere is accepted under its reference-hash id.
    let new = NewEvent::state("m.room.topic", "", json!({"topic": "remote"}));
    let (id, obj) = svc
        .build_event_on(&version, &room, &alice, &new, &summary.extremities, current)
        .expect("build");
    let origin: &ruma::ServerName = SERVER.try_into().expect("server");
    let keys = StaticKeys::default();
    let sent = svc
        .receive_pdu(origin, obj.clone(), &keys)
        .expect("receive");
    assert!(matches!(&sent, Received::Accepted { event_id, .. } if *event_id == id));
    // Receiving it again is a no-op.
    assert_eq!(svc.receive_pdu(origin, obj, &keys).expect("again"), sent);
    // Bob is not in the room: his message fails the auth rules, and is stored rejected.
    let summary = svc.require_summary(&room).expect("summary");
    let msg = NewEvent {
        kind: "m.room.message".into(),
        state_key: None,
        content: json!({"body": "hi"}),
        redacts: None,
    };
    let (bad_id, obj) = svc
        .build_event_on(&version, &room, &bob, &msg, &summary.extremities, current)
        .expect("build");
    assert!(matches!(
        svc.receive_pdu(origin, obj, &keys).expect("receive"),
        Received::Rejected { .. }
    ));
    assert_eq!(svc.event(&bad_id).expect("read"), None);
}

#[test]
fn rooms_default_to_version_12() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = create(&svc, &alice, Preset::PublicChat);
    let summary = svc.require_summary(&room).expect("summary");
    assert_eq!(summary.version, RoomVersionId::V12);
    // The room ID is the create event's hash: no server name.
    assert_eq!(room.server_name(), None);
    assert_eq!(
        room.as_str().trim_start_matches('!'),
        summary.create_event.as_str().trim_start_matches('$')
    );
}
