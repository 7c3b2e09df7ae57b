//! # storage — the only crate that knows RocksDB
//!
//! Pulse keeps everything in one RocksDB database, split into column families ([`Cf`]).
//! Every other crate speaks to it through this small API:
//!
//! * [`Db::open`] opens (or creates) the database and checks the schema version;
//!   [`Db::open_migrating`] also brings an older database up to date (`migrate.rs`);
//! * [`Db::get`], [`Db::get_json`], [`Db::scan_prefix`], [`Db::scan_range`] read;
//! * [`Batch`] collects puts and deletes that [`Db::write`] applies **atomically**
//!   (one RocksDB write batch, written to the WAL before `write` returns), so a
//!   multi-key change is either wholly there after a crash or not at all;
//! * [`Db::write_with_position`] additionally allocates the next value of the single,
//!   monotonically increasing **stream position** that sync tokens are made of, and
//!   commits in position order, so readers never observe position N+1 while N is still
//!   being written. The caller's closure runs outside any lock (see `position.rs`);
//!   callers that read-modify-write serialise per key with [`KeyLocks`];
//! * [`Key`] builds keys with a typed codec: strings are separated by `0xFF` (a byte
//!   that never occurs in UTF-8), integers are big-endian so byte order equals
//!   numeric order and range scans over stream positions work.
//!
//! Durability: writes go to the WAL before returning (`kill -9` cannot lose them);
//! with `fsync = true` the WAL is also fsynced, which survives power loss at the
//! cost of latency.
//!
//! A write that fails with an I/O error (a full disk) suspends writes and the database is
//! reopened in place once it can be (`recover.rs`): reads keep being served meanwhile,
//! writes get [`StorageError::WritesSuspended`] until then, no restart needed.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard};

mod checkpoint;
mod keylocks;
mod migrate;
mod position;
mod stats;

pub use stats::DbStats;
mod recover;

pub use keylocks::KeyLocks;
pub use migrate::Migration;

use rocksdb::{
    ColumnFamilyDescriptor, DBWithThreadMode, Direction, IteratorMode, Options, SingleThreaded,
    WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bumped whenever an on-disk layout changes incompatibly; an older database is brought
/// up to date at open by the steps in `migrate.rs` (see [`Db::open_migrating`]).
///
/// * 1: the first layout.
/// * 2: `Tokens` keyed by the SHA-256 of the access token, device records list token
///   hashes (the `accounts` migration); the unused `presence_stream` family dropped.
pub const SCHEMA_VERSION: u64 = 2;

/// The column families. Key layouts are documented per family; values are JSON unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// `meta`: `schema_version`, `stream_position` (u64 BE), `signing_key` and other singletons.
    Meta,
    /// `user_id` → account record.
    Users,
    /// `sha256(access_token)` (32 raw bytes) → session (user, device); the token itself is
    /// never stored (owned by `accounts`, see `accounts::keys`).
    Tokens,
    /// `user_id 0xFF device_id` → device record.
    Devices,
    /// `user_id 0xFF room_id-or-empty 0xFF type` → account data (with its stream position).
    AccountData,
    /// `user_id 0xFF pos` → account data change log (what changed at pos), for incremental sync.
    AccountDataLog,
    /// `user_id 0xFF filter_id` → filter JSON.
    Filters,
    /// Owned by `rooms` (`rooms::keys::txns`): `user_id 0xFF device_id 0xFF scope 0xFF
    /// txn_id 0xFF` → event id (send idempotency; scope is `send <room_id>` or
    /// `redact <room_id>`; the first two parts are [`device_scope`]);
    /// `"fed" 0xFF origin 0xFF txn_id 0xFF` → federation transaction record.
    Txns,
    /// `event_id` → `rooms::StoredEvent`: the PDU (canonical JSON, redacted once redacted)
    /// plus stream position, sending device/txn, `redacted_because`, replaced state.
    Events,
    /// `room_id 0xFF pos` → event id: the room's timeline in stream order.
    Timeline,
    /// Owned by `rooms` (`rooms::keys::rooms`, whose `RoomsKey::parse` tells the spaces apart):
    /// `room_id 0xFF` → room summary (version, creator, forward extremities, max depth);
    /// `room_id 0xFF "s" 0xFF type 0xFF state_key 0xFF` → current state event id;
    /// `room_id 0xFF "m" 0xFF user_id 0xFF` → current membership;
    /// `room_id 0xFF "l" 0xFF type 0xFF state_key 0xFF pos` → state event id (state log);
    /// `room_id 0xFF "r" 0xFF event_id 0xFF` → a redaction that came before its target;
    /// `room_id 0xFF "i" 0xFF user_id 0xFF` → stripped state of a remote invite;
    /// `"public" 0xFF room_id 0xFF` → empty (room directory);
    /// `"creating" 0xFF room_id 0xFF` → empty (a createRoom still building).
    Rooms,
    /// `event_id` → the state *before* an event: a full snapshot of (type, state_key) → event
    /// id, or a delta on top of another event's full snapshot.
    StateAt,
    /// `user_id 0xFF room_id 0xFF` → membership record (membership, pos, event id, forgotten).
    Memberships,
    /// `pos` → room id: the room of the timeline event at a stream position (owned by
    /// `rooms`; read by incremental sync to skip unchanged rooms, and federation catch-up).
    RoomStream,
    /// `alias` → alias record (room id, creator); `room_id 0xFF alias 0xFF` → empty (reverse index).
    Aliases,
    /// `user_id` → persisted presence snapshot, with the stream position of the user's latest
    /// visible change (the presence service rebuilds its in-memory stream index from these).
    Presence,
    /// Anything else small: nonces, rate-limit state that must survive restarts.
    Misc,
    /// `room_id 0xFF user_id 0xFF receipt_type 0xFF thread_id-or-empty 0xFF` → the latest
    /// receipt of that kind (event id, ts, thread, stream position).
    Receipts,
    /// `room_id 0xFF pos` → the receipt written at pos (one entry per current receipt: a
    /// newer receipt of the same kind deletes the older entry), for incremental sync.
    ReceiptStream,
    /// Outbound federation queues (owned by `federation-sender`):
    /// `"d" 0xFF destination 0xFF` → destination record (next txn counter);
    /// `"p" 0xFF destination 0xFF seq` → a pending PDU; `"e" 0xFF destination 0xFF seq` → a
    /// pending EDU; `"k" 0xFF destination 0xFF coalescing key 0xFF` → seq of its latest EDU.
    FederationQueue,
    /// `room_id 0xFF depth pos` → event id: a room's timeline in topological order (depth,
    /// then stream position), for `/messages` and `/context` (owned by `rooms`).
    Topo,
    /// Push notifications (owned by `push`): `"n" 0xFF user 0xFF room 0xFF pos` → a
    /// notification; `"u" 0xFF user 0xFF pos` → room id (the user's notifications in stream
    /// order); `"c" 0xFF user 0xFF room 0xFF` → evaluated up to pos; `"r" 0xFF user 0xFF room
    /// 0xFF thread 0xFF` → read up to pos; `"p" 0xFF user 0xFF app_id 0xFF pushkey 0xFF` → pusher;
    /// `"g" 0xFF app_id 0xFF pushkey 0xFF user 0xFF` → empty (pushers by key).
    Push,
    /// End-to-end encryption (owned by `e2ee`, key layouts in `e2ee::keys`): device keys,
    /// one-time and fallback keys, cross-signing keys and signatures, the device-list
    /// change log, to-device inboxes, key backups.
    E2ee,
    /// Push gateway deliveries (owned by `push-gateway`): `"cursor"` → the stream position
    /// whose events have been turned into pushes; `"q" 0xFF user 0xFF app_id 0xFF pushkey
    /// 0xFF pos` → a push waiting for that pusher (the event at `pos`).
    PushQueue,
    /// `media_id` → media record (content type, file name, size, SHA-256 of the file under
    /// `<data_dir>/media`, uploader) (owned by `media`).
    Media,
}

impl Cf {
    /// Families whose keys may start with [`device_scope`]: data of one device that goes
    /// when the device goes (`accounts` deletes these prefixes with the device, in the same
    /// batch, without knowing the rest of their layout).
    pub const DEVICE_SCOPED: [Cf; 1] = [Cf::Txns];

    pub const ALL: [Cf; 25] = [
        Cf::Meta,
        Cf::Users,
        Cf::Tokens,
        Cf::Devices,
        Cf::AccountData,
        Cf::AccountDataLog,
        Cf::Filters,
        Cf::Txns,
        Cf::Events,
        Cf::Timeline,
        Cf::Rooms,
        Cf::StateAt,
        Cf::Memberships,
        Cf::RoomStream,
        Cf::Aliases,
        Cf::Presence,
        Cf::Misc,
        Cf::Receipts,
        Cf::ReceiptStream,
        Cf::FederationQueue,
        Cf::Topo,
        Cf::Push,
        Cf::E2ee,
        Cf::PushQueue,
        Cf::Media,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Users => "users",
            Cf::Tokens => "tokens",
            Cf::Devices => "devices",
            Cf::AccountData => "account_data",
            Cf::AccountDataLog => "account_data_log",
            Cf::Filters => "filters",
            Cf::Txns => "txns",
            Cf::Events => "events",
            Cf::Timeline => "timeline",
            Cf::Rooms => "rooms",
            Cf::StateAt => "state_at",
            Cf::Memberships => "memberships",
            Cf::RoomStream => "room_stream",
            Cf::Aliases => "aliases",
            Cf::Presence => "presence",
            Cf::Misc => "misc",
            Cf::Receipts => "receipts",
            Cf::ReceiptStream => "receipt_stream",
            Cf::FederationQueue => "federation_queue",
            Cf::Topo => "topo",
            Cf::Push => "push",
            Cf::E2ee => "e2ee",
            Cf::PushQueue => "push_queue",
            Cf::Media => "media",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt value in {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("database schema version {found} is not supported (this build reads {expected})")]
    SchemaMismatch { found: u64, expected: u64 },
    #[error("missing column family {0}")]
    MissingCf(&'static str),
    #[error("cannot serialise a value for {cf}: {reason}")]
    Serialize { cf: &'static str, reason: String },
    #[error(
        "database schema version {found} needs the migration {name:?} to reach version {to}, \
         which this program does not run (open it with `pulse serve`)"
    )]
    MigrationMissing {
        found: u64,
        to: u64,
        name: &'static str,
    },
    #[error("migration {name:?} failed: {reason}")]
    Migration { name: &'static str, reason: String },
    /// Writes are refused since a write failed with `cause` (e.g. `No space left on device`),
    /// until the database has been reopened (tried again at most every few seconds, on the
    /// next write). Nothing of the refused batch was written.
    #[error("writes are suspended until the database can be reopened, after: {cause}")]
    WritesSuspended { cause: String },
    /// Too little free space to open the database safely (see `recover.rs`).
    #[error(
        "only {free} bytes free where the database is (No space left on device): at least \
         {needed} are needed to open it"
    )]
    NoSpace { free: u64, needed: u64 },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A key built from typed parts. Strings are terminated by `0xFF`; integers are big-endian.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new() -> Self {
        Key(Vec::with_capacity(64))
    }
    /// Append a string part followed by the `0xFF` separator.
    pub fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0xFF);
        self
    }
    /// Append a big-endian u64 (fixed width, so it sorts numerically).
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `user_id 0xFF device_id 0xFF`: the prefix of every key in a [`Cf::DEVICE_SCOPED`]
/// family that belongs to one device (the one contract between `accounts`, which deletes
/// devices, and the crates that keep per-device data, such as `rooms`' send transaction IDs).
pub fn device_scope(user: &str, device: &str) -> Key {
    Key::new().str(user).str(device)
}

/// Reads a key built by [`Key`] back, part by part.
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        KeyReader { rest: bytes }
    }
    pub fn str(&mut self) -> Option<&'a str> {
        let end = self.rest.iter().position(|b| *b == 0xFF)?;
        let s = std::str::from_utf8(&self.rest[..end]).ok()?;
        self.rest = &self.rest[end + 1..];
        Some(s)
    }
    /// Whether every part has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
    pub fn u64(&mut self) -> Option<u64> {
        if self.rest.len() < 8 {
            return None;
        }
        let (head, tail) = self.rest.split_at(8);
        self.rest = tail;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }
}

/// Puts and deletes applied atomically by [`Db::write`].
///
/// A value that fails to serialise in [`Batch::put_json`] poisons the batch: `Db::write`
/// then refuses it with that error and writes nothing, so a caller never acknowledges a
/// write whose value went missing (callers need no error handling per put).
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
    failed: Option<StorageError>,
}

enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.ops
            .push(Op::Put(cf, key.as_ref().to_vec(), value.into()));
    }
    /// Put `value` as JSON. If it cannot be serialised the whole batch fails at
    /// [`Db::write`] with [`StorageError::Serialize`] (the first such error is kept).
    pub fn put_json<T: Serialize + ?Sized>(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: &T) {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.put(cf, key, bytes),
            Err(e) => {
                if self.failed.is_none() {
                    self.failed = Some(StorageError::Serialize {
                        cf: cf.name(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    /// The serialisation error that will make [`Db::write`] refuse this batch, if any.
    pub fn error(&self) -> Option<&StorageError> {
        self.failed.as_ref()
    }
    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.ops.push(Op::Delete(cf, key.as_ref().to_vec()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.failed.is_none()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

type Rocks = DBWithThreadMode<SingleThreaded>;

pub struct Db {
    /// The open RocksDB instance. Replaced in place after a failed write (`recover.rs`):
    /// first by a read-only instance, then by a fresh read-write one; readers hold the read
    /// side only for the duration of one call.
    rocks: RwLock<Rocks>,
    path: PathBuf,
    fsync: bool,
    /// Held across every RocksDB write and the check whether writes are suspended, so no
    /// write reaches an instance after one of its writes failed (`recover.rs` says why).
    writes: Mutex<recover::WriteState>,
    /// Last stream position whose write has completed, and every one below it. Readers use
    /// this as "now".
    position: AtomicU64,
    /// Last stream position handed out (see `position.rs`).
    allocated: AtomicU64,
    /// Last committed position (equal to `position`), under the lock that orders commits.
    committed: Mutex<u64>,
    /// Signalled whenever `committed` moves, so the next position's writer can go.
    turn: Condvar,
    /// Test-only: every write fails while set ([`Db::fail_writes`]).
    #[cfg(feature = "fault-injection")]
    failing: std::sync::atomic::AtomicBool,
}

const META_SCHEMA: &[u8] = b"schema_version";
const META_POSITION: &[u8] = b"stream_position";

impl Db {
    /// Open or create the database at `path`, creating missing column families and
    /// checking the schema version. A database of an older schema version is refused
    /// ([`StorageError::MigrationMissing`]) if reaching the current one needs a migration
    /// owned by another crate; [`Db::open_migrating`] runs those.
    pub fn open(path: &Path, fsync: bool) -> Result<Db> {
        Self::open_migrating(path, fsync, &[])
    }

    /// [`Db::open`], bringing an older database up to [`SCHEMA_VERSION`] with storage's
    /// own steps and `migrations` (the other crates' steps, see [`Migration`]).
    pub fn open_migrating(path: &Path, fsync: bool, migrations: &[Migration]) -> Result<Db> {
        let mut db = Self::open_raw(path, fsync)?;
        let found = match db.get(Cf::Meta, META_SCHEMA)? {
            Some(v) => decode_u64(&v).ok_or(StorageError::Corrupt {
                cf: "meta",
                reason: "schema_version".into(),
            })?,
            None => {
                let mut b = Batch::new();
                b.put(Cf::Meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes().to_vec());
                db.write(b)?;
                SCHEMA_VERSION
            }
        };
        if found > SCHEMA_VERSION || found == 0 {
            return Err(StorageError::SchemaMismatch {
                found,
                expected: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            db.migrate(found, migrations)?;
            // Old keys and values (plain access tokens) may still sit in SST files, the WAL
            // and the MANIFEST (which records each file's smallest and largest key): the
            // migration compacted every family, and reopening starts a new WAL and MANIFEST
            // and deletes the old ones.
            drop(db);
            db = Self::open_raw(path, fsync)?;
        }
        db.load_position()?;
        Ok(db)
    }

    /// Open every column family (ours, plus any other the database has, which RocksDB
    /// insists on), without looking at the schema.
    fn open_raw(path: &Path, fsync: bool) -> Result<Db> {
        let rocks = open_rocks(path, false)?;
        Ok(Db {
            rocks: RwLock::new(rocks),
            path: path.to_owned(),
            fsync,
            writes: Mutex::new(recover::WriteState::default()),
            position: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            committed: Mutex::new(0),
            turn: Condvar::new(),
            #[cfg(feature = "fault-injection")]
            failing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn load_position(&self) -> Result<()> {
        let pos = match self.get(Cf::Meta, META_POSITION)? {
            Some(v) => decode_u64(&v).ok_or(StorageError::Corrupt {
                cf: "meta",
                reason: "stream_position".into(),
            })?,
            None => 0,
        };
        self.position.store(pos, Ordering::SeqCst);
        self.allocated.store(pos, Ordering::SeqCst);
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = pos;
        Ok(())
    }

    /// The schema version stored in the database.
    pub fn schema_version(&self) -> Result<u64> {
        self.get(Cf::Meta, META_SCHEMA)?
            .and_then(|v| decode_u64(&v))
            .ok_or(StorageError::Corrupt {
                cf: "meta",
                reason: "schema_version".into(),
            })
    }

    /// The current instance, for one read (see [`Db::rocks`]'s field).
    fn rocks(&self) -> RwLockReadGuard<'_, Rocks> {
        self.rocks.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, cf: Cf, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let rocks = self.rocks();
        Ok(rocks.get_cf(handle(&rocks, cf)?, key)?)
    }

    pub fn get_json<T: DeserializeOwned>(
        &self,
        cf: Cf,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt {
                        cf: cf.name(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    pub fn exists(&self, cf: Cf, key: impl AsRef<[u8]>) -> Result<bool> {
        let rocks = self.rocks();
        Ok(rocks.get_pinned_cf(handle(&rocks, cf)?, key)?.is_some())
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: Cf, prefix: impl AsRef<[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = prefix.as_ref();
        let mut out = Vec::new();
        let rocks = self.rocks();
        let iter = rocks.iterator_cf(
            handle(&rocks, cf)?,
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Entries with `start <= key < end`, forwards, or backwards from just below `end`
    /// when `reverse`; at most `limit`.
    pub fn scan_range(
        &self,
        cf: Cf,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = (start.as_ref(), end.as_ref());
        let mut out = Vec::new();
        if limit == 0 || start >= end {
            return Ok(out);
        }
        let rocks = self.rocks();
        let handle = handle(&rocks, cf)?;
        if reverse {
            let iter = rocks.iterator_cf(handle, IteratorMode::From(end, Direction::Reverse));
            for item in iter {
                let (k, v) = item?;
                if &*k >= end {
                    continue;
                }
                if &*k < start || out.len() >= limit {
                    break;
                }
                out.push((k.into_vec(), v.into_vec()));
            }
        } else {
            // Bounded above: RocksDB stops at `end` instead of stepping over every deleted
            // entry (tombstone) after the range's last live key, up to the next live key of
            // another range (a drained queue scanned often would pay that on every scan).
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_iterate_upper_bound(end.to_vec());
            let iter =
                rocks.iterator_cf_opt(handle, opts, IteratorMode::From(start, Direction::Forward));
            for item in iter {
                let (k, v) = item?;
                if &*k >= end || out.len() >= limit {
                    break;
                }
                out.push((k.into_vec(), v.into_vec()));
            }
        }
        Ok(out)
    }

    fn write_opts(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.fsync);
        w
    }

    fn to_rocks(rocks: &Rocks, batch: Batch) -> Result<rocksdb::WriteBatch> {
        if let Some(e) = batch.failed {
            return Err(e);
        }
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(handle(rocks, cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(handle(rocks, cf)?, k),
            }
        }
        Ok(wb)
    }

    /// Test-only (feature `fault-injection`): while `on`, every write fails and writes nothing,
    /// so callers' error paths can be tested.
    #[cfg(feature = "fault-injection")]
    pub fn fail_writes(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Apply a batch atomically. Returns once it is in the WAL. While writes are suspended
    /// after a failed one, first tries to reopen the database (at most every few seconds),
    /// and refuses the batch with [`StorageError::WritesSuspended`] if that does not work.
    pub fn write(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::Corrupt {
                cf: "meta",
                reason: "write refused by fault injection".into(),
            });
        }
        self.write_guarded(batch)
    }

    /// Flush memtables (used at shutdown; not needed for durability). Nothing to do while
    /// writes are suspended (the instance is read-only then).
    pub fn flush(&self) -> Result<()> {
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if _writes.suspended() {
            return Ok(());
        }
        let rocks = self.rocks();
        for cf in Cf::ALL {
            rocks.flush_cf(handle(&rocks, cf)?)?;
        }
        Ok(())
    }
}

/// A column family's handle in `rocks`.
fn handle(rocks: &Rocks, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
    rocks
        .cf_handle(cf.name())
        .ok_or(StorageError::MissingCf(cf.name()))
}

/// Open the RocksDB instance at `path` with every column family (ours, plus any other the
/// database has, which RocksDB insists on): read-write (creating what is missing), or
/// read-only (no lock taken, nothing written to the database's files).
fn open_rocks(path: &Path, read_only: bool) -> Result<Rocks> {
    recover::check_free_space(path)?;
    let mut opts = Options::default();
    // RocksDB's own LOG file gets only the header written at open (version, options), no
    // runtime lines: on a full disk a failed LOG write followed by another line aborts the
    // process (an assertion in Debian's librocksdb, see recover.rs). What goes wrong
    // reaches Pulse's log through the failing calls instead.
    opts.set_log_level(rocksdb::LogLevel::Header);
    opts.create_if_missing(!read_only);
    opts.create_missing_column_families(!read_only);
    opts.set_keep_log_file_num(4);
    opts.set_max_total_wal_size(64 << 20);
    let mut names: Vec<String> = Cf::ALL.iter().map(|cf| cf.name().to_owned()).collect();
    // A database that does not exist yet has no families to list.
    for existing in Rocks::list_cf(&Options::default(), path).unwrap_or_default() {
        if existing != "default" && !names.contains(&existing) {
            names.push(existing);
        }
    }
    let cfs = names
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(if read_only {
        Rocks::open_cf_descriptors_read_only(&opts, path, cfs, false)?
    } else {
        Rocks::open_cf_descriptors(&opts, path, cfs)?
    })
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it). The one
/// owner for every service crate (they all sit on `storage`, and timestamps are stored);
/// `presence-core` stays clock-free and is handed times by its callers.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), false).expect("open");
        (dir, db)
    }

    #[test]
    fn key_codec_round_trips_and_sorts_numerically() {
        let a = Key::new().str("!room:x").u64(2);
        let b = Key::new().str("!room:x").u64(10);
        assert!(a.as_bytes() < b.as_bytes());
        let mut r = KeyReader::new(b.as_bytes());
        assert_eq!(r.str(), Some("!room:x"));
        assert_eq!(r.u64(), Some(10));
        assert_eq!(r.u64(), None);
    }

    #[test]
    fn batch_is_atomic_and_persists_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Db::open(dir.path(), false).expect("open");
            let (pos, ()) = db
                .write_with_position::<_, StorageError>(|pos, b| {
                    b.put(Cf::Users, "@a:x", b"1".to_vec());
                    b.put(
                        Cf::Timeline,
                        Key::new().str("!r:x").u64(pos),
                        b"$e".to_vec(),
                    );
                    Ok(())
                })
                .expect("write");
            assert_eq!(pos, 1);
        }
        let db = Db::open(dir.path(), false).expect("reopen");
        assert_eq!(db.current_position(), 1);
        assert_eq!(db.get(Cf::Users, "@a:x").expect("get"), Some(b"1".to_vec()));
    }

    #[test]
    fn failed_build_writes_nothing_and_does_not_advance() {
        let (_d, db) = open();
        let r = db.write_with_position::<(), StorageError>(|_, b| {
            b.put(Cf::Users, "@a:x", b"1".to_vec());
            Err(StorageError::MissingCf("test"))
        });
        assert!(r.is_err());
        assert_eq!(db.current_position(), 0);
        assert_eq!(db.get(Cf::Users, "@a:x").expect("get"), None);
    }

    struct Unserialisable;
    impl Serialize for Unserialisable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses to serialise"))
        }
    }

    #[test]
    fn put_json_serialisation_failure_fails_the_write() {
        let (_d, db) = open();
        let mut b = Batch::new();
        b.put(Cf::Users, "@a:x", b"1".to_vec());
        b.put_json(Cf::Users, "@b:x", &Unserialisable);
        assert!(matches!(
            db.write(b),
            Err(StorageError::Serialize { cf: "users", .. })
        ));
        // Nothing of the batch was written, and no empty value in particular.
        assert_eq!(db.get(Cf::Users, "@a:x").expect("get"), None);
        assert_eq!(db.get(Cf::Users, "@b:x").expect("get"), None);
        let r = db.write_with_position::<(), StorageError>(|_, b| {
            b.put_json(Cf::Users, "@c:x", &Unserialisable);
            Ok(())
        });
        assert!(matches!(r, Err(StorageError::Serialize { .. })));
        assert_eq!(db.current_position(), 0);
        assert_eq!(db.get(Cf::Users, "@c:x").expect("get"), None);
    }

    #[test]
    fn range_scans_both_directions() {
        let (_d, db) = open();
        let mut b = Batch::new();
        for i in 1..=5u64 {
            b.put(
                Cf::Timeline,
                Key::new().str("!r").u64(i),
                i.to_be_bytes().to_vec(),
            );
        }
        b.put(Cf::Timeline, Key::new().str("!s").u64(1), vec![0]);
        db.write(b).expect("write");
        let lo = Key::new().str("!r").u64(2);
        let hi = Key::new().str("!r").u64(5);
        let fwd = db
            .scan_range(Cf::Timeline, &lo, &hi, false, 10)
            .expect("scan");
        assert_eq!(fwd.len(), 3);
        let back = db
            .scan_range(Cf::Timeline, &lo, &hi, true, 2)
            .expect("scan");
        let nums: Vec<u64> = back.iter().filter_map(|(_, v)| decode_u64(v)).collect();
        assert_eq!(nums, vec![4, 3]);
        assert_eq!(
            db.scan_prefix(Cf::Timeline, Key::new().str("!r"))
                .expect("scan")
                .len(),
            5
        );
    }

    #[test]
    fn schema_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Db::open(dir.path(), false).expect("open");
            let mut b = Batch::new();
            b.put(Cf::Meta, META_SCHEMA, 99u64.to_be_bytes().to_vec());
            db.write(b).expect("write");
        }
        assert!(matches!(
            Db::open(dir.path(), false),
            Err(StorageError::SchemaMismatch { found: 99, .. })
        ));
    }
}
