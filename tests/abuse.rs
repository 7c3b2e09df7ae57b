//! Abuse limits (issue 19 item 5) against the real binary: failed-login budgets per account
//! and per address, header and body read timeouts (slowloris), the per-address connection
//! cap, per-origin limits of inbound federation, and the open-files limit raised at start.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{BIN, TestServer, test_config};
use serde_json::{Value, json};

/// A login with `password` for `user` (the test config's `X-Forwarded-For` is not trusted, so
/// every request comes from 127.0.0.1).
async fn login(s: &TestServer, user: &str, password: &str) -> (u16, Value) {
    s.post(
        "/_matrix/client/v3/login",
        None,
        json!({"type": "m.login.password",
               "identifier": {"type": "m.id.user", "user": user},
               "password": password}),
    )
    .await
}

fn assert_limited(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 429, "{what}: {body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{what}: {body}");
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{what}: retry_after_ms missing: {body}"
    );
}

const RATE_LIMITS_ON: &str = "[rate_limits]\nenabled = true\nper_second = 1000.0\nburst = 1000.0\n";

#[tokio::test]
async fn failed_logins_are_limited_per_address_across_accounts() {
    let s = TestServer::start_with(&format!(
        "{RATE_LIMITS_ON}[limits]\nfailed_logins_per_address_burst = 3.0\n\
         failed_logins_per_address_per_second = 0.001\n"
    ))
    .await;
    for u in ["a1", "a2", "a3", "a4"] {
        s.register(u).await;
    }
    // One wrong password each for three accounts: no account budget (5) is used up...
    for u in ["a1", "a2", "a3"] {
        let (st, body) = login(&s, u, "wrong").await;
        assert_eq!(st, 403, "{body}");
    }
    // ...but the address's is: a fourth account, even with the right password, waits.
    let (st, body) = login(&s, "a4", "password").await;
    assert_limited(st, &body, "fourth account from the same address");
    // Names that are no account cost the same (and are refused the same).
    let (st, body) = login(&s, "nobody", "x").await;
    assert_limited(st, &body, "unknown name");
    // Only password checks are limited: the rest of the API still answers.
    let (st, _) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn failed_logins_per_account_follow_the_config() {
    let s = TestServer::start_with(&format!(
        "{RATE_LIMITS_ON}[limits]\nfailed_logins_per_account_burst = 2.0\n\
         failed_logins_per_account_per_second = 0.001\n"
    ))
    .await;
    s.register("b1").await;
    s.register("b2").await;
    for _ in 0..2 {
        let (st, body) = login(&s, "b1", "wrong").await;
        assert_eq!(st, 403, "{body}");
    }
    let (st, body) = login(&s, "b1", "password").await;
    assert_limited(st, &body, "third attempt on b1");
    // Another account from the same address is not affected (address budget 20).
    let (st, body) = login(&s, "b2", "password").await;
    assert_eq!(st, 200, "{body}");
}

/// Reads until EOF, an error or `limit`; returns what arrived and when reading ended.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration, bool) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return (out, started.elapsed(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (out, started.elapsed(), true),
        }
    }
    (out, started.elapsed(), false)
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let s = TestServer::start_with("[limits]\nheader_read_timeout_ms = 1000\n").await;
    let port = s.port;
    let (got, took, closed) = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // Half a request, then nothing: the slowloris pattern.
        c.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("write");
        read_until_closed(&mut c, Duration::from_secs(8))
    })
    .await
    .expect("join");
    assert!(closed, "the server kept a half-sent request open for 8 s");
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "a half-sent request was answered"
    );
    // A complete request on a fresh connection is served as usual.
    let (st, _) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn slow_bodies_are_cut_off() {
    let s = TestServer::start_with("[limits]\nbody_read_timeout_ms = 1000\n").await;
    let port = s.port;
    let (got, took, _closed) = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // Headers promise 200 bytes; 10 arrive, then nothing.
        c.write_all(
            b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"type\": \"",
        )
        .expect("write");
        read_until_closed(&mut c, Duration::from_secs(8))
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 4"),
        "no error response for a stalled body within 8 s: {text:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "answered only after {took:?}"
    );
    // A normal body is read as before.
    let (st, body) = login(&s, "nobody", "x").await;
    assert_eq!(st, 403, "{body}");
}

/// Opens a connection from `local` and sends one request on it; returns the connection
/// (kept open, keep-alive) and the status line's code.
fn request_from(local: &str, port: u16) -> (TcpStream, Option<u16>) {
    let socket = socket2_connect(local, port);
    let mut c = socket;
    c.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (c, status)
}

/// A TCP connection to 127.0.0.1:`port` from the local address `local` (any 127/8 address
/// works on Linux without configuration).
fn socket2_connect(local: &str, port: u16) -> TcpStream {
    // `std::net::TcpStream` cannot choose its source address; tokio's `TcpSocket` can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local.parse().expect("ip"), 0))
            .expect("bind local address");
        let stream = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("connect");
        let std = stream.into_std().expect("std");
        std.set_nonblocking(false).expect("blocking");
        std
    })
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let s = TestServer::start_with(
        "[limits]\nmax_connections_per_address = 5\nconnection_limit_exempt = []\n",
    )
    .await;
    let port = s.port;
    tokio::task::spawn_blocking(move || {
        // The harness's own client may hold a pooled connection from 127.0.0.1 too, so count
        // how many more fit: at most 5, and then one more is refused with 429.
        let mut open = Vec::new();
        let refused = loop {
            let (c, status) = request_from("127.0.0.1", port);
            match status {
                Some(200) => open.push(c),
                Some(429) => break true,
                other => panic!("unexpected answer {other:?}"),
            }
            assert!(open.len() <= 5, "more than 5 connections from one address");
        };
        assert!(refused);
        assert!(open.len() >= 4, "only {} connections fit", open.len());
        // Another address is not affected.
        let (_other, status) = request_from("127.0.0.2", port);
        assert_eq!(status, Some(200), "127.0.0.2 was refused");
        // Closing connections gives their slots back.
        drop(open);
        std::thread::sleep(Duration::from_millis(300));
        let mut again = Vec::new();
        for _ in 0..4 {
            let (c, status) = request_from("127.0.0.1", port);
            assert_eq!(status, Some(200), "slots were not given back");
            again.push(c);
        }
    })
    .await
    .expect("join");
}

#[tokio::test]
async fn inbound_federation_is_limited_per_origin_and_address() {
    let s = TestServer::start_with(
        "[limits]\nfederation_per_origin_burst = 3.0\nfederation_per_origin_per_second = 0.001\n\
         federation_per_address_burst = 5.0\nfederation_per_address_per_second = 0.001\n",
    )
    .await;
    let fed = |origin: &str| {
        let auth = format!(
            "X-Matrix origin=\"{origin}\",destination=\"localhost\",key=\"ed25519:a\",sig=\"x\""
        );
        let req = s
            .http
            .get(s.url("/_matrix/federation/v1/version"))
            .header("authorization", auth);
        async move {
            let r = req.send().await.expect("send");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for i in 0..3 {
        let (st, body) = fed("one.example").await;
        assert_eq!(st, 200, "request {i} of one.example: {body}");
    }
    let (st, body) = fed("one.example").await;
    assert_limited(st, &body, "fourth request of one.example");
    // Other origin names from the same address: the address budget (5; refused requests
    // are not charged) has 2 left.
    for origin in ["two.example", "three.example"] {
        let (st, body) = fed(origin).await;
        assert_eq!(st, 200, "{origin}: {body}");
    }
    let (st, body) = fed("four.example").await;
    assert_limited(st, &body, "address budget");
    // The client API is not behind the federation limit.
    let (st, _) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn open_files_limit_is_raised_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = dir.path().join("pulse.toml");
    std::fs::write(&config, test_config(port, &dir.path().join("data"), "")).expect("config");
    // Start with a low soft limit (the hard limit stays), as many service managers do.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {BIN} serve --config {}",
            config.display()
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("http://127.0.0.1:{port}/_matrix/client/versions");
        if client.get(url).send().await.is_ok() {
            break;
        }
        assert!(child.try_wait().expect("wait").is_none(), "pulse exited");
        assert!(Instant::now() < deadline, "pulse did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let soft: u64 = nums[0].parse().expect("soft");
    let hard: u64 = nums[1].parse().unwrap_or(1 << 20 /* "unlimited" */);
    assert!(
        soft > 256,
        "the soft limit stayed at {soft} (hard {hard}): {line}"
    );
    assert_eq!(
        soft,
        hard.min(1 << 20),
        "not raised to the hard limit: {line}"
    );
    if hard >= 10_240 {
        assert!(soft >= 10_240, "10,000 long-polls do not fit: {line}");
    }
}
