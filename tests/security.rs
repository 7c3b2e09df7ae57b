//! Security fixes of issue 13 (items 1, 2, 3, 4, 6, 7, 10), driven over HTTP against the real binary.
//! `docs/security.md` lists which test shows which fix.
mod common;

use common::TestServer;
use serde_json::{Value, json};

async fn login_with(
    s: &TestServer,
    user: &str,
    password: &str,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let mut rb = s.http.post(s.url("/_matrix/client/v3/login")).json(&json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }));
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    let resp = rb.send().await.expect("login sent");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Issue 13 item 2: a fresh random bearer token per request used to get a fresh bucket.
#[tokio::test]
async fn random_bearer_tokens_do_not_escape_the_address_limit() {
    let s =
        TestServer::start_with("[rate_limits]\nenabled = true\nper_second = 0.01\nburst = 3.0\n")
            .await;
    let mut limited = 0;
    for i in 0..6 {
        let auth = [("authorization", format!("Bearer made-up-token-{i}"))];
        let (status, body) = login_with(&s, "nobody", "guess", &auth).await;
        if status == 429 {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
            assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
            limited += 1;
        }
    }
    assert!(
        limited >= 3,
        "only the burst of 3 may pass; {limited} of 6 were limited"
    );
}

/// Issue 13 item 2: `X-Forwarded-For` is believed only from a configured trusted proxy.
#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let s =
        TestServer::start_with("[rate_limits]\nenabled = true\nper_second = 0.01\nburst = 2.0\n")
            .await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let xff = [("x-forwarded-for", format!("198.51.100.{i}"))];
        statuses.push(login_with(&s, "nobody", "guess", &xff).await.0);
    }
    assert_eq!(&statuses[2..], &[429, 429], "{statuses:?}");
}

/// Issue 13 item 2: behind a trusted proxy each forwarded client has its own bucket, and
/// an account allows only a few wrong passwords whatever address they come from.
#[tokio::test]
async fn failed_logins_are_limited_per_account_behind_a_trusted_proxy() {
    let s = TestServer::start_with(
        "[rate_limits]\nenabled = true\nper_second = 0.01\nburst = 2.0\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    // Registration from its own forwarded address.
    let (status, body) = s
        .http
        .post(s.url("/_matrix/client/v3/register"))
        .header("x-forwarded-for", "203.0.113.200")
        .json(&json!({"username": "victim", "password": "password", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .expect("register");
    assert_eq!(status, 200, "{body:?}");
    let mut statuses = Vec::new();
    for i in 0..7 {
        // A new forwarded address each time: the address bucket (burst 2) never runs dry.
        let xff = [("x-forwarded-for", format!("10.9.8.7, 203.0.113.{i}"))];
        statuses.push(login_with(&s, "victim", "wrong", &xff).await.0);
    }
    assert_eq!(&statuses[..5], &[403; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], &[429, 429], "{statuses:?}");
    // Now even the right password waits: guessing cannot continue at full speed.
    let xff = [("x-forwarded-for", "203.0.113.100".to_owned())];
    assert_eq!(login_with(&s, "victim", "password", &xff).await.0, 429);
    // A name that is no account behaves the same, so a 429 does not reveal which exist.
    let mut statuses = Vec::new();
    for i in 0..7 {
        let xff = [("x-forwarded-for", format!("203.0.113.{}", 50 + i))];
        statuses.push(login_with(&s, "ghost", "wrong", &xff).await.0);
    }
    assert_eq!(&statuses[..5], &[403; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], &[429, 429], "{statuses:?}");
}

/// Issue 13 item 6: logging in again with a device ID replaces the device's token.
#[tokio::test]
async fn login_with_an_existing_device_id_revokes_its_old_token() {
    let s = TestServer::start().await;
    let u = s.register("dora").await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "dora"},
                   "password": "password", "device_id": u.device_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], json!(u.device_id));
    let new_token = body["access_token"].as_str().expect("token");
    let (status, body) = s
        .get("/_matrix/client/v3/account/whoami", Some(&u.token))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, _) = s
        .get("/_matrix/client/v3/account/whoami", Some(new_token))
        .await;
    assert_eq!(status, 200);
    // The deprecated query parameter still works.
    let (status, _) = s
        .get(
            &format!("/_matrix/client/v3/account/whoami?access_token={new_token}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
}

/// Issue 13 item 7: createRoom lists are bounded.
#[tokio::test]
async fn create_room_lists_are_bounded() {
    let s = TestServer::start().await;
    let u = s.register("cora").await;
    let invites: Vec<String> = (0..101).map(|i| format!("@u{i}:localhost")).collect();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&u.token),
            json!({"invite": invites}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    let state: Vec<Value> = (0..101)
        .map(|i| json!({"type": "org.example.s", "state_key": format!("{i}"), "content": {}}))
        .collect();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&u.token),
            json!({"initial_state": state}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
}

/// Issue 13 item 7: room account data only for rooms the user has a membership in.
#[tokio::test]
async fn room_account_data_needs_a_membership() {
    let s = TestServer::start().await;
    let u = s.register("rhea").await;
    let path = |room: &str| {
        format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.t",
            common::enc(&u.user_id),
            common::enc(room)
        )
    };
    let (status, body) = s
        .put(&path("!nowhere:localhost"), Some(&u.token), json!({"a": 1}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let room = s.create_room(&u, json!({})).await;
    let (status, body) = s.put(&path(&room), Some(&u.token), json!({"a": 1})).await;
    assert_eq!(status, 200, "{body}");
}

/// Issue 13 item 1: a local user in none of the allowed rooms could join a restricted
/// room by naming a member with invite power in `join_authorised_via_users_server`.
#[tokio::test]
async fn restricted_join_cannot_be_forged_over_http() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let space = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let room = s
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let room_e = common::enc(&room);
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room_e}/state/m.room.join_rules"),
            Some(&alice.token),
            json!({"join_rule": "restricted",
                   "allow": [{"type": "m.room_membership", "room_id": space}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let forged = json!({"join_authorised_via_users_server": alice.user_id});
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{room_e}"),
            Some(&bob.token),
            forged,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let bob_e = common::enc(&bob.user_id);
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room_e}/state/m.room.member/{bob_e}"),
            Some(&bob.token),
            json!({"membership": "join", "join_authorised_via_users_server": alice.user_id}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, joined) = s
        .get("/_matrix/client/v3/joined_rooms", Some(&bob.token))
        .await;
    assert!(
        !joined["joined_rooms"].to_string().contains(&room),
        "{joined}"
    );
}

/// Issue 13 item 10: a createRoom that fails part-way (an invalid `initial_state` event
/// late in the list) leaves no room in the creator's `/sync` or joined rooms.
#[tokio::test]
async fn failed_create_room_is_never_seen_by_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({"name": "half", "initial_state": [
                {"type": "m.room.topic", "state_key": "", "content": {"topic": "ok"}},
                {"type": "m.room.member", "state_key": "@someone:elsewhere.test",
                 "content": {"membership": "join"}}
            ]}),
        )
        .await;
    assert_ne!(status, 200, "{body}");
    let (status, sync) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    assert_eq!(status, 200, "{sync}");
    let rooms = &sync["rooms"];
    for section in ["join", "invite", "leave"] {
        let n = rooms[section].as_object().map(|o| o.len()).unwrap_or(0);
        assert_eq!(n, 0, "{section}: {sync}");
    }
    let (_, joined) = s
        .get("/_matrix/client/v3/joined_rooms", Some(&alice.token))
        .await;
    assert_eq!(joined["joined_rooms"], json!([]), "{joined}");
}
