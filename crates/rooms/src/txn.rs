//! Federation transaction idempotency: a transaction (`PUT /send/{txnId}`) from one
//! origin is processed once; a retry gets the first answer back.
//!
//! `Cf::Txns` `"fed" 0xFF origin 0xFF txn_id 0xFF` → [`TxnRecord`] (user ids, which key
//! the client transactions in the same column family, start with `@`, so these never
//! collide).
use ruma::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Batch, Cf};

use crate::{KeyGuard, Result, RoomError, RoomService};

/// Longest accepted transaction id, in bytes.
pub const MAX_TXN_ID_BYTES: usize = 1024;

fn txn_key(origin: &ServerName, txn_id: &str) -> storage::Key {
    crate::keys::txns::federation(origin.as_str(), txn_id)
}

#[derive(Debug, Serialize, Deserialize)]
struct TxnRecord {
    /// When it was recorded (ms), for pruning.
    ts: u64,
    response: Value,
}

/// A federation transaction being processed: holds its lock (a second delivery of the
/// same transaction waits) until [`FederationTxn::record`] or drop.
pub struct FederationTxn<'a> {
    svc: &'a RoomService,
    key: storage::Key,
    previous: Option<Value>,
    _guard: KeyGuard<'a>,
}

impl FederationTxn<'_> {
    /// The response recorded when this transaction was processed before, if it was.
    pub fn previous(&self) -> Option<&Value> {
        self.previous.as_ref()
    }

    /// Record the response, durably, so every retry of the transaction gets it.
    pub fn record(self, response: &Value) -> Result<()> {
        let mut b = Batch::new();
        b.put_json(
            Cf::Txns,
            &self.key,
            &TxnRecord {
                ts: crate::now_ms(),
                response: response.clone(),
            },
        );
        self.svc.db.write(b)?;
        Ok(())
    }
}

impl RoomService {
    /// Start processing transaction `txn_id` from `origin`: call
    /// [`FederationTxn::previous`] — `Some` means it was processed and that is the answer
    /// to repeat — else process its PDUs and EDUs and [`FederationTxn::record`] the
    /// answer. Deliveries of the same transaction are serialised; different transactions
    /// and origins run in parallel.
    pub fn federation_txn(&self, origin: &ServerName, txn_id: &str) -> Result<FederationTxn<'_>> {
        if txn_id.is_empty() || txn_id.len() > MAX_TXN_ID_BYTES {
            return Err(RoomError::InvalidParam(format!(
                "transaction ids are 1 to {MAX_TXN_ID_BYTES} bytes"
            )));
        }
        let guard = self
            .key_locks
            .lock(&format!("txn {} {}", origin.as_str(), txn_id));
        let key = txn_key(origin, txn_id);
        let previous = self
            .db
            .get_json::<TxnRecord>(Cf::Txns, &key)?
            .map(|r| r.response);
        Ok(FederationTxn {
            svc: self,
            key,
            previous,
            _guard: guard,
        })
    }

    /// Forget federation transactions recorded before `before_ms` (a sender retries a
    /// transaction for minutes, not days). Returns how many were removed.
    pub fn prune_federation_txns(&self, before_ms: u64) -> Result<usize> {
        let prefix = crate::keys::txns::federation_prefix();
        let mut b = Batch::new();
        for (k, v) in self.db.scan_prefix(Cf::Txns, &prefix)? {
            let old = serde_json::from_slice::<TxnRecord>(&v).map_or(true, |r| r.ts < before_ms);
            if old && crate::keys::txns::is_federation(&k) {
                b.delete(Cf::Txns, &k);
            }
        }
        let n = b.len();
        if n > 0 {
            self.db.write(b)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tests::setup;

    #[test]
    fn a_federation_transaction_is_processed_once_per_origin() {
        let (_d, svc) = setup();
        let a: &ruma::ServerName = "a.example".try_into().expect("name");
        let b: &ruma::ServerName = "b.example".try_into().expect("name");
        let t = svc.federation_txn(a, "t1").expect("txn");
        assert_eq!(t.previous(), None);
        t.record(&json!({"pdus": {"$x": {}}})).expect("record");
        let again = svc.federation_txn(a, "t1").expect("txn");
        assert_eq!(again.previous(), Some(&json!({"pdus": {"$x": {}}})));
        drop(again);
        // Same id, other origin: a different transaction.
        assert_eq!(svc.federation_txn(b, "t1").expect("txn").previous(), None);
        assert!(svc.federation_txn(a, "").is_err());
        assert!(svc.federation_txn(a, &"x".repeat(2000)).is_err());
        // Pruning forgets it.
        assert_eq!(svc.prune_federation_txns(u64::MAX).expect("prune"), 1);
        assert_eq!(svc.federation_txn(a, "t1").expect("txn").previous(), None);
    }

    #[test]
    fn concurrent_deliveries_of_one_transaction_are_serialised() {
        let (_d, svc) = setup();
        let svc = std::sync::Arc::new(svc);
        let origin: ruma::OwnedServerName = "a.example".try_into().expect("name");
        let processed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let t = svc.federation_txn(&origin, "same").expect("txn");
                    if t.previous().is_none() {
                        processed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        t.record(&json!({})).expect("record");
                    }
                });
            }
        });
        assert_eq!(processed.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
