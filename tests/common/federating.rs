//! Two (or more) real `pulse` binaries federating on loopback: server names
//! `127.0.0.1:PORT`, TLS listeners with self-signed certificates, `verify_tls = false`,
//! loopback allowed. Shared by the `federation_*` tests that drive whole servers.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{BIN, enc};

pub struct Server {
    child: Option<Child>,
    fed_port: u16,
    client_port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    /// TOML appended to the generated config (its own tables, e.g. `[metrics]`).
    extra: String,
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

pub struct User {
    pub id: String,
    pub token: String,
    pub device: String,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with("").await
    }

    /// Start with `extra` TOML (whole tables) appended to the config.
    pub async fn start_with(extra: &str) -> Server {
        let mut s = Server {
            child: None,
            fed_port: free_port(),
            client_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            extra: extra.to_owned(),
        };
        s.spawn().await;
        s
    }

    pub fn name(&self) -> String {
        format!("127.0.0.1:{}", self.fed_port)
    }

    pub async fn spawn(&mut self) {
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
{extra}
"#,
            extra = self.extra,
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

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.client_port)
    }

    pub async fn req(
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

    pub async fn register(&self, name: &str) -> User {
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

    pub async fn create_room(&self, user: &User, body: Value) -> String {
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

    /// `user`'s membership in `room` according to this server's `/members`.
    pub async fn membership_of(&self, viewer: &User, room: &str, user: &str) -> Option<String> {
        let (status, body) = self
            .req(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/members", enc(room)),
                &viewer.token,
                None,
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

    pub async fn send_text(&self, user: &User, room: &str, txn: &str, text: &str) -> String {
        let (status, body) = self
            .req(
                "PUT",
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(room)
                ),
                &user.token,
                Some(json!({"msgtype": "m.text", "body": text})),
            )
            .await;
        assert_eq!(status, 200, "send: {body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    pub async fn has_message(&self, user: &User, room: &str, text: &str) -> bool {
        let (status, body) = self
            .req(
                "GET",
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                    enc(room)
                ),
                &user.token,
                None,
            )
            .await;
        status == 200
            && body["chunk"]
                .as_array()
                .is_some_and(|c| c.iter().any(|e| e["content"]["body"] == text))
    }

    pub async fn joined_rooms(&self, user: &User) -> Vec<String> {
        let (_, body) = self
            .req("GET", "/_matrix/client/v3/joined_rooms", &user.token, None)
            .await;
        body["joined_rooms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rooms `/sync` lists `user` as invited to.
    pub async fn invited_rooms(&self, user: &User) -> Vec<String> {
        let (_, body) = self
            .req(
                "GET",
                "/_matrix/client/v3/sync?timeout=0",
                &user.token,
                None,
            )
            .await;
        body["rooms"]["invite"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Polls `check` for up to 30 s (federation delivery is asynchronous).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn join(server: &Server, user: &User, room: &str, via: &Server) -> (u16, Value) {
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
