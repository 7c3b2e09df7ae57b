//! The binary as a whole: start-up, CLI, config errors, router-wide behaviour
//! (404/405 M_UNRECOGNIZED, CORS, trailing slashes, body limits), shutdown.
mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, TestServer};

#[tokio::test]
async fn unknown_path_and_method_are_m_unrecognized() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/no_such_thing", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (status, body) = s
        .req("DELETE", "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let s = TestServer::start().await;
    let resp = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/_matrix/client/v3/login"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .expect("options");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = s
        .http
        .get(s.url("/_matrix/client/versions"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn trailing_slash_is_tolerated() {
    let s = TestServer::start().await;
    let (a, _) = s.get("/_matrix/client/versions", None).await;
    let (b, _) = s.get("/_matrix/client/versions/", None).await;
    assert_eq!(a, 200);
    assert_eq!(b, 200);
}

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    let (status, body) = s
        .get("/_matrix/client/v3/account/whoami", Some("nonsense"))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn huge_body_is_m_too_large() {
    let s = TestServer::start().await;
    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, body) = s
        .raw("POST", "/_matrix/client/v3/register", None, big)
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["errcode"], "M_TOO_LARGE");
}

#[tokio::test]
async fn garbage_body_is_m_not_json() {
    let s = TestServer::start().await;
    let (status, body) = s
        .raw(
            "POST",
            "/_matrix/client/v3/register",
            None,
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_NOT_JSON");
}

#[tokio::test]
async fn sigterm_exits_within_two_seconds() {
    let mut s = TestServer::start().await;
    let took = s.terminate();
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn unknown_config_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "server_name = \"x\"\n[registration]\nopen = true\n").expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open"), "{err}");
}

#[test]
fn generate_config_round_trips_and_help_explains() {
    let out = Command::new(BIN)
        .arg("generate-config")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server_name"));
    let help = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "generate-config", "register-user"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let s =
        TestServer::start_with("[rate_limits]\nenabled = true\nper_second = 0.5\nburst = 3.0\n")
            .await;
    let mut limited = None;
    for _ in 0..10 {
        let (status, body) = s.get("/_matrix/client/v3/login", None).await;
        if status == 429 {
            limited = Some(body);
            break;
        }
        assert_eq!(status, 200);
    }
    let body = limited.expect("the 4th request within a second is limited");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{body}"
    );
}

#[tokio::test]
async fn register_user_cli_creates_an_account_that_can_log_in() {
    let mut s = TestServer::start().await;
    s.kill9();
    let out = Command::new(BIN)
        .args(["register-user", "--config"])
        .arg(s.config_path())
        .args(["carol", "--password", "carol-pw"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("@carol:localhost"));
    // Taken names are refused with a message.
    let again = Command::new(BIN)
        .args(["register-user", "--config"])
        .arg(s.config_path())
        .args(["carol", "--password", "x"])
        .output()
        .expect("run");
    assert!(!again.status.success());
    s.kill9_and_restart().await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            serde_json::json!({"type": "m.login.password", "user": "carol", "password": "carol-pw"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
