//! Server discovery (S2S "Resolving server names"): where to connect for a server name.
//!
//! The lookups are behind [`Lookups`] so the decision logic is tested without a network.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::{FederationError, Result};

const DEFAULT_PORT: u16 = 8448;
/// Well-known answers are kept 24 h; failures 1 h (the spec's upper bound for errors).
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_FAILURE_TTL: Duration = Duration::from_secs(3600);

/// Where and how to connect for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Host used in the URL: TLS SNI and certificate name (an IP literal sends no SNI).
    pub tls_host: String,
    pub port: u16,
    /// `Host` header value.
    pub host_header: String,
    /// Host whose addresses are dialled, when it differs from `tls_host` (an SRV target).
    pub connect_host: Option<String>,
}

impl Resolved {
    /// `https://host:port` (IPv6 literals bracketed).
    pub fn base_url(&self) -> String {
        if self.tls_host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("https://[{}]:{}", self.tls_host, self.port)
        } else {
            format!("https://{}:{}", self.tls_host, self.port)
        }
    }
}

/// The network lookups discovery needs.
pub trait Lookups: Send + Sync {
    /// SRV records of `name` as (target, port), best first; empty when there are none.
    fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<(String, u16)>>;
    /// The `m.server` value of `https://<host>/.well-known/matrix/server`, if valid.
    fn well_known<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<String>>;
}

/// Splits `host[:port]` / `[v6][:port]`.
pub fn split_host_port(name: &str) -> Result<(String, Option<u16>)> {
    let bad = || FederationError::BadServerName(name.to_owned());
    if let Some(rest) = name.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?,
            ),
        };
        return Ok((host.to_owned(), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            Ok((host.to_owned(), Some(port.parse().map_err(|_| bad())?)))
        }
        Some(_) => Err(bad()),
        None if !name.is_empty() => Ok((name.to_owned(), None)),
        None => Err(bad()),
    }
}

fn host_header(host: &str, port: Option<u16>) -> String {
    let host = if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Discovery with a well-known cache.
pub struct Discovery {
    lookups: Arc<dyn Lookups>,
    well_known_cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl Discovery {
    pub fn new(lookups: Arc<dyn Lookups>) -> Discovery {
        Discovery {
            lookups,
            well_known_cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(&self, server_name: &str) -> Result<Resolved> {
        let (host, port) = split_host_port(server_name)?;
        // 1. IP literal; 2. explicit port: no well-known, no SRV.
        if host.parse::<IpAddr>().is_ok() || port.is_some() {
            return Ok(Resolved {
                host_header: host_header(&host, port),
                tls_host: host,
                port: port.unwrap_or(DEFAULT_PORT),
                connect_host: None,
            });
        }
        // 3. Delegation through .well-known.
        if let Some(delegated) = self.well_known(&host).await
            && let Ok((d_host, d_port)) = split_host_port(&delegated)
        {
            if d_host.parse::<IpAddr>().is_ok() || d_port.is_some() {
                return Ok(Resolved {
                    host_header: host_header(&d_host, d_port),
                    tls_host: d_host,
                    port: d_port.unwrap_or(DEFAULT_PORT),
                    connect_host: None,
                });
            }
            return Ok(self.srv_or_default(&d_host).await);
        }
        // 4–6. SRV on the server name itself, else 8448.
        Ok(self.srv_or_default(&host).await)
    }

    async fn srv_or_default(&self, host: &str) -> Resolved {
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let records = self.lookups.srv(&format!("{prefix}.{host}.")).await;
            if let Some((target, port)) = records.into_iter().next() {
                return Resolved {
                    tls_host: host.to_owned(),
                    port,
                    host_header: host.to_owned(),
                    connect_host: Some(target.trim_end_matches('.').to_owned()),
                };
            }
        }
        Resolved {
            tls_host: host.to_owned(),
            port: DEFAULT_PORT,
            host_header: host.to_owned(),
            connect_host: None,
        }
    }

    async fn well_known(&self, host: &str) -> Option<String> {
        if let Ok(cache) = self.well_known_cache.lock()
            && let Some((until, answer)) = cache.get(host)
            && *until > Instant::now()
        {
            return answer.clone();
        }
        let answer = self.lookups.well_known(host).await;
        let ttl = if answer.is_some() {
            WELL_KNOWN_TTL
        } else {
            WELL_KNOWN_FAILURE_TTL
        };
        if let Ok(mut cache) = self.well_known_cache.lock() {
            cache.insert(host.to_owned(), (Instant::now() + ttl, answer.clone()));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Fake {
        srv: HashMap<String, (String, u16)>,
        well_known: HashMap<String, String>,
        well_known_calls: AtomicUsize,
    }

    impl Lookups for Fake {
        fn srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<(String, u16)>> {
            Box::pin(async move { self.srv.get(name).cloned().into_iter().collect() })
        }
        fn well_known<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<String>> {
            self.well_known_calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { self.well_known.get(host).cloned() })
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn resolved(tls: &str, port: u16, host: &str, connect: Option<&str>) -> Resolved {
        Resolved {
            tls_host: tls.into(),
            port,
            host_header: host.into(),
            connect_host: connect.map(Into::into),
        }
    }

    #[test]
    fn ip_literals_and_explicit_ports_skip_lookups() {
        let fake = Arc::new(Fake::default());
        let d = Discovery::new(fake.clone());
        run(async {
            assert_eq!(
                d.resolve("1.2.3.4").await.unwrap(),
                resolved("1.2.3.4", 8448, "1.2.3.4", None)
            );
            assert_eq!(
                d.resolve("127.0.0.1:8481").await.unwrap(),
                resolved("127.0.0.1", 8481, "127.0.0.1:8481", None)
            );
            let v6 = d.resolve("[::1]:99").await.unwrap();
            assert_eq!(v6, resolved("::1", 99, "[::1]:99", None));
            assert_eq!(v6.base_url(), "https://[::1]:99");
            assert_eq!(
                d.resolve("example.org:443").await.unwrap(),
                resolved("example.org", 443, "example.org:443", None)
            );
        });
        assert_eq!(fake.well_known_calls.load(Ordering::SeqCst), 0);
        assert!(split_host_port("example.org:notaport").is_err());
        assert!(split_host_port("[::1").is_err());
    }

    #[test]
    fn well_known_delegation_srv_and_default() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("a.org".into(), "matrix.a.org:8000".into());
        fake.well_known.insert("b.org".into(), "deleg.b.org".into());
        fake.srv.insert(
            "_matrix-fed._tcp.deleg.b.org.".into(),
            ("srv.b.org.".into(), 9000),
        );
        fake.srv
            .insert("_matrix._tcp.c.org.".into(), ("old.c.org.".into(), 7000));
        let fake = Arc::new(fake);
        let d = Discovery::new(fake.clone());
        run(async {
            assert_eq!(
                d.resolve("a.org").await.unwrap(),
                resolved("matrix.a.org", 8000, "matrix.a.org:8000", None)
            );
            assert_eq!(
                d.resolve("b.org").await.unwrap(),
                resolved("deleg.b.org", 9000, "deleg.b.org", Some("srv.b.org"))
            );
            assert_eq!(
                d.resolve("c.org").await.unwrap(),
                resolved("c.org", 7000, "c.org", Some("old.c.org"))
            );
            assert_eq!(
                d.resolve("d.org").await.unwrap(),
                resolved("d.org", 8448, "d.org", None)
            );
            // Cached: a second resolve asks no well-known again.
            let before = fake.well_known_calls.load(Ordering::SeqCst);
            d.resolve("a.org").await.unwrap();
            d.resolve("d.org").await.unwrap();
            assert_eq!(fake.well_known_calls.load(Ordering::SeqCst), before);
        });
    }
}
