//! PDUs of local events to the servers in their room, with a durable cursor in the event
//! stream so nothing committed is missed across a crash.
//!
//! The room engine commits an event, then (in a separate write) the caller queues its PDU
//! here. A `kill -9` between the two writes would lose the PDU for federation, so at start-up
//! the caller replays the local events after [`PduOutbox::cursor`] before taking live ones:
//!
//! * each queued PDU is written with a *marker* (`"q" pos`) in the same batch, so a replay
//!   never queues an event twice ([`PduOutbox::event`] skips marked positions);
//! * rooms commit in parallel (one lock per room), so events may reach the outbox slightly out
//!   of stream order. The cursor therefore never claims a position still in flight:
//!   [`PduOutbox::persist_cursor`] stores the database position sampled at its *previous*
//!   call (a tick earlier, by then every commit up to it has been handed over: the hand-over
//!   runs right after the commit) and drops the markers at or below it.

use std::sync::Mutex;

use ruma::ServerName;
use serde_json::Value;
use storage::{Batch, Cf, Key, KeyReader, StorageError};

use crate::{FederationSender, Transport, lock};

fn cursor_key() -> Key {
    Key::new().str("c")
}

fn marker_prefix() -> Key {
    Key::new().str("q")
}

fn marker_key(pos: u64) -> Key {
    marker_prefix().u64(pos)
}

struct Cursor {
    /// On disk: every local event at or below it has been queued or went nowhere.
    stored: u64,
    /// The database position at the previous [`PduOutbox::persist_cursor`].
    sampled: u64,
}

/// Queues local PDUs and tracks the stream cursor.
pub struct PduOutbox<T: Transport> {
    sender: FederationSender<T>,
    cursor: Mutex<Cursor>,
}

impl<T: Transport> PduOutbox<T> {
    /// Reads the stored cursor.
    pub fn open(sender: FederationSender<T>) -> Result<Self, StorageError> {
        let stored = sender
            .inner
            .db
            .get(Cf::FederationQueue, cursor_key())?
            .and_then(|v| storage::decode_u64(&v))
            .unwrap_or(0);
        Ok(PduOutbox {
            sender,
            cursor: Mutex::new(Cursor {
                stored,
                sampled: stored,
            }),
        })
    }

    /// Every local event at or below this position was queued (or went nowhere) before the
    /// last stop; replay the ones after it.
    pub fn cursor(&self) -> u64 {
        lock(&self.cursor).stored
    }

    /// Queues `pdu` (committed at stream position `pos`) for `destinations` (our own server
    /// skipped) unless that position was queued already; the queue entries and the position's
    /// marker are one atomic write. Returns whether it was queued.
    pub fn event<'a>(
        &self,
        pos: u64,
        destinations: impl IntoIterator<Item = &'a ServerName>,
        pdu: &Value,
    ) -> Result<bool, StorageError> {
        let origin = self.sender.inner.config.origin.clone();
        let dests: Vec<&ServerName> = destinations.into_iter().filter(|d| **d != origin).collect();
        if dests.is_empty() || pos <= self.cursor() {
            return Ok(false);
        }
        let db = &self.sender.inner.db;
        if db.exists(Cf::FederationQueue, marker_key(pos))? {
            return Ok(false); // queued before a restart
        }
        let mut batch = Batch::new();
        batch.put(Cf::FederationQueue, marker_key(pos), Vec::new());
        self.sender.queue_pdu_with(dests, pdu, batch)?;
        Ok(true)
    }

    /// Moves the stored cursor to the position sampled at the previous call and samples anew.
    /// Call every few seconds (it bounds how much a restart replays) and once after the
    /// start-up replay with `replayed_to` = the last position replayed.
    pub fn persist_cursor(&self, replayed_to: Option<u64>) -> Result<(), StorageError> {
        let db = &self.sender.inner.db;
        let mut cursor = lock(&self.cursor);
        let target = replayed_to.unwrap_or(cursor.sampled).max(cursor.stored);
        cursor.sampled = db.current_position();
        if target == cursor.stored {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put(
            Cf::FederationQueue,
            cursor_key(),
            target.to_be_bytes().to_vec(),
        );
        for (k, _) in db.scan_range(
            Cf::FederationQueue,
            marker_prefix(),
            marker_key(target.saturating_add(1)),
            false,
            usize::MAX,
        )? {
            if KeyReader::new(&k).str().is_some() {
                batch.delete(Cf::FederationQueue, k);
            }
        }
        db.write(batch)?;
        cursor.stored = target;
        Ok(())
    }
}
