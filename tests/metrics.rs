//! `/metrics` (`[metrics] enabled`): its own listener, off by default; requests, presence
//! and storage series move when the server is used, labels carry route templates rather
//! than user IDs, and the text parses as the Prometheus/OpenMetrics exposition format.
mod common;

use std::collections::HashMap;

use common::federating::{Server, eventually, join};
use common::{TestServer, enc, free_port};
use serde_json::json;

/// Parses the text format into `series (name{labels}) → value`, failing on any line that
/// is not a comment, a sample, or the final `# EOF`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap_or("");
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment line: {line}"
            );
            continue;
        }
        // `name{labels} value` or `name value`; label values may contain spaces.
        let (series, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => panic!("no value: {line}"),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels: {line}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.insert(series.to_owned(), v);
    }
    out
}

async fn scrape(s: &TestServer, port: u16) -> (String, HashMap<String, f64>) {
    scrape_with(&s.http, port).await
}

async fn scrape_with(http: &reqwest::Client, port: u16) -> (String, HashMap<String, f64>) {
    let r = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.expect("body");
    let parsed = parse(&text);
    (text, parsed)
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test]
async fn metrics_count_requests_and_presence() {
    let port = free_port();
    let s = TestServer::start_with(&format!(
        "[metrics]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let (_, before) = scrape(&s, port).await;
    let alice = s.register("alice").await;
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id));
    let (status, body) = s
        .put(
            &path,
            Some(&alice.token),
            json!({"presence": "online", "status_msg": "hi"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get(&path, Some(&alice.token)).await;
    assert_eq!(status, 200);
    let (status, _) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.get("/_matrix/client/v3/no/such/endpoint", None).await;
    assert_eq!(status, 404);

    let (text, after) = scrape(&s, port).await;
    let updates_in = r#"pulse_presence_updates_total{direction="in",via="local"}"#;
    assert!(
        get(&after, updates_in) >= get(&before, updates_in) + 1.0,
        "{text}"
    );
    assert!(
        get(
            &after,
            r#"pulse_presence_transitions_total{state="online"}"#
        ) >= 1.0
    );
    assert!(get(&after, r#"pulse_presence_users{state="online"}"#) >= 1.0);
    let put = r#"pulse_http_requests_total{route="/_matrix/client/v3/presence/{user_id}/status",method="PUT",status="200"}"#;
    assert_eq!(get(&after, put), 1.0, "{text}");
    assert_eq!(
        get(
            &after,
            r#"pulse_http_requests_total{route="/_matrix/client/v3/sync",method="GET",status="200"}"#
        ),
        1.0
    );
    assert!(
        get(
            &after,
            r#"pulse_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ) >= 1.0
    );
    let hist = r#"pulse_http_request_duration_seconds_count{route="/_matrix/client/v3/presence/{user_id}/status",method="PUT"}"#;
    assert_eq!(get(&after, hist), 1.0, "{text}");
    assert!(text.contains(r#"pulse_http_request_duration_seconds_bucket{le="+Inf",route="/_matrix/client/v3/presence/{user_id}/status",method="PUT"}"#)
        || text.contains(r#"pulse_http_request_duration_seconds_bucket{route="/_matrix/client/v3/presence/{user_id}/status",method="PUT",le="+Inf"}"#), "{text}");
    assert_eq!(
        get(&after, "pulse_sync_open_requests"),
        0.0,
        "no sync open after they ended"
    );
    // No user ID in any label, only route templates.
    assert!(!text.contains("@alice"), "{text}");
    assert!(get(&after, "pulse_storage_disk_bytes") > 0.0);
    assert!(get(&after, "process_resident_memory_bytes") > 0.0);
    assert!(get(&after, "process_cpu_seconds_total") > 0.0);
    assert_eq!(get(&after, r#"pulse_build_info{version="0.1.0"}"#), 1.0);
}

#[tokio::test]
async fn a_long_poll_shows_in_the_open_sync_gauge() {
    let port = free_port();
    let s = TestServer::start_with(&format!(
        "[metrics]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let bob = s.register("bob").await;
    let (_, first) = s
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.token))
        .await;
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let url = s.url(&format!(
        "/_matrix/client/v3/sync?timeout=20000&since={since}"
    ));
    let http = s.http.clone();
    let token = bob.token.clone();
    let poll = tokio::spawn(async move { http.get(url).bearer_auth(token).send().await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, m) = scrape(&s, port).await;
        if get(&m, "pulse_sync_open_requests") == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    poll.abort();
}

#[tokio::test]
async fn metrics_are_off_unless_enabled() {
    let port = free_port();
    let s = TestServer::start_with(&format!("[metrics]\nbind = \"127.0.0.1:{port}\"\n")).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "/metrics listens although [metrics] enabled is false"
    );
    // Nor is it on the client listener.
    let (status, _) = s.get("/metrics", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn federation_series_move_on_both_servers() {
    let (port_a, port_b) = (free_port(), free_port());
    let metrics = |p: u16| format!("[metrics]\nenabled = true\nbind = \"127.0.0.1:{p}\"\n");
    let a = Server::start_with(&metrics(port_a)).await;
    let b = Server::start_with(&metrics(port_b)).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let (code, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = a
        .req(
            "PUT",
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.id)),
            &alice.token,
            Some(json!({"presence": "online"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let http = reqwest::Client::new();
    let dest = format!(r#"{{destination="{}"}}"#, b.name());
    eventually(
        "A sent a transaction with presence to B, and B received it",
        || {
            let http = http.clone();
            let dest = dest.clone();
            async move {
                let (_, ma) = scrape_with(&http, port_a).await;
                let (_, mb) = scrape_with(&http, port_b).await;
                let v = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
                v(
                    &ma,
                    r#"pulse_federation_transactions_total{direction="out",result="sent"}"#,
                ) >= 1.0
                    && v(
                        &ma,
                        r#"pulse_presence_updates_total{direction="out",via="federation"}"#,
                    ) >= 1.0
                    && ma.contains_key(&format!("pulse_federation_queue_pdus{dest}"))
                    && ma.contains_key(&format!("pulse_federation_backoff_seconds{dest}"))
                    && v(
                        &mb,
                        r#"pulse_federation_transactions_total{direction="in",result="received"}"#,
                    ) >= 1.0
                    && v(&mb, r#"pulse_federation_edus_total{direction="in"}"#) >= 1.0
                    && v(
                        &mb,
                        r#"pulse_presence_updates_total{direction="in",via="federation"}"#,
                    ) >= 1.0
            }
        },
    )
    .await;
}
