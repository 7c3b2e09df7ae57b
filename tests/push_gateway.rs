//! Push gateway delivery through the real binary: a tiny gateway (axum on a free loopback
//! port, allowed by the federation IP allowlist) receives `/_matrix/push/v1/notify` for a
//! message that notifies, not for a suppressed notice; the `event_id_only` format; a push
//! queued while the gateway is down survives a `kill -9`; a `rejected` push key removes its
//! pusher; a pusher URL in a denied range is not called.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{TestServer, User, enc};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const ALLOW_LOOPBACK: &str = "[federation]\nip_range_allowlist = [\"127.0.0.0/8\"]\n";

/// How the gateway answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Accept,
    Fail,
    Reject,
}

#[derive(Clone)]
struct Gateway {
    mode: Arc<Mutex<Mode>>,
    /// Every request body, in arrival order, with the status it was given.
    seen: Arc<Mutex<Vec<(u16, Value)>>>,
    url: String,
}

async fn notify(State(g): State<Gateway>, body: axum::Json<Value>) -> axum::response::Response {
    let mode = *g.mode.lock().expect("lock");
    let status = if mode == Mode::Fail { 503 } else { 200 };
    g.seen.lock().expect("lock").push((status, body.0.clone()));
    match mode {
        Mode::Accept => axum::Json(json!({"rejected": []})).into_response(),
        Mode::Fail => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Reject => {
            let keys: Vec<Value> = body.0["notification"]["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d["pushkey"].clone())
                .collect();
            axum::Json(json!({ "rejected": keys })).into_response()
        }
    }
}

async fn gateway(mode: Mode) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let g = Gateway {
        mode: Arc::new(Mutex::new(mode)),
        seen: Arc::default(),
        url: format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"),
    };
    let app = axum::Router::new()
        .route("/_matrix/push/v1/notify", axum::routing::post(notify))
        .with_state(g.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    g
}

impl Gateway {
    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }
    fn seen(&self) -> Vec<(u16, Value)> {
        self.seen.lock().expect("lock").clone()
    }
    /// Wait until `pred` holds for what was received (20 s at most).
    async fn wait_for(&self, what: &str, pred: impl Fn(&[(u16, Value)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(&self.seen()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never got {what}: {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn delivered(seen: &[(u16, Value)], event_id: &str) -> usize {
    seen.iter()
        .filter(|(st, b)| *st == 200 && b["notification"]["event_id"] == event_id)
        .count()
}

async fn set_pusher(s: &TestServer, u: &User, pushkey: &str, data: Value) {
    let (st, b) = s
        .post(
            &format!("{V3}/pushers/set"),
            Some(&u.token),
            json!({
                "pushkey": pushkey, "kind": "http", "app_id": "org.example.app",
                "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
                "data": data, "append": true
            }),
        )
        .await;
    assert_eq!(st, 200, "pushers/set: {b}");
}

async fn send(s: &TestServer, u: &User, room: &str, msgtype: &str, body: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let txn = N.fetch_add(1, Ordering::Relaxed);
    let (st, b) = s
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/g{txn}", enc(room)),
            Some(&u.token),
            json!({"msgtype": msgtype, "body": body}),
        )
        .await;
    assert_eq!(st, 200, "send: {b}");
    b["event_id"].as_str().expect("event_id").to_owned()
}

/// Alice's named room with Bob joined.
async fn room_with_bob(s: &TestServer) -> (User, User, String) {
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Cake club"}),
        )
        .await;
    let (st, b) = s
        .post(
            &format!("{V3}/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "join: {b}");
    (alice, bob, room)
}

#[tokio::test]
async fn a_notifying_message_reaches_the_gateway_with_the_spec_fields() {
    let g = gateway(Mode::Accept).await;
    let s = TestServer::start_with(ALLOW_LOOPBACK).await;
    let (alice, bob, room) = room_with_bob(&s).await;
    set_pusher(&s, &bob, "key-full", json!({"url": g.url, "extra": "kept"})).await;
    // A notice does not notify (.m.rule.suppress_notices): it must not be pushed, and it
    // goes first so that a wrongly pushed notice would be the first body seen.
    let notice = send(&s, &alice, &room, "m.notice", "bot says hi").await;
    let text = send(&s, &alice, &room, "m.text", "hello bob").await;
    g.wait_for("the message", |seen| delivered(seen, &text) == 1)
        .await;
    let seen = g.seen();
    assert_eq!(
        delivered(&seen, &notice),
        0,
        "the notice was pushed: {seen:?}"
    );
    let n = &seen[0].1["notification"];
    assert_eq!(n["event_id"], text.as_str(), "{n}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["sender_display_name"], "alice");
    assert_eq!(n["room_name"], "Cake club");
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    // A room message in a two-member room: .m.rule.room_one_to_one, which sounds.
    assert_eq!(n["prio"], "high", "{n}");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "key-full");
    assert_eq!(
        device["data"],
        json!({"extra": "kept"}),
        "url must be left out"
    );
    assert_eq!(device["tweaks"]["sound"], "default", "{device}");
    assert!(
        device["pushkey_ts"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000)
    );

    // A second pusher asking for event_id_only gets the IDs and counts, not the content.
    set_pusher(
        &s,
        &bob,
        "key-ids",
        json!({"url": g.url, "format": "event_id_only"}),
    )
    .await;
    let again = send(&s, &alice, &room, "m.text", "secret plans").await;
    g.wait_for("both pushes", |seen| delivered(seen, &again) == 2)
        .await;
    let seen = g.seen();
    let ids_only = seen
        .iter()
        .map(|(_, b)| &b["notification"])
        .find(|n| n["event_id"] == again.as_str() && n["devices"][0]["pushkey"] == "key-ids")
        .expect("the event_id_only push");
    assert_eq!(ids_only["room_id"], room.as_str());
    assert_eq!(ids_only["counts"]["unread"], 1);
    for absent in [
        "content",
        "sender",
        "type",
        "sender_display_name",
        "room_name",
    ] {
        assert!(ids_only.get(absent).is_none(), "{absent} in {ids_only}");
    }
    // Alice's own messages are never pushed to Alice (she has no pusher, but Bob's
    // pushers saw only Alice's two notifying messages).
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn a_queued_push_survives_kill_9_and_rejected_keys_remove_the_pusher() {
    let g = gateway(Mode::Fail).await;
    let mut s = TestServer::start_with(ALLOW_LOOPBACK).await;
    let (alice, bob, room) = room_with_bob(&s).await;
    set_pusher(&s, &bob, "key-1", json!({"url": g.url})).await;
    let text = send(&s, &alice, &room, "m.text", "are you there?").await;
    // The gateway is down: the first attempt fails and the push waits in the queue.
    g.wait_for("a failed attempt", |seen| {
        seen.iter()
            .any(|(st, b)| *st == 503 && b["notification"]["event_id"] == text.as_str())
    })
    .await;
    s.kill9();
    g.set(Mode::Accept);
    s.start_again().await;
    g.wait_for("the push after the restart", |seen| {
        delivered(seen, &text) == 1
    })
    .await;

    // A gateway that rejects the push key: the pusher goes.
    g.set(Mode::Reject);
    let other = send(&s, &alice, &room, "m.text", "still there?").await;
    g.wait_for("the rejected push", |seen| delivered(seen, &other) == 1)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, b) = s.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
        assert_eq!(st, 200);
        if b["pushers"].as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the rejected pusher stayed: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_gateway_in_a_denied_range_is_not_called() {
    let g = gateway(Mode::Accept).await;
    // No allowlist: loopback is denied, as for federation.
    let s = TestServer::start().await;
    let (alice, bob, room) = room_with_bob(&s).await;
    set_pusher(&s, &bob, "key-denied", json!({"url": g.url})).await;
    // A second pusher on an allowed server would be needed to prove delivery happens at
    // all; here the proof is the other tests. Give the worker several polls.
    send(&s, &alice, &room, "m.text", "hello").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        g.seen().is_empty(),
        "a denied gateway was called: {:?}",
        g.seen()
    );
}
