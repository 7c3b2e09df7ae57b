//! HTTP request metrics: a middleware on the whole app that counts each request by route
//! template, method and status, and times it into a histogram by route and method.
//!
//! Labels carry the *matched route template* (`/_matrix/client/v3/rooms/{roomId}/send/...`),
//! never the raw path, so no user or room ID reaches a label and the series count stays
//! bounded by the routes Pulse has. Requests no route matched share `route="unmatched"`.
//! The client API sits behind a fallback service, so its router copies the matched path
//! into the response (`api_client::expose_matched_path`); federation routes are matched
//! by the outer router and seen in the request.
//!
//! Per request: one `Family` lookup per series (a read lock, uncontended after a series
//! exists, no allocation: the key holds the `MatchedPath`'s shared string), and relaxed
//! atomic adds. The histogram is our own atomic one ([`AtomicHistogram`]) rather than
//! prometheus-client's, which takes a mutex per observation.
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets, seconds (1 ms to 2 min: `/sync` long-polls land in
/// the top ones).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// The request metrics, shared by the middleware and the registry.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, AtomicHistogram>,
    /// `/sync` requests open now (long-polls waiting, or being answered).
    pub syncs_open: Gauge<i64, AtomicI64>,
}

/// The route template a request matched, or none.
#[derive(Debug, Clone)]
pub struct Route(Option<MatchedPath>);

impl Route {
    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Route {}
impl Hash for Route {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// `pulse_http_requests_total`'s labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub route: Route,
    pub method: &'static str,
    pub status: u16,
}

/// `pulse_http_request_duration_seconds`' labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub route: Route,
    pub method: &'static str,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", self.route.as_str()).encode(encoder.encode_label())?;
        ("method", self.method).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", self.route.as_str()).encode(encoder.encode_label())?;
        ("method", self.method).encode(encoder.encode_label())
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The client `/sync` endpoints, whose open requests the gauge counts.
fn is_sync(route: &str) -> bool {
    matches!(route, "/_matrix/client/v3/sync" | "/_matrix/client/r0/sync")
}

/// Decrements the open-`/sync` gauge however the request ends (a client that disconnects
/// drops the future).
struct SyncOpen<'a>(&'a Gauge<i64, AtomicI64>);
impl Drop for SyncOpen<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    // The client router matches behind a fallback: its route is only known afterwards, but
    // a sync is recognisable by its path (no ID in it) before it starts waiting.
    let path = req.uri().path();
    let sync = path.ends_with("/sync") && is_sync(path.trim_end_matches('/'));
    let _open = sync.then(|| {
        m.syncs_open.inc();
        SyncOpen(&m.syncs_open)
    });
    let resp = next.run(req).await;
    let route = Route(matched.or_else(|| resp.extensions().get::<MatchedPath>().cloned()));
    let status = resp.status().as_u16();
    m.duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method,
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    resp
}

/// A histogram of fixed [`LATENCY_BUCKETS`] made of atomics: observing is a bucket search
/// and three relaxed adds, no lock.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Per bucket (non-cumulative), the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations in nanoseconds (u64 nanoseconds last 584 years).
    sum_nanos: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            buckets: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' sum, so a scrape racing an observation stays consistent.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = AtomicHistogram::default();
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(500.0);
        assert_eq!(h.count(), 3);
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[2].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed), 1);
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        assert!((sum - 500.0035).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn sync_paths_are_recognised() {
        assert!(is_sync("/_matrix/client/v3/sync"));
        assert!(!is_sync("/_matrix/client/v3/rooms/!a:b/sync"));
    }
}
