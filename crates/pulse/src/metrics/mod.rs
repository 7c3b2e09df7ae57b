//! Prometheus metrics: `GET /metrics` on its own listener (`[metrics]`, off by default).
//!
//! The crate is `prometheus-client` (the Prometheus project's own Rust client): its
//! [`Registry`] is a plain value, built here once and shared in an `Arc` with the listener,
//! so no global recorder exists and every service is passed explicitly, as everywhere in
//! Pulse. The services do not depend on it: each keeps plain atomic counters of its own
//! (`PresenceService::stats`, `FederationSender::stats`, `FederationState::stats`,
//! `Db::stats`), and [`ServerCollector`] turns them into series at scrape time. Only the
//! HTTP middleware ([`http`]) records into prometheus-client types directly.
//!
//! The same [`ServerView`] feeds the status page (`status.rs`), with [`Rates`] for
//! "updates per second".
pub mod http;
pub mod process;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// What the collectors and the status page read: the services, by reference.
pub struct ServerView {
    pub presence: Arc<presence_service::PresenceService>,
    pub db: Arc<storage::Db>,
    pub accounts: Arc<accounts::AccountService>,
    /// Outbound and inbound federation, when it runs.
    pub federation: Option<FederationView>,
    pub started: Instant,
    pub rates: Rates,
}

pub struct FederationView {
    pub sender: crate::federation::Sender,
    pub inbound: Arc<api_federation::stats::InboundStats>,
}

impl std::fmt::Debug for ServerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerView").finish_non_exhaustive()
    }
}

/// How often [`Rates`] samples the presence counters, and how far back a rate looks.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Recent samples of the presence counters, for per-second rates on the status page
/// (Prometheus computes its own with `rate()`).
#[derive(Debug, Default)]
pub struct Rates {
    /// `(when, presence inputs, published changes)`, oldest first.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl Rates {
    fn sample(&self, presence: &presence_service::PresenceService) {
        let s = presence.stats();
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        q.push_back((
            now,
            s.updates_in_local + s.updates_in_federation,
            s.published,
        ));
        while q
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            q.pop_front();
        }
    }

    /// `(inputs per second, published changes per second)` over the samples kept, with the
    /// counters now as the newest point; `None` before the first sample.
    pub fn per_second(&self, presence: &presence_service::PresenceService) -> Option<(f64, f64)> {
        let s = presence.stats();
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (t0, in0, pub0) = *q.front()?;
        let secs = t0.elapsed().as_secs_f64();
        if secs < 0.5 {
            return None;
        }
        let inputs = s.updates_in_local + s.updates_in_federation;
        Some((
            inputs.saturating_sub(in0) as f64 / secs,
            s.published.saturating_sub(pub0) as f64 / secs,
        ))
    }

    /// Samples forever (the task ends with the runtime).
    pub fn spawn_sampler(view: Arc<ServerView>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                view.rates.sample(&view.presence);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    }
}

/// The registry with every Pulse series.
pub fn registry(http: Arc<http::HttpMetrics>, view: Arc<ServerView>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "pulse_http_requests",
        "HTTP requests by matched route template, method and status",
        http.requests.clone(),
    );
    r.register(
        "pulse_http_request_duration_seconds",
        "HTTP request latency by matched route template and method",
        http.duration.clone(),
    );
    r.register(
        "pulse_sync_open_requests",
        "Client /sync requests open now (long-polls included)",
        http.syncs_open.clone(),
    );
    r.register_collector(Box::new(ServerCollector(view)));
    r
}

/// Text exposition (OpenMetrics) of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("encoding metrics failed: {e}");
    }
    out
}

/// The `/metrics` listener's router.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&registry),
                )
                    .into_response()
            }
        }),
    )
}

/// Reads the services' counters at scrape time.
#[derive(Debug)]
pub struct ServerCollector(pub Arc<ServerView>);

type Labels<'a> = &'a [(&'a str, &'a str)];

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, V)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ServerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = &self.0;
        let none: Labels = &[];
        gauge(
            &mut enc,
            "pulse_build_info",
            "Pulse's version",
            &[(&[("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )?;
        gauge(
            &mut enc,
            "pulse_uptime_seconds",
            "Seconds since this Pulse started",
            &[(none, v.started.elapsed().as_secs_f64())],
        )?;

        let p = v.presence.stats();
        let fed = v
            .federation
            .as_ref()
            .map(|f| (f.sender.stats(), f.inbound.snapshot()));
        let presence_out_fed = fed.map_or(0, |(s, _)| s.presence_entries_sent);
        counter(
            &mut enc,
            "pulse_presence_updates",
            "Presence updates: in = inputs from local clients (status, override, sync with \
             set_presence) or entries accepted from other servers; out = changes published to \
             local syncs or entries sent to other servers",
            &[
                (&[("direction", "in"), ("via", "local")], p.updates_in_local),
                (
                    &[("direction", "in"), ("via", "federation")],
                    p.updates_in_federation,
                ),
                (&[("direction", "out"), ("via", "local")], p.published),
                (
                    &[("direction", "out"), ("via", "federation")],
                    presence_out_fed,
                ),
            ],
        )?;
        let transitions: Vec<([(&str, &str); 1], u64)> = p
            .transitions
            .iter()
            .map(|(s, n)| ([("state", s.as_wire_str())], *n))
            .collect();
        let t: Vec<(Labels, u64)> = transitions.iter().map(|(l, n)| (&l[..], *n)).collect();
        counter(
            &mut enc,
            "pulse_presence_transitions",
            "Published presence changes of local users, by the new state",
            &t,
        )?;
        let now: Vec<([(&str, &str); 1], u64)> = p
            .users_now
            .iter()
            .map(|(s, n)| ([("state", s.as_wire_str())], *n))
            .collect();
        let now: Vec<(Labels, u64)> = now.iter().map(|(l, n)| (&l[..], *n)).collect();
        gauge(
            &mut enc,
            "pulse_presence_users",
            "Local users whose presence is this state now (offline not counted)",
            &now,
        )?;
        counter(
            &mut enc,
            "pulse_presence_sharing_decisions",
            "Audience decisions made by a user's presence sharing policy (MSC4325 config or \
             ignore list)",
            &[
                (&[("decision", "allowed")], p.sharing_allowed),
                (&[("decision", "denied")], p.sharing_denied),
            ],
        )?;

        if let (Some(f), Some((out, inbound))) = (&v.federation, fed) {
            counter(
                &mut enc,
                "pulse_federation_transactions",
                "Federation transactions: out by result (sent, rejected for good, failed and \
                 retried), in = received and processed",
                &[
                    (
                        &[("direction", "out"), ("result", "sent")],
                        out.transactions_sent,
                    ),
                    (
                        &[("direction", "out"), ("result", "rejected")],
                        out.transactions_rejected,
                    ),
                    (
                        &[("direction", "out"), ("result", "failed")],
                        out.transactions_failed,
                    ),
                    (
                        &[("direction", "in"), ("result", "received")],
                        inbound.transactions,
                    ),
                ],
            )?;
            counter(
                &mut enc,
                "pulse_federation_pdus",
                "PDUs in federation transactions (out: accepted ones)",
                &[
                    (&[("direction", "out")], out.pdus_sent),
                    (&[("direction", "in")], inbound.pdus),
                ],
            )?;
            counter(
                &mut enc,
                "pulse_federation_edus",
                "EDUs in federation transactions (out: accepted ones)",
                &[
                    (&[("direction", "out")], out.edus_sent),
                    (&[("direction", "in")], inbound.edus),
                ],
            )?;
            let dests = f.sender.status();
            let now_ms = storage::now_ms();
            let names: Vec<[(&str, &str); 1]> = dests
                .iter()
                .map(|d| [("destination", d.destination.as_str())])
                .collect();
            let per = |value: &dyn Fn(&federation_sender::DestinationStatus) -> f64| {
                names
                    .iter()
                    .zip(&dests)
                    .map(|(l, d)| (&l[..], value(d)))
                    .collect::<Vec<(Labels, f64)>>()
            };
            gauge(
                &mut enc,
                "pulse_federation_queue_pdus",
                "PDUs waiting for a destination",
                &per(&|d| d.pending_pdus as f64),
            )?;
            gauge(
                &mut enc,
                "pulse_federation_queue_edus",
                "EDUs waiting for a destination",
                &per(&|d| d.pending_edus as f64),
            )?;
            gauge(
                &mut enc,
                "pulse_federation_destination_failures",
                "Consecutive failed attempts to reach a destination (0: healthy)",
                &per(&|d| f64::from(d.failures)),
            )?;
            gauge(
                &mut enc,
                "pulse_federation_backoff_seconds",
                "Seconds until a backing-off destination is retried (0: not backing off)",
                &per(&|d| {
                    d.retry_at_ms
                        .map_or(0.0, |t| t.saturating_sub(now_ms) as f64 / 1000.0)
                }),
            )?;
        }

        let db = v.db.stats();
        gauge(
            &mut enc,
            "pulse_storage_disk_bytes",
            "Size of the database directory on disk",
            &[(none, db.disk_bytes)],
        )?;
        gauge(
            &mut enc,
            "pulse_storage_sst_bytes",
            "Live SST files, all column families",
            &[(none, db.sst_bytes)],
        )?;
        gauge(
            &mut enc,
            "pulse_storage_memtable_bytes",
            "Memtables, all column families",
            &[(none, db.memtable_bytes)],
        )?;
        gauge(
            &mut enc,
            "pulse_storage_estimated_keys",
            "RocksDB's estimate of the keys stored",
            &[(none, db.estimated_keys)],
        )?;
        gauge(
            &mut enc,
            "pulse_storage_running_compactions",
            "RocksDB compactions running now",
            &[(none, db.running_compactions)],
        )?;
        gauge(
            &mut enc,
            "pulse_storage_pending_compaction_bytes",
            "Bytes RocksDB estimates compaction still has to rewrite",
            &[(none, db.pending_compaction_bytes)],
        )?;
        let cfs: Vec<([(&str, &str); 1], u64)> = db
            .per_cf_sst_bytes
            .iter()
            .map(|(n, b)| ([("cf", *n)], *b))
            .collect();
        let cfs: Vec<(Labels, u64)> = cfs.iter().map(|(l, n)| (&l[..], *n)).collect();
        gauge(
            &mut enc,
            "pulse_storage_cf_sst_bytes",
            "Live SST files per column family",
            &cfs,
        )?;

        if let Some(pr) = process::read() {
            counter_f64(
                &mut enc,
                "process_cpu_seconds",
                "User and system CPU time",
                pr.cpu_seconds,
            )?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory",
                &[(none, pr.resident_bytes)],
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory",
                &[(none, pr.virtual_bytes)],
            )?;
            gauge(
                &mut enc,
                "process_open_fds",
                "Open file descriptors",
                &[(none, pr.open_fds)],
            )?;
            gauge(
                &mut enc,
                "process_threads",
                "OS threads",
                &[(none, pr.threads)],
            )?;
            gauge(
                &mut enc,
                "process_start_time_seconds",
                "Start time since the Unix epoch",
                &[(none, pr.start_time_seconds)],
            )?;
        }
        Ok(())
    }
}

fn counter_f64(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}
