//! # federation-sender — outbound federation for Pulse
//!
//! Owns getting local PDUs and EDUs to remote servers, reliably and promptly:
//!
//! * **One durable queue per destination** in `Cf::FederationQueue` (layout in `queue.rs`): pending PDUs in order, pending EDUs, and the next transaction counter. What is
//!   queued survives a crash; a restart resumes from the last acknowledged transaction.
//! * **One worker per active destination**: a tokio task spawned when something is queued for
//!   an idle destination, exiting when its queue is empty. Overall concurrency of in-flight
//!   transactions is bounded by a semaphore ([`SenderConfig::max_concurrent`]).
//! * **Transactions** of at most [`MAX_PDUS_PER_TXN`] PDUs and [`MAX_EDUS_PER_TXN`] EDUs, each
//!   with a transaction ID persisted before sending and never reused for a destination.
//! * **EDUs go out at once** when the destination is idle (no batching timer). While a
//!   transaction is in flight or the destination is backing off, EDUs with the same coalescing
//!   key (presence: one per user) replace each other — latest wins. Presence entries of many
//!   users are merged into `m.presence` EDUs of at most [`MAX_PRESENCE_PER_EDU`] entries, with
//!   `last_active_ago` aged by the time spent queued.
//! * **Backoff**: exponential with jitter, capped at [`SenderConfig::backoff_cap`], reset by
//!   [`FederationSender::notify_destination_up`] (call it when the destination contacts us).
//! * **Observability**: [`FederationSender::status`] (queue depth, backoff, last success)
//!   and log lines on every failure and recovery.
//!
//! The network is behind the [`Transport`] trait, so the queue logic is tested with a fake.
//! What to send where (room servers for PDUs, [`presence_core::routing`]-style routing for
//! presence) is the caller's decision.

pub mod bridge;
pub mod ephemeral_out;
mod http_transport;
pub mod pdu_out;
pub mod presence_out;
mod queue;
mod stats;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::{OwnedServerName, ServerName, UserId};
use serde::Serialize;
use serde_json::Value;
use storage::{Batch, Cf, Db, StorageError};
use tokio::sync::{Notify, Semaphore};

pub use stats::SenderStats;

/// At most this many PDUs per transaction (spec).
pub const MAX_PDUS_PER_TXN: usize = 50;
/// At most this many EDUs per transaction (spec).
pub const MAX_EDUS_PER_TXN: usize = 100;
/// At most this many `push` entries per `m.presence` EDU.
pub const MAX_PRESENCE_PER_EDU: usize = 50;
/// The EDU type of presence.
pub const PRESENCE_EDU: &str = "m.presence";

/// Why a transaction did not go through.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Worth retrying later (connection error, timeout, 5xx, 429, 401): the destination backs off.
    #[error("retryable: {0}")]
    Retry(String),
    /// The destination refused this transaction for good (other 4xx): its contents are
    /// dropped and logged rather than blocking the queue forever.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Sends one federation transaction: `PUT /_matrix/federation/v1/send/{txn_id}` with `body`
/// (`origin`, `origin_server_ts`, `pdus`, `edus`), signed. Returns the response body.
pub trait Transport: Send + Sync + 'static {
    /// Sends the transaction and waits for the answer.
    fn send_transaction(
        &self,
        destination: &ServerName,
        txn_id: &str,
        body: Value,
    ) -> impl Future<Output = Result<Value, TransportError>> + Send;
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Our server name (`origin`); never a destination.
    pub origin: OwnedServerName,
    /// Transactions in flight at once, over all destinations.
    pub max_concurrent: usize,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
}

impl SenderConfig {
    /// Defaults: 16 concurrent transactions, backoff from 5 s doubling up to 1 h.
    pub fn new(origin: OwnedServerName) -> Self {
        SenderConfig {
            origin,
            max_concurrent: 16,
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(3600),
        }
    }
}

/// One destination's state, as reported by [`FederationSender::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationStatus {
    /// The destination server.
    pub destination: String,
    /// PDUs waiting (including those of a transaction in flight).
    pub pending_pdus: usize,
    /// EDUs waiting.
    pub pending_edus: usize,
    /// Whether a worker task runs for it.
    pub worker_active: bool,
    /// Consecutive failures (0 when healthy).
    pub failures: u32,
    /// When it will be retried, if backing off (ms since the epoch).
    pub retry_at_ms: Option<u64>,
    /// The last successful transaction (ms since the epoch).
    pub last_success_ms: Option<u64>,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// In-memory per-destination state: counters only, the items themselves are on disk.
#[derive(Debug, Default)]
struct Dest {
    running: bool,
    /// Set by every enqueue; the worker clears it before reading the queue, and only exits
    /// when it is still clear after finding the queue empty (no lost wake-up).
    signal: bool,
    wake: Arc<Notify>,
    pending_pdus: usize,
    pending_edus: usize,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    retry_at_ms: Option<u64>,
    last_success_ms: Option<u64>,
    last_error: Option<String>,
    /// No pending PDU has a seq below this (see `queue.rs`: reads start here).
    pdu_floor: u64,
    /// No pending EDU has a seq below this.
    edu_floor: u64,
}

struct Inner<T> {
    db: Arc<Db>,
    transport: T,
    config: SenderConfig,
    seq: AtomicU64,
    /// This start's boot counter (persisted): transaction IDs are `p{boot}-{txn}`.
    boot: u64,
    txn: AtomicU64,
    dests: Mutex<HashMap<OwnedServerName, Dest>>,
    /// Serialises EDU enqueue and acknowledgement (both read-modify-write coalescing keys);
    /// EDU seqs are allocated under it, so EDUs reach the disk in seq order.
    edu_lock: Mutex<()>,
    /// PDU seqs are allocated and written under it, so PDUs reach the disk in seq order.
    pdu_lock: Mutex<()>,
    permits: Semaphore,
    /// The runtime workers run on (captured at start, so enqueueing works from any thread).
    runtime: tokio::runtime::Handle,
    /// Transactions, PDUs and EDUs sent ([`FederationSender::stats`]).
    counters: stats::Counters,
}

/// The outbound federation sender. Cheap to clone.
pub struct FederationSender<T: Transport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for FederationSender<T> {
    fn clone(&self) -> Self {
        FederationSender {
            inner: self.inner.clone(),
        }
    }
}

use storage::now_ms;

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Transport> FederationSender<T> {
    /// Opens the queues found in `db` and starts a worker for every destination with pending
    /// items (catch-up after a restart). Must be called inside a tokio runtime.
    pub fn start(db: Arc<Db>, transport: T, config: SenderConfig) -> Result<Self, StorageError> {
        let recovered = queue::recover(&db)?;
        let boot = queue::next_boot(&db)?;
        let permits = Semaphore::new(config.max_concurrent.max(1));
        let sender = FederationSender {
            inner: Arc::new(Inner {
                db,
                transport,
                config,
                seq: AtomicU64::new(recovered.max_seq + 1),
                boot,
                txn: AtomicU64::new(0),
                dests: Mutex::new(HashMap::new()),
                edu_lock: Mutex::new(()),
                pdu_lock: Mutex::new(()),
                permits,
                runtime: tokio::runtime::Handle::current(),
                counters: stats::Counters::default(),
            }),
        };
        for (dest, pdus, edus) in recovered.destinations {
            let Ok(dest) = OwnedServerName::try_from(dest) else {
                continue;
            };
            tracing::info!(destination = %dest, pdus, edus, "federation queue recovered");
            sender.touch(&dest, pdus as isize, edus as isize);
        }
        Ok(sender)
    }

    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Adjusts the counters of `dest`, signals its worker and spawns one if none runs.
    fn touch(&self, dest: &ServerName, pdus: isize, edus: isize) {
        let mut dests = lock(&self.inner.dests);
        let d = dests.entry(dest.to_owned()).or_default();
        d.pending_pdus = d.pending_pdus.saturating_add_signed(pdus);
        d.pending_edus = d.pending_edus.saturating_add_signed(edus);
        d.signal = true;
        d.wake.notify_one();
        if !d.running {
            d.running = true;
            self.inner
                .runtime
                .spawn(worker::run(self.inner.clone(), dest.to_owned()));
        }
    }

    /// Queues a PDU of a local event for every destination (our own server skipped), in one
    /// atomic write: once this returns, the PDU will reach each of them.
    pub fn queue_pdu<'a>(
        &self,
        destinations: impl IntoIterator<Item = &'a ServerName>,
        pdu: &Value,
    ) -> Result<(), StorageError> {
        self.queue_pdu_with(destinations, pdu, Batch::new())
    }

    /// [`Self::queue_pdu`], with `batch`'s writes in the same atomic write.
    pub(crate) fn queue_pdu_with<'a>(
        &self,
        destinations: impl IntoIterator<Item = &'a ServerName>,
        pdu: &Value,
        mut batch: Batch,
    ) -> Result<(), StorageError> {
        let mut dests: Vec<&ServerName> = destinations
            .into_iter()
            .filter(|d| *d != self.inner.config.origin)
            .collect();
        dests.sort();
        dests.dedup();
        let pdu = serde_json::to_vec(pdu).map_err(|e| StorageError::Serialize {
            cf: Cf::FederationQueue.name(),
            reason: e.to_string(),
        })?;
        {
            let _guard = lock(&self.inner.pdu_lock);
            let seq = self.next_seq();
            for dest in &dests {
                queue::put_pdu(&mut batch, dest.as_str(), seq, &pdu);
            }
            self.inner.db.write(batch)?;
        }
        for dest in dests {
            self.touch(dest, 1, 0);
        }
        Ok(())
    }

    /// Queues an EDU for `destination`. With `coalesce_key`, a pending EDU of the same key is
    /// replaced (latest wins).
    pub fn queue_edu(
        &self,
        destination: &ServerName,
        coalesce_key: Option<String>,
        edu_type: &str,
        content: Value,
    ) -> Result<(), StorageError> {
        if destination == self.inner.config.origin {
            return Ok(());
        }
        let edu = queue::QueuedEdu {
            key: coalesce_key,
            edu_type: edu_type.to_owned(),
            content,
            queued_at: now_ms(),
        };
        let grew = {
            let _guard = lock(&self.inner.edu_lock);
            queue::put_edu(&self.inner.db, destination.as_str(), self.next_seq(), &edu)?
        };
        self.touch(destination, 0, if grew { 1 } else { 0 });
        Ok(())
    }

    /// Queues `user`'s presence for `destination`: `entries` are complete `push` entries
    /// (`user_id`, `presence`, `last_active_ago`, …, optional `allowed_recipients`), one per
    /// `allowed_recipients` chunk. Replaces the user's pending presence for that destination.
    pub fn queue_presence(
        &self,
        destination: &ServerName,
        user: &UserId,
        entries: Vec<Value>,
    ) -> Result<(), StorageError> {
        self.queue_edu(
            destination,
            Some(format!("{PRESENCE_EDU} {user}")),
            PRESENCE_EDU,
            Value::Array(entries),
        )
    }

    /// The destination contacted us: it is up. Ends its backoff and retries at once.
    pub fn notify_destination_up(&self, destination: &ServerName) {
        let mut dests = lock(&self.inner.dests);
        if let Some(d) = dests.get_mut(destination)
            && d.retry_at.is_some()
        {
            tracing::info!(%destination, "destination is up: backoff reset");
            d.failures = 0;
            d.retry_at = None;
            d.retry_at_ms = None;
            d.wake.notify_one();
        }
    }

    /// Stops every worker (after its transaction in flight, if any). Queued items stay on disk
    /// for the next start.
    pub fn shutdown(&self) {
        self.inner.permits.close();
        for d in lock(&self.inner.dests).values() {
            d.wake.notify_one();
        }
    }

    /// Every known destination's queue and backoff state, sorted by name.
    /// Transactions, PDUs, EDUs and presence entries sent since start.
    pub fn stats(&self) -> SenderStats {
        self.inner.counters.read()
    }

    pub fn status(&self) -> Vec<DestinationStatus> {
        let dests = lock(&self.inner.dests);
        let mut out: Vec<DestinationStatus> = dests
            .iter()
            .map(|(name, d)| DestinationStatus {
                destination: name.to_string(),
                pending_pdus: d.pending_pdus,
                pending_edus: d.pending_edus,
                worker_active: d.running,
                failures: d.failures,
                retry_at_ms: d.retry_at_ms,
                last_success_ms: d.last_success_ms,
                last_error: d.last_error.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

#[cfg(test)]
mod tests;
