//! Presence, typing and receipts between two real Pulse servers on loopback (self-signed TLS),
//! both ways. The servers share rooms through the real join protocol: a user of B joins A's
//! public room with the client API (`/join/{room}?server_name=A`: make_join, send_join, the
//! state import), as `tests/federation_rooms.rs` does. Everything after that is the real thing
//! too: A's sender, B's inbound `/send` (and back), key fetching, X-Matrix.
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

/// A Pulse named `127.0.0.1:<port>` serving TLS on its port (so the other one can reach it),
/// with `extra` appended to its `[federation]` section.
async fn federating_pulse(extra: &str) -> TestServer {
    let mut s = TestServer::start().await;
    s.kill9();
    let data = s.dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let name = format!("127.0.0.1:{}", s.port);
    let config = common::test_config(s.port, &data, "")
        .replace(
            "server_name = \"localhost\"",
            &format!("server_name = \"{name}\""),
        )
        .replace(
            &format!("bind = \"127.0.0.1:{}\"\n", s.port),
            &format!(
                "bind = \"127.0.0.1:{}\"\n[listeners.tls]\nextra_names = [\"127.0.0.1\"]\n",
                s.port
            ),
        );
    let config = format!(
        "{config}\n[federation]\nenabled = true\nverify_tls = false\nip_range_allowlist = [\"127.0.0.0/8\"]\n{extra}"
    );
    std::fs::write(s.config_path(), config).unwrap();
    s.base = format!("https://{name}");
    s.server_name = name;
    s.http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    s.start_again().await;
    s
}

/// Appends `line` to the `[federation]` section (the last one) of `s`'s config and restarts.
async fn add_federation_setting(s: &mut TestServer, line: &str) {
    s.kill9();
    let config = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(s.config_path(), format!("{config}{line}\n")).unwrap();
    s.start_again().await;
}

async fn until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_presence(s: &TestServer, user: &User, presence: &str, msg: &str) {
    let (status, resp) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&user.user_id)),
            Some(&user.token),
            json!({"presence": presence, "status_msg": msg}),
        )
        .await;
    assert_eq!(status, 200, "presence: {resp}");
}

/// `viewer`'s `GET /presence/{user}/status` on `s` (status, body).
async fn presence_seen(s: &TestServer, viewer: &User, user: &str) -> (u16, Value) {
    s.get(
        &format!("/_matrix/client/v3/presence/{}/status", enc(user)),
        Some(&viewer.token),
    )
    .await
}

async fn sees(s: &TestServer, viewer: &User, user: &str, msg: &str) -> bool {
    let (status, body) = presence_seen(s, viewer, user).await;
    status == 200 && body["status_msg"] == msg
}

async fn sync(s: &TestServer, user: &User) -> Value {
    let (status, body) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&user.token))
        .await;
    assert_eq!(status, 200, "sync: {body}");
    body
}

/// The presence events of `user` in a `/sync` response.
fn presence_in_sync<'a>(r: &'a Value, user: &str) -> Vec<&'a Value> {
    r["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["sender"] == user)
        .collect()
}

fn ephemeral<'a>(r: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    r["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

/// Whether `user` is in the room's `m.typing` set in `viewer`'s fresh `/sync` on `s`.
async fn sees_typing(s: &TestServer, viewer: &User, room: &str, user: &str) -> bool {
    let r = sync(s, viewer).await;
    ephemeral(&r, room, "m.typing").is_some_and(|e| {
        e["content"]["user_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|u| u == user))
    })
}

/// `user`'s `m.read` receipt on `event` in `viewer`'s fresh `/sync` on `s`.
async fn sees_receipt(s: &TestServer, viewer: &User, room: &str, event: &str, user: &str) -> bool {
    let r = sync(s, viewer).await;
    ephemeral(&r, room, "m.receipt")
        .is_some_and(|e| e["content"][event]["m.read"].get(user).is_some())
}

async fn set_typing(s: &TestServer, user: &User, room: &str, typing: bool) {
    let (status, resp) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(room),
                enc(&user.user_id)
            ),
            Some(&user.token),
            json!({"typing": typing, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, 200, "typing: {resp}");
}

async fn send_text(s: &TestServer, user: &User, room: &str, text: &str) -> String {
    let (status, resp) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(text)
            ),
            Some(&user.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, 200, "send: {resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

async fn has_event(s: &TestServer, user: &User, room: &str, event: &str) -> bool {
    let (status, _) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room),
                enc(event)
            ),
            Some(&user.token),
        )
        .await;
    status == 200
}

async fn post_receipt(s: &TestServer, user: &User, room: &str, event: &str) {
    let (status, resp) = s
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(room),
                enc(event)
            ),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "receipt: {resp}");
}

/// `viewer`'s view on `s` of `user`'s membership in `room`.
async fn membership(s: &TestServer, viewer: &User, room: &str, user: &str) -> Option<String> {
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/members", enc(room)),
            Some(&viewer.token),
        )
        .await;
    if status != 200 {
        return None;
    }
    body["chunk"].as_array()?.iter().find_map(|e| {
        (e["state_key"] == user)
            .then(|| e["content"]["membership"].as_str().unwrap_or("").to_owned())
    })
}

/// `user` (on `b`) joins `room` (on `a`) over federation, and `a` has seen the join.
async fn join_remote(b: &TestServer, user: &User, room: &str, a: &TestServer, a_viewer: &User) {
    let (status, resp) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(&a.server_name)
            ),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "remote join: {resp}");
    until_async("the resident server sees the join", || async {
        membership(a, a_viewer, room, &user.user_id)
            .await
            .as_deref()
            == Some("join")
    })
    .await;
}

/// A (alice, room owner; `a_extra` in its `[federation]` section) and B (the given users)
/// sharing a public room of A that B's users joined over federation.
async fn two_servers(
    a_extra: &str,
    b_users: &[&str],
) -> (TestServer, TestServer, User, Vec<User>, String) {
    let mut a = federating_pulse("").await;
    let b = federating_pulse("").await;
    if !a_extra.is_empty() {
        add_federation_setting(&mut a, &a_extra.replace("{B}", &b.server_name)).await;
    }
    let alice = a.register("alice").await;
    let mut on_b = Vec::new();
    for u in b_users {
        on_b.push(b.register(u).await);
    }
    let room = a
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    for u in &on_b {
        join_remote(&b, u, &room, &a, &alice).await;
    }
    (a, b, alice, on_b, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_flows_both_ways_between_two_pulse_servers() {
    let (a, b, alice, on_b, _room) = two_servers("", &["bob"]).await;
    let bob = &on_b[0];
    set_presence(&a, &alice, "online", "from A").await;
    until_async("bob sees alice", || sees(&b, bob, &alice.user_id, "from A")).await;
    let (_, seen) = presence_seen(&b, bob, &alice.user_id).await;
    assert_eq!(seen["presence"], "online");
    let r = sync(&b, bob).await;
    assert!(
        presence_in_sync(&r, &alice.user_id)
            .iter()
            .any(|e| e["content"]["status_msg"] == "from A"),
        "bob's /sync carries alice's presence: {}",
        r["presence"]
    );
    set_presence(&b, bob, "unavailable", "from B").await;
    until_async("alice sees bob", || {
        sees(&a, &alice, &bob.user_id, "from B")
    })
    .await;
    let (_, seen) = presence_seen(&a, &alice, &bob.user_id).await;
    assert_eq!(seen["presence"], "unavailable");
    let r = sync(&a, &alice).await;
    assert!(
        presence_in_sync(&r, &bob.user_id)
            .iter()
            .any(|e| e["content"]["status_msg"] == "from B"),
        "alice's /sync carries bob's presence: {}",
        r["presence"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_read_receipts_flow_both_ways_between_two_pulse_servers() {
    let (a, b, alice, on_b, room) = two_servers("", &["bob"]).await;
    let bob = &on_b[0];

    // Typing, A → B and B → A.
    set_typing(&a, &alice, &room, true).await;
    until_async("bob sees alice typing", || {
        sees_typing(&b, bob, &room, &alice.user_id)
    })
    .await;
    set_typing(&b, bob, &room, true).await;
    until_async("alice sees bob typing", || {
        sees_typing(&a, &alice, &room, &bob.user_id)
    })
    .await;
    // Stopping travels too.
    set_typing(&a, &alice, &room, false).await;
    until_async("bob sees alice stop typing", || async {
        !sees_typing(&b, bob, &room, &alice.user_id).await
    })
    .await;

    // Receipts: each reads the other's message.
    let from_a = send_text(&a, &alice, &room, "hello from A").await;
    let from_b = send_text(&b, bob, &room, "hello from B").await;
    until_async("bob has alice's message", || {
        has_event(&b, bob, &room, &from_a)
    })
    .await;
    until_async("alice has bob's message", || {
        has_event(&a, &alice, &room, &from_b)
    })
    .await;
    post_receipt(&b, bob, &room, &from_a).await;
    until_async("alice sees bob's receipt", || {
        sees_receipt(&a, &alice, &room, &from_a, &bob.user_id)
    })
    .await;
    post_receipt(&a, &alice, &room, &from_b).await;
    until_async("bob sees alice's receipt", || {
        sees_receipt(&b, bob, &room, &from_b, &alice.user_id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_update_reaches_only_the_allowed_users_of_a_trusted_pulse_peer() {
    // A trusts B to honour allowed_recipients (B is a Pulse).
    let (a, b, alice, on_b, _room) =
        two_servers("allowed_recipients_peers = [\"{B}\"]", &["bob", "carol"]).await;
    let (bob, carol) = (&on_b[0], &on_b[1]);

    // Both see an unrestricted update first: the path works for carol too.
    set_presence(&a, &alice, "online", "everyone").await;
    until_async("bob sees alice", || {
        sees(&b, bob, &alice.user_id, "everyone")
    })
    .await;
    until_async("carol sees alice", || {
        sees(&b, carol, &alice.user_id, "everyone")
    })
    .await;

    let config_path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.presence_sharing_config",
        enc(&alice.user_id)
    );
    let (status, resp) = a
        .put(
            &config_path,
            Some(&alice.token),
            json!({"allowed_users": [bob.user_id], "denied_users": ["@*:*"]}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    set_presence(&a, &alice, "online", "only bob").await;
    until_async("bob sees alice", || {
        sees(&b, bob, &alice.user_id, "only bob")
    })
    .await;
    // Carol shares the room but is not allowed: she lost sight (a final offline reached her)
    // and never sees the restricted update, not through GET, not through /sync.
    until_async("carol sees alice offline", || async {
        let (status, seen) = presence_seen(&b, carol, &alice.user_id).await;
        status != 200 || seen["presence"] == "offline"
    })
    .await;
    let (status, seen) = presence_seen(&b, carol, &alice.user_id).await;
    assert!(
        status != 200 || seen["status_msg"] != "only bob",
        "carol must not see alice: {status} {seen}"
    );
    let r = sync(&b, carol).await;
    assert!(
        presence_in_sync(&r, &alice.user_id)
            .iter()
            .all(|e| e["content"]["status_msg"] != "only bob"
                && e["content"]["presence"] != "online"),
        "carol's /sync must not carry it: {}",
        r["presence"]
    );

    // Revocation: bob loses sight and gets one final offline.
    let (status, _) = a
        .put(
            &config_path,
            Some(&alice.token),
            json!({"allowed_users": [], "denied_users": ["@*:*"]}),
        )
        .await;
    assert_eq!(status, 200);
    until_async("bob sees alice offline", || async {
        let (status, seen) = presence_seen(&b, bob, &alice.user_id).await;
        status != 200 || seen["presence"] == "offline"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignoring_a_remote_user_stops_sending_to_their_server_when_it_is_not_trusted() {
    // B is not trusted to honour allowed_recipients (the default).
    let (a, b, alice, on_b, room) = two_servers("", &["bob", "carol"]).await;
    let (bob, carol) = (&on_b[0], &on_b[1]);
    let dave = a.register("dave").await;
    let (status, resp) = a
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    set_presence(&a, &alice, "online", "hello").await;
    until_async("carol sees alice", || {
        sees(&b, carol, &alice.user_id, "hello")
    })
    .await;
    until_async("bob sees alice", || sees(&b, bob, &alice.user_id, "hello")).await;

    // Alice ignores carol: B would show alice's updates to carol, so B gets a final offline
    // and then nothing.
    let (status, resp) = a
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"ignored_users": {carol.user_id.clone(): {}}}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    until_async("carol sees alice offline", || async {
        let (status, seen) = presence_seen(&b, carol, &alice.user_id).await;
        status != 200 || seen["presence"] == "offline"
    })
    .await;
    set_presence(&a, &alice, "online", "after the ignore").await;
    // Then dave (on A, unrestricted) changes presence. One queue per destination, presence
    // entries sent in queue order and applied in order: once bob sees dave's update, alice's
    // would have arrived if it had been sent.
    set_presence(&a, &dave, "online", "marker").await;
    until_async("bob sees dave", || sees(&b, bob, &dave.user_id, "marker")).await;
    for viewer in [bob, carol] {
        let (status, seen) = presence_seen(&b, viewer, &alice.user_id).await;
        assert!(
            status != 200 || seen["status_msg"] != "after the ignore",
            "{} must not get it: {seen}",
            viewer.user_id
        );
    }
}
