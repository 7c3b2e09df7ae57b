//! The per-destination worker: wait out any backoff, build a transaction from the queue on
//! disk, send it, acknowledge or back off; exit when the queue is empty.

use std::sync::Arc;
use std::time::Duration;

use ruma::OwnedServerName;
use serde_json::{Value, json};

use crate::queue::{self, Pending, QueuedEdu};
use crate::{
    Inner, MAX_EDUS_PER_TXN, MAX_PDUS_PER_TXN, MAX_PRESENCE_PER_EDU, PRESENCE_EDU, Transport,
    TransportError, lock, now_ms,
};

/// The delay before retry number `failures` (1-based): `base · 2^(failures-1)`, times a jitter
/// factor in [0.8, 1.4) so destinations that failed together do not retry together, capped.
pub(crate) fn backoff_delay(base: Duration, cap: Duration, failures: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    exp.mul_f64(jitter.clamp(0.8, 1.4)).min(cap)
}

fn jitter() -> f64 {
    0.8 + 0.6 * (rand::random::<u32>() as f64 / u32::MAX as f64)
}

enum Step {
    /// Sent (or dropped as rejected); look for more at once.
    Progress,
    /// Failed; back off.
    Failed(String),
    /// Nothing left and nothing signalled: the worker exits.
    Idle,
}

pub(crate) async fn run<T: Transport>(inner: Arc<Inner<T>>, dest: OwnedServerName) {
    loop {
        wait_for_retry(&inner, &dest).await;
        match step(&inner, &dest).await {
            Step::Idle => return,
            Step::Progress => {}
            Step::Failed(error) => {
                let mut dests = lock(&inner.dests);
                let d = dests.entry(dest.clone()).or_default();
                d.failures = d.failures.saturating_add(1);
                let delay = backoff_delay(
                    inner.config.backoff_base,
                    inner.config.backoff_cap,
                    d.failures,
                    jitter(),
                );
                d.retry_at = Some(tokio::time::Instant::now() + delay);
                d.retry_at_ms = Some(now_ms() + delay.as_millis() as u64);
                tracing::warn!(
                    destination = %dest,
                    failures = d.failures,
                    retry_in_s = delay.as_secs(),
                    pending_pdus = d.pending_pdus,
                    pending_edus = d.pending_edus,
                    %error,
                    "federation transaction failed; backing off"
                );
                d.last_error = Some(error);
            }
        }
    }
}

/// Sleeps until the destination's retry time, or until `notify_destination_up` clears it.
async fn wait_for_retry<T: Transport>(inner: &Inner<T>, dest: &OwnedServerName) {
    loop {
        if inner.permits.is_closed() {
            return;
        }
        let (retry_at, wake) = {
            let dests = lock(&inner.dests);
            match dests.get(dest) {
                Some(d) => (d.retry_at, d.wake.clone()),
                None => return,
            }
        };
        match retry_at {
            Some(at) if at > tokio::time::Instant::now() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => return,
                    _ = wake.notified() => {} // re-check: an enqueue also wakes us
                }
            }
            _ => return,
        }
    }
}

async fn step<T: Transport>(inner: &Inner<T>, dest: &OwnedServerName) -> Step {
    let Ok(_permit) = inner.permits.acquire().await else {
        return Step::Idle; // semaphore closed: shutting down
    };
    let (pdu_floor, edu_floor) = {
        let mut dests = lock(&inner.dests);
        let d = dests.entry(dest.clone()).or_default();
        d.signal = false;
        (d.pdu_floor, d.edu_floor)
    };
    let read =
        queue::read_pdus(&inner.db, dest.as_str(), pdu_floor, MAX_PDUS_PER_TXN).and_then(|p| {
            Ok((
                p,
                queue::read_edus(&inner.db, dest.as_str(), edu_floor, MAX_EDUS_PER_TXN)?,
            ))
        });
    let (pdus, mut edus) = match read {
        Ok(x) => x,
        Err(e) => return Step::Failed(format!("storage: {e}")),
    };
    // Keep only what fits in one transaction once presence is merged; the rest waits.
    edus.truncate(edus_that_fit(&edus));
    if pdus.is_empty() && edus.is_empty() {
        let mut dests = lock(&inner.dests);
        let d = dests.entry(dest.clone()).or_default();
        if d.signal {
            return Step::Progress;
        }
        d.running = false;
        d.pending_pdus = 0;
        d.pending_edus = 0;
        return Step::Idle;
    }

    // Unique across crashes without a write per transaction: the boot counter was persisted
    // at start, and within one boot the counter never repeats (nor is an ID reused for a
    // retry, whose contents may differ after coalescing).
    let txn_id = format!(
        "p{}-{}",
        inner.boot,
        inner.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let now = now_ms();
    let built_edus = build_edus(&edus, now);
    let edu_count = built_edus.len();
    let presence_entries: usize = edus
        .iter()
        .filter(|e| e.item.edu_type == PRESENCE_EDU)
        .map(|e| e.item.content.as_array().map_or(0, Vec::len))
        .sum();
    let body = json!({
        "origin": inner.config.origin.as_str(),
        "origin_server_ts": now,
        "pdus": pdus.iter().map(|p| p.item.clone()).collect::<Vec<_>>(),
        "edus": built_edus,
    });
    let result = inner.transport.send_transaction(dest, &txn_id, body).await;
    drop(_permit);

    let (sent, dropped) = match result {
        Ok(response) => {
            log_pdu_errors(dest, &response);
            inner.counters.sent(pdus.len(), edu_count, presence_entries);
            (true, false)
        }
        Err(TransportError::Rejected(error)) => {
            inner.counters.rejected();
            tracing::error!(destination = %dest, %txn_id, %error, pdus = pdus.len(), edus = edus.len(),
                "federation transaction rejected; its contents are dropped");
            (false, true)
        }
        Err(TransportError::Retry(error)) => {
            inner.counters.failed();
            return Step::Failed(error);
        }
    };
    let pdu_seqs: Vec<u64> = pdus.iter().map(|p| p.seq).collect();
    let edu_seqs: Vec<(u64, Option<String>)> =
        edus.iter().map(|e| (e.seq, e.item.key.clone())).collect();
    let acked = {
        let _guard = lock(&inner.edu_lock);
        queue::ack(&inner.db, dest.as_str(), &pdu_seqs, &edu_seqs)
    };
    if let Err(e) = acked {
        // Not acknowledged on disk: they will be sent again, which receivers dedupe.
        return Step::Failed(format!("storage: {e}"));
    }
    let mut dests = lock(&inner.dests);
    let d = dests.entry(dest.clone()).or_default();
    d.pending_pdus = d.pending_pdus.saturating_sub(pdus.len());
    d.pending_edus = d.pending_edus.saturating_sub(edus.len());
    // What was sent is the oldest of each prefix (a prefix of seq order, see queue.rs): nothing
    // at or below its last seq is pending any more.
    if let Some(last) = pdus.last() {
        d.pdu_floor = d.pdu_floor.max(last.seq + 1);
    }
    if let Some(last) = edus.last() {
        d.edu_floor = d.edu_floor.max(last.seq + 1);
    }
    if sent {
        if d.failures > 0 {
            tracing::info!(destination = %dest, after_failures = d.failures, "destination reachable again");
        }
        d.failures = 0;
        d.retry_at = None;
        d.retry_at_ms = None;
        d.last_error = None;
        d.last_success_ms = Some(now_ms());
    }
    if dropped {
        d.last_error = Some("last transaction rejected".to_owned());
    }
    Step::Progress
}

/// How many of the queued `edus` (a prefix) fit in one transaction: other EDUs count one
/// each, presence entries one per [`MAX_PRESENCE_PER_EDU`] merged. Always at least one, so an
/// oversized item cannot wedge the queue (a single queued item is at most a few chunks).
pub(crate) fn edus_that_fit(edus: &[Pending<QueuedEdu>]) -> usize {
    let (mut others, mut entries) = (0usize, 0usize);
    for (i, e) in edus.iter().enumerate() {
        if e.item.edu_type == PRESENCE_EDU {
            entries += e.item.content.as_array().map_or(0, Vec::len);
        } else {
            others += 1;
        }
        if i > 0 && others + entries.div_ceil(MAX_PRESENCE_PER_EDU) > MAX_EDUS_PER_TXN {
            return i;
        }
    }
    edus.len()
}

/// Turns queued EDUs into transaction EDUs: presence entries of all users merged into
/// `m.presence` EDUs of at most [`MAX_PRESENCE_PER_EDU`] entries, `last_active_ago` aged by the
/// time spent queued; other EDUs as they are, in queue order.
pub(crate) fn build_edus(edus: &[Pending<QueuedEdu>], now: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut push: Vec<Value> = Vec::new();
    for e in edus {
        if e.item.edu_type == PRESENCE_EDU {
            let waited = now.saturating_sub(e.item.queued_at);
            for entry in e.item.content.as_array().into_iter().flatten() {
                let mut entry = entry.clone();
                if let Some(ago) = entry.get("last_active_ago").and_then(Value::as_u64) {
                    entry["last_active_ago"] = json!(ago.saturating_add(waited));
                }
                push.push(entry);
            }
        } else {
            out.push(json!({"edu_type": e.item.edu_type, "content": e.item.content}));
        }
    }
    for chunk in push.chunks(MAX_PRESENCE_PER_EDU) {
        out.push(json!({"edu_type": PRESENCE_EDU, "content": {"push": chunk}}));
    }
    out
}

fn log_pdu_errors(dest: &OwnedServerName, response: &Value) {
    if let Some(results) = response.get("pdus").and_then(Value::as_object) {
        for (event_id, result) in results {
            if let Some(error) = result.get("error") {
                tracing::debug!(destination = %dest, %event_id, %error, "remote rejected PDU");
            }
        }
    }
}
