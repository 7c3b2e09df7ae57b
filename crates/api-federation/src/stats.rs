//! Counters of inbound transactions, for the server's `/metrics`: relaxed atomics bumped
//! once per `/send` (shared with the binary through [`FederationState::stats`]).
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct InboundStats {
    transactions: AtomicU64,
    pdus: AtomicU64,
    edus: AtomicU64,
}

/// One reading of [`InboundStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundSnapshot {
    /// Transactions processed (not counting retries answered from the stored answer).
    pub transactions: u64,
    pub pdus: u64,
    pub edus: u64,
}

impl InboundStats {
    pub(crate) fn received(&self, pdus: usize, edus: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.pdus.fetch_add(pdus as u64, Ordering::Relaxed);
        self.edus.fetch_add(edus as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> InboundSnapshot {
        InboundSnapshot {
            transactions: self.transactions.load(Ordering::Relaxed),
            pdus: self.pdus.load(Ordering::Relaxed),
            edus: self.edus.load(Ordering::Relaxed),
        }
    }
}
