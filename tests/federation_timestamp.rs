//! `/timestamp_to_event` (MSC3030) between two Pulse servers: locally, in both directions,
//! with 404 outside the room's time span and 403 for a non-member; and for a server that
//! joined late, the history before its join found through the resident's
//! `/_matrix/federation/v1/timestamp_to_event`.
mod common;

use common::enc;
use common::federating::{Server, join};
use serde_json::json;

async fn at(server: &Server, token: &str, room: &str, ts: u64, dir: &str) -> (u16, Option<String>) {
    let (st, body) = server
        .req(
            "GET",
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
                enc(room)
            ),
            token,
            None,
        )
        .await;
    (st, body["event_id"].as_str().map(str::to_owned))
}

async fn event_ts(server: &Server, token: &str, room: &str, id: &str) -> u64 {
    let (st, ev) = server
        .req(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id)),
            token,
            None,
        )
        .await;
    assert_eq!(st, 200, "{ev}");
    ev["origin_server_ts"].as_u64().expect("origin_server_ts")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test]
async fn timestamp_to_event_locally_and_over_federation() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mallory = a.register("mallory").await;
    let before = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let room = a
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let m1 = a.send_text(&alice, &room, "t1", "one").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let m2 = a.send_text(&alice, &room, "t2", "two").await;
    let (t1, t2) = (
        event_ts(&a, &alice.token, &room, &m1).await,
        event_ts(&a, &alice.token, &room, &m2).await,
    );
    assert!(t1 < t2);

    // Locally.
    assert_eq!(
        at(&a, &alice.token, &room, t1, "f").await,
        (200, Some(m1.clone()))
    );
    assert_eq!(
        at(&a, &alice.token, &room, t1 + 1, "f").await,
        (200, Some(m2.clone()))
    );
    assert_eq!(
        at(&a, &alice.token, &room, t2 - 1, "b").await,
        (200, Some(m1.clone()))
    );
    assert_eq!(at(&a, &alice.token, &room, t2 + 60_000, "f").await.0, 404);
    assert_eq!(at(&a, &alice.token, &room, before, "b").await.0, 404);
    assert_eq!(at(&a, &mallory.token, &room, t1, "f").await.0, 403);
    let (st, _) = at(&a, &alice.token, &room, t1, "x").await;
    assert_eq!(st, 400);

    // B joins after m1 and m2: its own copy of the room starts at the join, so it asks A.
    let (st, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(st, 200, "join: {body}");
    assert_eq!(
        at(&b, &bob.token, &room, t1, "f").await,
        (200, Some(m1.clone()))
    );
    assert_eq!(at(&b, &bob.token, &room, t2 + 1, "b").await.0, 200);
    assert_eq!(
        at(&b, &bob.token, &room, t2, "b").await,
        (200, Some(m2.clone()))
    );
}
