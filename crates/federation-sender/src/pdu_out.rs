//! PDUs of local events to the servers in their room, with a durable cursor in the event
//! stream so nothing committed is missed across a crash.
//!
//! The room engine commits an event, then (in a separate write) the caller queues its PDU
//! here. A `kill -9` between the two writes would lose the PDU for federation, so the
//! outbox keeps a *cursor*: the stream position up to which every local event has been
//! queued or needed no queueing. It is written in the same batch as each queued PDU (so a
//! queued event is never queued again) and, for events that went nowhere, lazily
//! ([`PduOutbox::persist_cursor`]): re-examining a few such events after a crash is harmless.
//! At start-up the caller replays the events after [`PduOutbox::cursor`] before taking live
//! events.

use std::sync::Mutex;

use ruma::ServerName;
use serde_json::Value;
use storage::{Batch, Cf, Key, StorageError};

use crate::{FederationSender, Transport, lock};

fn cursor_key() -> Key {
    Key::new().str("c")
}

/// Queues local PDUs and tracks the stream cursor.
pub struct PduOutbox<T: Transport> {
    sender: FederationSender<T>,
    /// (position handled in memory, position on disk). Held across the cursor's writes so
    /// the on-disk value never moves backwards.
    cursor: Mutex<(u64, u64)>,
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
            cursor: Mutex::new((stored, stored)),
        })
    }

    /// Every local event at or below this position has been queued (or went nowhere).
    pub fn cursor(&self) -> u64 {
        lock(&self.cursor).0
    }

    /// Queues `pdu` (committed at stream position `pos`) for `destinations` and moves the
    /// cursor to `pos`, atomically. With no remote destination only the in-memory cursor
    /// moves. Positions must come in increasing order.
    pub fn event<'a>(
        &self,
        pos: u64,
        destinations: impl IntoIterator<Item = &'a ServerName>,
        pdu: &Value,
    ) -> Result<(), StorageError> {
        let origin = self.sender.inner.config.origin.clone();
        let dests: Vec<&ServerName> = destinations.into_iter().filter(|d| **d != origin).collect();
        let mut cursor = lock(&self.cursor);
        if pos <= cursor.0 {
            return Ok(()); // replayed at start-up already
        }
        if dests.is_empty() {
            cursor.0 = pos;
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put(
            Cf::FederationQueue,
            cursor_key(),
            pos.to_be_bytes().to_vec(),
        );
        self.sender.queue_pdu_with(dests, pdu, batch)?;
        *cursor = (pos, pos);
        Ok(())
    }

    /// Writes the in-memory cursor if it moved past the stored one (call now and then, and at
    /// shutdown: it bounds how many events a restart re-examines).
    pub fn persist_cursor(&self) -> Result<(), StorageError> {
        let mut cursor = lock(&self.cursor);
        if cursor.0 <= cursor.1 {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put(
            Cf::FederationQueue,
            cursor_key(),
            cursor.0.to_be_bytes().to_vec(),
        );
        self.sender.inner.db.write(batch)?;
        cursor.1 = cursor.0;
        Ok(())
    }
}
