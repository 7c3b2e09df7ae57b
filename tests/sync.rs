//! `/sync`: initial and incremental, long-poll wake-ups, tokens that always advance,
//! invites and leaves, filters, and bad parameters.
mod common;

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

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn send(s: &TestServer, u: &User, room: &str, txn: &str, body: &str) {
    let (st, resp) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                enc(room)
            ),
            Some(&u.token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(st, 200, "{resp}");
}

#[tokio::test]
async fn initial_then_incremental_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "r"})).await;
    send(&s, &alice, &room, "1", "first").await;
    let initial = sync(&s, &alice, "timeout=0").await;
    assert!(initial["next_batch"].is_string());
    assert!(timeline_bodies(&initial, &room).contains(&"first".to_owned()));
    let state = initial["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let timeline = initial["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let all: Vec<&Value> = state.iter().chain(timeline.iter()).collect();
    assert!(
        all.iter().any(|e| e["type"] == "m.room.create"),
        "create event in state or timeline"
    );
    send(&s, &alice, &room, "2", "second").await;
    let since = initial["next_batch"].as_str().expect("token");
    let inc = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert_eq!(timeline_bodies(&inc, &room), vec!["second".to_owned()]);
    assert_ne!(inc["next_batch"], initial["next_batch"]);
}

#[tokio::test]
async fn long_poll_wakes_on_a_message_and_times_out_otherwise() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let first = sync(&s, &bob, "timeout=0").await;
    let mut since = first["next_batch"].as_str().expect("token").to_owned();
    // Drain anything pending (e.g. presence) until a sync comes back empty.
    for _ in 0..5 {
        let r = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
        let next = r["next_batch"].as_str().expect("token").to_owned();
        if next == since {
            break;
        }
        since = next;
    }
    // Nothing happens: the long-poll waits for its timeout and returns the same token.
    let started = Instant::now();
    let idle = sync(
        &s,
        &bob,
        &format!("since={since}&timeout=500&set_presence=offline"),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "returned early: {idle}"
    );
    assert_eq!(idle["next_batch"].as_str(), Some(since.as_str()));
    // A message wakes it well before the timeout.
    let s2 = std::sync::Arc::new(s);
    let waiter = {
        let s = s2.clone();
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = sync(
                &s,
                &bob,
                &format!("since={since}&timeout=20000&set_presence=offline"),
            )
            .await;
            (started.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&s2, &alice, &room, "w", "wake up").await;
    let (took, r) = waiter.await.expect("join");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(timeline_bodies(&r, &room), vec!["wake up".to_owned()]);
}

#[tokio::test]
async fn invites_and_leaves_appear_in_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    let since = sync(&s, &bob, "timeout=0").await["next_batch"]
        .as_str()
        .expect("t")
        .to_owned();
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.token),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(st, 200);
    let r = sync(&s, &bob, &format!("since={since}&timeout=5000")).await;
    let invite = &r["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["type"] == "m.room.member")),
        "{r}"
    );
    let since = r["next_batch"].as_str().expect("t").to_owned();
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let r = sync(&s, &bob, &format!("since={since}&timeout=5000")).await;
    assert!(r["rooms"]["join"].get(&room).is_some(), "{r}");
    let since = r["next_batch"].as_str().expect("t").to_owned();
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let r = sync(&s, &bob, &format!("since={since}&timeout=5000")).await;
    assert!(r["rooms"]["leave"].get(&room).is_some(), "{r}");
}

#[tokio::test]
async fn filters_limit_the_timeline_and_bad_params_are_rejected() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..5 {
        send(&s, &alice, &room, &format!("m{i}"), &format!("msg {i}")).await;
    }
    let filter = enc(r#"{"room":{"timeline":{"limit":2}}}"#);
    let r = sync(&s, &alice, &format!("filter={filter}&timeout=0")).await;
    let tl = &r["rooms"]["join"][&room]["timeline"];
    assert_eq!(tl["events"].as_array().map(Vec::len), Some(2));
    assert_eq!(tl["limited"], true);
    assert!(tl["prev_batch"].is_string());
    // A stored filter by ID.
    let (st, f) = s
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)),
            Some(&alice.token),
            json!({"room": {"timeline": {"limit": 1}}}),
        )
        .await;
    assert_eq!(st, 200);
    let id = f["filter_id"].as_str().expect("filter_id");
    let r = sync(&s, &alice, &format!("filter={id}&timeout=0")).await;
    assert_eq!(
        r["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    for bad in ["since=garbage", "timeout=soon", "set_presence=sleepy"] {
        let (st, body) = s
            .get(
                &format!("/_matrix/client/v3/sync?{bad}"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{bad}");
    }
}

async fn set_topic(s: &TestServer, u: &User, room: &str, topic: &str) {
    let (st, resp) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room)),
            Some(&u.token),
            json!({ "topic": topic }),
        )
        .await;
    assert_eq!(st, 200, "{resp}");
}

/// Issue 13 item 11: `timeline.limit: 0` still reports a joined room's state changes in
/// an incremental sync (as the state section), not nothing.
#[tokio::test]
async fn limit_zero_incremental_sync_reports_state_changes() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "r"})).await;
    let filter = enc(&json!({"room": {"timeline": {"limit": 0}}}).to_string());
    let initial = sync(&s, &alice, &format!("timeout=0&filter={filter}")).await;
    let since = initial["next_batch"].as_str().expect("token").to_owned();
    set_topic(&s, &alice, &room, "changed").await;
    let inc = sync(
        &s,
        &alice,
        &format!("since={since}&timeout=0&filter={filter}"),
    )
    .await;
    let section = &inc["rooms"]["join"][&room];
    assert_eq!(section["timeline"]["events"], json!([]), "{inc}");
    assert_eq!(section["timeline"]["limited"], true, "{inc}");
    let topics: Vec<&Value> = section["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.topic")
        .collect();
    assert_eq!(topics.len(), 1, "{inc}");
    assert_eq!(topics[0]["content"]["topic"], "changed");
}

/// Issue 13 item 11: the timeline filter applies before the limit, so a timeline is
/// `limit` long whenever the room holds that many matching events.
#[tokio::test]
async fn timeline_filter_applies_before_the_limit() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "r"})).await;
    for i in 0..4 {
        send(&s, &alice, &room, &format!("m{i}"), &format!("msg {i}")).await;
    }
    for i in 0..6 {
        set_topic(&s, &alice, &room, &format!("topic {i}")).await;
    }
    let filter =
        enc(&json!({"room": {"timeline": {"limit": 3, "types": ["m.room.message"]}}}).to_string());
    let initial = sync(&s, &alice, &format!("timeout=0&filter={filter}")).await;
    assert_eq!(
        timeline_bodies(&initial, &room),
        vec!["msg 1", "msg 2", "msg 3"],
        "{initial}"
    );
    assert_eq!(initial["rooms"]["join"][&room]["timeline"]["limited"], true);
    let since = initial["next_batch"].as_str().expect("token").to_owned();
    send(&s, &alice, &room, "m9", "late").await;
    set_topic(&s, &alice, &room, "after").await;
    let inc = sync(
        &s,
        &alice,
        &format!("since={since}&timeout=0&filter={filter}"),
    )
    .await;
    assert_eq!(timeline_bodies(&inc, &room), vec!["late"], "{inc}");
    assert_eq!(
        inc["rooms"]["join"][&room]["timeline"]["limited"], false,
        "{inc}"
    );
}

/// A long-poll from a token older than a change returns that change at once, also when no
/// long-poll of the user was open while it happened; a long-poll from the newest token waits.
#[tokio::test]
async fn long_poll_from_before_a_change_returns_at_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let first = sync(&s, &bob, "timeout=0").await;
    let mut since = first["next_batch"].as_str().expect("token").to_owned();
    for _ in 0..5 {
        let r = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
        let next = r["next_batch"].as_str().expect("token").to_owned();
        if next == since {
            break;
        }
        since = next;
    }
    // A long-poll that times out: the server now tracks bob's wake-ups.
    let idle = sync(
        &s,
        &bob,
        &format!("since={since}&timeout=300&set_presence=offline"),
    )
    .await;
    let since = idle["next_batch"].as_str().expect("token").to_owned();
    // Alice sends while none of bob's long-polls is open.
    for (i, body) in ["while away 1", "while away 2"].iter().enumerate() {
        send(&s, &alice, &room, &format!("a{i}"), body).await;
    }
    let started = Instant::now();
    let r = sync(
        &s,
        &bob,
        &format!("since={since}&timeout=20000&set_presence=offline"),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "waited: {r}");
    assert_eq!(
        timeline_bodies(&r, &room),
        vec!["while away 1".to_owned(), "while away 2".to_owned()]
    );
    // The same old token again (a client retrying a lost response): the same answer, at once.
    let started = Instant::now();
    let again = sync(
        &s,
        &bob,
        &format!("since={since}&timeout=20000&set_presence=offline"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited: {again}"
    );
    assert_eq!(timeline_bodies(&again, &room).len(), 2);
    // From the newest token nothing is new: it waits for its timeout.
    let newest = r["next_batch"].as_str().expect("token").to_owned();
    let started = Instant::now();
    let idle = sync(
        &s,
        &bob,
        &format!("since={newest}&timeout=500&set_presence=offline"),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "returned early: {idle}"
    );
    assert!(timeline_bodies(&idle, &room).is_empty(), "{idle}");
}
