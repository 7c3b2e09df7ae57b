//! Shared harness for the integration tests: start the real `pulse` binary on a free
//! port with a temporary data directory, and talk to it over HTTP.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod federating;
pub mod signing;

pub const BIN: &str = env!("CARGO_BIN_EXE_pulse");

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub base: String,
    pub server_name: String,
    child: Option<Child>,
    pub http: reqwest::Client,
    /// `(filter, file)`: run with `--log-level filter`, the log (stdout) appended to `file`.
    log: Option<(String, PathBuf)>,
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

/// A config for tests: cheap password hashing, no rate limits (unless `extra` has its own
/// `[rate_limits]` table), the given extra TOML appended.
pub fn test_config(port: u16, data_dir: &Path, extra: &str) -> String {
    let rate_limits = if extra.contains("[rate_limits]") {
        ""
    } else {
        "[rate_limits]\nenabled = false\n"
    };
    format!(
        r#"server_name = "localhost"
data_dir = "{}"
[[listeners]]
bind = "127.0.0.1:{port}"
[registration]
enabled = true
shared_secret = "test-secret"
[accounts]
argon2_memory_kib = 8
argon2_iterations = 1
{rate_limits}[log]
level = "warn"
{extra}
"#,
        data_dir.display()
    )
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Start with extra TOML appended to the test config.
    pub async fn start_with(extra: &str) -> TestServer {
        Self::start_inner(extra, None).await
    }

    /// Start with extra TOML and the log filter `filter`, the server's log going to
    /// [`TestServer::log_path`] (appended to across restarts).
    pub async fn start_logging(extra: &str, filter: &str) -> TestServer {
        Self::start_inner(extra, Some(filter)).await
    }

    /// Where [`TestServer::start_logging`] writes the log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pulse.log")
    }

    async fn start_inner(extra: &str, log_filter: Option<&str>) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = test_config(port, &dir.path().join("data"), extra);
        std::fs::write(dir.path().join("pulse.toml"), config).expect("write config");
        let mut s = TestServer {
            dir,
            port,
            base: format!("http://127.0.0.1:{port}"),
            server_name: "localhost".into(),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            log: None,
        };
        s.log = log_filter.map(|f| (f.to_owned(), s.log_path()));
        s.spawn().await;
        s
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pulse.toml")
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(self.config_path());
        match &self.log {
            None => {
                cmd.stdout(Stdio::null());
            }
            Some((filter, file)) => {
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .expect("open the log file");
                cmd.arg("--log-level").arg(filter).stdout(out);
            }
        }
        let child = cmd.stderr(Stdio::inherit()).spawn().expect("spawn pulse");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("{}/_matrix/client/versions", self.base);
            if let Ok(r) = self.http.get(url).send().await
                && r.status().as_u16() < 500
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("pulse exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "pulse did not start within 20 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `kill -9` the server and start it again on the same data directory and port.
    pub async fn kill9_and_restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Start the server again (after [`Self::kill9`] or [`Self::terminate`]).
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Send SIGTERM and wait for the exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let c = self.child.as_mut().expect("running");
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(10) {
                panic!("pulse did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Send a request; `body` None sends no body. Returns (status, JSON body or Null).
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Send raw bytes as the body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(method, self.url(path)).body(body);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.req("GET", path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.req("POST", path, token, Some(body)).await
    }
    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.req("PUT", path, token, Some(body)).await
    }

    /// Register `localpart` with password "password" via m.login.dummy; returns (user_id, token, device_id).
    pub async fn register(&self, localpart: &str) -> User {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": localpart, "password": "password", "auth": {"type": "m.login.dummy"}}),
            )
            .await;
        assert_eq!(status, 200, "register {localpart}: {body}");
        User {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        }
    }

    /// Register a server admin through the shared-secret endpoint (`/_synapse/admin/v1/register`,
    /// the test config's secret), password "password".
    /// Log `localpart` in with the password every test account has ("password").
    pub async fn login(&self, localpart: &str) -> User {
        let (st, r) = self
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": localpart }, "password": "password" }),
            )
            .await;
        assert_eq!(st, 200, "login {localpart}: {r}");
        User {
            user_id: r["user_id"].as_str().expect("user_id").to_owned(),
            token: r["access_token"].as_str().expect("access_token").to_owned(),
            device_id: r["device_id"].as_str().expect("device_id").to_owned(),
        }
    }

    pub async fn register_admin(&self, localpart: &str) -> User {
        use hmac::{Hmac, KeyInit, Mac};
        let (status, body) = self.get("/_synapse/admin/v1/register", None).await;
        assert_eq!(status, 200, "{body}");
        let nonce = body["nonce"].as_str().expect("nonce").to_owned();
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"test-secret").expect("key");
        mac.update(format!("{nonce}\0{localpart}\0password\0admin").as_bytes());
        let mac = hex::encode(mac.finalize().into_bytes());
        let (status, body) = self
            .post(
                "/_synapse/admin/v1/register",
                None,
                json!({"nonce": nonce, "username": localpart, "password": "password", "mac": mac, "admin": true}),
            )
            .await;
        assert_eq!(status, 200, "register admin {localpart}: {body}");
        User {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        }
    }

    /// Create a room as `user` with the given createRoom body; returns the room ID.
    pub async fn create_room(&self, user: &User, body: Value) -> String {
        let (status, resp) = self
            .post("/_matrix/client/v3/createRoom", Some(&user.token), body)
            .await;
        assert_eq!(status, 200, "createRoom: {resp}");
        resp["room_id"].as_str().expect("room_id").to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

pub fn enc(s: &str) -> String {
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
