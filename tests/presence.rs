//! Presence through the real binary: status GET/PUT, set_presence on /sync, delivery to
//! room members, the MSC4043 override (incl. MSC4042 disabled), visibility and errors.
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

fn status_path(u: &User) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(&u.user_id))
}

fn override_path(u: &User) -> String {
    format!("/_matrix/client/v1/presence/{}/override", enc(&u.user_id))
}

async fn next_batch(s: &TestServer, u: &User) -> String {
    let (st, r) = s
        .get(
            "/_matrix/client/v3/sync?timeout=0&set_presence=offline",
            Some(&u.token),
        )
        .await;
    assert_eq!(st, 200);
    r["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Sync from `since` until `user`'s presence satisfies `check` (5 s budget, like Complement).
async fn sync_until_presence(
    s: &TestServer,
    viewer: &User,
    since: &str,
    user: &User,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut since = since.to_owned();
    while Instant::now() < deadline {
        let (st, r) = s
            .get(
                &format!("/_matrix/client/v3/sync?since={since}&timeout=1000&set_presence=offline"),
                Some(&viewer.token),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        let events = r["presence"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["sender"] == user.user_id.as_str())
            .collect();
        assert!(
            mine.len() <= 1,
            "at most one presence event per user: {events:?}"
        );
        if let Some(e) = mine.first() {
            assert_eq!(e["type"], "m.presence");
            if check(&e["content"]) {
                return e["content"].clone();
            }
        }
        since = r["next_batch"].as_str().expect("next_batch").to_owned();
    }
    panic!(
        "{} never saw the expected presence of {}",
        viewer.user_id, user.user_id
    );
}

async fn shared_room(s: &TestServer, a: &User, b: &User) -> String {
    let room = s.create_room(a, json!({"preset": "public_chat"})).await;
    let (st, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&b.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    room
}

#[tokio::test]
async fn status_round_trip_and_delivery_to_room_members() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    shared_room(&s, &alice, &bob).await;
    // Never set: offline, 200.
    let (st, p) = s.get(&status_path(&alice), Some(&alice.token)).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["presence"], "offline");
    let since = next_batch(&s, &bob).await;
    let (st, _) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"presence": "online", "status_msg": "Testing"}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, p) = s.get(&status_path(&alice), Some(&bob.token)).await;
    assert_eq!(p["presence"], "online");
    assert_eq!(p["status_msg"], "Testing");
    assert_eq!(p["currently_active"], true);
    assert!(p["last_active_ago"].is_u64());
    sync_until_presence(&s, &bob, &since, &alice, |c| {
        c["presence"] == "online" && c["status_msg"] == "Testing"
    })
    .await;
    // A sync with set_presence=unavailable reaches bob too.
    let since = next_batch(&s, &bob).await;
    let (st, _) = s
        .get(
            "/_matrix/client/v3/sync?timeout=0&set_presence=unavailable",
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200);
    // Alice's manual online holds against her own automatic signal only until it changes
    // explicitly; unavailable from /sync is an explicit change.
    sync_until_presence(&s, &bob, &since, &alice, |c| c["presence"] == "unavailable").await;
}

#[tokio::test]
async fn status_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (st, e) = s
        .put(
            &status_path(&alice),
            Some(&bob.token),
            json!({"presence": "online"}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, e) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"presence": "sleeping"}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, e) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"presence": 7}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, e) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"status_msg": "no state"}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let long = "x".repeat(5000);
    let (st, e) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"presence": "online", "status_msg": long}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    // No shared room: a stranger looks exactly like a user that does not exist.
    let (st1, e1) = s.get(&status_path(&bob), Some(&alice.token)).await;
    let (st2, e2) = s
        .get(
            "/_matrix/client/v3/presence/%40nobody%3Alocalhost/status",
            Some(&alice.token),
        )
        .await;
    assert_eq!(st1, 403);
    assert_eq!((st1, &e1), (st2, &e2));
    let (st, e) = s
        .get(
            "/_matrix/client/v3/presence/not-a-user/status",
            Some(&alice.token),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, _) = s.get(&status_path(&alice), None).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn override_beats_every_client_and_disabled_reads_as_such_locally() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    shared_room(&s, &alice, &bob).await;
    let (st, o) = s.get(&override_path(&alice), Some(&alice.token)).await;
    assert_eq!((st, &o), (200, &json!({"presence_override": ""})));
    let (st, _) = s
        .put(
            &override_path(&alice),
            Some(&alice.token),
            json!({"presence_override": "org.matrix.msc3026.busy"}),
        )
        .await;
    assert_eq!(st, 200);
    // A client saying online changes nothing visible.
    let (st, _) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"presence": "online"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    assert_eq!(st, 200);
    let (_, p) = s.get(&status_path(&alice), Some(&bob.token)).await;
    assert_eq!(p["presence"], "org.matrix.msc3026.busy");
    // The unstable prefix reads the same value.
    let (_, o) = s
        .get(
            &format!(
                "/_matrix/client/unstable/support.feline.msc4043.v1/presence/{}/override",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(o["presence_override"], "org.matrix.msc3026.busy");
    // Disabled: no message, no activity.
    let (st, _) = s
        .put(
            &override_path(&alice),
            Some(&alice.token),
            json!({"presence_override": "support.feline.msc4042.v1.disabled"}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, p) = s.get(&status_path(&alice), Some(&bob.token)).await;
    assert_eq!(p, json!({"presence": "support.feline.msc4042.v1.disabled"}));
    // Clearing returns control to the devices.
    let (st, _) = s
        .put(
            &override_path(&alice),
            Some(&alice.token),
            json!({"presence_override": ""}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, p) = s.get(&status_path(&alice), Some(&bob.token)).await;
    assert_eq!(p["presence"], "online");
    // Errors.
    let (st, e) = s
        .put(
            &override_path(&alice),
            Some(&bob.token),
            json!({"presence_override": "online"}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, e) = s.get(&override_path(&alice), Some(&bob.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, e) = s
        .put(
            &override_path(&alice),
            Some(&alice.token),
            json!({"presence_override": "napping"}),
        )
        .await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test]
async fn newly_joined_members_see_each_others_presence_incrementally() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (st, _) = s
        .put(
            &status_path(&bob),
            Some(&bob.token),
            json!({"presence": "online", "status_msg": "here"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &status_path(&alice),
            Some(&alice.token),
            json!({"presence": "online"}),
        )
        .await;
    assert_eq!(st, 200);
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let alice_since = next_batch(&s, &alice).await;
    let bob_since = next_batch(&s, &bob).await;
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    // The existing member sees the joiner's (unchanged, earlier) presence...
    sync_until_presence(&s, &alice, &alice_since, &bob, |c| {
        c["status_msg"] == "here"
    })
    .await;
    // ...and the joiner sees the existing member's.
    sync_until_presence(&s, &bob, &bob_since, &alice, |c| c["presence"] == "online").await;
}

#[tokio::test]
async fn initial_sync_includes_own_and_room_members_presence() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    shared_room(&s, &alice, &bob).await;
    let (st, _) = s
        .put(
            &status_path(&bob),
            Some(&bob.token),
            json!({"presence": "unavailable"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, r) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    assert_eq!(st, 200);
    let events = r["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["sender"] == alice.user_id.as_str() && e["content"]["presence"] == "online"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["sender"] == bob.user_id.as_str()
                && e["content"]["presence"] == "unavailable"),
        "{events:?}"
    );
}
