//! Presence between two real Pulse servers on loopback (self-signed TLS), both ways.
//!
//! They share a room without the join protocol: while both are stopped the test appends
//! B's user's join (signed with B's stored key) to A's room, and imports the room into B the
//! way a `send_join` answer is imported (`RoomService::import_join`). Everything after that
//! is the real thing: A's sender, B's inbound `/send` (and back), key fetching, X-Matrix.
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomId};
use serde_json::{Value, json};

fn canonical(v: Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(v).expect("canonical JSON") {
        CanonicalJsonValue::Object(o) => o,
        _ => panic!("not an object"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A Pulse named `127.0.0.1:<port>` serving TLS (so the other one can reach it).
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
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    s.start_again().await;
    s
}

fn server_keys(dir: &std::path::Path, name: &str) -> (Arc<storage::Db>, server_keys::ServerKeys) {
    let db = Arc::new(storage::Db::open(dir, false).unwrap());
    let keys =
        server_keys::ServerKeys::load_or_generate(&db, OwnedServerName::try_from(name).unwrap())
            .unwrap();
    (db, keys)
}

/// Puts `remote_users` of `b` into `room` (on `a`), on both servers. Both must be stopped.
fn share_room(a: &TestServer, b: &TestServer, room: &str, remote_users: &[&str]) {
    let (db_a, keys_a) = server_keys(&a.dir.path().join("data"), &a.server_name);
    let (db_b, keys_b) = server_keys(&b.dir.path().join("data"), &b.server_name);
    let rooms_a = rooms::RoomService::new(db_a, keys_a.server_name().to_owned()).unwrap();
    let rooms_b = rooms::RoomService::new(db_b, keys_b.server_name().to_owned()).unwrap();
    let lookup = rooms::StaticKeys(BTreeMap::from([&keys_a, &keys_b].map(|k| {
        (
            k.server_name().to_owned(),
            BTreeMap::from([(k.key_id().to_owned(), k.pair().public_key().to_vec())]),
        )
    })));
    let room = RoomId::parse(room).unwrap();
    let version = rooms_a.room_version(&room).unwrap().unwrap();
    for localpart in remote_users {
        let user = format!("@{localpart}:{}", b.server_name);
        let state = rooms_a.current_state(&room).unwrap();
        let state_pdus: Vec<CanonicalJsonObject> = state
            .values()
            .map(|id| rooms_a.event(id).unwrap().unwrap().pdu)
            .collect();
        let auth: Vec<String> = ["m.room.create", "m.room.power_levels", "m.room.join_rules"]
            .iter()
            .filter_map(|t| state.get(&((*t).to_owned(), String::new())))
            .map(|id| id.to_string())
            .collect();
        let (last, _) = rooms_a.timeline(&room, None, u64::MAX, 1).unwrap();
        let prev = &last[0];
        let mut join = canonical(json!({
            "auth_events": auth,
            "prev_events": [prev.event_id],
            "content": {"membership": "join"},
            "depth": prev.depth() + 1,
            "origin_server_ts": now_ms(),
            "room_id": room,
            "sender": user,
            "state_key": user,
            "type": "m.room.member",
        }));
        ruma::signatures::hash_and_sign_event(
            keys_b.server_name().as_str(),
            keys_b.pair(),
            &mut join,
            &version.rules().unwrap().redaction,
        )
        .unwrap();
        let got = rooms_a
            .receive_pdu(keys_b.server_name(), join.clone(), &lookup)
            .unwrap();
        assert!(matches!(got, rooms::Received::Accepted { .. }), "{got:?}");
        rooms_b
            .import_join(&room, &version, join, state_pdus, Vec::new(), &lookup)
            .unwrap();
    }
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

/// A (alice, room owner) and B (the given users) sharing a public room, both running.
async fn two_servers(
    a_extra: &str,
    b_users: &[&str],
) -> (TestServer, TestServer, User, Vec<User>, String) {
    let mut a = federating_pulse(a_extra).await;
    let mut b = federating_pulse("").await;
    let alice = a.register("alice").await;
    let mut on_b = Vec::new();
    for u in b_users {
        on_b.push(b.register(u).await);
    }
    // v10: the join below is built by hand in the v10 format.
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    a.kill9();
    b.kill9();
    share_room(&a, &b, &room, b_users);
    a.start_again().await;
    b.start_again().await;
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
    set_presence(&b, bob, "unavailable", "from B").await;
    until_async("alice sees bob", || {
        sees(&a, &alice, &bob.user_id, "from B")
    })
    .await;
    let (_, seen) = presence_seen(&a, &alice, &bob.user_id).await;
    assert_eq!(seen["presence"], "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_update_reaches_only_the_allowed_users_of_a_trusted_pulse_peer() {
    // A trusts B to honour allowed_recipients (B is a Pulse).
    let mut a = federating_pulse("").await;
    let b = federating_pulse("").await;
    a.kill9();
    let config = std::fs::read_to_string(a.config_path()).unwrap();
    std::fs::write(
        a.config_path(),
        format!(
            "{config}allowed_recipients_peers = [\"{}\"]\n",
            b.server_name
        ),
    )
    .unwrap();
    a.start_again().await;
    let mut b = b;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    // v10: the join below is built by hand in the v10 format.
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    a.kill9();
    b.kill9();
    share_room(&a, &b, &room, &["bob", "carol"]);
    a.start_again().await;
    b.start_again().await;

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
        sees(&b, &bob, &alice.user_id, "only bob")
    })
    .await;
    // Carol shares the room but is not allowed: never sees it, not even through GET.
    let (status, seen) = presence_seen(&b, &carol, &alice.user_id).await;
    assert!(
        status != 200 || seen["status_msg"] != "only bob",
        "carol must not see alice: {status} {seen}"
    );
    assert_ne!(seen["presence"], "online", "{seen}");

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
        let (status, seen) = presence_seen(&b, &bob, &alice.user_id).await;
        status != 200 || seen["presence"] == "offline"
    })
    .await;
}
