//! Recovering from a failed write (a full disk) without a restart.
//!
//! RocksDB stops taking writes after a write-ahead-log append fails (a "hard" background
//! error) and its C API, which the `rocksdb` crate wraps, has no `DB::Resume()`. RocksDB does
//! try to resume by itself (its `SstFileManager` polls every 5 s), but that recovery is what
//! made Pulse abort: `DBImpl::ResumeImpl` replaces the WAL writer only when a memtable has
//! something to flush (`SwitchMemtable`), and a failed write inserts nothing. When every
//! memtable is empty — the failed write was the first after an earlier recovery flushed them
//! — the resumed database keeps the WAL writer that saw the error, and the next write's
//! `WritableFileWriter::Append` hits `AssertFalseAndGetStatusForPrevError`: an `assert` in the
//! Debian `librocksdb` Pulse links (built without `NDEBUG`, so in debug *and* release builds
//! of Pulse); a library built with `NDEBUG` would fail that write and stop writes again.
//!
//! So Pulse never writes to an instance again once one of its writes failed with an I/O
//! error. [`Db::write`] runs under one lock (`Db::writes`) that also holds the suspension
//! state, so no write can slip in between the failure and the suspension:
//!
//! 1. the failing write **suspends** writes and swaps the instance, in place behind the
//!    `RwLock`, for a **read-only** one of the same files (a read-only instance takes no
//!    lock and writes nothing; it sees every acknowledged write, which is in the WAL). The
//!    failed instance is closed, which also ends RocksDB's own recovery attempts on it.
//!    Readers keep being served throughout;
//! 2. while suspended, a write first tries to **reopen** the database read-write (at most
//!    once per [`RETRY_MIN`], backing off to [`RETRY_MAX`] while it keeps failing, e.g. the
//!    disk is still full) next to the read-only instance, swaps it in and goes on. Until that
//!    works, writes get [`StorageError::WritesSuspended`] (naming the original error, so the
//!    HTTP layer can say the disk is full) and nothing of them is written.
//!
//! Stream positions are kept in memory across the reopen (never reloaded: a position
//! readers saw must not be handed out again), and a write refused while suspended gives its
//! position back or skips it as any failed write does (`position.rs`).
use std::time::{Duration, Instant};

use crate::{Batch, Db, Result, StorageError, open_rocks};

/// The shortest wait between two reopen attempts.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two reopen attempts (the wait doubles after each failure).
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Whether writes are suspended, and since what (under `Db::writes`).
#[derive(Default)]
pub(crate) struct WriteState {
    suspended: Option<Suspension>,
    /// Test hook: the next write fails as if RocksDB had returned this I/O error.
    #[cfg(any(test, feature = "fault-injection"))]
    inject: Option<String>,
}

struct Suspension {
    /// The error of the write that failed (RocksDB's message).
    cause: String,
    /// Whether the instance serving reads is the read-only one (false only when opening it
    /// failed, and the failed instance still serves reads).
    read_only: bool,
    next_attempt: Instant,
    wait: Duration,
}

impl WriteState {
    pub(crate) fn suspended(&self) -> bool {
        self.suspended.is_some()
    }
}

impl Db {
    /// [`Db::write`] after its checks: the write under the write lock, suspending writes on an
    /// I/O error and reopening first while suspended.
    pub(crate) fn write_guarded(&self, batch: Batch) -> Result<()> {
        let mut state = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if state.suspended.is_some() {
            self.try_reopen(&mut state)?;
        }
        let rocks = self.rocks();
        let wb = Self::to_rocks(&rocks, batch)?;
        #[cfg(any(test, feature = "fault-injection"))]
        if let Some(cause) = state.inject.take() {
            drop(rocks);
            self.suspend(&mut state, cause.clone());
            return Err(StorageError::WritesSuspended { cause });
        }
        match rocks.write_opt(wb, &self.write_opts()) {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(rocks);
                if e.kind() == rocksdb::ErrorKind::IOError {
                    self.suspend(&mut state, e.to_string());
                }
                Err(e.into())
            }
        }
    }

    /// Whether writes are suspended after a failed write (see the module comment).
    pub fn writes_suspended(&self) -> bool {
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .suspended()
    }

    /// Test hook (feature `fault-injection`): the next write fails as if RocksDB had
    /// returned the I/O error `cause`, and writes are suspended as after a real one.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_write_io_error(&self, cause: &str) {
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).inject = Some(cause.to_owned());
    }

    /// Suspend writes after `cause` and serve reads from a read-only instance.
    fn suspend(&self, state: &mut WriteState, cause: String) {
        tracing::error!(
            "a database write failed ({cause}); writes are refused until the database can be \
             reopened (tried on the next write), reads go on"
        );
        let read_only = self.swap_in_read_only();
        state.suspended = Some(Suspension {
            cause,
            read_only,
            next_attempt: Instant::now() + RETRY_MIN,
            wait: RETRY_MIN,
        });
    }

    /// Replace the current instance by a read-only one; false (the current one stays) if
    /// that cannot be opened.
    fn swap_in_read_only(&self) -> bool {
        match open_rocks(&self.path, true) {
            Ok(ro) => {
                let failed = std::mem::replace(
                    &mut *self.rocks.write().unwrap_or_else(|p| p.into_inner()),
                    ro,
                );
                // Closing it (outside the lock readers wait on) writes nothing through its
                // failed WAL writer: RocksDB skips the buffer flush of a writer that saw an
                // error.
                drop(failed);
                true
            }
            Err(e) => {
                tracing::error!(
                    "cannot open the database read-only ({e}); the failed instance serves reads"
                );
                false
            }
        }
    }

    /// While suspended: reopen read-write if it is time to try, or refuse.
    fn try_reopen(&self, state: &mut WriteState) -> Result<()> {
        let Some(s) = state.suspended.as_mut() else {
            return Ok(());
        };
        let refused = |s: &Suspension| StorageError::WritesSuspended {
            cause: s.cause.clone(),
        };
        let now = Instant::now();
        if now < s.next_attempt {
            return Err(refused(s));
        }
        // The failed instance holds the database's lock: it must go to a read-only one
        // before a read-write one can open.
        if !s.read_only {
            s.read_only = self.swap_in_read_only();
            if !s.read_only {
                s.next_attempt = now + s.wait;
                return Err(refused(s));
            }
        }
        match open_rocks(&self.path, false) {
            Ok(rw) => {
                let ro = std::mem::replace(
                    &mut *self.rocks.write().unwrap_or_else(|p| p.into_inner()),
                    rw,
                );
                drop(ro);
                tracing::info!(
                    "the database was reopened after \"{}\"; writes are accepted again",
                    s.cause
                );
                state.suspended = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!("reopening the database failed ({e}); writes stay suspended");
                s.wait = (s.wait * 2).min(RETRY_MAX);
                s.next_attempt = Instant::now() + s.wait;
                Err(refused(s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Batch, Cf, Db, StorageError};

    fn put(db: &Db, key: &str, value: &str) -> crate::Result<()> {
        let mut b = Batch::new();
        b.put(Cf::Users, key, value.as_bytes().to_vec());
        db.write(b)
    }

    #[test]
    fn a_failed_write_suspends_writes_reads_go_on_and_a_reopen_resumes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), false).expect("open");
        put(&db, "@a:x", "1").expect("write");
        let (pos, ()) = db
            .write_with_position::<_, StorageError>(|_, b| {
                b.put(Cf::Users, "@b:x", b"2".to_vec());
                Ok(())
            })
            .expect("positioned write");

        db.inject_write_io_error("IO error: No space left on device");
        let e = put(&db, "@c:x", "3").expect_err("the failing write");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(db.writes_suspended());
        // Refused at once (no reopen before RETRY_MIN), nothing written; reads go on from the
        // read-only instance and see everything acknowledged.
        let e = put(&db, "@d:x", "4").expect_err("suspended");
        assert!(
            matches!(&e, StorageError::WritesSuspended { cause } if cause.contains("No space")),
            "{e}"
        );
        let r = db.write_with_position::<(), StorageError>(|_, b| {
            b.put(Cf::Users, "@e:x", b"5".to_vec());
            Ok(())
        });
        assert!(matches!(r, Err(StorageError::WritesSuspended { .. })));
        assert_eq!(db.current_position(), pos, "a refused write publishes nothing");
        assert_eq!(db.get(Cf::Users, "@a:x").expect("read"), Some(b"1".to_vec()));
        assert_eq!(db.get(Cf::Users, "@b:x").expect("read"), Some(b"2".to_vec()));
        for k in ["@c:x", "@d:x", "@e:x"] {
            assert_eq!(db.get(Cf::Users, k).expect("read"), None, "{k}");
        }
        assert_eq!(db.scan_prefix(Cf::Users, "@").expect("scan").len(), 2);

        // After the wait the next write reopens the database and goes through.
        std::thread::sleep(super::RETRY_MIN + std::time::Duration::from_millis(50));
        put(&db, "@f:x", "6").expect("the write after the reopen");
        assert!(!db.writes_suspended());
        let (next, ()) = db
            .write_with_position::<_, StorageError>(|_, b| {
                b.put(Cf::Users, "@g:x", b"7".to_vec());
                Ok(())
            })
            .expect("positioned write after the reopen");
        assert_eq!(next, pos + 1, "positions go on where they were");
        drop(db);
        let db = Db::open(dir.path(), false).expect("reopen from disk");
        for k in ["@a:x", "@b:x", "@f:x", "@g:x"] {
            assert!(db.get(Cf::Users, k).expect("read").is_some(), "{k} lost");
        }
        assert_eq!(db.get(Cf::Users, "@c:x").expect("read"), None);
        assert_eq!(db.current_position(), pos + 1);
    }
}
