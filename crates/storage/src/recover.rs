//! Recovering from a failed write (a full disk) without a restart.
//!
//! RocksDB stops taking writes after a write fails with an I/O error (a "hard" background
//! error), and its C API, which the `rocksdb` crate (0.20) wraps, has no `DB::Resume()`.
//! RocksDB's own recovery (its `SstFileManager` retries every 5 s) can resume, but only the
//! flush of a non-empty memtable replaces the WAL writer that saw the error, so Pulse never
//! writes to an instance again once one of its writes failed; it reopens the database.
//!
//! Why Pulse used to abort on a full disk (debug and release builds alike): the process
//! links Debian's `librocksdb` 7.8, built without `NDEBUG`. RocksDB's info log (the `LOG`
//! file in the data directory, `EnvLogger`) writes through a `WritableFileWriter`; on a full
//! disk one of its writes fails and marks the writer as failed, and the next log line
//! (`ErrorHandler::SetBGError` logging "Background IO error" for the failed write) calls
//! `WritableFileWriter::Append` on it, whose `AssertFalseAndGetStatusForPrevError` asserts
//! (seen in gdb: `rocksdb_write` → `DBImpl::IOStatusCheck` → `SetBGError` → `EnvLogger::Logv`
//! → `Append` → `__assert_fail`). So RocksDB's info log is set to `Header` level (`lib.rs`,
//! `open_rocks`): only the header at open is written, nothing at run time; and the database
//! is opened (at start-up and when reopening) only with at least [`MIN_FREE_BYTES`] free,
//! so that header fits.
//!
//! [`Db::write`] runs under one lock (`Db::writes`) that also holds the suspension state, so
//! no write can reach an instance after one of its writes failed:
//!
//! 1. the failing write **suspends** writes. The instance keeps serving reads (a stopped
//!    RocksDB still reads; every acknowledged write is in its memtables and WAL). Nothing
//!    is opened now: the disk is full;
//! 2. while suspended, a write first tries to **reopen** the database (at most once per
//!    [`RETRY_MIN`], backing off to [`RETRY_MAX`] while it keeps failing), once at least
//!    [`MIN_FREE_BYTES`] are free: a read-only instance of the same files is opened next to
//!    the failed one (read-only takes no lock and writes no data) and swapped in, in place
//!    behind the `RwLock`, so readers go on; the failed instance is closed; then a read-write
//!    instance is opened and swapped in, and the write goes ahead. If the read-write open
//!    fails, the read-only instance serves reads until the next attempt. Until the reopen
//!    works, writes get [`StorageError::WritesSuspended`] (naming the original error, so the
//!    HTTP layer can say the disk is full) and nothing of them is written.
//!
//! Stream positions are kept in memory across the reopen (never reloaded: a position
//! readers saw must not be handed out again), and a write refused while suspended gives its
//! position back or skips it as any failed write does (`position.rs`).
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Batch, Db, Result, StorageError, open_rocks};

/// The shortest wait between two reopen attempts.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two reopen attempts (the wait doubles after each failure).
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// Free space needed to open the database: RocksDB writes its `LOG` header (about 100 KB
/// with Pulse's 24 column families), a new MANIFEST and the recovered memtables at open.
pub const MIN_FREE_BYTES: u64 = 4 << 20;

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
    /// Whether the instance serving reads is a read-only one (false: the failed one).
    read_only: bool,
    next_attempt: Instant,
    wait: Duration,
}

impl WriteState {
    pub(crate) fn suspended(&self) -> bool {
        self.suspended.is_some()
    }
}

/// Free bytes (for unprivileged users) on the file system of `path`, or of its nearest
/// existing ancestor; `None` if that cannot be told.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain data, filled in by the call below.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable `statvfs`.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Refuse to open the database with less than [`MIN_FREE_BYTES`] free (see the module
/// comment: RocksDB would abort).
pub(crate) fn check_free_space(path: &Path) -> Result<()> {
    match free_bytes(path) {
        Some(free) if free < MIN_FREE_BYTES => Err(StorageError::NoSpace {
            free,
            needed: MIN_FREE_BYTES,
        }),
        _ => Ok(()),
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
            self.suspend(&mut state, cause.clone());
            return Err(StorageError::WritesSuspended { cause });
        }
        match rocks.write_opt(wb, &self.write_opts()) {
            Ok(()) => Ok(()),
            Err(e) => {
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

    /// Suspend writes after `cause`; the failed instance keeps serving reads.
    fn suspend(&self, state: &mut WriteState, cause: String) {
        tracing::error!(
            "a database write failed ({cause}); writes are refused until the database can be \
             reopened (tried on the next write), reads go on"
        );
        state.suspended = Some(Suspension {
            cause,
            read_only: false,
            next_attempt: Instant::now() + RETRY_MIN,
            wait: RETRY_MIN,
        });
    }

    /// Replace the current instance by a freshly opened one (read-only or read-write),
    /// closing the old one outside the lock readers wait on.
    fn swap_in(&self, read_only: bool) -> Result<()> {
        let new = open_rocks(&self.path, read_only)?;
        let old = std::mem::replace(
            &mut *self.rocks.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        drop(old);
        Ok(())
    }

    /// While suspended: reopen if it is time to try, or refuse.
    fn try_reopen(&self, state: &mut WriteState) -> Result<()> {
        let Some(s) = state.suspended.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if now < s.next_attempt {
            return Err(StorageError::WritesSuspended {
                cause: s.cause.clone(),
            });
        }
        // The failed instance holds the database's lock: it goes (for a read-only one,
        // which readers use meanwhile) before a read-write one can open.
        let reopened = if s.read_only {
            self.swap_in(false)
        } else {
            self.swap_in(true).and_then(|()| {
                s.read_only = true;
                self.swap_in(false)
            })
        };
        match reopened {
            Ok(()) => {
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
                Err(StorageError::WritesSuspended {
                    cause: s.cause.clone(),
                })
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
        assert_eq!(
            db.current_position(),
            pos,
            "a refused write publishes nothing"
        );
        assert_eq!(
            db.get(Cf::Users, "@a:x").expect("read"),
            Some(b"1".to_vec())
        );
        assert_eq!(
            db.get(Cf::Users, "@b:x").expect("read"),
            Some(b"2".to_vec())
        );
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
