//! The durable part: per-destination queues in `Cf::FederationQueue`.
//!
//! Everything a destination still has to receive is on disk, so memory per destination is a
//! few counters and a restart resumes from the last acknowledged transaction. Layout:
//!
//! * `"d" dest` → [`DestinationRecord`] (the next transaction counter);
//! * `"p" dest seq` → a pending PDU (JSON), sent in `seq` order;
//! * `"e" dest seq` → a pending [`QueuedEdu`];
//! * `"k" dest key` → seq of the latest EDU with that coalescing key: a newer EDU with the
//!   same key replaces the older one (latest wins) while it has not been acknowledged.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Batch, Cf, Db, Key, KeyReader, StorageError};

/// The persisted per-destination record.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct DestinationRecord {
    /// The counter of the next transaction ID. Persisted before a transaction is sent, so an ID
    /// is never used twice for different contents, even across a crash.
    pub next_txn: u64,
}

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

fn dest_record_key(dest: &str) -> Key {
    Key::new().str("d").str(dest)
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

pub(crate) fn load_record(db: &Db, dest: &str) -> Result<DestinationRecord, StorageError> {
    Ok(db
        .get_json(Cf::FederationQueue, dest_record_key(dest))?
        .unwrap_or_default())
}

pub(crate) fn put_record(batch: &mut Batch, dest: &str, record: &DestinationRecord) {
    batch.put_json(Cf::FederationQueue, dest_record_key(dest), record);
}

pub(crate) fn put_pdu(batch: &mut Batch, dest: &str, seq: u64, pdu: &Value) {
    batch.put_json(Cf::FederationQueue, pdu_prefix(dest).u64(seq), pdu);
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

/// The oldest pending PDUs of `dest`, at most `limit`.
pub(crate) fn read_pdus(
    db: &Db,
    dest: &str,
    limit: usize,
) -> Result<Vec<Pending<Value>>, StorageError> {
    read(db, &pdu_prefix(dest), limit)
}

/// The oldest pending EDUs of `dest`, at most `limit`.
pub(crate) fn read_edus(
    db: &Db,
    dest: &str,
    limit: usize,
) -> Result<Vec<Pending<QueuedEdu>>, StorageError> {
    read(db, &edu_prefix(dest), limit)
}

fn read<T: serde::de::DeserializeOwned>(
    db: &Db,
    prefix: &Key,
    limit: usize,
) -> Result<Vec<Pending<T>>, StorageError> {
    let rows = db.scan_range(Cf::FederationQueue, prefix, seq_end(prefix), false, limit)?;
    let mut out = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let seq = k
            .get(prefix.as_bytes().len()..)
            .and_then(|rest| KeyReader::new(rest).u64());
        let item = serde_json::from_slice(&v).ok();
        match (seq, item) {
            (Some(seq), Some(item)) => out.push(Pending { seq, item }),
            // A corrupt entry must not wedge the queue forever: skip it (it is deleted with
            // the transaction that passes over it).
            _ => tracing::error!("corrupt federation queue entry skipped"),
        }
    }
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
