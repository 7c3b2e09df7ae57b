//! Presence timers through the real binary, with short timeouts: a device that stops
//! syncing drops out, an online user without activity goes idle, activity brings them back,
//! busy outlasts plain syncs and ends after busy_timeout, and timers never move an override.
//! Assertions poll until a state is reached (generous deadline); they never assert timing.
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const SHORT: &str = "[presence]\nsync_online_timeout_ms = 400\nidle_timeout_ms = 1200\nlast_active_granularity_ms = 300\nbusy_timeout_ms = 1500\nstatus_per_second = 0\n";

async fn status(s: &TestServer, viewer: &User, user: &User) -> Value {
    let (st, p) = s
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&user.user_id)),
            Some(&viewer.token),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    p
}

/// Poll GET status until `check` holds (10 s budget), optionally running `tick` between polls.
async fn until(
    s: &TestServer,
    viewer: &User,
    user: &User,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = status(s, viewer, user).await;
        if check(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "never reached {what}; last {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn plain_sync(s: &TestServer, u: &User) {
    let (st, _) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&u.token))
        .await;
    assert_eq!(st, 200);
}

async fn pair(s: &TestServer) -> (User, User) {
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
    (alice, bob)
}

#[tokio::test]
async fn a_device_that_stops_syncing_goes_offline_and_bob_is_told() {
    let s = TestServer::start_with(SHORT).await;
    let (alice, bob) = pair(&s).await;
    let (_, r) = s
        .get(
            "/_matrix/client/v3/sync?timeout=0&set_presence=offline",
            Some(&bob.token),
        )
        .await;
    let since = r["next_batch"].as_str().expect("token").to_owned();
    plain_sync(&s, &alice).await;
    until(&s, &bob, &alice, "online", |p| p["presence"] == "online").await;
    until(&s, &bob, &alice, "offline after the sync timeout", |p| {
        p["presence"] == "offline"
    })
    .await;
    // Bob's sync carries the transition (latest state: offline).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut since = since;
    loop {
        let (_, r) = s
            .get(
                &format!("/_matrix/client/v3/sync?since={since}&timeout=1000&set_presence=offline"),
                Some(&bob.token),
            )
            .await;
        let seen = r["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["sender"] == alice.user_id.as_str() && e["content"]["presence"] == "offline"
            });
        if seen {
            break;
        }
        since = r["next_batch"].as_str().expect("token").to_owned();
        assert!(Instant::now() < deadline, "bob never saw alice go offline");
    }
}

#[tokio::test]
async fn idle_then_activity_brings_the_user_back() {
    let s = TestServer::start_with(SHORT).await;
    let (alice, bob) = pair(&s).await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    // Alice keeps a client connected (syncing) but does nothing.
    let keep_syncing = {
        let (base, token) = (s.base.clone(), alice.token.clone());
        let http = s.http.clone();
        tokio::spawn(async move {
            loop {
                let _ = http
                    .get(format!("{base}/_matrix/client/v3/sync?timeout=0"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    until(&s, &bob, &alice, "online", |p| p["presence"] == "online").await;
    let p = until(&s, &bob, &alice, "not currently active", |p| {
        p["currently_active"] == false
    })
    .await;
    assert_eq!(p["presence"], "online");
    until(&s, &bob, &alice, "unavailable after idling", |p| {
        p["presence"] == "unavailable"
    })
    .await;
    // Sending a message is activity.
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room)
            ),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "back"}),
        )
        .await;
    assert_eq!(st, 200);
    let p = until(&s, &bob, &alice, "online again", |p| {
        p["presence"] == "online"
    })
    .await;
    assert!(p["last_active_ago"].as_u64().is_some(), "{p}");
    keep_syncing.abort();
}

#[tokio::test]
async fn busy_outlasts_plain_syncs_and_ends_after_busy_timeout() {
    let s = TestServer::start_with(SHORT).await;
    let (alice, bob) = pair(&s).await;
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.token),
            json!({"presence": "org.matrix.msc3026.busy", "status_msg": "focus"}),
        )
        .await;
    assert_eq!(st, 200);
    for _ in 0..3 {
        plain_sync(&s, &alice).await;
        let p = status(&s, &bob, &alice).await;
        assert_eq!(
            p["presence"], "org.matrix.msc3026.busy",
            "a plain sync must not downgrade busy: {p}"
        );
        assert_eq!(p["status_msg"], "focus");
    }
    until(&s, &bob, &alice, "offline after busy_timeout", |p| {
        p["presence"] == "offline"
    })
    .await;
}

#[tokio::test]
async fn timers_never_move_an_override() {
    let s = TestServer::start_with(SHORT).await;
    let (alice, bob) = pair(&s).await;
    plain_sync(&s, &alice).await;
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v1/presence/{}/override",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"presence_override": "online"}),
        )
        .await;
    assert_eq!(st, 200);
    // Longer than every timeout above.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let p = status(&s, &bob, &alice).await;
    assert_eq!(p["presence"], "online", "{p}");
}
