//! Ephemeral room data through the real binary: typing notifications (start, stop, expiry,
//! long-poll wake-ups, who may set them), read receipts (public, private, threaded, only
//! forwards), read markers (`m.fully_read` room account data), the `room.ephemeral` sync
//! filter, and receipts surviving `kill -9`.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

async fn sync(s: &TestServer, u: &User, query: &str) -> Value {
    let (st, body) = s
        .get(&format!("/_matrix/client/v3/sync?{query}"), Some(&u.token))
        .await;
    assert_eq!(st, 200, "{body}");
    body
}

fn next_batch(r: &Value) -> String {
    r["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Long-poll from `since` until `pred` holds for a response (other wake-ups, e.g. presence,
/// just poll again); panics after `within`. Returns the matching response.
async fn sync_until(
    s: &TestServer,
    u: &User,
    since: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut since = since.to_owned();
    loop {
        let left = within.saturating_sub(started.elapsed());
        assert!(!left.is_zero(), "condition not met within {within:?}");
        let r = sync(
            s,
            u,
            &format!(
                "since={since}&timeout={}&set_presence=offline",
                left.as_millis()
            ),
        )
        .await;
        if pred(&r) {
            return r;
        }
        since = next_batch(&r);
    }
}

fn ephemeral<'a>(r: &'a Value, room: &str) -> Vec<&'a Value> {
    r["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
}

/// The `user_ids` of the room's `m.typing` event, if the response has one.
fn typing(r: &Value, room: &str) -> Option<Vec<String>> {
    let ev = ephemeral(r, room)
        .into_iter()
        .find(|e| e["type"] == "m.typing")?;
    assert!(ev.get("room_id").is_none(), "no room_id in sync: {ev}");
    Some(
        ev["content"]["user_ids"]
            .as_array()
            .expect("user_ids")
            .iter()
            .map(|u| u.as_str().expect("user id").to_owned())
            .collect(),
    )
}

/// `content[event][type][user]` of the room's `m.receipt` event.
fn receipt<'a>(r: &'a Value, room: &str, event: &str, kind: &str, user: &str) -> Option<&'a Value> {
    let ev = ephemeral(r, room)
        .into_iter()
        .find(|e| e["type"] == "m.receipt")?;
    assert!(ev.get("room_id").is_none(), "no room_id in sync: {ev}");
    ev["content"][event][kind].get(user)
}

async fn set_typing(s: &TestServer, u: &User, room: &str, body: Value) -> (u16, Value) {
    s.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(room),
            enc(&u.user_id)
        ),
        Some(&u.token),
        body,
    )
    .await
}

async fn post_receipt(
    s: &TestServer,
    u: &User,
    room: &str,
    kind: &str,
    event: &str,
    body: Value,
) -> (u16, Value) {
    s.post(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
            enc(room),
            enc(event)
        ),
        Some(&u.token),
        body,
    )
    .await
}

async fn send(s: &TestServer, u: &User, room: &str, txn: &str) -> String {
    let (st, resp) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(&u.token),
            json!({"msgtype": "m.text", "body": txn}),
        )
        .await;
    assert_eq!(st, 200, "{resp}");
    resp["event_id"].as_str().expect("event_id").to_owned()
}

/// Alice's public room with Bob joined.
async fn room_with_two(s: &TestServer) -> (User, User, String) {
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let (st, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    (alice, bob, room)
}

#[tokio::test]
async fn typing_start_stop_and_long_poll_wake_up() {
    let s = Arc::new(TestServer::start().await);
    let (alice, bob, room) = room_with_two(&s).await;
    let initial = sync(&s, &bob, "timeout=0&set_presence=offline").await;
    assert_eq!(typing(&initial, &room), None, "nobody types yet");
    let since = next_batch(&initial);

    // Bob waits; Alice starts typing: his long-poll returns with her in the set, well
    // before its timeout.
    let waiter = {
        let (s, bob, room, since) = (s.clone(), bob.clone(), room.clone(), since.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = sync_until(&s, &bob, &since, Duration::from_secs(20), |r| {
                typing(r, &room).is_some()
            })
            .await;
            (started.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, body) = set_typing(&s, &alice, &room, json!({"typing": true, "timeout": 10000})).await;
    assert_eq!(st, 200, "{body}");
    let (took, r) = waiter.await.expect("join");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(typing(&r, &room), Some(vec![alice.user_id.clone()]));
    let after_start = next_batch(&r);

    // An initial sync shows who types now; so does Alice's own sync.
    let fresh = sync(&s, &bob, "timeout=0&set_presence=offline").await;
    assert_eq!(typing(&fresh, &room), Some(vec![alice.user_id.clone()]));
    let own = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert_eq!(typing(&own, &room), Some(vec![alice.user_id.clone()]));

    // A refresh changes nothing visible: no new m.typing.
    let (st, _) = set_typing(&s, &alice, &room, json!({"typing": true, "timeout": 10000})).await;
    assert_eq!(st, 200);
    let r = sync(
        &s,
        &bob,
        &format!("since={after_start}&timeout=300&set_presence=offline"),
    )
    .await;
    assert_eq!(typing(&r, &room), None, "a refresh is not a change: {r}");

    // Stopping is a change: the set is empty, from the token before and after the start.
    let (st, _) = set_typing(&s, &alice, &room, json!({"typing": false})).await;
    assert_eq!(st, 200);
    let r = sync_until(&s, &bob, &after_start, Duration::from_secs(5), |r| {
        typing(r, &room).is_some()
    })
    .await;
    assert_eq!(typing(&r, &room), Some(vec![]));
    let r = sync(
        &s,
        &bob,
        &format!("since={since}&timeout=0&set_presence=offline"),
    )
    .await;
    assert_eq!(typing(&r, &room), Some(vec![]));
    let fresh = sync(&s, &bob, "timeout=0&set_presence=offline").await;
    assert_eq!(typing(&fresh, &room), None, "nobody types: {fresh}");
}

#[tokio::test]
async fn typing_expires_and_wakes_the_long_poll() {
    let s = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&s).await;
    let since = next_batch(&sync(&s, &bob, "timeout=0&set_presence=offline").await);
    let (st, _) = set_typing(&s, &alice, &room, json!({"typing": true, "timeout": 1000})).await;
    assert_eq!(st, 200);
    let r = sync_until(&s, &bob, &since, Duration::from_secs(5), |r| {
        typing(r, &room).is_some()
    })
    .await;
    assert_eq!(typing(&r, &room), Some(vec![alice.user_id.clone()]));
    // The 1 s timeout, not the 30 s default, ends it: the wait below gives up long before
    // a default-length expiry could come (how soon it comes is the benchmarks' business).
    let r = sync_until(&s, &bob, &next_batch(&r), Duration::from_secs(10), |r| {
        typing(r, &room).is_some()
    })
    .await;
    assert_eq!(typing(&r, &room), Some(vec![]), "expired: {r}");
}

#[tokio::test]
async fn typing_only_for_yourself_and_only_in_joined_rooms() {
    let s = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&s).await;
    let charlie = s.register("charlie").await;
    let charlie_since = next_batch(&sync(&s, &charlie, "timeout=0").await);

    // Bob cannot type as Alice.
    let (st, body) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&alice.user_id)
            ),
            Some(&bob.token),
            json!({"typing": true, "timeout": 5000}),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Charlie is not in the room (nor is anyone in an unknown room).
    let (st, body) = set_typing(
        &s,
        &charlie,
        &room,
        json!({"typing": true, "timeout": 5000}),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    let (st, _) = set_typing(&s, &charlie, "!nowhere:localhost", json!({"typing": true})).await;
    assert_eq!(st, 403);
    // Bad bodies.
    let (st, body) = set_typing(&s, &alice, &room, json!({"timeout": 5000})).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");
    // Alice types; Charlie's sync sees nothing of the room (typing does not leak).
    let (st, _) = set_typing(&s, &alice, &room, json!({"typing": true, "timeout": 10000})).await;
    assert_eq!(st, 200);
    let r = sync(&s, &charlie, &format!("since={charlie_since}&timeout=1000")).await;
    assert!(r["rooms"]["join"].get(&room).is_none(), "{r}");
    let r = sync(&s, &charlie, "timeout=0").await;
    assert!(r["rooms"]["join"].get(&room).is_none(), "{r}");
    // Someone who leaves while typing is not shown typing any more.
    let (st, _) = set_typing(&s, &bob, &room, json!({"typing": true, "timeout": 20000})).await;
    assert_eq!(st, 200);
    let r = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    let mut both = vec![alice.user_id.clone(), bob.user_id.clone()];
    both.sort();
    assert_eq!(typing(&r, &room), Some(both));
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let r = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert_eq!(typing(&r, &room), Some(vec![alice.user_id.clone()]));
}

#[tokio::test]
async fn receipts_public_private_threaded_and_forwards_only() {
    let s = Arc::new(TestServer::start().await);
    let (alice, bob, room) = room_with_two(&s).await;
    let first = send(&s, &alice, &room, "one").await;
    let second = send(&s, &alice, &room, "two").await;
    let alice_since = next_batch(&sync(&s, &alice, "timeout=0&set_presence=offline").await);

    // Bob's public receipt wakes Alice's long-poll.
    let waiter = {
        let (s, alice, room, since, second, bob_id) = (
            s.clone(),
            alice.clone(),
            room.clone(),
            alice_since.clone(),
            second.clone(),
            bob.user_id.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let r = sync_until(&s, &alice, &since, Duration::from_secs(20), |r| {
                receipt(r, &room, &second, "m.read", &bob_id).is_some()
            })
            .await;
            (started.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, body) = post_receipt(&s, &bob, &room, "m.read", &second, json!({})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({}));
    let (took, r) = waiter.await.expect("join");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let rec = receipt(&r, &room, &second, "m.read", &bob.user_id).expect("receipt");
    assert!(rec["ts"].as_u64().is_some_and(|t| t > 0), "{rec}");
    assert!(rec.get("thread_id").is_none(), "unthreaded: {rec}");
    let alice_since = next_batch(&r);

    // A receipt for an earlier event is accepted but does not move the receipt back.
    let (st, _) = post_receipt(&s, &bob, &room, "m.read", &first, json!({})).await;
    assert_eq!(st, 200);
    let fresh = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert!(receipt(&fresh, &room, &second, "m.read", &bob.user_id).is_some());
    assert!(receipt(&fresh, &room, &first, "m.read", &bob.user_id).is_none());

    // A private receipt: Bob sees his own, Alice never does.
    let bob_since = next_batch(&sync(&s, &bob, "timeout=0&set_presence=offline").await);
    let (st, _) = post_receipt(&s, &bob, &room, "m.read.private", &second, json!({})).await;
    assert_eq!(st, 200);
    let r = sync_until(&s, &bob, &bob_since, Duration::from_secs(5), |r| {
        receipt(r, &room, &second, "m.read.private", &bob.user_id).is_some()
    })
    .await;
    assert!(receipt(&r, &room, &second, "m.read.private", &bob.user_id).is_some());
    let fresh = sync(&s, &bob, "timeout=0&set_presence=offline").await;
    assert!(receipt(&fresh, &room, &second, "m.read.private", &bob.user_id).is_some());
    let r = sync(
        &s,
        &alice,
        &format!("since={alice_since}&timeout=500&set_presence=offline"),
    )
    .await;
    assert!(
        ephemeral(&r, &room)
            .iter()
            .all(|e| e["content"][&second].get("m.read.private").is_none()),
        "{r}"
    );
    let fresh = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert!(receipt(&fresh, &room, &second, "m.read.private", &bob.user_id).is_none());

    // A threaded receipt (the main timeline) is separate from the unthreaded one.
    let (st, body) = post_receipt(
        &s,
        &bob,
        &room,
        "m.read",
        &first,
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let r = sync_until(&s, &alice, &alice_since, Duration::from_secs(5), |r| {
        receipt(r, &room, &first, "m.read", &bob.user_id).is_some()
    })
    .await;
    assert_eq!(
        receipt(&r, &room, &first, "m.read", &bob.user_id).expect("threaded")["thread_id"],
        "main"
    );
    let fresh = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert!(receipt(&fresh, &room, &second, "m.read", &bob.user_id).is_some());
    assert!(receipt(&fresh, &room, &first, "m.read", &bob.user_id).is_some());
}

#[tokio::test]
async fn receipt_errors() {
    let s = TestServer::start().await;
    let (alice, _bob, room) = room_with_two(&s).await;
    let charlie = s.register("charlie").await;
    let ev = send(&s, &alice, &room, "x").await;
    let (st, body) = post_receipt(&s, &alice, &room, "m.bogus", &ev, json!({})).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (st, body) = post_receipt(&s, &alice, &room, "m.read", "$unknown", json!({})).await;
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let (st, body) = post_receipt(&s, &charlie, &room, "m.read", &ev, json!({})).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    for bad in [json!({"thread_id": ""}), json!({"thread_id": 5})] {
        let (st, body) = post_receipt(&s, &alice, &room, "m.read", &ev, bad).await;
        assert_eq!(st, 400, "{body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
    }
    let (st, body) = post_receipt(
        &s,
        &alice,
        &room,
        "m.fully_read",
        &ev,
        json!({"thread_id": "main"}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    // An event of another room.
    let other = s.create_room(&alice, json!({})).await;
    let other_ev = send(&s, &alice, &other, "y").await;
    let (st, _) = post_receipt(&s, &alice, &room, "m.read", &other_ev, json!({})).await;
    assert_eq!(st, 404);
    let (st, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
            Some(&alice.token),
            json!({"m.fully_read": "$nope"}),
        )
        .await;
    assert_eq!(st, 404, "{body}");
    let (st, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
            Some(&charlie.token),
            json!({"m.fully_read": ev}),
        )
        .await;
    assert_eq!(st, 403, "{body}");
}

#[tokio::test]
async fn read_markers_set_fully_read_and_receipts() {
    let s = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&s).await;
    let ev = send(&s, &alice, &room, "hello").await;
    let bob_since = next_batch(&sync(&s, &bob, "timeout=0&set_presence=offline").await);
    let (st, body) = s
        .post(
            &format!("/_matrix/client/r0/rooms/{}/read_markers", enc(&room)),
            Some(&bob.token),
            json!({"m.fully_read": ev, "m.read": ev}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let fully_read = |r: &Value| {
        r["rooms"]["join"][&room]["account_data"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == ev.as_str())
    };
    let r = sync_until(&s, &bob, &bob_since, Duration::from_secs(5), |r| {
        fully_read(r) && receipt(r, &room, &ev, "m.read", &bob.user_id).is_some()
    })
    .await;
    assert!(fully_read(&r));
    let (st, content) = s
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
                enc(&bob.user_id),
                enc(&room)
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(content, json!({"event_id": ev}));
    // Alice sees Bob's public receipt, not his fully-read marker.
    let r = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert!(receipt(&r, &room, &ev, "m.read", &bob.user_id).is_some());
    assert!(!fully_read(&r));
    // The receipt endpoint sets the marker too.
    let ev2 = send(&s, &alice, &room, "again").await;
    let (st, _) = post_receipt(&s, &bob, &room, "m.fully_read", &ev2, json!({})).await;
    assert_eq!(st, 200);
    let (_, content) = s
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
                enc(&bob.user_id),
                enc(&room)
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(content, json!({"event_id": ev2}));
    let r = sync(&s, &bob, "timeout=0&set_presence=offline").await;
    assert!(
        receipt(&r, &room, &ev2, "m.fully_read", &bob.user_id).is_none(),
        "m.fully_read is not a receipt"
    );
}

#[tokio::test]
async fn ephemeral_filter_is_honoured() {
    let s = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&s).await;
    let ev = send(&s, &alice, &room, "hi").await;
    let (st, _) = post_receipt(&s, &alice, &room, "m.read", &ev, json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = set_typing(&s, &alice, &room, json!({"typing": true, "timeout": 20000})).await;
    assert_eq!(st, 200);
    let with = |f: Value| {
        format!(
            "timeout=0&set_presence=offline&filter={}",
            enc(&f.to_string())
        )
    };
    let r = sync(&s, &bob, &with(json!({}))).await;
    assert!(
        typing(&r, &room).is_some() && receipt(&r, &room, &ev, "m.read", &alice.user_id).is_some()
    );
    let r = sync(
        &s,
        &bob,
        &with(json!({"room": {"ephemeral": {"types": ["m.typing"]}}})),
    )
    .await;
    assert!(typing(&r, &room).is_some());
    assert!(
        receipt(&r, &room, &ev, "m.read", &alice.user_id).is_none(),
        "{r}"
    );
    let r = sync(
        &s,
        &bob,
        &with(json!({"room": {"ephemeral": {"not_types": ["m.typ*"]}}})),
    )
    .await;
    assert!(typing(&r, &room).is_none(), "{r}");
    assert!(receipt(&r, &room, &ev, "m.read", &alice.user_id).is_some());
    let r = sync(
        &s,
        &bob,
        &with(json!({"room": {"ephemeral": {"limit": 1}}})),
    )
    .await;
    assert_eq!(ephemeral(&r, &room).len(), 1, "{r}");
    let r = sync(
        &s,
        &bob,
        &with(json!({"room": {"ephemeral": {"not_rooms": [room]}}})),
    )
    .await;
    assert!(ephemeral(&r, &room).is_empty(), "{r}");
    // An uploaded filter works the same.
    let (st, f) = s
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&bob.user_id)),
            Some(&bob.token),
            json!({"room": {"ephemeral": {"types": []}}}),
        )
        .await;
    assert_eq!(st, 200);
    let id = f["filter_id"].as_str().expect("filter_id");
    let r = sync(
        &s,
        &bob,
        &format!("timeout=0&set_presence=offline&filter={id}"),
    )
    .await;
    assert!(ephemeral(&r, &room).is_empty(), "{r}");
}

#[tokio::test]
async fn receipts_and_fully_read_survive_kill9() {
    let mut s = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&s).await;
    let ev = send(&s, &alice, &room, "keep").await;
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
            Some(&bob.token),
            json!({"m.fully_read": ev, "m.read": ev, "m.read.private": ev}),
        )
        .await;
    assert_eq!(st, 200);
    let before = next_batch(&sync(&s, &alice, "timeout=0&set_presence=offline").await);

    s.kill9_and_restart().await;

    let r = sync(&s, &bob, "timeout=0&set_presence=offline").await;
    assert!(
        receipt(&r, &room, &ev, "m.read", &bob.user_id).is_some(),
        "{r}"
    );
    assert!(receipt(&r, &room, &ev, "m.read.private", &bob.user_id).is_some());
    let marker = r["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == ev.as_str());
    assert!(marker, "{r}");
    let r = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    assert!(receipt(&r, &room, &ev, "m.read", &bob.user_id).is_some());
    assert!(receipt(&r, &room, &ev, "m.read.private", &bob.user_id).is_none());
    // Nothing is replayed to a token from before the restart, and new receipts still flow.
    let r = sync(
        &s,
        &alice,
        &format!("since={before}&timeout=0&set_presence=offline"),
    )
    .await;
    assert!(
        receipt(&r, &room, &ev, "m.read", &bob.user_id).is_none(),
        "{r}"
    );
    let ev2 = send(&s, &alice, &room, "more").await;
    let (st, _) = post_receipt(&s, &bob, &room, "m.read", &ev2, json!({})).await;
    assert_eq!(st, 200);
    let r = sync_until(&s, &alice, &before, Duration::from_secs(5), |r| {
        receipt(r, &room, &ev2, "m.read", &bob.user_id).is_some()
    })
    .await;
    assert!(receipt(&r, &room, &ev, "m.read", &bob.user_id).is_none());
}
