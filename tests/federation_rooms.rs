//! Two real pulse binaries federating on loopback (server names `127.0.0.1:PORT`, TLS
//! listeners with self-signed certificates, `verify_tls = false`, loopback allowed): joins
//! in both directions, invites (accept and reject), leaves, kicks and bans, and messages
//! both ways once the events flow over `/send`.
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

    async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
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

    /// `user`'s membership in `room` according to this server's `/members`.
    async fn membership_of(&self, viewer: &User, room: &str, user: &str) -> Option<String> {
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

    async fn send_text(&self, user: &User, room: &str, txn: &str, text: &str) -> String {
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

    async fn has_message(&self, user: &User, room: &str, text: &str) -> bool {
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

    async fn joined_rooms(&self, user: &User) -> Vec<String> {
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
    async fn invited_rooms(&self, user: &User) -> Vec<String> {
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

/// Polls `check` for up to 30 s (federation delivery is asynchronous).
async fn eventually<F, Fut>(what: &str, mut check: F)
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

#[tokio::test]
async fn remote_user_joins_and_leaves_a_room_and_state_matches() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "federated"}),
        )
        .await;

    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "remote join: {body}");
    assert_eq!(body["room_id"], room.as_str());
    // Both servers agree bob is joined; B knows the room's state from send_join.
    assert!(b.joined_rooms(&bob).await.contains(&room));
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );
    assert_eq!(
        b.membership_of(&bob, &room, &alice.id).await.as_deref(),
        Some("join")
    );
    let (status, name) = b
        .req(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            &bob.token,
            None,
        )
        .await;
    assert_eq!((status, name["name"].as_str()), (200, Some("federated")));

    // Joining again is idempotent.
    let (status, _) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200);

    // B restarts and still has the room.
    let mut b = b;
    b.restart().await;
    assert!(b.joined_rooms(&bob).await.contains(&room));

    // bob leaves: a local event on B (B has the room's state), which reaches A over /send.
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "leave: {body}");
    assert!(!b.joined_rooms(&bob).await.contains(&room));
    eventually("bob's leave on A", || async {
        a.membership_of(&alice, &room, &bob.id).await.as_deref() == Some("leave")
    })
    .await;

    // A restarts; bob joins again through it.
    let mut a = a;
    a.restart().await;
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "rejoin after A's restart: {body}");
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );
}

#[tokio::test]
async fn join_of_a_private_room_is_refused_by_the_resident() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 403, "join of an invite-only room: {body}");
    assert!(!b.joined_rooms(&bob).await.contains(&room));
    assert_eq!(a.membership_of(&alice, &room, &bob.id).await, None);

    // A room nobody can tell us about: 404, nothing stored.
    let (status, body) = b
        .req(
            "POST",
            "/_matrix/client/v3/join/%21nothing%3Aunknown.invalid",
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert!(
        status == 404 || status == 502,
        "unknown room: {status} {body}"
    );
}

#[tokio::test]
async fn invites_across_servers_can_be_accepted_and_rejected() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;

    // alice@A invites bob@B: B countersigns, bob sees the invite in /sync.
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200, "remote invite: {body}");
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("invite")
    );
    assert!(b.invited_rooms(&bob).await.contains(&room));

    // bob accepts: a remote join through the inviter's server (no server_name needed).
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "accepting the invite: {body}");
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );

    // A second room: bob rejects the invite through make_leave/send_leave.
    let room2 = a
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let (status, _) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room2)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(b.invited_rooms(&bob).await.contains(&room2));
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room2)),
            &bob.token,
            Some(json!({"reason": "no thanks"})),
        )
        .await;
    assert_eq!(status, 200, "rejecting the invite: {body}");
    assert!(!b.invited_rooms(&bob).await.contains(&room2));
    assert_eq!(
        a.membership_of(&alice, &room2, &bob.id).await.as_deref(),
        Some("leave")
    );
}

#[tokio::test]
async fn messages_kicks_and_bans_flow_both_ways() {
    // The default room version: 12, whose room IDs name no server.
    let room = messages_kicks_and_bans(None).await;
    assert!(!room.contains(':'), "a v12 room ID: {room}");
}

#[tokio::test]
async fn messages_kicks_and_bans_in_a_v10_room() {
    let room = messages_kicks_and_bans(Some("10")).await;
    assert!(room.contains(':'), "a v10 room ID: {room}");
}

#[tokio::test]
async fn messages_kicks_and_bans_in_a_v1_room() {
    // Server-generated event IDs, `[id, hash]` references, the v1 redaction rule.
    messages_kicks_and_bans(Some("1")).await;
}

/// Joins, messages, a kick and a ban across two servers in a room of `version` (`None`: the
/// default) made on A; returns the room ID.
async fn messages_kicks_and_bans(version: Option<&str>) -> String {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut body = json!({"preset": "public_chat"});
    if let Some(v) = version {
        body["room_version"] = json!(v);
    }
    let room = a.create_room(&alice, body).await;
    let (status, create) = a
        .req(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                enc(&room)
            ),
            &alice.token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(create["room_version"], json!(version.unwrap_or("12")));
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "remote join: {body}");
    // B imported the room's state: the same create event.
    let (status, on_b) = b
        .req(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                enc(&room)
            ),
            &bob.token,
            None,
        )
        .await;
    assert_eq!((status, &on_b), (200, &create));

    a.send_text(&alice, &room, "t1", "hello from A").await;
    b.send_text(&bob, &room, "t1", "hello from B").await;
    eventually("A's message on B", || {
        b.has_message(&bob, &room, "hello from A")
    })
    .await;
    eventually("B's message on A", || {
        a.has_message(&alice, &room, "hello from B")
    })
    .await;

    // alice kicks bob: B learns it over /send.
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id, "reason": "test"})),
        )
        .await;
    assert_eq!(status, 200, "kick: {body}");
    eventually("the kick on B", || async {
        !b.joined_rooms(&bob).await.contains(&room)
    })
    .await;

    // bob rejoins, then is banned; a banned user's join is refused by the resident.
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "rejoin after a kick: {body}");
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200, "ban: {body}");
    eventually("the ban on B", || async {
        !b.joined_rooms(&bob).await.contains(&room)
    })
    .await;
    let (status, _) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 403, "a banned user's join");
    room
}

#[tokio::test]
async fn user_on_a_joins_a_room_on_b_by_alias() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = b
        .create_room(
            &bob,
            json!({"preset": "public_chat", "room_alias_name": "lobby"}),
        )
        .await;
    let alias = format!("#lobby:{}", b.name());
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            &alice.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "join by remote alias: {body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(
        b.membership_of(&bob, &room, &alice.id).await.as_deref(),
        Some("join")
    );
}
