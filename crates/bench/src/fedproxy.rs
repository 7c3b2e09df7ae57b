//! A recording TLS proxy in front of the receiving server's federation listener, for the
//! federation-presence scenario: the sender reaches the receiver through it (the receiver's
//! server name points at the proxy), so every transaction can be counted — transactions, EDUs by
//! type, presence entries, body bytes — whatever the two servers are. It terminates TLS with a
//! self-signed certificate (both Pulse with `verify_tls = false` and Synapse with
//! `federation_verify_certificates: false` accept it) and forwards each request unchanged
//! (method, path and query, `Authorization`, body) over TLS to the real listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::hs::Res;

/// What went through the proxy (towards the receiver).
#[derive(Default)]
pub struct ProxyStats {
    pub requests: AtomicU64,
    /// `PUT /_matrix/federation/v1/send/{txnId}` requests.
    pub txns: AtomicU64,
    /// Body bytes of those transactions (JSON as sent; HTTP headers and TLS not counted).
    pub txn_body_bytes: AtomicU64,
    /// Bytes of every request: request line, headers and body (TLS framing not counted).
    pub request_bytes: AtomicU64,
    pub pdus: AtomicU64,
    /// `push` entries of `m.presence` EDUs.
    pub presence_entries: AtomicU64,
    pub edus_by_type: Mutex<BTreeMap<String, u64>>,
    pub upstream_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ProxySnapshot {
    pub requests: u64,
    pub txns: u64,
    pub txn_body_bytes: u64,
    pub request_bytes: u64,
    pub pdus: u64,
    pub presence_entries: u64,
    pub edus_by_type: BTreeMap<String, u64>,
    pub upstream_errors: u64,
}

impl ProxyStats {
    pub fn snapshot(&self) -> ProxySnapshot {
        ProxySnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            txns: self.txns.load(Ordering::Relaxed),
            txn_body_bytes: self.txn_body_bytes.load(Ordering::Relaxed),
            request_bytes: self.request_bytes.load(Ordering::Relaxed),
            pdus: self.pdus.load(Ordering::Relaxed),
            presence_entries: self.presence_entries.load(Ordering::Relaxed),
            edus_by_type: self
                .edus_by_type
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
        }
    }

    fn record_txn(&self, body: &[u8]) {
        self.txns.fetch_add(1, Ordering::Relaxed);
        self.txn_body_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let pdus = v["pdus"].as_array().map_or(0, Vec::len);
        self.pdus.fetch_add(pdus as u64, Ordering::Relaxed);
        let mut by_type = self.edus_by_type.lock().unwrap_or_else(|p| p.into_inner());
        for edu in v["edus"].as_array().into_iter().flatten() {
            let kind = edu["edu_type"].as_str().unwrap_or("?").to_owned();
            if kind == "m.presence" {
                let n = edu["content"]["push"].as_array().map_or(0, Vec::len);
                self.presence_entries.fetch_add(n as u64, Ordering::Relaxed);
            }
            *by_type.entry(kind).or_default() += 1;
        }
    }
}

impl ProxySnapshot {
    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &ProxySnapshot) -> ProxySnapshot {
        let mut edus = self.edus_by_type.clone();
        for (k, v) in &earlier.edus_by_type {
            if let Some(n) = edus.get_mut(k) {
                *n = n.saturating_sub(*v);
            }
        }
        edus.retain(|_, n| *n > 0);
        ProxySnapshot {
            requests: self.requests - earlier.requests,
            txns: self.txns - earlier.txns,
            txn_body_bytes: self.txn_body_bytes - earlier.txn_body_bytes,
            request_bytes: self.request_bytes - earlier.request_bytes,
            pdus: self.pdus - earlier.pdus,
            presence_entries: self.presence_entries - earlier.presence_entries,
            edus_by_type: edus,
            upstream_errors: self.upstream_errors - earlier.upstream_errors,
        }
    }
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    stats: Arc<ProxyStats>,
}

/// Bodies above this are refused (federation transactions are far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

async fn forward(State(s): State<ProxyState>, req: Request) -> Response<Body> {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    s.stats.request_bytes.fetch_add(
        (parts.method.as_str().len() + target.len() + 12 + header_bytes + body.len()) as u64,
        Ordering::Relaxed,
    );
    if parts.method == axum::http::Method::PUT && target.starts_with("/_matrix/federation/v1/send/")
    {
        s.stats.record_txn(&body);
    }
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return plain(StatusCode::METHOD_NOT_ALLOWED);
    };
    let mut out = s.http.request(method, format!("{}{target}", s.upstream));
    for name in ["authorization", "content-type", "accept", "user-agent"] {
        for v in parts.headers.get_all(name) {
            out = out.header(name, v.as_bytes());
        }
    }
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(_) => {
            s.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return plain(StatusCode::BAD_GATEWAY);
        }
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.unwrap_or_default();
    let mut r = Response::builder().status(status);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    r.body(Body::from(bytes))
        .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY))
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// Starts the proxy on `listen`, forwarding to `upstream` (e.g. `https://127.0.0.1:8448`).
pub async fn start(listen: SocketAddr, upstream: &str) -> Res<Arc<ProxyStats>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.cert.pem().into_bytes(),
        cert.signing_key.serialize_pem().into_bytes(),
    )
    .await?;
    let stats = Arc::new(ProxyStats::default());
    let state = ProxyState {
        upstream: upstream.trim_end_matches('/').to_owned(),
        // The receiver's certificate is self-signed, on loopback.
        http: reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()?,
        stats: stats.clone(),
    };
    let app = Router::new().fallback(forward).with_state(state);
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let server = axum_server::from_tcp_rustls(listener, tls)?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            eprintln!("federation proxy stopped: {e}");
        }
    });
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_counted_by_edu_type_and_presence_entry() {
        let s = ProxyStats::default();
        let body = serde_json::json!({
            "origin": "a", "pdus": [{}],
            "edus": [
                {"edu_type": "m.presence", "content": {"push": [{"user_id": "@a:a"}, {"user_id": "@b:a"}]}},
                {"edu_type": "m.typing", "content": {}},
            ]
        })
        .to_string();
        let before = s.snapshot();
        s.record_txn(body.as_bytes());
        let d = s.snapshot().since(&before);
        assert_eq!((d.txns, d.pdus, d.presence_entries), (1, 1, 2));
        assert_eq!(d.txn_body_bytes, body.len() as u64);
        assert_eq!(d.edus_by_type.get("m.presence"), Some(&1));
        assert_eq!(d.edus_by_type.get("m.typing"), Some(&1));
    }
}
