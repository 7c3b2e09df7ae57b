//! Regression tests for the security findings of issue 13 (items 1 and 4).
use std::sync::Arc;

use accounts::Profile;
use ruma::{OwnedUserId, RoomId};
use serde_json::{Value, json};
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
