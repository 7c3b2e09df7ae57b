//! Tests for the room-engine findings of the security review (issue 13).
use std::sync::Arc;

use accounts::Profile;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};
use storage::Db;

use crate::*;

const SERVER: &str = "test.local";

fn setup() -> (tempfile::TempDir, RoomService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open"));
    let svc = RoomService::new(db, SERVER.try_into().expect("server")).expect("service");
    (dir, svc)
}

fn user(local: &str) -> OwnedUserId {
    OwnedUserId::try_from(format!("@{local}:{SERVER}")).expect("user id")
}

fn create(svc: &RoomService, creator: &OwnedUserId, preset: Preset) -> OwnedRoomId {
    let req = CreateRoomRequest {
        preset: Some(preset),
        ..Default::default()
    };
    svc.create_room(creator, req).expect("create room")
}

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
