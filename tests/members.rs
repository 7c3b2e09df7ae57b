//! `GET /rooms/{roomId}/members?at=`: a past member list is shown only to users who may
//! see the room's history at that point (issue 13 item 5).
mod common;

use common::{TestServer, User, enc};
use serde_json::{Value, json};

async fn members_at(s: &TestServer, u: &User, room: &str, at: &str) -> (u16, Value) {
    s.get(
        &format!("/_matrix/client/v3/rooms/{}/members?at={at}", enc(room)),
        Some(&u.token),
    )
    .await
}

async fn next_batch(s: &TestServer, u: &User) -> String {
    let (st, body) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&u.token))
        .await;
    assert_eq!(st, 200, "{body}");
    body["next_batch"].as_str().expect("token").to_owned()
}

/// Alice's room with `visibility`; Bob is invited and joins after token `before`.
async fn room_bob_joins_later(s: &TestServer, visibility: &str) -> (User, User, String, String) {
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "preset": "private_chat",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": visibility },
                }],
            }),
        )
        .await;
    // An ordinary event last: the point `before` names is after the visibility setting.
    let (st, resp) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room)
            ),
            Some(&alice.token),
            json!({ "msgtype": "m.text", "body": "before bob" }),
        )
        .await;
    assert_eq!(st, 200, "{resp}");
    let before = next_batch(s, &alice).await;
    let (st, resp) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(st, 200, "{resp}");
    let (st, resp) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{resp}");
    (alice, bob, room, before)
}

#[tokio::test]
async fn members_at_a_point_before_a_joined_visibility_join_is_forbidden() {
    let s = TestServer::start().await;
    let (alice, bob, room, before) = room_bob_joins_later(&s, "joined").await;
    let (st, body) = members_at(&s, &bob, &room, &before).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Alice was there: she may.
    let (st, body) = members_at(&s, &alice, &room, &before).await;
    assert_eq!(st, 200, "{body}");
    // Bob may at a point after his join.
    let now = next_batch(&s, &bob).await;
    let (st, body) = members_at(&s, &bob, &room, &now).await;
    assert_eq!(st, 200, "{body}");
    let ids: Vec<&str> = body["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(ids.contains(&bob.user_id.as_str()), "{body}");
}

#[tokio::test]
async fn members_at_a_past_point_of_shared_history_is_allowed() {
    let s = TestServer::start().await;
    let (alice, bob, room, before) = room_bob_joins_later(&s, "shared").await;
    let (st, body) = members_at(&s, &bob, &room, &before).await;
    assert_eq!(st, 200, "{body}");
    let ids: Vec<&str> = body["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(ids, vec![alice.user_id.as_str()], "only Alice then: {body}");
}
