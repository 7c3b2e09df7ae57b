//! A minimal client for the Matrix client-server API: just the calls the scenarios need.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A non-2xx answer from the server, with the Matrix error body if there was one.
#[derive(Debug)]
pub struct ApiError {
    pub what: String,
    pub status: u16,
    pub errcode: String,
    pub error: String,
    pub retry_after_ms: Option<u64>,
    pub body: Value,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: HTTP {} {} {}",
            self.what, self.status, self.errcode, self.error
        )
    }
}

impl std::error::Error for ApiError {}

/// An error with its sources ("error sending request: connection reset by peer"), and
/// transport errors marked so scenarios can tell them from HTTP errors.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
}

#[derive(Clone)]
pub struct Hs {
    http: reqwest::Client,
    pub base: String,
}

/// The parts of a /sync response the scenarios read; everything else is skipped.
#[derive(Deserialize, Debug, Default)]
pub struct SyncResp {
    pub next_batch: String,
    #[serde(default)]
    pub presence: Option<EventList<PresenceEvent>>,
    #[serde(default)]
    pub rooms: Option<Rooms>,
}

#[derive(Deserialize, Debug)]
pub struct EventList<T> {
    #[serde(default = "Vec::new")]
    pub events: Vec<T>,
}

#[derive(Deserialize, Debug)]
pub struct PresenceEvent {
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(default)]
    pub content: PresenceContent,
}

#[derive(Deserialize, Debug, Default)]
pub struct PresenceContent {
    #[serde(default)]
    pub status_msg: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct Rooms {
    #[serde(default)]
    pub join: HashMap<String, JoinedRoom>,
}

#[derive(Deserialize, Debug, Default)]
pub struct JoinedRoom {
    #[serde(default)]
    pub timeline: Option<EventList<TimelineEvent>>,
}

#[derive(Deserialize, Debug)]
pub struct TimelineEvent {
    #[serde(default)]
    pub event_id: Option<String>,
}

impl SyncResp {
    /// Whether the timeline of `room` in this response holds `event_id`.
    pub fn has_event(&self, room: &str, event_id: &str) -> bool {
        self.rooms
            .as_ref()
            .and_then(|r| r.join.get(room))
            .and_then(|j| j.timeline.as_ref())
            .is_some_and(|t| {
                t.events
                    .iter()
                    .any(|e| e.event_id.as_deref() == Some(event_id))
            })
    }

    pub fn presence_events(&self) -> &[PresenceEvent] {
        self.presence
            .as_ref()
            .map(|p| p.events.as_slice())
            .unwrap_or(&[])
    }
}

const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

impl Hs {
    pub fn new(base: &str) -> Res<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("pulse-bench/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Hs {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// One request; 2xx gives the body, anything else an [`ApiError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Res<bytes::Bytes> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .timeout(timeout);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let route = path.split('?').next().unwrap_or(path);
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {route}: {}", chain(&e)))?;
        let status = resp.status();
        let header_retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| s * 1000);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("{method} {route}: reading body: {}", chain(&e)))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(Box::new(ApiError {
            what: format!("{method} {route}"),
            status: status.as_u16(),
            errcode: body["errcode"].as_str().unwrap_or("").to_string(),
            error: body["error"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
            retry_after_ms: body["retry_after_ms"].as_u64().or(header_retry),
            body,
        }))
    }

    pub async fn call_json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Res<Value> {
        let bytes = self.call(method, path, token, body, timeout).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Like [`Hs::call_json`], but waits out `M_LIMIT_EXCEEDED` (honouring `retry_after_ms`)
    /// and retries transport errors a few times. For setup, never for measured requests.
    pub async fn call_retry(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Res<Value> {
        let mut transport_errors = 0;
        let mut limited = 0;
        loop {
            match self
                .call_json(method.clone(), path, token, body, SETUP_TIMEOUT)
                .await
            {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if let Some(api) = e.downcast_ref::<ApiError>() {
                        if (api.status == 429 || api.errcode == "M_LIMIT_EXCEEDED") && limited < 200
                        {
                            limited += 1;
                            let wait = api.retry_after_ms.unwrap_or(1000).clamp(10, 60_000);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            continue;
                        }
                        // A reverse proxy or an overloaded server may answer 502/503 briefly.
                        if matches!(api.status, 502..=504) && transport_errors < 5 {
                            transport_errors += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                        return Err(e);
                    }
                    if transport_errors < 5 {
                        transport_errors += 1;
                        tokio::time::sleep(Duration::from_millis(500 * transport_errors)).await;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn user_from(v: &Value) -> Res<User> {
        let user_id = v["user_id"]
            .as_str()
            .ok_or("response has no user_id")?
            .to_string();
        let token = v["access_token"]
            .as_str()
            .ok_or("response has no access_token")?
            .to_string();
        Ok(User { user_id, token })
    }

    /// Open registration with the `m.login.dummy` flow, answering a 401 user-interactive
    /// auth challenge with its session. A localpart that exists already is logged in to.
    pub async fn register(&self, localpart: &str, password: &str) -> Res<User> {
        const PATH: &str = "/_matrix/client/v3/register";
        let mut body = json!({
            "username": localpart,
            "password": password,
            "initial_device_display_name": "pulse-bench",
        });
        let first = self.call_retry(Method::POST, PATH, None, Some(&body)).await;
        let err = match first {
            Ok(v) => return Self::user_from(&v),
            Err(e) => e,
        };
        let Some(api) = err.downcast_ref::<ApiError>() else {
            return Err(err);
        };
        if api.errcode == "M_USER_IN_USE" {
            return self.login(localpart, password).await;
        }
        if api.status != 401 {
            return Err(err);
        }
        let mut auth = json!({ "type": "m.login.dummy" });
        if let Some(session) = api.body["session"].as_str() {
            auth["session"] = json!(session);
        }
        body["auth"] = auth;
        match self.call_retry(Method::POST, PATH, None, Some(&body)).await {
            Ok(v) => Self::user_from(&v),
            Err(e) => match e.downcast_ref::<ApiError>() {
                Some(api) if api.errcode == "M_USER_IN_USE" => {
                    self.login(localpart, password).await
                }
                _ => Err(e),
            },
        }
    }

    /// Synapse-style shared-secret registration (`/_synapse/admin/v1/register`):
    /// GET a nonce, then POST with an HMAC-SHA1 of `nonce\0user\0password\0notadmin`.
    pub async fn register_shared_secret(
        &self,
        secret: &str,
        localpart: &str,
        password: &str,
    ) -> Res<User> {
        const PATH: &str = "/_synapse/admin/v1/register";
        let nonce_resp = self.call_retry(Method::GET, PATH, None, None).await?;
        let nonce = nonce_resp["nonce"]
            .as_str()
            .ok_or("no nonce in the shared-secret registration answer")?;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
            .map_err(|e| e.to_string())?;
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(localpart.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(b"notadmin");
        let digest = hex::encode(mac.finalize().into_bytes());
        let body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": false,
            "mac": digest,
        });
        match self.call_retry(Method::POST, PATH, None, Some(&body)).await {
            Ok(v) => Self::user_from(&v),
            Err(e) => match e.downcast_ref::<ApiError>() {
                Some(api) if api.errcode == "M_USER_IN_USE" => {
                    self.login(localpart, password).await
                }
                _ => Err(e),
            },
        }
    }

    pub async fn login(&self, localpart: &str, password: &str) -> Res<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": localpart },
            "password": password,
            "initial_device_display_name": "pulse-bench",
        });
        let v = self
            .call_retry(Method::POST, "/_matrix/client/v3/login", None, Some(&body))
            .await?;
        Self::user_from(&v)
    }

    pub async fn create_room(&self, user: &User, name: &str) -> Res<String> {
        let body = json!({ "preset": "public_chat", "name": name });
        let v = self
            .call_retry(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&user.token),
                Some(&body),
            )
            .await?;
        Ok(v["room_id"]
            .as_str()
            .ok_or("createRoom answer has no room_id")?
            .to_string())
    }

    pub async fn join(&self, user: &User, room_id: &str) -> Res<()> {
        let path = format!("/_matrix/client/v3/join/{}", enc(room_id));
        self.call_retry(Method::POST, &path, Some(&user.token), Some(&json!({})))
            .await?;
        Ok(())
    }

    /// Joins a room of another server over federation, through `server_name`.
    pub async fn join_via(&self, user: &User, room_id: &str, server_name: &str) -> Res<()> {
        let path = format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(room_id),
            enc(server_name)
        );
        self.call_retry(Method::POST, &path, Some(&user.token), Some(&json!({})))
            .await?;
        Ok(())
    }

    /// Sends one `m.room.message`; gives its event ID. Not retried (measured).
    pub async fn send_message(
        &self,
        user: &User,
        room_id: &str,
        txn: &str,
        body: &str,
    ) -> Res<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room_id),
            enc(txn)
        );
        let content = json!({ "msgtype": "m.text", "body": body });
        let v = self
            .call_json(
                Method::PUT,
                &path,
                Some(&user.token),
                Some(&content),
                SETUP_TIMEOUT,
            )
            .await?;
        Ok(v["event_id"]
            .as_str()
            .ok_or("send answer has no event_id")?
            .to_string())
    }

    /// Same as [`Hs::send_message`] but waits out rate limiting (for `populate`).
    pub async fn send_message_retry(
        &self,
        user: &User,
        room_id: &str,
        txn: &str,
        body: &str,
    ) -> Res<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room_id),
            enc(txn)
        );
        let content = json!({ "msgtype": "m.text", "body": body });
        let v = self
            .call_retry(Method::PUT, &path, Some(&user.token), Some(&content))
            .await?;
        Ok(v["event_id"]
            .as_str()
            .ok_or("send answer has no event_id")?
            .to_string())
    }

    /// `PUT /presence/{userId}/status`. Not retried (measured).
    pub async fn set_presence(&self, user: &User, presence: &str, status_msg: &str) -> Res<()> {
        let path = format!("/_matrix/client/v3/presence/{}/status", enc(&user.user_id));
        let body = json!({ "presence": presence, "status_msg": status_msg });
        self.call(
            Method::PUT,
            &path,
            Some(&user.token),
            Some(&body),
            SETUP_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// One `/sync` with `set_presence=offline`, so syncing itself makes no presence.
    pub async fn sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Res<SyncResp> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&set_presence=offline");
        if let Some(s) = since {
            path.push_str("&since=");
            path.push_str(&enc(s));
        }
        if let Some(f) = filter {
            path.push_str("&filter=");
            path.push_str(&enc(f));
        }
        let limit = Duration::from_millis(timeout_ms) + Duration::from_secs(90);
        let bytes = self
            .call(Method::GET, &path, Some(&user.token), None, limit)
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Like [`Hs::sync`] but waits out rate limiting (for setup's initial syncs).
    pub async fn sync_retry(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Res<SyncResp> {
        let mut tries = 0;
        loop {
            match self.sync(user, since, timeout_ms, filter).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tries += 1;
                    let wait = match e.downcast_ref::<ApiError>() {
                        Some(api) if api.status == 429 => api.retry_after_ms.unwrap_or(1000),
                        Some(_) if tries > 3 => return Err(e),
                        None if tries > 5 => return Err(e),
                        _ => 500,
                    };
                    if tries > 200 {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    /// `GET /_matrix/client/versions` with a short timeout: the readiness probe.
    pub async fn versions(&self, timeout: Duration) -> Res<Value> {
        self.call_json(Method::GET, "/_matrix/client/versions", None, None, timeout)
            .await
    }

    /// Server name and version, where the server tells (`/_matrix/federation/v1/version`).
    pub async fn server_version(&self) -> Option<Value> {
        self.call_json(
            Method::GET,
            "/_matrix/federation/v1/version",
            None,
            None,
            Duration::from_secs(5),
        )
        .await
        .ok()
        .map(|v| v["server"].clone())
    }
}
