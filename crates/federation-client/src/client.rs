//! The HTTPS client: reqwest over rustls, hickory DNS filtered through the IP lists, X-Matrix.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hickory_resolver::TokioResolver;
use ruma::OwnedServerName;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use ruma::signatures::KeyPair;
use server_keys::ServerKeys;

use crate::discovery::{Discovery, Lookups, Resolved};
use crate::ip_filter::IpFilter;
use crate::{FederationConfig, FederationError, Result};

/// Well-known bodies are tiny; anything larger is not a real one.
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer's answer: status and parsed JSON body.
#[derive(Debug, Clone)]
pub struct FederationResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

/// An answer read as bytes (media), not parsed as JSON.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// DNS for reqwest: hickory (reads `/etc/hosts`), SRV target overrides, IP filter.
pub(crate) struct FilteredDns {
    pub(crate) resolver: TokioResolver,
    pub(crate) filter: IpFilter,
    /// Logical (TLS) host → SRV target to dial instead.
    pub(crate) overrides: Mutex<HashMap<String, String>>,
}

impl FilteredDns {
    async fn lookup(&self, host: &str) -> std::result::Result<Vec<IpAddr>, String> {
        let target = self
            .overrides
            .lock()
            .ok()
            .and_then(|m| m.get(host).cloned())
            .unwrap_or_else(|| host.to_owned());
        let ips: Vec<IpAddr> = self
            .resolver
            .lookup_ip(target.as_str())
            .await
            .map_err(|e| format!("cannot resolve {target}: {e}"))?
            .iter()
            .collect();
        let allowed: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| self.filter.permits(*ip))
            .collect();
        if allowed.is_empty() {
            return Err(format!("{target} resolves only to denied IP ranges"));
        }
        Ok(allowed)
    }
}

#[derive(Clone)]
pub(crate) struct DnsHandle(pub(crate) Arc<FilteredDns>);

impl reqwest::dns::Resolve for DnsHandle {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = dns.lookup(&host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Real lookups: SRV through hickory, well-known through the (filtered) HTTPS client.
struct NetLookups {
    dns: Arc<FilteredDns>,
    http: reqwest::Client,
}

impl Lookups for NetLookups {
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<(String, u16)>> {
        Box::pin(async move {
            let Ok(lookup) = self.dns.resolver.srv_lookup(name).await else {
                return Vec::new();
            };
            let mut records: Vec<(u16, String, u16)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => {
                        Some((srv.priority, srv.target.to_string(), srv.port))
                    }
                    _ => None,
                })
                .collect();
            records.sort_by_key(|r| r.0);
            records.into_iter().map(|(_, t, p)| (t, p)).collect()
        })
    }

    fn well_known<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let url = format!("https://{host}/.well-known/matrix/server");
            let resp = self
                .http
                .get(url)
                .timeout(WELL_KNOWN_TIMEOUT)
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body = read_bounded(resp, WELL_KNOWN_MAX_BYTES).await.ok()?;
            let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
            json.get("m.server")?.as_str().map(str::to_owned)
        })
    }
}

pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, Option<reqwest::Error>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > limit {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Outbound federation client (cheap to clone).
#[derive(Clone)]
pub struct FederationClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: FederationConfig,
    keys: ServerKeys,
    http: reqwest::Client,
    dns: Arc<FilteredDns>,
    discovery: Discovery,
}

impl FederationClient {
    /// Builds the client. Must run inside a tokio runtime (the resolver spawns on it).
    pub fn new(config: FederationConfig, keys: ServerKeys) -> Result<FederationClient> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| FederationError::Config(format!("DNS resolver: {e}")))?
            .build()
            .map_err(|e| FederationError::Config(format!("DNS resolver: {e}")))?;
        let dns = Arc::new(FilteredDns {
            resolver,
            filter: IpFilter::new(
                config.ip_range_denylist.clone(),
                config.ip_range_allowlist.clone(),
            ),
            overrides: Mutex::new(HashMap::new()),
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(DnsHandle(dns.clone())))
            .timeout(Duration::from_secs(config.request_timeout_secs))
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("Pulse/", env!("CARGO_PKG_VERSION")));
        if !config.verify_tls {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| FederationError::Config(format!("ca_file {}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| FederationError::Config(format!("ca_file {}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| FederationError::Config(format!("HTTP client: {e}")))?;
        let discovery = Discovery::new(Arc::new(NetLookups {
            dns: dns.clone(),
            http: http.clone(),
        }));
        Ok(FederationClient {
            inner: Arc::new(Inner {
                config,
                keys,
                http,
                dns,
                discovery,
            }),
        })
    }

    pub fn config(&self) -> &FederationConfig {
        &self.inner.config
    }

    pub fn server_keys(&self) -> &ServerKeys {
        &self.inner.keys
    }

    /// `PUT /_matrix/federation/v1/send/{txnId}`; `Ok` only on 2xx (the sender retries otherwise).
    pub async fn send_transaction(
        &self,
        destination: &str,
        txn_id: &str,
        body: &serde_json::Value,
    ) -> Result<FederationResponse> {
        let path = format!(
            "/_matrix/federation/v1/send/{}",
            percent_encode_segment(txn_id)
        );
        let resp = self
            .request(http::Method::PUT, destination, &path, Some(body))
            .await?;
        expect_success(destination, resp)
    }

    /// A signed request to `destination`. `path_and_query` starts with `/_matrix/` and is already
    /// percent-encoded; it is signed exactly as sent. Non-2xx answers are returned, not errors.
    pub async fn request(
        &self,
        method: http::Method,
        destination: &str,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<FederationResponse> {
        let destination_name = OwnedServerName::try_from(destination)
            .map_err(|_| FederationError::BadServerName(destination.to_owned()))?;
        let body_bytes = match body {
            Some(b) => {
                serde_json::to_vec(b).map_err(|e| FederationError::Signing(e.to_string()))?
            }
            None => Vec::new(),
        };
        // serde_json's maps are sorted and its output compact: for a body without floats or
        // out-of-range integers these bytes are already the canonical JSON the signature
        // covers, so they are signed as they are instead of being parsed back and re-encoded.
        let auth = if body.is_none_or(is_canonical) {
            self.authorization_canonical(&method, &destination_name, path_and_query, &body_bytes)?
        } else {
            self.authorization(&method, &destination_name, path_and_query, &body_bytes)?
        };
        self.send(method, destination, path_and_query, body_bytes, Some(auth))
            .await
    }

    /// A signed GET whose answer is read as bytes, at most `max_bytes` (media downloads,
    /// which are larger than JSON answers and not JSON).
    pub async fn get_raw(
        &self,
        destination: &str,
        path_and_query: &str,
        max_bytes: usize,
    ) -> Result<RawResponse> {
        let destination_name = OwnedServerName::try_from(destination)
            .map_err(|_| FederationError::BadServerName(destination.to_owned()))?;
        let method = http::Method::GET;
        let auth = self.authorization(&method, &destination_name, path_and_query, &[])?;
        self.send_raw(
            method,
            destination,
            path_and_query,
            Vec::new(),
            Some(auth),
            max_bytes,
        )
        .await
    }

    /// An unauthenticated GET (e.g. `/_matrix/key/v2/server`).
    pub async fn get_unsigned(&self, destination: &str, path: &str) -> Result<FederationResponse> {
        self.send(http::Method::GET, destination, path, Vec::new(), None)
            .await
    }

    /// The `X-Matrix` header value for a request (public so tests can forge variants).
    pub fn authorization(
        &self,
        method: &http::Method,
        destination: &OwnedServerName,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<String> {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(body)
            .map_err(|e| FederationError::Signing(e.to_string()))?;
        let xm = XMatrix::sign_http_request(
            &req,
            XMatrixSigningInput::new(
                self.inner.keys.server_name().clone(),
                destination.clone(),
                self.inner.keys.pair(),
            ),
        )
        .map_err(|e| FederationError::Signing(e.to_string()))?;
        Ok(xm.to_string())
    }

    /// [`Self::authorization`] for a body that is already canonical JSON (or empty): the
    /// request object `{content, destination, method, origin, uri}` is assembled around the
    /// body's bytes (keys in canonical order) and signed, with no parse of the body.
    pub fn authorization_canonical(
        &self,
        method: &http::Method,
        destination: &OwnedServerName,
        path_and_query: &str,
        canonical_body: &[u8],
    ) -> Result<String> {
        let uri: http::uri::PathAndQuery = path_and_query
            .parse()
            .map_err(|e: http::uri::InvalidUri| FederationError::Signing(e.to_string()))?;
        let origin = self.inner.keys.server_name();
        let mut object = Vec::with_capacity(canonical_body.len() + 160);
        let string = |out: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(out, s).map_err(|e| FederationError::Signing(e.to_string()))
        };
        object.push(b'{');
        if !canonical_body.is_empty() {
            object.extend_from_slice(br#""content":"#);
            object.extend_from_slice(canonical_body);
            object.push(b',');
        }
        object.extend_from_slice(br#""destination":"#);
        string(&mut object, destination.as_str())?;
        object.extend_from_slice(br#","method":"#);
        string(&mut object, method.as_str())?;
        object.extend_from_slice(br#","origin":"#);
        string(&mut object, origin.as_str())?;
        object.extend_from_slice(br#","uri":"#);
        string(&mut object, uri.as_str())?;
        object.push(b'}');
        let (_, signature) = self.inner.keys.pair().sign(&object).into_parts();
        let key = ruma::OwnedServerSigningKeyId::try_from(self.inner.keys.key_id())
            .map_err(|e| FederationError::Signing(e.to_string()))?;
        Ok(XMatrix::new(
            origin.clone(),
            destination.clone(),
            key,
            ruma::serde::Base64::new(signature),
        )
        .to_string())
    }

    async fn send(
        &self,
        method: http::Method,
        destination: &str,
        path_and_query: &str,
        body: Vec<u8>,
        auth: Option<String>,
    ) -> Result<FederationResponse> {
        let limit = self.inner.config.max_response_bytes;
        let raw = self
            .send_raw(method, destination, path_and_query, body, auth, limit)
            .await?;
        let body = if raw.bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&raw.bytes).map_err(|e| FederationError::BadJson {
                destination: destination.to_owned(),
                message: e.to_string(),
            })?
        };
        Ok(FederationResponse {
            status: raw.status,
            body,
        })
    }

    async fn send_raw(
        &self,
        method: http::Method,
        destination: &str,
        path_and_query: &str,
        body: Vec<u8>,
        auth: Option<String>,
        limit: usize,
    ) -> Result<RawResponse> {
        if !self.inner.config.enabled {
            return Err(FederationError::Disabled);
        }
        let resolved = self.inner.discovery.resolve(destination).await?;
        self.check_target(destination, &resolved)?;
        let url = format!("{}{}", resolved.base_url(), path_and_query);
        let mut req = self
            .inner
            .http
            .request(method, url)
            .header(http::header::HOST, &resolved.host_header);
        if let Some(auth) = auth {
            req = req.header(http::header::AUTHORIZATION, auth);
        }
        if !body.is_empty() {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let transport = |e: reqwest::Error| FederationError::Transport {
            destination: destination.to_owned(),
            message: format!("{e:#}"),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_bounded(resp, limit).await.map_err(|e| match e {
            Some(e) => transport(e),
            None => FederationError::TooLarge(destination.to_owned()),
        })?;
        Ok(RawResponse {
            status,
            content_type,
            bytes,
        })
    }

    /// IP literals never reach the DNS resolver, so they are filtered here; SRV targets are
    /// registered so the resolver dials them under the logical host's TLS name.
    fn check_target(&self, destination: &str, resolved: &Resolved) -> Result<()> {
        if let Ok(ip) = resolved.tls_host.parse::<IpAddr>()
            && !self.inner.dns.filter.permits(ip)
        {
            return Err(FederationError::Denied(destination.to_owned()));
        }
        if let Some(target) = &resolved.connect_host
            && let Ok(mut map) = self.inner.dns.overrides.lock()
        {
            map.insert(resolved.tls_host.clone(), target.clone());
        }
        Ok(())
    }
}

fn expect_success(destination: &str, resp: FederationResponse) -> Result<FederationResponse> {
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        Err(FederationError::Status {
            destination: destination.to_owned(),
            status: resp.status,
            body: resp.body.to_string().chars().take(500).collect(),
        })
    }
}

/// Whether `value` serialises to canonical JSON as it is: every number an integer in
/// `[-(2^53)+1, 2^53-1]` (canonical JSON has no floats; ruma refuses the others too).
fn is_canonical(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    const MAX: i64 = (1 << 53) - 1;
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(|i| (-MAX..=MAX).contains(&i))
            .or_else(|| n.as_u64().map(|u| u <= MAX as u64))
            .unwrap_or(false),
        Value::Array(items) => items.iter().all(is_canonical),
        Value::Object(map) => map.values().all(is_canonical),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ruma::api::federation::authentication::XMatrix;
    use ruma::signatures::{PublicKeyMap, PublicKeySet};

    use super::*;

    #[tokio::test]
    async fn authorization_verifies_and_detects_tampering() {
        let keys = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
        let client = FederationClient::new(FederationConfig::default(), keys.clone()).unwrap();
        let dest: OwnedServerName = "b.test".try_into().unwrap();
        let body = br#"{"pdus":[],"edus":[]}"#;
        let header = client
            .authorization(
                &http::Method::PUT,
                &dest,
                "/_matrix/federation/v1/send/1",
                body,
            )
            .unwrap();
        let xm = XMatrix::parse(&header).unwrap();
        assert_eq!(xm.origin.as_str(), "a.test");
        assert_eq!(
            xm.destination.as_deref().map(|d| d.as_str()),
            Some("b.test")
        );
        let mut set = PublicKeySet::new();
        set.insert(
            keys.key_id().to_owned(),
            ruma::serde::Base64::parse(keys.public_key_base64()).unwrap(),
        );
        let mut map = PublicKeyMap::new();
        map.insert("a.test".into(), set);
        let req = |uri: &str, body: &'static [u8]| {
            http::Request::builder()
                .method("PUT")
                .uri(uri)
                .body(body)
                .unwrap()
        };
        xm.verify_http_request(&req("/_matrix/federation/v1/send/1", body), &dest, &map)
            .unwrap();
        assert!(
            xm.verify_http_request(&req("/_matrix/federation/v1/send/2", body), &dest, &map)
                .is_err()
        );
        assert!(
            xm.verify_http_request(&req("/_matrix/federation/v1/send/1", b"{}"), &dest, &map)
                .is_err()
        );
        let other: OwnedServerName = "c.test".try_into().unwrap();
        assert!(
            xm.verify_http_request(&req("/_matrix/federation/v1/send/1", body), &other, &map)
                .is_err()
        );
    }

    #[tokio::test]
    async fn denied_ip_literal_is_refused_before_connecting() {
        let keys = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
        let client = FederationClient::new(FederationConfig::default(), keys).unwrap();
        let err = client
            .get_unsigned("127.0.0.1:1", "/_matrix/key/v2/server")
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::Denied(_)), "{err}");
    }

    #[tokio::test]
    async fn canonical_signing_matches_ruma_byte_for_byte() {
        let keys = ServerKeys::generate_ephemeral("a.test:8448".try_into().unwrap()).unwrap();
        let client = FederationClient::new(FederationConfig::default(), keys).unwrap();
        let dest: OwnedServerName = "b.test".try_into().unwrap();
        let bodies = [
            serde_json::json!({"origin": "a.test", "origin_server_ts": 1_796_283_719_000u64,
                "pdus": [], "edus": [{"edu_type": "m.presence", "content": {"push": [
                    {"user_id": "@a:a.test", "presence": "online", "last_active_ago": 0,
                     "status_msg": "caf\u{e9} \"quoted\" \\ tab\t nl\n \u{1F600} \u{7}",
                     "currently_active": true, "allowed_recipients": ["@*:b.test"]}]}}]}),
            serde_json::json!({"z": {"b": [1, -2, {"y": null, "x": false}]}, "a": ""}),
            serde_json::json!([]),
        ];
        for (method, uri) in [
            (http::Method::PUT, "/_matrix/federation/v1/send/p1-2"),
            (
                http::Method::GET,
                "/_matrix/federation/v1/query/profile?user_id=%40a%3Aa.test&field=displayname",
            ),
        ] {
            for body in &bodies {
                assert!(is_canonical(body));
                let bytes = serde_json::to_vec(body).unwrap();
                assert_eq!(
                    client
                        .authorization_canonical(&method, &dest, uri, &bytes)
                        .unwrap(),
                    client.authorization(&method, &dest, uri, &bytes).unwrap(),
                    "{method} {uri} {body}"
                );
            }
            assert_eq!(
                client
                    .authorization_canonical(&method, &dest, uri, b"")
                    .unwrap(),
                client.authorization(&method, &dest, uri, b"").unwrap()
            );
        }
    }

    #[test]
    fn floats_and_huge_integers_are_not_canonical() {
        use serde_json::json;
        assert!(is_canonical(
            &json!({"a": [9_007_199_254_740_991u64, -9_007_199_254_740_991i64]})
        ));
        assert!(!is_canonical(&json!({"a": 1.5})));
        assert!(!is_canonical(&json!({"a": [9_007_199_254_740_992u64]})));
        assert!(!is_canonical(
            &json!({"a": {"b": -9_007_199_254_740_992i64}})
        ));
        assert!(!is_canonical(&json!({"a": u64::MAX})));
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(percent_encode_segment("a b/c"), "a%20b%2Fc");
    }
}
