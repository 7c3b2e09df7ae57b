//! Read receipts in storage: the latest receipt per (room, user, type, thread) in
//! `Cf::Receipts`, and a per-room change log in `Cf::ReceiptStream` keyed by stream
//! position (one entry per current receipt: a superseded receipt's entry is deleted in
//! the same batch), which incremental sync reads as a range.
use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use storage::{Cf, Db, Key, KeyReader, StorageError};

use crate::{MAX_RECEIPTS_PER_ROOM, Receipt, ReceiptType};

/// `Cf::Receipts` value: the latest receipt of one (room, user, type, thread).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptRecord {
    event_id: OwnedEventId,
    /// Stream position of the receipted event: receipts only move forwards.
    event_pos: u64,
    ts: u64,
    /// Stream position of this receipt (its `Cf::ReceiptStream` entry).
    pos: u64,
}

/// `Cf::ReceiptStream` value: the receipt written at that position.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptEntry {
    user_id: OwnedUserId,
    receipt_type: String,
    event_id: OwnedEventId,
    ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
}

/// Why a positioned write was abandoned.
enum Skip {
    /// A concurrent receipt got there first.
    Unchanged,
    Storage(StorageError),
}

impl From<StorageError> for Skip {
    fn from(e: StorageError) -> Self {
        Skip::Storage(e)
    }
}

pub(crate) fn receipt_key(r: &Receipt) -> Key {
    Key::new()
        .str(r.room_id.as_str())
        .str(r.user_id.as_str())
        .str(r.receipt_type.as_str())
        .str(r.thread_id.as_deref().unwrap_or(""))
}

fn stream_key(room: &RoomId, pos: u64) -> Key {
    Key::new().str(room.as_str()).u64(pos)
}

fn corrupt(cf: Cf, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        cf: cf.name(),
        reason: e.to_string(),
    }
}

/// Store `r` unless the current receipt of the same kind is for an event at `event_pos`
/// or later. Returns the new stream position when something was written. The caller holds
/// the lock of `receipt_key(r)`: this reads the previous receipt and replaces it.
pub(crate) fn store(db: &Db, r: &Receipt, event_pos: u64) -> Result<Option<u64>, StorageError> {
    let key = receipt_key(r);
    let current = |db: &Db| db.get_json::<ReceiptRecord>(Cf::Receipts, &key);
    if current(db)?.is_some_and(|c| c.event_pos >= event_pos) {
        return Ok(None);
    }
    let written = db.write_with_position(|pos, batch| {
        // The caller holds this receipt kind's lock (`EphemeralService::put_receipt`), so
        // this is the receipt checked above; its stream entry is replaced.
        if let Some(prev) = current(db)? {
            if prev.event_pos >= event_pos {
                return Err(Skip::Unchanged);
            }
            batch.delete(Cf::ReceiptStream, stream_key(&r.room_id, prev.pos));
        }
        batch.put_json(
            Cf::Receipts,
            &key,
            &ReceiptRecord {
                event_id: r.event_id.clone(),
                event_pos,
                ts: r.ts,
                pos,
            },
        );
        batch.put_json(
            Cf::ReceiptStream,
            stream_key(&r.room_id, pos),
            &ReceiptEntry {
                user_id: r.user_id.clone(),
                receipt_type: r.receipt_type.as_str().to_owned(),
                event_id: r.event_id.clone(),
                ts: r.ts,
                thread_id: r.thread_id.clone(),
            },
        );
        Ok(())
    });
    match written {
        Ok((pos, ())) => Ok(Some(pos)),
        Err(Skip::Unchanged) => Ok(None),
        Err(Skip::Storage(e)) => Err(e),
    }
}

/// The `m.receipt` event of a room for `viewer`: receipts written in `(since, now]`, or all
/// current ones on an initial sync; the most recent [`MAX_RECEIPTS_PER_ROOM`] at most.
/// Private receipts are only ever shown to their owner.
pub(crate) fn event(
    db: &Db,
    viewer: &UserId,
    room: &RoomId,
    since: Option<u64>,
    now: u64,
) -> Result<Option<Value>, StorageError> {
    const PAGE: usize = 256;
    let lo = stream_key(room, since.map_or(0, |s| s.saturating_add(1)));
    let mut hi = stream_key(room, now.saturating_add(1));
    let mut content: Map<String, Value> = Map::new();
    let mut count = 0;
    'pages: loop {
        let rows = db.scan_range(Cf::ReceiptStream, &lo, &hi, true, PAGE)?;
        let full_page = rows.len() == PAGE;
        for (_, v) in &rows {
            let entry: ReceiptEntry =
                serde_json::from_slice(v).map_err(|e| corrupt(Cf::ReceiptStream, e))?;
            if entry.receipt_type == ReceiptType::ReadPrivate.as_str() && entry.user_id != viewer {
                continue;
            }
            let by_type = content
                .entry(entry.event_id.to_string())
                .or_insert_with(|| json!({}));
            let users = by_type.as_object_mut().map(|o| {
                o.entry(entry.receipt_type.clone())
                    .or_insert_with(|| json!({}))
            });
            let Some(users) = users.and_then(Value::as_object_mut) else {
                continue;
            };
            // Newest first: an older receipt of the same user, type and event (another
            // thread) cannot be shown next to it, the newer one wins.
            if users.contains_key(entry.user_id.as_str()) {
                continue;
            }
            let mut receipt = json!({ "ts": entry.ts });
            if let Some(t) = entry.thread_id {
                receipt["thread_id"] = Value::from(t);
            }
            users.insert(entry.user_id.to_string(), receipt);
            count += 1;
            if count >= MAX_RECEIPTS_PER_ROOM {
                break 'pages;
            }
        }
        match rows.last() {
            Some((k, _)) if full_page => hi = stream_key(room, key_pos(k)),
            _ => break,
        }
    }
    if content.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({ "type": "m.receipt", "content": content })))
}

/// The stream position at the end of a `Cf::ReceiptStream` key.
fn key_pos(key: &[u8]) -> u64 {
    let mut r = KeyReader::new(key);
    r.str();
    r.u64().unwrap_or(0)
}
