//! Stream positions: allocation, ordered commit, and what readers may see.
//!
//! A positioned write takes three steps: it **allocates** the next position (an atomic
//! increment), runs the caller's closure with it **without any lock** (closures read the
//! database, and a slow one must not hold up other writers' reads), then **commits** in
//! position order: it waits until every lower position has been committed, writes its batch
//! (and the fsync, when configured) and only then publishes the position to readers. So
//! writes reach RocksDB in position order (the persisted `stream_position` only grows) and
//! [`Db::current_position`] is N only once every position up to N is written: readers never
//! see a gap.
//!
//! What the old global writer lock also gave and this does not: a closure's reads are no
//! longer serialised with other writers' closures. A caller that reads a value inside its
//! closure and writes a new one (read-modify-write) must serialise itself per key, for
//! example with [`KeyLocks`](crate::KeyLocks) held around the whole `write_with_position`.
//!
//! A position whose closure or write fails is given back when no later position has been
//! allocated yet (the common, uncontended case: nothing changes). Otherwise it is skipped:
//! a batch holding only the new `stream_position` is written, so a position that readers
//! may have seen is never handed out again after a restart.
use std::sync::atomic::Ordering;

use crate::{Batch, Cf, Db, META_POSITION, Result, StorageError};

impl Db {
    /// Allocate the next stream position, let `build` fill a batch that uses it, and write
    /// batch + new position atomically. `build` runs outside any lock, concurrently with other
    /// writers' closures; the writes themselves happen one at a time in position order, and
    /// this returns only once the position is visible to readers ([`Db::current_position`]
    /// `>= pos`), so a caller may wake readers with it right away.
    ///
    /// `build` must not wait for anything a caller of `write_with_position` holds across the
    /// call (that caller may be waiting for this position's commit). Callers' locks are taken
    /// before calling, never inside `build`.
    pub fn write_with_position<T, E>(
        &self,
        build: impl FnOnce(u64, &mut Batch) -> Result<T, E>,
    ) -> Result<(u64, T), E>
    where
        E: From<StorageError>,
    {
        let pos = self.allocated.fetch_add(1, Ordering::SeqCst) + 1;
        // Settles the position also when `build` panics, so later writers never wait forever.
        let mut turn = Turn {
            db: self,
            pos,
            settled: false,
        };
        let mut batch = Batch::new();
        match build(pos, &mut batch) {
            Ok(value) => {
                turn.commit(Some(batch))?;
                Ok((pos, value))
            }
            Err(e) => {
                turn.commit(None)?;
                Err(e)
            }
        }
    }

    /// The highest stream position whose data is fully written, and every position below it.
    pub fn current_position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }
}

/// One allocated position on its way to being committed or given back.
struct Turn<'a> {
    db: &'a Db,
    pos: u64,
    settled: bool,
}

impl Turn<'_> {
    /// Wait until every lower position is committed, then write `batch` (with the new
    /// `stream_position`) or, for `None`, give the position back or skip it.
    fn commit(&mut self, batch: Option<Batch>) -> Result<()> {
        self.settled = true;
        let db = self.db;
        let pos = self.pos;
        let mut committed = db.committed.lock().unwrap_or_else(|p| p.into_inner());
        while *committed + 1 != pos {
            committed = db.turn.wait(committed).unwrap_or_else(|p| p.into_inner());
        }
        let had_batch = batch.is_some();
        let written = match batch {
            Some(mut batch) => {
                batch.put(Cf::Meta, META_POSITION, pos.to_be_bytes().to_vec());
                db.write(batch)
            }
            None => Ok(()),
        };
        let used = if had_batch && written.is_ok() {
            true
        } else {
            // Nothing was written at `pos`. Give it back if nobody holds a later one;
            // otherwise persist the skip so the position is never handed out again.
            let given_back = db
                .allocated
                .compare_exchange(pos, pos - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if !given_back {
                let mut skip = Batch::new();
                skip.put(Cf::Meta, META_POSITION, pos.to_be_bytes().to_vec());
                if let Err(e) = db.write(skip) {
                    // Later writers must not wait forever; each persists a higher position
                    // with its own batch.
                    tracing::error!("persisting skipped stream position {pos} failed: {e}");
                }
            }
            !given_back
        };
        if used {
            *committed = pos;
            db.position.store(pos, Ordering::SeqCst);
        }
        drop(committed);
        db.turn.notify_all();
        written
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.commit(None);
        }
    }
}

#[cfg(test)]
mod tests;
