//! Events of ignored users (`m.ignored_user_list`): an ignored user's messages are left out
//! of the ignoring user's `/sync` timeline, `/messages`, `/context`, `/event`,
//! `/relations`, `/threads` and `/search`, while their state events (their join) still
//! count; other users still see everything; un-ignoring shows the messages again in
//! history.
mod common;

use common::{TestServer, User, enc};
use serde_json::{Value, json};

async fn send(s: &TestServer, u: &User, room: &str, txn: &str, content: Value) -> String {
    let (st, body) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(&u.token),
            content,
        )
        .await;
    assert_eq!(st, 200, "send: {body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn set_ignored(s: &TestServer, u: &User, ignored: &[&str]) {
    let list: serde_json::Map<String, Value> = ignored
        .iter()
        .map(|i| ((*i).to_owned(), json!({})))
        .collect();
    let (st, body) = s
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&u.user_id)
            ),
            Some(&u.token),
            json!({ "ignored_users": list }),
        )
        .await;
    assert_eq!(st, 200, "{body}");
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn messages(s: &TestServer, u: &User, room: &str) -> Vec<String> {
    let (st, body) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(room)
            ),
            Some(&u.token),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let mut b = bodies(&body["chunk"]);
    b.reverse();
    b
}

async fn sync_timeline(s: &TestServer, u: &User, room: &str) -> Value {
    let (st, body) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&u.token))
        .await;
    assert_eq!(st, 200, "{body}");
    body["rooms"]["join"][room]["timeline"]["events"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_users_messages_are_hidden_everywhere_until_unignored() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    for u in [&bob, &carol] {
        let (st, body) = s
            .post(
                &format!("/_matrix/client/v3/join/{}", enc(&room)),
                Some(&u.token),
                json!({}),
            )
            .await;
        assert_eq!(st, 200, "{body}");
    }
    set_ignored(&s, &alice, &[&bob.user_id]).await;

    let root = send(
        &s,
        &alice,
        &room,
        "a1",
        json!({"msgtype": "m.text", "body": "alice root"}),
    )
    .await;
    let from_bob = send(
        &s,
        &bob,
        &room,
        "b1",
        json!({"msgtype": "m.text", "body": "bob secret"}),
    )
    .await;
    send(
        &s,
        &bob,
        &room,
        "b2",
        json!({"msgtype": "m.text", "body": "bob reply",
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    send(
        &s,
        &carol,
        &room,
        "c1",
        json!({"msgtype": "m.text", "body": "carol reply",
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    let bob_root = send(
        &s,
        &bob,
        &room,
        "b3",
        json!({"msgtype": "m.text", "body": "bob thread root"}),
    )
    .await;
    send(
        &s,
        &carol,
        &room,
        "c2",
        json!({"msgtype": "m.text", "body": "carol in bob's thread",
               "m.relates_to": {"rel_type": "m.thread", "event_id": bob_root}}),
    )
    .await;

    // /sync: no message of bob, but his join still counts as state.
    let timeline = sync_timeline(&s, &alice, &room).await;
    let seen = bodies(&timeline);
    assert!(seen.iter().all(|b| !b.starts_with("bob")), "{timeline}");
    assert!(seen.contains(&"carol reply".to_owned()), "{timeline}");
    let (_, state) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(state["membership"], "join");

    // /messages.
    assert_eq!(
        messages(&s, &alice, &room).await,
        ["alice root", "carol reply", "carol in bob's thread"]
    );
    // Carol ignores nobody and sees everything.
    assert_eq!(messages(&s, &carol, &room).await.len(), 6);

    // /event and /context of bob's message: not found for alice.
    for path in [
        format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(&from_bob)
        ),
        format!(
            "/_matrix/client/v3/rooms/{}/context/{}",
            enc(&room),
            enc(&from_bob)
        ),
    ] {
        let (st, body) = s.get(&path, Some(&alice.token)).await;
        assert_eq!(st, 404, "{path}: {body}");
        let (st, _) = s.get(&path, Some(&carol.token)).await;
        assert_eq!(st, 200, "{path} for carol");
    }
    // /context around alice's root leaves bob out.
    let (st, ctx) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=20",
                enc(&room),
                enc(&root)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{ctx}");
    let after = bodies(&ctx["events_after"]);
    assert!(after.iter().all(|b| !b.starts_with("bob")), "{ctx}");
    assert!(after.contains(&"carol reply".to_owned()), "{ctx}");

    // /relations: only carol's reply.
    let (st, rel) = s
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{}/relations/{}/m.thread",
                enc(&room),
                enc(&root)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{rel}");
    assert_eq!(bodies(&rel["chunk"]), ["carol reply"]);

    // /threads: bob's thread root is not listed for alice, but is for carol.
    let threads = |u: &User| {
        let s = &s;
        let token = u.token.clone();
        let room = room.clone();
        async move {
            let (st, body) = s
                .get(
                    &format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)),
                    Some(&token),
                )
                .await;
            assert_eq!(st, 200, "{body}");
            let mut b = bodies(&body["chunk"]);
            b.sort();
            b
        }
    };
    assert_eq!(threads(&alice).await, ["alice root"]);
    assert_eq!(threads(&carol).await, ["alice root", "bob thread root"]);

    // /search.
    let (st, found) = s
        .post(
            "/_matrix/client/v3/search",
            Some(&alice.token),
            json!({"search_categories": {"room_events": {"search_term": "bob"}}}),
        )
        .await;
    assert_eq!(st, 200, "{found}");
    let hits: Vec<String> = found["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["result"]["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(hits, ["carol in bob's thread"], "{found}");

    // Un-ignoring shows bob's messages again in history.
    set_ignored(&s, &alice, &[]).await;
    assert_eq!(messages(&s, &alice, &room).await.len(), 6);
    let seen = bodies(&sync_timeline(&s, &alice, &room).await);
    assert!(seen.contains(&"bob secret".to_owned()), "{seen:?}");
}
