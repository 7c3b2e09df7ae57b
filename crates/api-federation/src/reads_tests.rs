//! The read endpoints, as `a.test` (in the room after a join over `/send`) and `c.test`
//! (never in the room).
use serde_json::{Value, json};
use server_keys::ServerKeys;

use crate::send_tests::{event_id, fixture_and_room, join, send, uid};
use crate::tests::{FakeKeys, Fx, call, signed};

const FAR: u64 = u64::MAX;

fn setup() -> (Fx, ruma::OwnedRoomId, ServerKeys) {
    let origin = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    let outsider = ServerKeys::generate_ephemeral("c.test".try_into().unwrap()).unwrap();
    let (fx, room) = fixture_and_room(FakeKeys {
        origin,
        valid_until: FAR,
        extra: vec![(outsider.clone(), FAR)],
    });
    (fx, room, outsider)
}

async fn get(fx: &Fx, as_server: &ServerKeys, uri: &str) -> (u16, Value) {
    call(&fx.app, signed(as_server, "b.test", "GET", uri, "")).await
}

fn alice_says(fx: &Fx, room: &ruma::OwnedRoomId, body: &str) -> ruma::OwnedEventId {
    fx.state
        .rooms
        .send_message_event(
            &uid("@alice:b.test"),
            room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": body}),
            None,
        )
        .unwrap()
        .event_id
}

fn enc(s: &str) -> String {
    federation_client::percent_encode_segment(s)
}

#[tokio::test]
async fn history_visibility_and_server_membership_gate_reads() {
    let (fx, room, outsider) = setup();
    fx.state
        .rooms
        .send_state_event(
            &uid("@alice:b.test"),
            &room,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "joined"}),
        )
        .unwrap();
    let before = alice_says(&fx, &room, "before bob");
    let j = join(&fx, &room, "@bob:a.test");
    let jid = event_id(&j);
    let (_, answer) = send(&fx, "j", vec![j], vec![]).await;
    assert_eq!(answer["pdus"][jid.as_str()], json!({}), "{answer}");
    let after = alice_says(&fx, &room, "after bob");

    let origin = fx.origin.clone();
    let (s, b) = get(
        &fx,
        &origin,
        &format!("/_matrix/federation/v1/event/{}", enc(after.as_str())),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["pdus"][0]["content"]["body"], "after bob");
    // Sent while no a.test user was joined, in a `joined` room: not for a.test.
    let (s, _) = get(
        &fx,
        &origin,
        &format!("/_matrix/federation/v1/event/{}", enc(before.as_str())),
    )
    .await;
    assert_eq!(s, 404);
    // c.test has nobody in the room.
    let (s, b) = get(
        &fx,
        &outsider,
        &format!("/_matrix/federation/v1/event/{}", enc(after.as_str())),
    )
    .await;
    assert_eq!(
        (s, b["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{b}"
    );
    let (s, _) = get(
        &fx,
        &outsider,
        &format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(room.as_str()),
            enc(after.as_str())
        ),
    )
    .await;
    assert_eq!(s, 403);

    // Backfill and get_missing_events leave out what a.test may not see.
    let (s, b) = get(
        &fx,
        &origin,
        &format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit=50",
            enc(room.as_str()),
            enc(after.as_str())
        ),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let bodies: Vec<&str> = b["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["after bob"], "{b}");
    let body = json!({"earliest_events": [], "latest_events": [after], "limit": 50});
    let (s, b) = call(
        &fx.app,
        signed(
            &origin,
            "b.test",
            "POST",
            &format!(
                "/_matrix/federation/v1/get_missing_events/{}",
                enc(room.as_str())
            ),
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let events = b["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e["content"]["body"] != "before bob"),
        "{b}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:a.test"),
        "{b}"
    );
    assert!(events.len() <= crate::reads::MAX_MISSING_EVENTS);
}

#[tokio::test]
async fn state_state_ids_and_event_auth() {
    let (fx, room, _) = setup();
    let j = join(&fx, &room, "@bob:a.test");
    send(&fx, "j", vec![j], vec![]).await;
    let msg = alice_says(&fx, &room, "hi");
    let origin = fx.origin.clone();
    let (s, ids) = get(
        &fx,
        &origin,
        &format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(room.as_str()),
            enc(msg.as_str())
        ),
    )
    .await;
    assert_eq!(s, 200, "{ids}");
    let pdu_ids = ids["pdu_ids"].as_array().unwrap();
    let create = fx
        .state
        .rooms
        .current_state_event_id(&room, "m.room.create", "")
        .unwrap()
        .unwrap();
    assert!(pdu_ids.contains(&json!(create)), "{ids}");
    assert!(!ids["auth_chain_ids"].as_array().unwrap().is_empty());
    let (s, st) = get(
        &fx,
        &origin,
        &format!(
            "/_matrix/federation/v1/state/{}?event_id={}",
            enc(room.as_str()),
            enc(msg.as_str())
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(st["pdus"].as_array().unwrap().len(), pdu_ids.len());
    let (s, auth) = get(
        &fx,
        &origin,
        &format!(
            "/_matrix/federation/v1/event_auth/{}/{}",
            enc(room.as_str()),
            enc(msg.as_str())
        ),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        auth["auth_chain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    // Missing event_id: a clear 400.
    let (s, _) = get(
        &fx,
        &origin,
        &format!("/_matrix/federation/v1/state_ids/{}", enc(room.as_str())),
    )
    .await;
    assert_eq!(s, 400);

    // A server ACL shuts a.test out of room reads too.
    fx.state
        .rooms
        .send_state_event(
            &uid("@alice:b.test"),
            &room,
            "m.room.server_acl",
            "",
            json!({"allow": ["b.test"]}),
        )
        .unwrap();
    let (s, b) = get(
        &fx,
        &origin,
        &format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(room.as_str()),
            enc(msg.as_str())
        ),
    )
    .await;
    assert_eq!(s, 403);
    assert!(b["error"].as_str().unwrap().contains("server_acl"), "{b}");
}

#[tokio::test]
async fn profile_directory_and_public_rooms() {
    let (fx, room, outsider) = setup();
    fx.state
        .accounts
        .register("alice", None, Default::default(), false, false)
        .unwrap();
    let (s, p) = get(
        &fx,
        &outsider,
        "/_matrix/federation/v1/query/profile?user_id=%40alice%3Ab.test",
    )
    .await;
    assert_eq!((s, &p["displayname"]), (200, &json!("alice")), "{p}");
    let (s, p) = get(
        &fx,
        &outsider,
        "/_matrix/federation/v1/query/profile?user_id=%40alice%3Ab.test&field=avatar_url",
    )
    .await;
    assert_eq!((s, p), (200, json!({})));
    let (s, _) = get(
        &fx,
        &outsider,
        "/_matrix/federation/v1/query/profile?user_id=%40nobody%3Ab.test",
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = get(
        &fx,
        &outsider,
        "/_matrix/federation/v1/query/profile?user_id=%40x%3Ac.test",
    )
    .await;
    assert_eq!(s, 400);

    let alias: ruma::OwnedRoomAliasId = "#lobby:b.test".try_into().unwrap();
    fx.state
        .rooms
        .set_alias(&uid("@alice:b.test"), &alias, &room)
        .unwrap();
    let (s, d) = get(
        &fx,
        &outsider,
        "/_matrix/federation/v1/query/directory?room_alias=%23lobby%3Ab.test",
    )
    .await;
    assert_eq!((s, &d["room_id"]), (200, &json!(room)), "{d}");
    assert_eq!(d["servers"][0], "b.test");
    let (s, _) = get(
        &fx,
        &outsider,
        "/_matrix/federation/v1/query/directory?room_alias=%23nope%3Ab.test",
    )
    .await;
    assert_eq!(s, 404);

    fx.state.rooms.set_room_public(&room, true).unwrap();
    let (s, r) = get(&fx, &outsider, "/_matrix/federation/v1/publicRooms?limit=5").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["chunk"][0]["room_id"], json!(room));
    let (s, r) = call(
        &fx.app,
        signed(
            &outsider,
            "b.test",
            "POST",
            "/_matrix/federation/v1/publicRooms",
            r#"{"filter":{"generic_search_term":"no such room"}}"#,
        ),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(r["chunk"].as_array().unwrap().is_empty());
}
