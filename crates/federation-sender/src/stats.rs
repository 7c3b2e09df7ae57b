//! Counters of outbound transactions, for the server's `/metrics`: relaxed atomics bumped
//! once per transaction by the worker, read at scrape time ([`FederationSender::stats`]).
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    transactions_sent: AtomicU64,
    transactions_rejected: AtomicU64,
    transactions_failed: AtomicU64,
    pdus_sent: AtomicU64,
    edus_sent: AtomicU64,
    presence_entries_sent: AtomicU64,
}

/// One reading of the sender's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Transactions the destination accepted (200).
    pub transactions_sent: u64,
    /// Transactions refused for good (their contents were dropped).
    pub transactions_rejected: u64,
    /// Attempts that failed and will be retried (the destination backs off).
    pub transactions_failed: u64,
    /// PDUs and EDUs in accepted transactions.
    pub pdus_sent: u64,
    pub edus_sent: u64,
    /// Presence entries (`m.presence` `push` items) in accepted transactions.
    pub presence_entries_sent: u64,
}

impl Counters {
    pub(crate) fn sent(&self, pdus: usize, edus: usize, presence_entries: usize) {
        self.transactions_sent.fetch_add(1, Ordering::Relaxed);
        self.pdus_sent.fetch_add(pdus as u64, Ordering::Relaxed);
        self.edus_sent.fetch_add(edus as u64, Ordering::Relaxed);
        self.presence_entries_sent
            .fetch_add(presence_entries as u64, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.transactions_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.transactions_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> SenderStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SenderStats {
            transactions_sent: get(&self.transactions_sent),
            transactions_rejected: get(&self.transactions_rejected),
            transactions_failed: get(&self.transactions_failed),
            pdus_sent: get(&self.pdus_sent),
            edus_sent: get(&self.edus_sent),
            presence_entries_sent: get(&self.presence_entries_sent),
        }
    }
}
