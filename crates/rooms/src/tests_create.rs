//! createRoom that fails half way (or whose process dies half way) leaves no rows behind.
use std::sync::Arc;

use ruma::RoomId;
use serde_json::json;
use storage::{Cf, Db};

use crate::tests::{SERVER, setup, user};
use crate::*;

/// Rows in `cf` whose key starts with the room's own prefix (`room_id 0xFF`, in every
/// family keyed by room first).
fn room_rows(db: &Db, cf: Cf, room: &RoomId) -> usize {
    db.scan_prefix(cf, crate::keys::timeline::prefix(room))
        .expect("scan")
        .len()
}

fn all_rows(db: &Db, cf: Cf) -> usize {
    db.scan_prefix(cf, []).expect("scan").len()
}

#[test]
fn failed_create_room_leaves_no_event_or_state_rows() {
    for v in crate::tests_versions::tested_versions() {
        let (_d, svc) = setup();
        let alice = user("alice");
        let db = svc.db();
        let before: Vec<usize> = [Cf::Events, Cf::StateAt, Cf::Timeline, Cf::Topo, Cf::Rooms]
            .iter()
            .map(|cf| all_rows(db, *cf))
            .collect();
        let bad: InitialStateEvent = serde_json::from_value(json!({
            "type": "m.room.topic", "state_key": "", "content": {"topic": "t", "weight": 1.5}
        }))
        .expect("initial state");
        let req = CreateRoomRequest {
            room_version: Some(v.to_string()),
            room_alias_name: Some(format!("half{v}")),
            name: Some("half".into()),
            initial_state: vec![bad],
            ..Default::default()
        };
        assert!(svc.create_room(&alice, req).is_err(), "v{v}");
        let after: Vec<usize> = [Cf::Events, Cf::StateAt, Cf::Timeline, Cf::Topo, Cf::Rooms]
            .iter()
            .map(|cf| all_rows(db, *cf))
            .collect();
        assert_eq!(before, after, "v{v}: rows left by a failed createRoom");
        assert_eq!(all_rows(db, Cf::Aliases), 0, "v{v}");
    }
}

#[test]
fn a_room_whose_creation_did_not_finish_is_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = user("alice");
    let (done, half) = {
        let db = Arc::new(Db::open(dir.path(), false).expect("open"));
        let svc = RoomService::new(db.clone(), SERVER.try_into().expect("s")).expect("service");
        let done = crate::tests::create(&svc, &alice, Preset::PublicChat);
        let half = crate::tests::create(&svc, &alice, Preset::PublicChat);
        // Simulate a crash half way through the second createRoom: its building marker
        // is still there (memberships were never written).
        let mut b = storage::Batch::new();
        b.put(Cf::Rooms, crate::keys::rooms::creating(&half), Vec::new());
        for (k, _) in db
            .scan_prefix(
                Cf::Memberships,
                crate::keys::memberships::prefix(alice.as_str()),
            )
            .expect("scan")
        {
            if k.windows(half.as_str().len())
                .any(|w| w == half.as_str().as_bytes())
            {
                b.delete(Cf::Memberships, k);
            }
        }
        db.write(b).expect("write");
        (done, half)
    };
    let db = Arc::new(Db::open(dir.path(), false).expect("reopen"));
    let svc = RoomService::new(db.clone(), SERVER.try_into().expect("s")).expect("service");
    assert!(!svc.room_exists(&half).expect("exists"));
    for cf in [Cf::Timeline, Cf::Topo, Cf::Rooms] {
        assert_eq!(room_rows(&db, cf, &half), 0, "{cf:?}");
    }
    assert!(svc.room_exists(&done).expect("exists"));
    assert!(room_rows(&db, Cf::Timeline, &done) > 0);
    assert_eq!(svc.joined_rooms(&alice).expect("rooms"), vec![done.clone()]);
    // Every stored event belongs to the complete room.
    let events = db.scan_prefix(Cf::Events, []).expect("scan");
    assert_eq!(events.len(), room_rows(&db, Cf::Timeline, &done));
}

/// A room has one create event: sending another through the state API is a bad request
/// (400 `M_INVALID_PARAM` at the client API), in every room version, and nothing is stored.
#[test]
fn a_second_create_event_is_a_bad_request() {
    for v in crate::tests_versions::tested_versions() {
        let (_d, svc) = crate::tests::setup();
        let alice = crate::tests::user("alice");
        let req = crate::CreateRoomRequest {
            room_version: Some(v.to_string()),
            ..Default::default()
        };
        let room = svc.create_room(&alice, req).expect("create");
        let before = svc.room_last_pos(&room).expect("pos");
        let err = svc
            .send_state_event(
                &alice,
                &room,
                "m.room.create",
                "",
                serde_json::json!({"room_version": v.to_string(), "entropy": 100}),
            )
            .expect_err("second create event");
        assert!(
            matches!(err, crate::RoomError::InvalidParam(_)),
            "v{v}: {err:?}"
        );
        assert_eq!(svc.room_last_pos(&room).expect("pos"), before, "v{v}");
    }
}
