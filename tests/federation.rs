//! Two real pulse binaries on loopback with self-signed TLS: key publication, key fetching
//! between servers and X-Matrix authentication of federation requests.
//!
//! The test signs as server A with A's stored key (read from A's data dir while A is stopped,
//! then A is restarted with the same key), so B must fetch A's key from the running A over TLS.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use federation_client::{FederationClient, FederationConfig};

const BIN: &str = env!("CARGO_BIN_EXE_pulse");

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn name(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn spawn(dir: &tempfile::TempDir, port: u16) -> Child {
    let config = format!(
        "server_name = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[listeners.tls]\n[federation]\nverify_tls = false\nip_range_allowlist = [\"127.0.0.0/8\"]\n[registration]\nenabled = true\n[accounts]\nargon2_memory_kib = 8\nargon2_iterations = 1\n[rate_limits]\nenabled = false\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("pulse.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pulse")
}

async fn wait_up(port: u16) {
    let http = insecure();
    for _ in 0..200 {
        if http
            .get(format!(
                "https://127.0.0.1:{port}/_matrix/federation/v1/version"
            ))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pulse on {port} did not start");
}

fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = spawn(&dir, port);
    wait_up(port).await;
    Server { child, port, dir }
}

fn test_config() -> FederationConfig {
    FederationConfig {
        verify_tls: false,
        ip_range_allowlist: vec!["127.0.0.0/8".parse().unwrap()],
        ..FederationConfig::default()
    }
}

/// Stops `a`, reads its signing key, restarts it with the same data dir.
async fn keys_of(a: &mut Server) -> server_keys::ServerKeys {
    let _ = a.child.kill();
    let _ = a.child.wait();
    let keys = {
        let db = storage::Db::open(&a.dir.path().join("data"), false).unwrap();
        server_keys::ServerKeys::load_or_generate(&db, name(a.port).try_into().unwrap()).unwrap()
    };
    a.child = spawn(&a.dir, a.port);
    wait_up(a.port).await;
    keys
}

#[tokio::test]
async fn servers_fetch_keys_and_authenticate_each_other() {
    let mut a = start().await;
    let b = start().await;
    let a_keys = keys_of(&mut a).await;
    let as_a = FederationClient::new(test_config(), a_keys.clone()).unwrap();

    // A's published key document is the key A signs with.
    let doc = as_a
        .get_unsigned(&name(a.port), "/_matrix/key/v2/server")
        .await
        .unwrap();
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["server_name"], name(a.port));
    assert_eq!(
        doc.body["verify_keys"][a_keys.key_id()]["key"],
        a_keys.public_key_base64()
    );

    // A signed request from A to B: B fetches A's key from A and accepts the signature
    // (an authenticated endpoint answers; unknown paths are 404 without authentication).
    let resp = as_a
        .request(
            http::Method::GET,
            &name(b.port),
            "/_matrix/federation/v1/publicRooms?limit=1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.body["chunk"].is_array(), "{}", resp.body);

    // Wrong destination: signed for A, sent to B.
    let header = as_a
        .authorization(
            &http::Method::GET,
            &name(a.port).try_into().unwrap(),
            "/_matrix/federation/v1/publicRooms",
            b"",
        )
        .unwrap();
    let http = insecure();
    let r = http
        .get(format!(
            "https://127.0.0.1:{}/_matrix/federation/v1/publicRooms",
            b.port
        ))
        .header("authorization", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    assert!(
        body["error"].as_str().unwrap().contains("destination"),
        "{body}"
    );

    // Bad signature: signed for one URI, sent with another.
    let header = as_a
        .authorization(
            &http::Method::GET,
            &name(b.port).try_into().unwrap(),
            "/_matrix/federation/v1/publicRooms?limit=2",
            b"",
        )
        .unwrap();
    let r = http
        .get(format!(
            "https://127.0.0.1:{}/_matrix/federation/v1/publicRooms",
            b.port
        ))
        .header("authorization", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // An unknown key ID of A (A does not publish it): refused with a clear error.
    let stranger =
        server_keys::ServerKeys::generate_ephemeral(name(a.port).try_into().unwrap()).unwrap();
    let as_stranger = FederationClient::new(test_config(), stranger).unwrap();
    let resp = as_stranger
        .request(
            http::Method::GET,
            &name(b.port),
            "/_matrix/federation/v1/publicRooms",
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert!(
        resp.body["error"].as_str().unwrap().contains("key"),
        "{}",
        resp.body
    );
}

// ---- Inbound /send: a signed PDU stream from A into a room on B ----

/// A client call on `port` over TLS (the listener serves the client API too).
async fn client(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let http = insecure();
    let mut rb = http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("https://127.0.0.1:{port}{path}"),
    );
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn enc(s: &str) -> String {
    federation_client::percent_encode_segment(s)
}

/// A PDU from `sender` on top of `prev` (a PDU as `/event` serves it), signed by `keys`.
#[allow(clippy::too_many_arguments)]
fn signed_pdu(
    keys: &server_keys::ServerKeys,
    room: &str,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: serde_json::Value,
    prev: &(String, serde_json::Value),
    auth: &[String],
    ts: u64,
) -> (String, serde_json::Value) {
    let mut v = serde_json::json!({
        "room_id": room, "sender": sender, "type": kind, "content": content,
        "origin_server_ts": ts, "depth": prev.1["depth"].as_u64().unwrap() + 1,
        "prev_events": [prev.0], "auth_events": auth,
    });
    if let Some(k) = state_key {
        v["state_key"] = serde_json::json!(k);
    }
    let mut obj: ruma::CanonicalJsonObject = serde_json::from_value(v).unwrap();
    let rules = ruma::RoomVersionId::V10.rules().unwrap();
    ruma::signatures::hash_and_sign_event(
        keys.server_name().as_str(),
        keys.pair(),
        &mut obj,
        &rules.redaction,
    )
    .unwrap();
    let id = format!(
        "${}",
        ruma::signatures::reference_hash(&obj, &rules).unwrap()
    );
    (id, serde_json::to_value(obj).unwrap())
}

fn now() -> u64 {
    federation_client::keys::now_ms()
}

#[tokio::test]
async fn inbound_pdus_and_presence_with_negative_cases() {
    let mut a = start().await;
    let mut b = start().await;
    let a_keys = keys_of(&mut a).await;
    let as_a = FederationClient::new(test_config(), a_keys.clone()).unwrap();
    let (a_name, b_name) = (name(a.port), name(b.port));

    // alice@B makes a public, world-readable room (so A may read its state before joining).
    let (s, reg) = client(
        b.port,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(serde_json::json!({"username": "alice", "password": "password", "auth": {"type": "m.login.dummy"}})),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let token = reg["access_token"].as_str().unwrap().to_owned();
    let (s, r) = client(
        b.port,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&token),
        // v10: this test builds the remote PDUs by hand in the v10 format.
        Some(serde_json::json!({"preset": "public_chat", "room_version": "10", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}
        ]})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let room = r["room_id"].as_str().unwrap().to_owned();
    // An event sent while world-readable (the visibility change itself is judged by the
    // visibility before it).
    let (s, _) = client(
        b.port,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/w1",
            enc(&room)
        ),
        Some(&token),
        Some(serde_json::json!({"msgtype": "m.text", "body": "welcome"})),
    )
    .await;
    assert_eq!(s, 200);

    let fed_get = |path: String| {
        let as_a = as_a.clone();
        let b_name = b_name.clone();
        async move {
            as_a.request(http::Method::GET, &b_name, &path, None)
                .await
                .unwrap()
        }
    };
    let latest = || async {
        let (s, m) = client(
            b.port,
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                enc(&room)
            ),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{m}");
        let id = m["chunk"][0]["event_id"].as_str().unwrap().to_owned();
        let ev = fed_get(format!("/_matrix/federation/v1/event/{}", enc(&id))).await;
        assert_eq!(ev.status, 200, "{}", ev.body);
        (id, ev.body["pdus"][0].clone())
    };
    let ids = fed_get(format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(&room),
        enc(&latest().await.0)
    ))
    .await;
    assert_eq!(ids.status, 200, "{}", ids.body);
    // The auth events a join needs: create, power levels, join rules.
    let mut auth = Vec::new();
    let mut msg_auth = Vec::new();
    for id in ids.body["pdu_ids"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        let ev = fed_get(format!("/_matrix/federation/v1/event/{}", enc(id))).await;
        let t = ev.body["pdus"][0]["type"].as_str().unwrap_or("").to_owned();
        if ["m.room.create", "m.room.power_levels", "m.room.join_rules"].contains(&t.as_str()) {
            auth.push(id.to_owned());
        }
        if ["m.room.create", "m.room.power_levels"].contains(&t.as_str()) {
            msg_auth.push(id.to_owned());
        }
    }
    assert_eq!(auth.len(), 3);

    let bob = format!("@bob:{a_name}");
    let send = |txn: &str, pdus: Vec<serde_json::Value>, edus: Vec<serde_json::Value>| {
        let as_a = as_a.clone();
        let b_name = b_name.clone();
        let body = serde_json::json!({"origin": a_name, "origin_server_ts": now(), "pdus": pdus, "edus": edus});
        let path = format!("/_matrix/federation/v1/send/{txn}");
        async move {
            as_a.request(http::Method::PUT, &b_name, &path, Some(&body))
                .await
                .unwrap()
        }
    };

    // bob@A joins with a PDU signed by A; B fetches A's key and accepts it.
    let join = signed_pdu(
        &a_keys,
        &room,
        &bob,
        "m.room.member",
        Some(&bob),
        serde_json::json!({"membership": "join"}),
        &latest().await,
        &auth,
        now(),
    );
    let r = send("t1", vec![join.1.clone()], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["pdus"][&join.0], serde_json::json!({}), "{}", r.body);

    // A message, then presence.
    msg_auth.push(join.0.clone());
    let msg = |body: &str, ts: u64, prev: &(String, serde_json::Value)| {
        signed_pdu(
            &a_keys,
            &room,
            &bob,
            "m.room.message",
            None,
            serde_json::json!({"msgtype": "m.text", "body": body}),
            prev,
            &msg_auth,
            ts,
        )
    };
    let hello = msg("hello from A", now(), &latest().await);
    let presence = serde_json::json!({"edu_type": "m.presence", "content": {"push": [
        {"user_id": bob, "presence": "online", "status_msg": "over federation", "last_active_ago": 5, "currently_active": true}
    ]}});
    let r = send("t2", vec![hello.1.clone()], vec![presence]).await;
    assert_eq!(
        r.body["pdus"][&hello.0],
        serde_json::json!({}),
        "{}",
        r.body
    );
    let (s, p) = client(
        b.port,
        "GET",
        &format!("/_matrix/client/v3/presence/{}/status", enc(&bob)),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["presence"].as_str(), p["status_msg"].as_str()),
        (Some("online"), Some("over federation")),
        "{p}"
    );

    // Negative cases, one transaction: each a per-PDU error, nothing stored.
    let prev = latest().await;
    let mut bad_sig = msg("bad signature", now(), &prev);
    // Another event's signature: the event ID (signatures are not hashed) stays the same.
    bad_sig.1["signatures"] = hello.1["signatures"].clone();
    // A message of another server's user, signed by A (only a user's own join, leave or
    // knock may be relayed, and then with its server's signature).
    let foreign = signed_pdu(
        &a_keys,
        &room,
        "@mallory:127.0.0.1:1",
        "m.room.message",
        None,
        serde_json::json!({"msgtype": "m.text", "body": "forged"}),
        &prev,
        &auth,
        now(),
    );
    // Sent eight days from now: A's key (valid 24 h, capped at 7 days) was not valid then.
    let future = msg("from the future", now() + 8 * 24 * 3600 * 1000, &prev);
    let mut bad_hash = msg("original", now(), &prev);
    bad_hash.1["content"]["body"] = serde_json::json!("tampered");
    let r = send(
        "t3",
        vec![
            bad_sig.1.clone(),
            foreign.1.clone(),
            future.1.clone(),
            bad_hash.1.clone(),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let err = |id: &str| {
        r.body["pdus"][id]["error"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(err(&bad_sig.0).contains("signature"), "{}", r.body);
    assert!(err(&foreign.0).contains("does not belong"), "{}", r.body);
    assert!(err(&future.0).contains("valid at"), "{}", r.body);
    // A content hash mismatch is not an error: the spec stores the event redacted.
    assert_eq!(
        r.body["pdus"][&bad_hash.0],
        serde_json::json!({}),
        "{}",
        r.body
    );

    // Oversized: 51 PDUs is a 400 with a clear error, nothing stored.
    let extra = msg("one of many", now(), &prev);
    let r = send("t4", vec![extra.1.clone(); 51], vec![]).await;
    assert_eq!(
        (r.status, r.body["errcode"].as_str()),
        (400, Some("M_TOO_LARGE")),
        "{}",
        r.body
    );

    // What alice sees: hello (and the redacted tampered event without its body), nothing else.
    let (s, m) = client(
        b.port,
        "GET",
        &format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            enc(&room)
        ),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let bodies: Vec<&str> = m["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["hello from A", "welcome"], "{m}");
    let (s, members) = client(
        b.port,
        "GET",
        &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        members["joined"].get("@mallory:127.0.0.1:1").is_none(),
        "{members}"
    );
    assert!(members["joined"].get(&bob).is_some(), "{members}");

    // B serves A's key as a notary, countersigned by B.
    let q = fed_get(format!("/_matrix/key/v2/query/{}", enc(&a_name))).await;
    assert_eq!(q.status, 200, "{}", q.body);
    assert_eq!(q.body["server_keys"][0]["server_name"], a_name);
    assert!(
        q.body["server_keys"][0]["signatures"][&b_name].is_object(),
        "{}",
        q.body
    );

    // A goes away and B restarts: B still knows A's key (stored), so A's next signed
    // transaction is authenticated and its PDU accepted.
    let _ = a.child.kill();
    let _ = a.child.wait();
    let prev = latest().await;
    let after_restart = msg("after B restarted", now(), &prev);
    let _ = b.child.kill();
    let _ = b.child.wait();
    b.child = spawn(&b.dir, b.port);
    wait_up(b.port).await;
    let r = send("t5", vec![after_restart.1.clone()], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["pdus"][&after_restart.0],
        serde_json::json!({}),
        "{}",
        r.body
    );
}
