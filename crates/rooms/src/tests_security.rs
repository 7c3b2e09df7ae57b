//! Regression tests for the security findings of issue 13 (items 1 and 4).
use accounts::Profile;
use ruma::{OwnedUserId, RoomId};
use serde_json::{Value, json};

use crate::*;

use crate::tests::{SERVER, setup, user};

/// A public room whose join rule is then set to `restricted` (members of `allow_room` only).
fn restricted_room(
    svc: &RoomService,
    creator: &OwnedUserId,
    allow_room: &RoomId,
) -> ruma::OwnedRoomId {
    let req = CreateRoomRequest {
        preset: Some(Preset::PublicChat),
        ..Default::default()
    };
    let room = svc.create_room(creator, req).expect("create");
    svc.send_state_event(
        creator,
        &room,
        "m.room.join_rules",
        "",
        json!({"join_rule": "restricted",
               "allow": [{"type": "m.room_membership", "room_id": allow_room.as_str()}]}),
    )
    .expect("restricted join rule");
    room
}

#[test]
fn restricted_join_cannot_be_forged_through_join() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let mallory = user("mallory");
    let other = svc
        .create_room(&alice, CreateRoomRequest::default())
        .expect("allow room");
    let room = restricted_room(&svc, &alice, &other);
    let mut content = serde_json::Map::new();
    content.insert(
        "join_authorised_via_users_server".into(),
        Value::from(alice.as_str()),
    );
    let r = svc.join(&mallory, room.as_str(), &Profile::default(), Some(content));
    assert!(
        matches!(r, Err(RoomError::Forbidden(_))),
        "forged restricted join must be refused, got {r:?}"
    );
    assert_eq!(
        svc.membership(&room, &mallory)
            .expect("read")
            .map(|m| m.membership),
        None
    );
}

#[test]
fn restricted_join_cannot_be_forged_through_put_state() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let mallory = user("mallory");
    let other = svc
        .create_room(&alice, CreateRoomRequest::default())
        .expect("allow room");
    let room = restricted_room(&svc, &alice, &other);
    let r = svc.send_state_event(
        &mallory,
        &room,
        "m.room.member",
        mallory.as_str(),
        json!({"membership": "join", "join_authorised_via_users_server": alice.as_str()}),
    );
    assert!(
        matches!(r, Err(RoomError::Forbidden(_))),
        "forged restricted join must be refused, got {r:?}"
    );
}

fn message(svc: &RoomService, sender: &OwnedUserId, room: &RoomId, body: &str) -> SentEvent {
    svc.send_message_event(sender, room, "m.room.message", json!({"body": body}), None)
        .expect("send")
}

fn body_of(svc: &RoomService, id: &ruma::EventId) -> Option<Value> {
    svc.event(id)
        .expect("read")
        .expect("stored")
        .content()
        .get("body")
        .cloned()
}

#[test]
fn redacted_state_does_not_survive_in_prev_content() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let room = svc
        .create_room(&alice, CreateRoomRequest::default())
        .expect("create");
    let old = svc
        .send_state_event(
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({"topic": "secret"}),
        )
        .expect("topic");
    let new = svc
        .send_state_event(
            &alice,
            &room,
            "m.room.topic",
            "",
            json!({"topic": "public"}),
        )
        .expect("topic");
    svc.redact(&alice, &room, &old.event_id, None, None)
        .expect("redact");
    let ev = svc.event(&new.event_id).expect("read").expect("stored");
    let client = ev.to_client_event(None, 0);
    assert_eq!(client["unsigned"]["replaces_state"], old.event_id.as_str());
    assert!(
        !client.to_string().contains("secret"),
        "redacted content leaked through unsigned: {client}"
    );
}

/// A room (v11, `redacts` in content) where Bob may send state (50) but the redact level is 100.
fn room_with_high_redact_level(
    svc: &RoomService,
    alice: &OwnedUserId,
    bob: &OwnedUserId,
) -> ruma::OwnedRoomId {
    let req = CreateRoomRequest {
        preset: Some(Preset::PublicChat),
        room_version: Some("11".into()),
        ..Default::default()
    };
    let room = svc.create_room(alice, req).expect("create");
    svc.join(bob, room.as_str(), &Profile::default(), None)
        .expect("join");
    svc.send_state_event(
        alice,
        &room,
        "m.room.power_levels",
        "",
        json!({"users": {alice.as_str(): 100, bob.as_str(): 50}, "redact": 100,
               "state_default": 50, "events_default": 0}),
    )
    .expect("power levels");
    room
}

#[test]
fn redaction_through_put_state_needs_the_redact_level() {
    let (_d, svc) = setup();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = room_with_high_redact_level(&svc, &alice, &bob);
    let msg = message(&svc, &alice, &room, "keep me");
    // Whether the state path refuses it or stores it without effect, the target stays.
    let _ = svc.send_state_event(
        &bob,
        &room,
        "m.room.redaction",
        "",
        json!({"redacts": msg.event_id.as_str()}),
    );
    assert_eq!(body_of(&svc, &msg.event_id), Some(json!("keep me")));
}

#[test]
fn redaction_through_receive_pdu_needs_the_redact_level() {
    let (_d, svc) = setup();
    let (alice, bob) = (user("alice"), user("bob"));
    let room = room_with_high_redact_level(&svc, &alice, &bob);
    let msg = message(&svc, &alice, &room, "keep me");
    let version = svc.room_version(&room).expect("v").expect("known");
    let summary = svc.require_summary(&room).expect("summary");
    let red = crate::persist::NewEvent {
        kind: "m.room.redaction".into(),
        state_key: None,
        content: json!({"redacts": msg.event_id.as_str()}),
        redacts: Some(msg.event_id.clone()),
    };
    let current = |t: &str, k: &str| svc.current_state_event_id(&room, t, k);
    let (_, obj) = svc
        .build_event_on(&version, &room, &bob, &red, &summary.extremities, current)
        .expect("build");
    let origin: &ruma::ServerName = SERVER.try_into().expect("server");
    let _ = svc.receive_pdu(origin, obj, &crate::StaticKeys::default());
    assert_eq!(body_of(&svc, &msg.event_id), Some(json!("keep me")));
    // Alice (100) still may.
    svc.redact(&alice, &room, &msg.event_id, None, None)
        .expect("redact");
    assert_eq!(body_of(&svc, &msg.event_id), None);
}

#[test]
fn failed_create_room_leaves_nothing_behind() {
    let (_d, svc) = setup();
    let alice = user("alice");
    let bob = user("bob");
    // The last initial_state event fails the auth rules (Alice cannot join Bob), after
    // the create event, Alice's join and the power levels were written.
    let req = CreateRoomRequest {
        preset: Some(Preset::PublicChat),
        room_alias_name: Some("half".into()),
        initial_state: vec![InitialStateEvent {
            kind: "m.room.member".into(),
            state_key: bob.to_string(),
            content: json!({"membership": "join"})
                .as_object()
                .cloned()
                .expect("object"),
        }],
        ..Default::default()
    };
    let r = svc.create_room(&alice, req);
    assert!(r.is_err(), "createRoom must fail: {r:?}");
    assert!(
        svc.rooms_for_user(&alice).expect("rooms").is_empty(),
        "a failed createRoom must leave no room for its creator"
    );
    let alias = ruma::RoomAliasId::parse(format!("#half:{SERVER}")).expect("alias");
    assert_eq!(svc.resolve_alias(&alias).expect("resolve"), None);
    // The alias is free again.
    let req = CreateRoomRequest {
        room_alias_name: Some("half".into()),
        ..Default::default()
    };
    svc.create_room(&alice, req).expect("create with the alias");
}
