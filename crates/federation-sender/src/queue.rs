//! The durable part: per-destination queues in `Cf::FederationQueue`.
//!
//! Everything a destination still has to receive is on disk, so memory per destination is a
//! few counters and a restart resumes from the last acknowledged transaction. Layout:
//!
//! * `"b"` → the boot counter (u64): bumped once per start, it makes transaction IDs unique
//!   across restarts without a write per transaction (`p{boot}-{n}`, `n` counted in memory);
//! * `"p" dest seq` → a pending PDU (JSON), sent in `seq` order;
//! * `"e" dest seq` → a pending [`QueuedEdu`];
//! * `"k" dest key` → seq of the latest EDU with that coalescing key: a newer EDU with the
//!   same key replaces the older one (latest wins) while it has not been acknowledged;
//! * `"d" dest` → a per-destination transaction counter of earlier versions (no longer
//!   written; harmless if present).
//!
//! Reads start at a *floor* (a seq below which the worker knows nothing is pending, kept in
//! memory): acknowledged entries leave tombstones in RocksDB until compaction, and a scan from
//! the start of the prefix would step over every one of them on every transaction (it was a
//! quarter of the sender's CPU in the federation benchmark). Entries of one prefix are written
//! in seq order (seq allocated and written under one lock), so everything below the highest
//! acknowledged seq of a prefix is gone and the floor may move past it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Batch, Cf, Db, Key, KeyReader, StorageError};

/// An EDU waiting to be sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueuedEdu {
    /// The coalescing key, if any.
    pub key: Option<String>,
    /// `edu_type`.
    pub edu_type: String,
    /// `content`.
    pub content: Value,
    /// When it was queued (ms): presence `last_active_ago` is aged by the time spent queued.
    pub queued_at: u64,
}

/// A pending item read back for a transaction.
#[derive(Debug, Clone)]
pub(crate) struct Pending<T> {
    pub seq: u64,
    pub item: T,
}

fn boot_key() -> Key {
    Key::new().str("b")
}
fn pdu_prefix(dest: &str) -> Key {
    Key::new().str("p").str(dest)
}
fn edu_prefix(dest: &str) -> Key {
    Key::new().str("e").str(dest)
}
fn coalesce_key(dest: &str, key: &str) -> Key {
    Key::new().str("k").str(dest).str(key)
}
/// An upper bound for every `prefix seq` key (a u64 is 8 bytes; nine `0xFF` sort after).
fn seq_end(prefix: &Key) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    end.extend_from_slice(&[0xFF; 9]);
    end
}

/// Bumps and returns the boot counter (one write per start).
pub(crate) fn next_boot(db: &Db) -> Result<u64, StorageError> {
    let boot = db
        .get(Cf::FederationQueue, boot_key())?
        .and_then(|v| storage::decode_u64(&v))
        .unwrap_or(0)
        + 1;
    let mut batch = Batch::new();
    batch.put(Cf::FederationQueue, boot_key(), boot.to_be_bytes().to_vec());
    db.write(batch)?;
    Ok(boot)
}

/// Queues a PDU already serialised (once for all its destinations).
pub(crate) fn put_pdu(batch: &mut Batch, dest: &str, seq: u64, pdu: &[u8]) {
    batch.put(Cf::FederationQueue, pdu_prefix(dest).u64(seq), pdu.to_vec());
}

/// Queues an EDU; with a key, replaces the pending one of the same key. Returns whether the
/// number of pending EDUs grew (false when one was replaced). The caller serialises calls
/// that touch the same destination (see `Sender::edu_lock`).
pub(crate) fn put_edu(
    db: &Db,
    dest: &str,
    seq: u64,
    edu: &QueuedEdu,
) -> Result<bool, StorageError> {
    let mut batch = Batch::new();
    let mut grew = true;
    if let Some(key) = &edu.key {
        let ck = coalesce_key(dest, key);
        if let Some(old) = db.get(Cf::FederationQueue, &ck)?
            && let Some(old) = storage::decode_u64(&old)
        {
            batch.delete(Cf::FederationQueue, edu_prefix(dest).u64(old));
            grew = false;
        }
        batch.put(Cf::FederationQueue, ck, seq.to_be_bytes().to_vec());
    }
    batch.put_json(Cf::FederationQueue, edu_prefix(dest).u64(seq), edu);
    db.write(batch)?;
    Ok(grew)
}

/// The oldest pending PDUs of `dest` with seq at least `from`, at most `limit`.
pub(crate) fn read_pdus(
    db: &Db,
    dest: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<Pending<Value>>, StorageError> {
    read(db, &pdu_prefix(dest), from, limit)
}

/// The oldest pending EDUs of `dest` with seq at least `from`, at most `limit`.
pub(crate) fn read_edus(
    db: &Db,
    dest: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<Pending<QueuedEdu>>, StorageError> {
    read(db, &edu_prefix(dest), from, limit)
}

fn read<T: serde::de::DeserializeOwned>(
    db: &Db,
    prefix: &Key,
    from: u64,
    limit: usize,
) -> Result<Vec<Pending<T>>, StorageError> {
    let start = prefix.clone().u64(from);
    let rows = db.scan_range(Cf::FederationQueue, &start, seq_end(prefix), false, limit)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut corrupt = Batch::new();
    for (k, v) in rows {
        let seq = k
            .get(prefix.as_bytes().len()..)
            .and_then(|rest| KeyReader::new(rest).u64());
        let item = serde_json::from_slice(&v).ok();
        match (seq, item) {
            (Some(seq), Some(item)) => out.push(Pending { seq, item }),
            // A corrupt entry must not wedge the queue forever: it is dropped (and logged).
            _ => {
                tracing::error!("corrupt federation queue entry dropped");
                corrupt.delete(Cf::FederationQueue, k);
            }
        }
    }
    db.write(corrupt)?;
    Ok(out)
}

/// Removes acknowledged items. An EDU's coalescing key is removed only if it still points at
/// the acknowledged EDU (a newer one may have replaced it while the transaction was in flight).
pub(crate) fn ack(
    db: &Db,
    dest: &str,
    pdus: &[u64],
    edus: &[(u64, Option<String>)],
) -> Result<(), StorageError> {
    let mut batch = Batch::new();
    for seq in pdus {
        batch.delete(Cf::FederationQueue, pdu_prefix(dest).u64(*seq));
    }
    for (seq, key) in edus {
        batch.delete(Cf::FederationQueue, edu_prefix(dest).u64(*seq));
        if let Some(key) = key {
            let ck = coalesce_key(dest, key);
            if db
                .get(Cf::FederationQueue, &ck)?
                .and_then(|v| storage::decode_u64(&v))
                == Some(*seq)
            {
                batch.delete(Cf::FederationQueue, ck);
            }
        }
    }
    db.write(batch)
}

/// What start-up finds on disk: per destination, pending PDU and EDU counts, and the highest
/// seq used (the seq counter resumes above it).
pub(crate) struct Recovered {
    pub destinations: Vec<(String, usize, usize)>,
    pub max_seq: u64,
}

pub(crate) fn recover(db: &Db) -> Result<Recovered, StorageError> {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut max_seq = 0;
    for kind in ["p", "e"] {
        // Keys only are needed, but this runs once at start-up.
        for (k, _) in db.scan_prefix(Cf::FederationQueue, Key::new().str(kind))? {
            let mut r = KeyReader::new(&k);
            let (_, dest, seq) = (r.str(), r.str(), r.u64());
            if let (Some(dest), Some(seq)) = (dest, seq) {
                let c = counts.entry(dest.to_owned()).or_default();
                if kind == "p" {
                    c.0 += 1
                } else {
                    c.1 += 1
                }
                max_seq = max_seq.max(seq);
            }
        }
    }
    Ok(Recovered {
        destinations: counts.into_iter().map(|(d, (p, e))| (d, p, e)).collect(),
        max_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edu(n: u64) -> QueuedEdu {
        QueuedEdu {
            key: None,
            edu_type: "m.typing".into(),
            content: serde_json::json!({ "n": n }),
            queued_at: 0,
        }
    }

    #[test]
    fn reads_start_at_the_floor_and_drop_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        for seq in 1..=5 {
            put_edu(&db, "r.org", seq, &edu(seq)).unwrap();
        }
        // Another destination's entries sort right after: never read for this one.
        put_edu(&db, "r.org2", 9, &edu(9)).unwrap();
        let mut batch = Batch::new();
        batch.put(
            Cf::FederationQueue,
            edu_prefix("r.org").u64(3),
            b"{not json".to_vec(),
        );
        db.write(batch).unwrap();
        let seqs = |from| {
            read_edus(&db, "r.org", from, 100)
                .unwrap()
                .iter()
                .map(|p| p.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(0), [1, 2, 4, 5], "the corrupt entry is skipped");
        assert!(
            db.get(Cf::FederationQueue, edu_prefix("r.org").u64(3))
                .unwrap()
                .is_none(),
            "and deleted"
        );
        assert_eq!(seqs(2), [2, 4, 5]);
        assert_eq!(seqs(6), Vec::<u64>::new());
        ack(&db, "r.org", &[], &[(1, None), (2, None)]).unwrap();
        assert_eq!(seqs(0), [4, 5]);
        assert_eq!(read_edus(&db, "r.org2", 0, 100).unwrap().len(), 1);
    }

    #[test]
    fn the_boot_counter_grows_with_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        assert_eq!(next_boot(&db).unwrap(), 1);
        assert_eq!(next_boot(&db).unwrap(), 2);
        drop(db);
        let db = Db::open(dir.path(), false).unwrap();
        assert_eq!(next_boot(&db).unwrap(), 3);
    }
}
