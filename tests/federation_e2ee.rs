//! Two real pulse binaries (the harness of tests/federation_rooms.rs): end-to-end
//! encryption across servers — key queries and claims through `/user/keys/*` (fallback
//! when the one-time key is gone, `failures` for an unreachable server), to-device
//! messages as `m.direct_to_device` EDUs, and a device-list change reaching a room-mate on
//! the other server as `m.device_list_update`.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_pulse");

struct Server {
    child: Option<Child>,
    fed_port: u16,
    client_port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port never handed out before in this process: the tests run in parallel and a
/// port is only bound when its server starts, so two servers could otherwise get one port.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

struct User {
    id: String,
    token: String,
    device: String,
}

impl Server {
    async fn start() -> Server {
        let mut s = Server {
            child: None,
            fed_port: free_port(),
            client_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
        };
        s.spawn().await;
        s
    }

    fn name(&self) -> String {
        format!("127.0.0.1:{}", self.fed_port)
    }

    async fn spawn(&mut self) {
        let config = format!(
            r#"server_name = "127.0.0.1:{fed}"
data_dir = "{data}"
[[listeners]]
bind = "127.0.0.1:{client}"
[[listeners]]
bind = "127.0.0.1:{fed}"
[listeners.tls]
[registration]
enabled = true
[accounts]
argon2_memory_kib = 8
argon2_iterations = 1
[rate_limits]
enabled = false
[log]
level = "warn"
[federation]
verify_tls = false
ip_range_allowlist = ["127.0.0.0/8"]
"#,
            fed = self.fed_port,
            client = self.client_port,
            data = self.dir.path().join("data").display()
        );
        let path = self.dir.path().join("pulse.toml");
        std::fs::write(&path, config).unwrap();
        self.child = Some(
            Command::new(BIN)
                .args(["serve", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start pulse"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let insecure = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let fed_version = format!(
            "https://127.0.0.1:{}/_matrix/federation/v1/version",
            self.fed_port
        );
        loop {
            let client_up = self
                .http
                .get(self.url("/_matrix/client/versions"))
                .send()
                .await
                .is_ok();
            if client_up && insecure.get(&fed_version).send().await.is_ok() {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("pulse exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "pulse did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.client_port)
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn register(&self, name: &str) -> User {
        let (status, body) = self
            .req(
                "POST",
                "/_matrix/client/v3/register",
                "",
                Some(json!({"username": name, "password": "password", "auth": {"type": "m.login.dummy"}})),
            )
            .await;
        assert_eq!(status, 200, "register: {body}");
        User {
            id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            device: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    async fn create_room(&self, user: &User, body: Value) -> String {
        let (status, resp) = self
            .req(
                "POST",
                "/_matrix/client/v3/createRoom",
                &user.token,
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "createRoom: {resp}");
        resp["room_id"].as_str().unwrap().to_owned()
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn join(server: &Server, user: &User, room: &str, via: &Server) -> (u16, Value) {
    server
        .req(
            "POST",
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room),
                enc(&via.name())
            ),
            &user.token,
            Some(json!({})),
        )
        .await
}

fn device_keys(u: &User) -> Value {
    json!({
        "user_id": u.id, "device_id": u.device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", u.device): "c", format!("ed25519:{}", u.device): "e" },
        "signatures": { u.id.clone(): { format!("ed25519:{}", u.device): "sig" } },
    })
}

async fn upload_keys(s: &Server, u: &User) {
    let (st, r) = s
        .req("POST", "/_matrix/client/v3/keys/upload", &u.token, Some(json!({
            "device_keys": device_keys(u),
            "one_time_keys": { "signed_curve25519:1": { "key": "otk1", "signatures": {} } },
            "fallback_keys": { "signed_curve25519:F": { "key": "fb", "fallback": true, "signatures": {} } },
        })))
        .await;
    assert_eq!(st, 200, "{r}");
}

async fn sync_since(s: &Server, u: &User, since: &str) -> Value {
    let (st, r) = s
        .req(
            "GET",
            &format!("/_matrix/client/v3/sync?since={since}&timeout=1000&set_presence=offline"),
            &u.token,
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    r
}

#[tokio::test]
async fn keys_claims_to_device_and_device_lists_across_two_servers() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    upload_keys(&a, &alice).await;
    upload_keys(&b, &bob).await;
    let room = a
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (st, r) = join(&b, &bob, &room, &a).await;
    assert_eq!(st, 200, "{r}");

    // Alice queries bob's keys: they come from bob's server.
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { bob.id.clone(): [] } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["device_keys"][&bob.id][&bob.device]["keys"],
        device_keys(&bob)["keys"],
        "{r}"
    );
    assert_eq!(r["failures"], json!({}), "{r}");

    // Claims: the one-time key, then the fallback key.
    let claim =
        json!({ "one_time_keys": { bob.id.clone(): { bob.device.clone(): "signed_curve25519" } } });
    let (_, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/claim",
            &alice.token,
            Some(claim.clone()),
        )
        .await;
    assert_eq!(
        r["one_time_keys"][&bob.id][&bob.device]["signed_curve25519:1"]["key"], "otk1",
        "{r}"
    );
    let (_, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/claim",
            &alice.token,
            Some(claim),
        )
        .await;
    assert_eq!(
        r["one_time_keys"][&bob.id][&bob.device]["signed_curve25519:F"]["key"], "fb",
        "{r}"
    );

    // An unreachable server is a failure, the reachable ones still answer.
    let (st, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { "@x:127.0.0.1:1": [], bob.id.clone(): [] } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert!(r["failures"]["127.0.0.1:1"].is_object(), "{r}");
    assert!(r["device_keys"][&bob.id][&bob.device].is_object(), "{r}");

    // To-device: alice → bob over an m.direct_to_device EDU.
    let (_, r) = b
        .req("GET", "/_matrix/client/v3/sync?timeout=0", &bob.token, None)
        .await;
    let mut bob_since = r["next_batch"].as_str().unwrap().to_owned();
    let (st, r) = a
        .req("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1", &alice.token,
            Some(json!({ "messages": { bob.id.clone(): { bob.device.clone(): { "hello": "bob" } } } })))
        .await;
    assert_eq!(st, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = sync_since(&b, &bob, &bob_since).await;
        let events = r["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(e) = events.first() {
            assert_eq!(e["sender"], alice.id);
            assert_eq!(e["content"], json!({ "hello": "bob" }));
            break;
        }
        bob_since = r["next_batch"].as_str().unwrap().to_owned();
        assert!(
            Instant::now() < deadline,
            "to-device message did not arrive"
        );
    }

    // Bob's keys change (a new device): alice's /sync lists him in device_lists.changed
    // (an m.device_list_update EDU), and a query finds both devices.
    let (_, r) = a
        .req(
            "GET",
            "/_matrix/client/v3/sync?timeout=0",
            &alice.token,
            None,
        )
        .await;
    let mut alice_since = r["next_batch"].as_str().unwrap().to_owned();
    let (st, login) = b
        .req("POST", "/_matrix/client/v3/login", "",
            Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "password" })))
        .await;
    assert_eq!(st, 200, "{login}");
    let bob2 = User {
        id: bob.id.clone(),
        token: login["access_token"].as_str().unwrap().to_owned(),
        device: login["device_id"].as_str().unwrap().to_owned(),
    };
    upload_keys(&b, &bob2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = sync_since(&a, &alice, &alice_since).await;
        if r["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &bob.id))
        {
            break;
        }
        alice_since = r["next_batch"].as_str().unwrap().to_owned();
        assert!(
            Instant::now() < deadline,
            "device list change did not arrive"
        );
    }
    let (_, r) = a
        .req(
            "POST",
            "/_matrix/client/v3/keys/query",
            &alice.token,
            Some(json!({ "device_keys": { bob.id.clone(): [] } })),
        )
        .await;
    assert_eq!(
        r["device_keys"][&bob.id].as_object().map(|o| o.len()),
        Some(2),
        "{r}"
    );
}
