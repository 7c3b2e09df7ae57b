//! Abuse limits of the listeners (issue 19 item 5), configured in `[limits]`:
//!
//! * **Slowloris**: a connection must deliver a request's headers within
//!   `header_read_timeout_ms` (hyper's header timeout, also the keep-alive idle limit between
//!   requests) and its body within `body_read_timeout_ms` of the headers ([`TimeoutBody`]);
//!   otherwise the request fails and the connection is closed.
//! * **Connections per address**: at most `max_connections_per_address` open connections
//!   per peer address ([`ConnLimits`]); one more is answered with 429 `M_LIMIT_EXCEEDED`
//!   (plain HTTP) or closed (TLS) at once. Addresses in `connection_limit_exempt` (loopback by
//!   default: a reverse proxy on the same machine) and `[rate_limits] trusted_proxies` are
//!   not counted.
//! * **Inbound federation per origin** ([`FederationLimiter`]): a token bucket per
//!   (claimed `X-Matrix` origin, peer address) and a larger one per peer address, checked
//!   before the signature is verified (so a flood costs no key fetches); 429
//!   `M_LIMIT_EXCEEDED` with `retry_after_ms`. Keying on the address too means forging a
//!   busy peer's name cannot use up that peer's budget.
//! * **Open files**: [`raise_open_files_limit`] raises the soft `RLIMIT_NOFILE` to the hard
//!   limit at start, so 10,000 long-polls (one socket each) fit.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::config::Limits;

/// Open connections per peer address.
pub struct ConnLimits {
    max_per_address: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Held for a connection's life; gives its slot back when dropped.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    addr: IpAddr,
}

impl ConnLimits {
    /// `max_per_address` 0: unlimited.
    pub fn new(max_per_address: usize, exempt: Vec<IpAddr>) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_per_address,
            exempt,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `addr` (`Ok(None)`: not counted), or `Err(())`
    /// when the address already has the maximum open.
    pub fn try_acquire(self: &Arc<Self>, addr: IpAddr) -> Result<Option<ConnGuard>, ()> {
        let addr = canonical(addr);
        if self.max_per_address == 0 || self.exempt.contains(&addr) {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(addr).or_insert(0);
        if *n >= self.max_per_address {
            return Err(());
        }
        *n += 1;
        Ok(Some(ConnGuard {
            limits: self.clone(),
            addr,
        }))
    }

    /// Addresses with an open counted connection (the map holds nothing else).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// An IPv4 peer seen through an IPv6 socket counts as the IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// A stream that holds its connection slot.
pub struct Guarded<T> {
    inner: T,
    _guard: Option<ConnGuard>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The listener side of `[limits]`.
#[derive(Clone)]
pub struct ListenerLimits {
    pub conns: Arc<ConnLimits>,
    pub header_read_timeout: Duration,
}

impl ListenerLimits {
    pub fn from_config(limits: &Limits, trusted_proxies: &[IpAddr]) -> Self {
        let mut exempt: Vec<IpAddr> = limits
            .connection_limit_exempt
            .iter()
            .copied()
            .map(canonical)
            .collect();
        exempt.extend(trusted_proxies.iter().copied().map(canonical));
        ListenerLimits {
            conns: ConnLimits::new(limits.max_connections_per_address, exempt),
            header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
        }
    }
}

const REFUSED: &str = "{\"errcode\":\"M_LIMIT_EXCEEDED\",\"error\":\"Too many connections from this address\",\"retry_after_ms\":1000}";

/// Serve `app` over plain HTTP/1 on `tcp` with the listener limits, until `stop` turns true.
/// Each request carries the peer in `ConnectInfo<SocketAddr>` (as axum's `serve` would).
pub async fn serve_plain(
    tcp: TcpListener,
    app: Router,
    limits: ListenerLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener lives on.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let guard = match limits.conns.try_acquire(peer.ip()) {
            Ok(g) => g,
            Err(()) => {
                debug!(%peer, "connection refused: too many from this address");
                tokio::spawn(refuse(stream));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let header_timeout = limits.header_read_timeout;
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(Guarded {
                inner: stream,
                _guard: guard,
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(io, hyper_util::service::TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        debug!(%peer, "connection ended: {e}");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Tell a refused connection why (best effort, bounded), then close it.
async fn refuse(mut stream: TcpStream) {
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{REFUSED}",
        REFUSED.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The TLS listener's acceptor with the connection cap in front of TLS (a refused
/// connection costs no handshake).
#[derive(Clone)]
pub struct CappedAcceptor<A> {
    pub inner: A,
    pub conns: Arc<ConnLimits>,
}

impl<A, S> axum_server::accept::Accept<TcpStream, S> for CappedAcceptor<A>
where
    A: axum_server::accept::Accept<Guarded<TcpStream>, S> + Clone + Send + Sync + 'static,
    A::Future: Send + 'static,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(A::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let guard = match stream.peer_addr() {
            Ok(peer) => self.conns.try_acquire(peer.ip()),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        match guard {
            Ok(guard) => Box::pin(self.inner.accept(
                Guarded {
                    inner: stream,
                    _guard: guard,
                },
                service,
            )),
            Err(()) => {
                Box::pin(async { Err(io::Error::other("too many connections from this address")) })
            }
        }
    }
}

/// Why a request body failed: it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {} ms", .0.as_millis())]
pub struct BodyTimedOut(Duration);

/// A request body that fails once `timeout` has passed since the request's headers arrived
/// without the body being complete (a slow-body attack holds a request open otherwise).
pub struct TimeoutBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl http_body::Body for TimeoutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Give every request with a body the `body_read_timeout` (a layer over the whole app).
pub fn with_body_timeout(app: Router, timeout: Duration) -> Router {
    app.layer(tower::util::MapRequestLayer::new(
        move |req: Request| -> Request {
            if http_body::Body::is_end_stream(req.body()) {
                return req;
            }
            req.map(|inner| {
                Body::new(TimeoutBody {
                    inner,
                    deadline: Box::pin(tokio::time::sleep(timeout)),
                    timeout,
                })
            })
        },
    ))
}

/// Inbound federation budgets: per (claimed origin, peer address) and per peer address.
pub struct FederationLimiter {
    per_origin: api_client::Buckets<(String, IpAddr)>,
    per_address: api_client::Buckets<IpAddr>,
    enabled: bool,
}

impl FederationLimiter {
    pub fn from_config(limits: &Limits) -> Arc<Self> {
        Arc::new(FederationLimiter {
            per_origin: api_client::Buckets::new(
                limits.federation_per_origin_per_second.max(0.001),
                limits.federation_per_origin_burst.max(1.0),
            ),
            per_address: api_client::Buckets::new(
                limits.federation_per_address_per_second.max(0.001),
                limits.federation_per_address_burst.max(1.0),
            ),
            enabled: limits.federation_per_origin_per_second > 0.0,
        })
    }

    /// Charge one request: `Err(retry_after_ms)` when a budget is used up.
    pub fn check(&self, origin: Option<&str>, addr: IpAddr, now: Instant) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let addr = canonical(addr);
        if let Some(origin) = origin {
            self.per_origin
                .peek(&(origin.to_owned(), addr), now)
                .and_then(|()| self.per_address.peek(&addr, now))?;
            self.per_origin.charge(&(origin.to_owned(), addr), now);
            self.per_address.charge(&addr, now);
            Ok(())
        } else {
            self.per_address.take(&addr, now)
        }
    }
}

/// The `origin` of an `Authorization: X-Matrix ...` header (lower-cased; `None` without a
/// well-formed one). Only a key for the limiter: the signature is checked later.
pub fn x_matrix_origin(value: &str) -> Option<String> {
    let (scheme, params) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("X-Matrix") {
        return None;
    }
    for param in params.split(',') {
        let Some((name, v)) = param.trim().split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("origin") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            // Server names are at most 255 bytes; anything else is not a key worth a bucket.
            if v.is_empty() || v.len() > 255 {
                return None;
            }
            return Some(v.to_ascii_lowercase());
        }
    }
    None
}

/// Middleware of the federation routes: the [`FederationLimiter`] check.
pub async fn federation_limit(
    State(limiter): State<Arc<FederationLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let origin = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(x_matrix_origin);
        if let Err(retry) = limiter.check(origin.as_deref(), peer, Instant::now()) {
            return api_client::MatrixError::limit_exceeded(retry).into_response();
        }
    }
    next.run(req).await
}

/// Raise the soft `RLIMIT_NOFILE` to `want` (0: the hard limit), never above the hard limit.
/// Returns (before, after).
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 here, not on every target
pub fn raise_open_files_limit(want: u64) -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = rl.rlim_cur as u64;
    // Linux refuses more than fs.nr_open (default 1,048,576), so an "unlimited" hard limit
    // is capped there.
    let hard = (rl.rlim_max as u64).min(1 << 20);
    let target = if want == 0 { hard } else { want.min(hard) };
    if target <= before {
        return Ok((before, before));
    }
    rl.rlim_cur = target as libc::rlim_t;
    // SAFETY: as above; setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_capped_per_address_and_given_back() {
        let limits = ConnLimits::new(2, vec!["127.0.0.1".parse().expect("ip")]);
        let a: IpAddr = "203.0.113.1".parse().expect("ip");
        let b: IpAddr = "203.0.113.2".parse().expect("ip");
        let g1 = limits.try_acquire(a).expect("first");
        let g2 = limits.try_acquire(a).expect("second");
        assert!(limits.try_acquire(a).is_err(), "third from a is refused");
        // The same address as an IPv4-mapped IPv6 peer counts the same.
        assert!(
            limits
                .try_acquire("::ffff:203.0.113.1".parse().expect("ip"))
                .is_err()
        );
        assert!(
            limits.try_acquire(b).is_ok(),
            "other addresses are not affected"
        );
        drop(g1);
        let g3 = limits.try_acquire(a).expect("a slot came back");
        for _ in 0..10 {
            assert!(matches!(
                limits.try_acquire("127.0.0.1".parse().expect("ip")),
                Ok(None)
            ));
        }
        drop((g2, g3));
        assert_eq!(
            limits.tracked(),
            0,
            "closed addresses leave no entry behind"
        );
    }

    #[test]
    fn x_matrix_origin_is_parsed_leniently() {
        assert_eq!(
            x_matrix_origin(
                r#"X-Matrix origin="Evil.Example",destination="us",key="ed25519:a",sig="x""#
            ),
            Some("evil.example".into())
        );
        assert_eq!(
            x_matrix_origin("x-matrix key=\"k\", origin=plain.example:8448"),
            Some("plain.example:8448".into())
        );
        assert_eq!(x_matrix_origin("Bearer abc"), None);
        assert_eq!(x_matrix_origin("X-Matrix"), None);
        assert_eq!(x_matrix_origin("X-Matrix origin=\"\""), None);
        assert_eq!(
            x_matrix_origin(&format!("X-Matrix origin={}", "a".repeat(300))),
            None
        );
    }

    #[test]
    fn federation_budgets_per_origin_and_address() {
        let limits = Limits {
            federation_per_origin_per_second: 0.001,
            federation_per_origin_burst: 3.0,
            federation_per_address_per_second: 0.001,
            federation_per_address_burst: 5.0,
            ..Limits::default()
        };
        let l = FederationLimiter::from_config(&limits);
        let t = Instant::now();
        let a: IpAddr = "198.51.100.1".parse().expect("ip");
        let b: IpAddr = "198.51.100.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.check(Some("one.example"), a, t).is_ok());
        }
        assert!(l.check(Some("one.example"), a, t).is_err(), "origin budget");
        // The same name from another address is another budget (forging cannot starve it).
        assert!(l.check(Some("one.example"), b, t).is_ok());
        // A fresh origin name from the busy address: only the address budget is left (2).
        assert!(l.check(Some("two.example"), a, t).is_ok());
        assert!(l.check(Some("three.example"), a, t).is_ok());
        let retry = l
            .check(Some("four.example"), a, t)
            .expect_err("address budget");
        assert!(retry > 0);
        assert!(l.check(None, a, t).is_err(), "unsigned requests share it");
        // Off: never refuses.
        let off = FederationLimiter::from_config(&Limits {
            federation_per_origin_per_second: 0.0,
            ..Limits::default()
        });
        for _ in 0..1000 {
            assert!(off.check(Some("x"), a, t).is_ok());
        }
    }

    #[test]
    fn open_files_limit_is_raised_to_at_most_the_hard_limit() {
        let (before, after) = raise_open_files_limit(0).expect("rlimit");
        assert!(after >= before);
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        #[allow(clippy::unnecessary_cast)]
        let cur = rl.rlim_cur as u64;
        assert_eq!(cur, after);
        assert!(rl.rlim_cur <= rl.rlim_max);
    }
}
