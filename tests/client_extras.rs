//! The small endpoints clients call around login (issue 18 item 7), through the real binary:
//! `/voip/turnServer` unconfigured and with a shared secret, `/thirdparty/protocols`,
//! `/account/3pid`, and `/login/get_token` refused honestly.
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::TestServer;
use serde_json::json;

const V3: &str = "/_matrix/client/v3";

#[tokio::test]
async fn turn_server_is_empty_unconfigured_and_other_extras_answer() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());
    assert_eq!(
        s.get(&format!("{V3}/voip/turnServer"), t).await,
        (200, json!({}))
    );
    assert_eq!(s.get(&format!("{V3}/voip/turnServer"), None).await.0, 401);
    assert_eq!(
        s.get(&format!("{V3}/thirdparty/protocols"), t).await,
        (200, json!({}))
    );
    assert_eq!(
        s.get(&format!("{V3}/account/3pid"), t).await,
        (200, json!({"threepids": []}))
    );
    let (st, b) = s
        .post("/_matrix/client/v1/login/get_token", t, json!({}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    let (_, caps) = s.get(&format!("{V3}/capabilities"), t).await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], false);
}

#[tokio::test]
async fn turn_server_hands_out_time_limited_credentials() {
    let s = TestServer::start_with(
        "[voip]\nturn_uris = [\"turn:turn.example.org:3478?transport=udp\"]\n\
         turn_shared_secret = \"s3cret\"\nturn_user_lifetime_ms = 86400000\n",
    )
    .await;
    let alice = s.register("alice").await;
    let (st, v) = s
        .get(&format!("{V3}/voip/turnServer"), Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["uris"],
        json!(["turn:turn.example.org:3478?transport=udp"])
    );
    assert_eq!(v["ttl"], 86_400);
    let username = v["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("expiry:user");
    assert_eq!(user, alice.user_id);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expiry: u64 = expiry.parse().expect("number");
    assert!(
        expiry > now && expiry <= now + 86_400 + 5,
        "{expiry} vs {now}"
    );
    // 20 bytes of HMAC-SHA1 in padded base64.
    assert_eq!(v["password"].as_str().expect("password").len(), 28);
}
