//! The outbound federation sender, end to end: the real `pulse` binary sends to a fake remote
//! homeserver run by this test (axum over self-signed TLS) that records every
//! `PUT /_matrix/federation/v1/send/{txnId}` and answers 200 or 500 on demand.
//!
//! The fake's users get into a Pulse room the way a remote join lands: while Pulse is stopped
//! the test opens its database and hands the room engine a join PDU signed with the fake
//! server's key (`RoomService::receive_pdu`), then starts Pulse again.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use common::{TestServer, User, enc};
use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomId};
use serde_json::{Value, json};

const KEY_VERSION: &str = "fake";

#[derive(Default)]
struct Recorded {
    /// Transactions answered 200: (txn id, body).
    txns: Mutex<Vec<(String, Value)>>,
    failing: AtomicBool,
    failures: AtomicUsize,
    unauthenticated: AtomicUsize,
}

/// The fake remote homeserver `127.0.0.1:<port>`.
struct FakeRemote {
    name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    rec: Arc<Recorded>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct FakeState {
    name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    rec: Arc<Recorded>,
}

async fn send_txn(
    State(s): State<FakeState>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth.starts_with("X-Matrix ") || !auth.contains(&format!("destination=\"{}\"", s.name)) {
        s.rec.unauthenticated.fetch_add(1, Ordering::SeqCst);
    }
    if s.rec.failing.load(Ordering::SeqCst) {
        s.rec.failures.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"errcode": "M_UNKNOWN"})),
        );
    }
    s.rec.txns.lock().unwrap().push((txn, body));
    (StatusCode::OK, Json(json!({"pdus": {}})))
}

/// `GET /_matrix/key/v2/server`, signed, in case Pulse fetches our key.
async fn key_doc(State(s): State<FakeState>) -> Json<Value> {
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(s.key.public_key().to_vec())
            .encode();
    let doc = json!({
        "server_name": s.name,
        "valid_until_ts": now_ms() + 3_600_000,
        "verify_keys": { format!("ed25519:{KEY_VERSION}"): { "key": public } },
        "old_verify_keys": {},
    });
    let mut obj = canonical(doc);
    ruma::signatures::sign_json(s.name.as_str(), &*s.key, &mut obj).expect("sign key doc");
    Json(serde_json::to_value(obj).unwrap())
}

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

impl FakeRemote {
    async fn start() -> FakeRemote {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let name = OwnedServerName::try_from(format!("127.0.0.1:{port}")).unwrap();
        let key = Arc::new(
            Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), KEY_VERSION.into()).unwrap(),
        );
        let rec = Arc::new(Recorded::default());
        let state = FakeState {
            name: name.clone(),
            key: key.clone(),
            rec: rec.clone(),
        };
        let app = Router::new()
            .route("/_matrix/federation/v1/send/{txn}", put(send_txn))
            .route("/_matrix/key/v2/server", get(key_doc))
            .with_state(state);
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
        let server = tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        FakeRemote {
            name,
            key,
            rec,
            _server: server,
        }
    }

    fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    fn fail(&self, on: bool) {
        self.rec.failing.store(on, Ordering::SeqCst);
    }

    fn txns(&self) -> Vec<(String, Value)> {
        self.rec.txns.lock().unwrap().clone()
    }

    /// Bodies of `m.room.message` PDUs received, in arrival order.
    fn messages(&self) -> Vec<String> {
        self.txns()
            .iter()
            .flat_map(|(_, b)| b["pdus"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["type"] == "m.room.message")
            .map(|p| p["content"]["body"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Every presence `push` entry for `user`, in arrival order, with its transaction index.
    fn presence_of(&self, user: &str) -> Vec<(usize, Value)> {
        self.txns()
            .iter()
            .enumerate()
            .flat_map(|(i, (_, b))| {
                b["edus"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e["edu_type"] == "m.presence")
                    .flat_map(|e| e["content"]["push"].as_array().cloned().unwrap_or_default())
                    .filter(|p| p["user_id"] == user)
                    .map(move |p| (i, p))
            })
            .collect()
    }
}

/// Waits up to a minute for `cond` (the backoff after one failure is at most 7 s).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const FEDERATION: &str =
    "[federation]\nenabled = true\nverify_tls = false\nip_range_allowlist = [\"127.0.0.0/8\"]\n";

/// Pulse with alice in a public room that the fake's `remote_users` have joined.
async fn setup(fake: &FakeRemote, remote_users: &[&str]) -> (TestServer, User, String) {
    setup_with(fake, remote_users, "").await
}

/// [`setup`] with more `[federation]` settings, and the server admin `ops` (password "password").
async fn setup_with(
    fake: &FakeRemote,
    remote_users: &[&str],
    federation_extra: &str,
) -> (TestServer, User, String) {
    let mut pulse = TestServer::start_with(&format!("{FEDERATION}{federation_extra}")).await;
    let alice = pulse.register("alice").await;
    // v10: the fake remote builds its PDUs by hand in the v10 format.
    let room = pulse
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "10"}),
        )
        .await;
    pulse.kill9();
    {
        let db = Arc::new(storage::Db::open(&pulse.dir.path().join("data"), false).unwrap());
        let rooms = rooms::RoomService::new(db, "localhost".try_into().unwrap()).unwrap();
        for u in remote_users {
            remote_join(&rooms, &room, &fake.user(u), fake);
        }
    }
    let made = std::process::Command::new(common::BIN)
        .args(["register-user", "--config"])
        .arg(pulse.config_path())
        .args(["ops", "--password", "password", "--admin"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    pulse.start_again().await;
    (pulse, alice, room)
}

/// Appends `user`'s join, signed by the fake server, as federation would.
fn remote_join(rooms: &rooms::RoomService, room: &str, user: &str, fake: &FakeRemote) {
    let room = RoomId::parse(room).unwrap();
    let version = rooms.room_version(&room).unwrap().unwrap();
    let state = rooms.current_state(&room).unwrap();
    let auth: Vec<String> = ["m.room.create", "m.room.power_levels", "m.room.join_rules"]
        .iter()
        .filter_map(|t| state.get(&((*t).to_owned(), String::new())))
        .map(|id| id.to_string())
        .collect();
    let (last, _) = rooms.timeline(&room, None, u64::MAX, 1).unwrap();
    let prev = &last[0];
    let mut pdu = canonical(json!({
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
    let rules = version.rules().unwrap();
    ruma::signatures::hash_and_sign_event(
        fake.name.as_str(),
        &*fake.key,
        &mut pdu,
        &rules.redaction,
    )
    .unwrap();
    let keys = rooms::StaticKeys(BTreeMap::from([(
        fake.name.clone(),
        BTreeMap::from([(
            format!("ed25519:{KEY_VERSION}"),
            fake.key.public_key().to_vec(),
        )]),
    )]));
    let got = rooms.receive_pdu(&fake.name, pdu, &keys).unwrap();
    assert!(matches!(got, rooms::Received::Accepted { .. }), "{got:?}");
}

/// The admin endpoint's entry for `dest`.
async fn destination_status(pulse: &TestServer, dest: &str) -> Value {
    let (status, login) = pulse
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "ops"}, "password": "password"}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let (status, body) = pulse
        .get(
            "/_pulse/admin/v1/federation/destinations",
            login["access_token"].as_str(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == dest)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn say(pulse: &TestServer, user: &User, room: &str, body: &str) {
    let (status, resp) = pulse
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(body)
            ),
            Some(&user.token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "send {body}: {resp}");
}

async fn set_presence(pulse: &TestServer, user: &User, presence: &str, msg: &str) {
    let (status, resp) = pulse
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&user.user_id)),
            Some(&user.token),
            json!({"presence": presence, "status_msg": msg}),
        )
        .await;
    assert_eq!(status, 200, "presence: {resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdus_and_presence_reach_the_remote_server_signed_and_in_order() {
    let fake = FakeRemote::start().await;
    let (pulse, alice, room) = setup(&fake, &["bob"]).await;
    for i in 0..3 {
        say(&pulse, &alice, &room, &format!("m{i}")).await;
    }
    set_presence(&pulse, &alice, "online", "hello").await;
    until("messages", || fake.messages() == ["m0", "m1", "m2"]).await;
    // (Alice may have been announced at start-up already: activity made her online.)
    let hello = || {
        fake.presence_of(&alice.user_id)
            .into_iter()
            .map(|(_, p)| p)
            .find(|p| p["status_msg"] == "hello")
    };
    until("presence", || hello().is_some()).await;
    let p = hello().unwrap();
    assert_eq!(p["presence"], "online");
    assert!(
        p.get("allowed_recipients").is_none(),
        "no sharing config: unrestricted"
    );
    for (_, body) in fake.txns() {
        assert_eq!(body["origin"], "localhost");
    }
    assert_eq!(fake.rec.unauthenticated.load(Ordering::SeqCst), 0);
    // Only our own events go out: bob's join (the fake's own event) is never sent back.
    let pdus: Vec<Value> = fake
        .txns()
        .iter()
        .flat_map(|(_, b)| b["pdus"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(pdus.iter().all(|p| p["sender"] == alice.user_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_every_pdu_arrives_in_order_and_presence_once_with_the_latest_state() {
    let fake = FakeRemote::start().await;
    let (pulse, alice, room) = setup(&fake, &["bob"]).await;
    fake.fail(true);
    set_presence(&pulse, &alice, "online", "first").await;
    until("a failed attempt", || {
        fake.rec.failures.load(Ordering::SeqCst) >= 1
    })
    .await;
    for i in 0..10 {
        say(&pulse, &alice, &room, &format!("m{i}")).await;
    }
    set_presence(&pulse, &alice, "unavailable", "second").await;
    set_presence(&pulse, &alice, "online", "latest").await;
    assert!(fake.txns().is_empty(), "nothing got through the outage");
    let during = destination_status(&pulse, fake.name.as_str()).await;
    assert!(during["failures"].as_u64().unwrap() >= 1, "{during}");
    assert_eq!(during["pending_pdus"], 10, "{during}");
    assert!(during["retry_at_ms"].is_u64(), "backing off: {during}");
    assert!(during["last_success_ms"].is_null(), "{during}");
    fake.fail(false);
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    until("every message", || fake.messages().len() >= 10).await;
    assert_eq!(fake.messages(), expected, "in order, each once");
    until("presence", || !fake.presence_of(&alice.user_id).is_empty()).await;
    let presence = fake.presence_of(&alice.user_id);
    let first_txn = presence[0].0;
    let in_first: Vec<&Value> = presence
        .iter()
        .filter(|(i, _)| *i == first_txn)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(in_first.len(), 1, "once per user: {presence:?}");
    assert_eq!(in_first[0]["status_msg"], "latest");
    assert_eq!(in_first[0]["presence"], "online");
    assert!(
        presence
            .iter()
            .all(|(_, p)| p["status_msg"] != "first" && p["status_msg"] != "second"),
        "superseded states are never sent: {presence:?}"
    );
    let after = destination_status(&pulse, fake.name.as_str()).await;
    assert_eq!(after["pending_pdus"], 0, "{after}");
    assert_eq!(after["failures"], 0, "{after}");
    assert!(after["last_success_ms"].is_u64(), "{after}");
}

/// EDUs of one type received, in arrival order.
fn edus(fake: &FakeRemote, edu_type: &str) -> Vec<Value> {
    fake.txns()
        .iter()
        .flat_map(|(_, b)| b["edus"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["edu_type"] == edu_type)
        .map(|e| e["content"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_public_read_receipts_reach_the_remote_server_private_ones_do_not() {
    let fake = FakeRemote::start().await;
    let (pulse, alice, room) = setup(&fake, &["bob"]).await;
    let (status, _) = pulse
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/typing/{}",
                enc(&room),
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, 200);
    until("typing", || !edus(&fake, "m.typing").is_empty()).await;
    let t = &edus(&fake, "m.typing")[0];
    assert_eq!(t["room_id"], room.as_str());
    assert_eq!(t["user_id"], alice.user_id.as_str());
    assert_eq!(t["typing"], true);
    say(&pulse, &alice, &room, "read me").await;
    until("the message", || fake.messages() == ["read me"]).await;
    let (_, last) = pulse
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                enc(&room)
            ),
            Some(&alice.token),
        )
        .await;
    let event_id = last["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    for kind in ["m.read.private", "m.read"] {
        let (status, body) = pulse
            .post(
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/{kind}/{}",
                    enc(&room),
                    enc(&event_id)
                ),
                Some(&alice.token),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    until("receipt", || !edus(&fake, "m.receipt").is_empty()).await;
    let receipts = edus(&fake, "m.receipt");
    assert_eq!(receipts.len(), 1, "only the public one: {receipts:?}");
    let r = &receipts[0][room.as_str()];
    assert_eq!(
        r["m.read"][alice.user_id.as_str()]["event_ids"],
        json!([event_id])
    );
    assert!(r.get("m.read.private").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_sender_mid_queue_loses_nothing() {
    let fake = FakeRemote::start().await;
    let (mut pulse, alice, room) = setup(&fake, &["bob"]).await;
    fake.fail(true);
    for i in 0..20 {
        say(&pulse, &alice, &room, &format!("m{i}")).await;
    }
    until("a failed attempt", || {
        fake.rec.failures.load(Ordering::SeqCst) >= 1
    })
    .await;
    pulse.kill9();
    fake.fail(false);
    pulse.start_again().await;
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    until("every message", || fake.messages().len() >= 20).await;
    assert_eq!(fake.messages(), expected, "in order, each once");
    // And the restarted sender keeps sending new events.
    say(&pulse, &alice, &room, "after").await;
    until("the new message", || fake.messages().len() == 21).await;
    assert_eq!(fake.messages().last().map(String::as_str), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_update_is_not_sent_to_a_peer_that_would_show_it_to_users_not_allowed() {
    let fake = FakeRemote::start().await;
    let (pulse, alice, room) = setup(&fake, &["bob", "carol"]).await;
    let bob = fake.user("bob");
    let carol = fake.user("carol");
    let config_path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.presence_sharing_config",
        enc(&alice.user_id)
    );
    let (status, resp) = pulse
        .put(
            &config_path,
            Some(&alice.token),
            json!({"allowed_users": [bob], "denied_users": ["@*:*"]}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    set_presence(&pulse, &alice, "online", "secret").await;
    // A PDU queued after the presence: once it has arrived, so has anything queued before it.
    say(&pulse, &alice, &room, "barrier").await;
    until("the barrier", || fake.messages() == ["barrier"]).await;
    let secret = || -> Vec<Value> {
        fake.presence_of(&alice.user_id)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p["presence"] != "offline")
            .filter(|p| p["status_msg"] == "secret")
            .collect()
    };
    assert!(
        secret().is_empty(),
        "carol may not see alice, and the fake is not known to honour allowed_recipients: {:?}",
        fake.presence_of(&alice.user_id)
    );
    // Once everyone there may see alice, the update goes out (addressed to both).
    let (status, resp) = pulse
        .put(
            &config_path,
            Some(&alice.token),
            json!({"allowed_users": [bob, carol], "denied_users": ["@*:*"]}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    until("presence", || !secret().is_empty()).await;
    let p = &secret()[0];
    let mut allowed: Vec<&str> = p["allowed_recipients"]
        .as_array()
        .expect("restricted update names its recipients")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    allowed.sort();
    assert_eq!(allowed, [bob.as_str(), carol.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_trusted_to_honour_allowed_recipients_gets_the_restricted_update_naming_only_the_allowed()
 {
    let fake = FakeRemote::start().await;
    let peers = format!("allowed_recipients_peers = [\"{}\"]\n", fake.name);
    let (pulse, alice, _room) = setup_with(&fake, &["bob", "carol"], &peers).await;
    let bob = fake.user("bob");
    let (status, resp) = pulse
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.presence_sharing_config",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"allowed_users": [bob], "denied_users": ["@*:*"]}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    set_presence(&pulse, &alice, "online", "for bob").await;
    let for_bob = || -> Vec<Value> {
        fake.presence_of(&alice.user_id)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p["status_msg"] == "for bob")
            .collect()
    };
    until("presence", || !for_bob().is_empty()).await;
    for p in for_bob() {
        assert_eq!(p["allowed_recipients"], json!([bob]), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_but_never_queued_are_sent_after_a_restart() {
    let fake = FakeRemote::start().await;
    let (mut pulse, alice, room) = setup(&fake, &["bob"]).await;
    say(&pulse, &alice, &room, "before").await;
    until("the first message", || fake.messages() == ["before"]).await;
    // Acknowledged on our side too (a kill before the ack would rightly resend it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while destination_status(&pulse, fake.name.as_str()).await["pending_pdus"] != 0 {
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A crash between an event's commit and its queueing: commit events with no sender
    // running (the room engine alone, as Pulse would just before dying).
    pulse.kill9();
    {
        let db = Arc::new(storage::Db::open(&pulse.dir.path().join("data"), false).unwrap());
        let rooms = rooms::RoomService::new(db, "localhost".try_into().unwrap()).unwrap();
        let sender = ruma::UserId::parse(&alice.user_id).unwrap();
        let room = RoomId::parse(&room).unwrap();
        for body in ["lost 1", "lost 2"] {
            rooms
                .send_message_event(
                    &sender,
                    &room,
                    "m.room.message",
                    json!({"msgtype": "m.text", "body": body}),
                    None,
                )
                .unwrap();
        }
    }
    pulse.start_again().await;
    say(&pulse, &alice, &room, "after").await;
    until("every message", || fake.messages().len() >= 4).await;
    assert_eq!(fake.messages(), ["before", "lost 1", "lost 2", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_sends_one_final_offline_to_the_users_who_lost_sight() {
    let fake = FakeRemote::start().await;
    let peers = format!("allowed_recipients_peers = [\"{}\"]\n", fake.name);
    let (pulse, alice, room) = setup_with(&fake, &["bob", "carol"], &peers).await;
    let (bob, carol) = (fake.user("bob"), fake.user("carol"));
    let config_path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.presence_sharing_config",
        enc(&alice.user_id)
    );
    let share = |allowed: Vec<&str>| json!({"allowed_users": allowed, "denied_users": ["@*:*"]});
    let (status, _) = pulse
        .put(&config_path, Some(&alice.token), share(vec![&bob, &carol]))
        .await;
    assert_eq!(status, 200);
    set_presence(&pulse, &alice, "online", "hi both").await;
    until("presence", || {
        fake.presence_of(&alice.user_id)
            .iter()
            .any(|(_, p)| p["status_msg"] == "hi both")
    })
    .await;
    let seen = fake.presence_of(&alice.user_id).len();
    // Carol loses sight: her server gets one offline addressed to her alone.
    let (status, _) = pulse
        .put(&config_path, Some(&alice.token), share(vec![&bob]))
        .await;
    assert_eq!(status, 200);
    say(&pulse, &alice, &room, "barrier").await;
    until("the barrier", || fake.messages() == ["barrier"]).await;
    let after: Vec<Value> = fake.presence_of(&alice.user_id)[seen..]
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    let offline: Vec<&Value> = after
        .iter()
        .filter(|p| p["presence"] == "offline")
        .collect();
    assert_eq!(offline.len(), 1, "one final offline: {after:?}");
    assert_eq!(offline[0]["allowed_recipients"], json!([carol]));
    assert!(
        after
            .iter()
            .filter(|p| p["presence"] != "offline")
            .all(|p| p["allowed_recipients"] == json!([bob])),
        "bob's view is untouched or re-sent to him alone: {after:?}"
    );
}

/// The refresh schedule is in memory only (docs/federation.md, "Refresh"): a restart re-sends
/// every online user with a remote audience at once, so a remote server's 30-minute timeout
/// cannot run out across a restart; offline users are not re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_re_sends_the_presence_of_online_users_and_not_of_offline_ones() {
    let fake = FakeRemote::start().await;
    let (mut pulse, alice, room) = setup(&fake, &["bob"]).await;
    let dave = pulse.register("dave").await;
    let (status, resp) = pulse
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    set_presence(&pulse, &dave, "online", "dave").await;
    set_presence(&pulse, &dave, "offline", "gone").await;
    set_presence(&pulse, &alice, "online", "still here").await;
    until("alice's presence", || {
        fake.presence_of(&alice.user_id)
            .iter()
            .any(|(_, p)| p["status_msg"] == "still here")
    })
    .await;
    until("dave's offline", || {
        fake.presence_of(&dave.user_id)
            .iter()
            .any(|(_, p)| p["presence"] == "offline")
    })
    .await;
    let (alice_before, dave_before) = (
        fake.presence_of(&alice.user_id).len(),
        fake.presence_of(&dave.user_id).len(),
    );

    pulse.kill9();
    pulse.start_again().await;
    // Nobody changed anything, yet alice's presence goes out again.
    until("alice re-sent after the restart", || {
        fake.presence_of(&alice.user_id).len() > alice_before
    })
    .await;
    let (_, again) = fake.presence_of(&alice.user_id).pop().unwrap();
    assert_eq!(again["presence"], "online", "{again}");
    assert_eq!(again["status_msg"], "still here", "{again}");
    // The start-up re-send is queued before anything new: once a later message arrived,
    // a re-send of dave would have too.
    say(&pulse, &alice, &room, "barrier").await;
    until("the barrier", || {
        fake.messages().contains(&"barrier".to_owned())
    })
    .await;
    assert_eq!(
        fake.presence_of(&dave.user_id).len(),
        dave_before,
        "an offline user is not re-sent"
    );
}
