//! # accounts — users, passwords, devices, access tokens, profiles, account data, filters
//!
//! [`AccountService`] owns everything about local accounts. Storage layout (all values JSON):
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `Users` | `user_id` (raw) | `UserRecord`: argon2id PHC hash, admin flag, deactivated flag, profile |
//! | `Tokens` | SHA-256 of the access token (32 bytes, [`keys::TokenHash`]) | [`Session`] (user, device) |
//! | `Devices` | `user_id 0xFF device_id 0xFF` | device record: [`Device`] plus the hex SHA-256 of the device's access tokens |
//! | `AccountData` | `user_id 0xFF room_id-or-empty 0xFF type 0xFF` | `{pos, content}` |
//! | `AccountDataLog` | `user_id 0xFF pos` | `{room_id, type, content}`: the latest write of that (room, type) |
//! | `Filters` | `user_id 0xFF filter_id 0xFF` | the filter JSON as uploaded (validated) |
//!
//! Every key is built and parsed in `keys`. Access tokens are never stored: only their
//! SHA-256 (databases of schema version 1 held them in clear; `migrate` rewrites them).
//!
//! Invariants: every token hash in `Tokens` is listed in its device record and vice versa;
//! deleting a device deletes its tokens (and its keys under [`storage::device_scope`] in
//! the [`Cf::DEVICE_SCOPED`] families: `rooms`' send transaction IDs) in the same
//! [`Batch`]. Account data is written with [`Db::write_with_position`], and the change log
//! keeps exactly one entry per (user, room, type) — the latest — so "what changed since
//! position P" is one range scan.
//!
//! Files by idea: `users` (localparts, registration, passwords, deactivation), `sessions`
//! (access tokens, devices, logout, last-seen), `profiles`, `account_data`, `filter_store`
//! (stored filters; the filter type is `filter`), `nonces` (shared-secret registration),
//! `password` (argon2 parameters and the [`HashingPool`]), `keys` (every storage key),
//! `migrate` (this crate's schema migration steps). This file holds the shared types and
//! the service itself.
//!
//! Read-modify-write changes of user and device records are serialised by one mutex;
//! password hashing (the slow part) happens outside it. All methods are synchronous and
//! some hash passwords (tens of milliseconds with production parameters): async callers
//! should run `register`, `login_password`, `check_password` and `change_password` on a
//! blocking thread.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Batch, Cf, Db, StorageError};

mod account_data;
pub mod admin;
pub mod filter;
mod filter_store;
pub mod keys;
mod migrate;
mod nonces;
mod password;
mod profiles;
mod refresh;
pub use refresh::REFRESHABLE_TOKEN_LIFETIME_MS;
mod sessions;
mod token_cache;
mod users;

pub use filter::{
    EventFilter, EventFilterExt, EventFormat, Filter, RoomEventFilter, RoomEventFilterExt,
    RoomFilter, RoomFilterExt, glob_match,
};
pub use migrate::MIGRATIONS;
pub use password::{HashingPool, PasswordHashing};

/// Longest allowed user ID (`@localpart:server`), in bytes, per the spec.
pub const MAX_USER_ID_LEN: usize = 255;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 512;
/// Longest accepted display name, in characters.
pub const MAX_DISPLAYNAME_LEN: usize = 256;
/// Longest accepted avatar URL, in bytes.
pub const MAX_AVATAR_URL_LEN: usize = 1000;
/// Longest accepted client-chosen device ID, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 255;
/// Longest accepted device display name, in characters.
pub const MAX_DEVICE_NAME_LEN: usize = 255;
/// Longest accepted account data type, in bytes.
pub const MAX_ACCOUNT_DATA_TYPE_LEN: usize = 255;
/// How long a shared-secret registration nonce stays valid.
pub const NONCE_TTL: Duration = Duration::from_secs(300);
/// Device `last_seen_*` is written at most this often per device (unless the IP changes).
pub const LAST_SEEN_INTERVAL_MS: u64 = 5 * 60 * 1000;
/// Live shared-secret registration nonces kept at once; beyond it new ones are refused
/// (never the old ones flushed, which would let anyone invalidate an admin's nonce).
pub const MAX_NONCES: usize = 10_000;
/// Stored filters per user.
pub const MAX_FILTERS_PER_USER: usize = 100;
/// Distinct account data entries (global and per room, by type) per user.
pub const MAX_ACCOUNT_DATA_PER_USER: usize = 1000;
const TOKEN_LEN: usize = 48;

/// The device behind an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// When an access token issued with a refresh token stops working (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ts: Option<u64>,
    /// A refresh token: only `POST /refresh` takes it, never as an access token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh: bool,
}

/// A user's public profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// What a client asked for when creating a session (`/register`, `/login`).
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    /// Reuse or create this device; `None` (or empty) generates a fresh ID.
    pub device_id: Option<String>,
    /// Display name for a newly created device (an existing device keeps its name).
    pub display_name: Option<String>,
    /// The client asked for a refresh token (`refresh_token: true`): the access token
    /// then expires after [`REFRESHABLE_TOKEN_LIFETIME_MS`].
    pub refresh_token: bool,
}

/// The result of [`AccountService::register`]. `device_id` and `access_token` are `None`
/// when registering without logging in (`inhibit_login`).
#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: OwnedUserId,
    pub device_id: Option<OwnedDeviceId>,
    pub access_token: Option<String>,
    /// With `NewDevice::refresh_token`: the refresh token and the access token's lifetime.
    pub refresh: Option<(String, u64)>,
}

/// A new logged-in session ([`AccountService::login_password`], [`AccountService::create_session`]).
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    /// With `NewDevice::refresh_token`: the refresh token and the access token's lifetime.
    pub refresh: Option<(String, u64)>,
}

/// A device as the client API shows it (`GET /devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: OwnedDeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ts: Option<u64>,
}

/// One piece of account data: global when `room_id` is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountDataChange {
    pub room_id: Option<OwnedRoomId>,
    pub event_type: String,
    pub content: Value,
}

/// Everything that can go wrong in this crate. The client API maps these to Matrix
/// error codes (see the variant docs).
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// 400 `M_INVALID_USERNAME`.
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    /// 400 `M_USER_IN_USE`.
    #[error("the user ID is already taken")]
    UserInUse,
    /// 403 `M_FORBIDDEN`: unknown user or wrong password (deliberately indistinguishable).
    #[error("invalid username or password")]
    Forbidden,
    /// 403 `M_USER_DEACTIVATED`.
    #[error("this account has been deactivated")]
    UserDeactivated,
    /// 404 `M_NOT_FOUND`.
    #[error("unknown user")]
    UnknownUser,
    /// 401 `M_UNKNOWN_TOKEN`: not a live refresh token.
    #[error("unknown or used refresh token")]
    UnknownToken,
    /// 404 `M_NOT_FOUND`.
    #[error("unknown device")]
    UnknownDevice,
    /// 400 `M_BAD_JSON`: a filter or account data body of the wrong shape.
    #[error("{0}")]
    BadJson(String),
    /// 400 `M_INVALID_PARAM`: a value out of range (too long, empty, ...).
    #[error("{0}")]
    InvalidParam(String),
    /// 429 `M_LIMIT_EXCEEDED`: every password-hashing slot stayed busy (see [`HashingPool`]).
    #[error("the server is busy checking passwords; try again shortly")]
    HashingBusy,
    /// 403 `M_FORBIDDEN`: a per-user quota (filters, account data types) is used up.
    #[error("{0}")]
    QuotaExceeded(String),
    /// 500: argon2 refused (only with invalid parameters).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// 500.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T, E = AccountError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    deactivated: bool,
    #[serde(default)]
    created_ts: u64,
    #[serde(default)]
    profile: Profile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    #[serde(flatten)]
    device: Device,
    /// Hex SHA-256 of each of the device's access tokens ([`keys::TokenHash`]).
    #[serde(default)]
    token_hashes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountDataRecord {
    pos: u64,
    content: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountDataLogRecord {
    #[serde(default)]
    room_id: Option<OwnedRoomId>,
    #[serde(rename = "type")]
    event_type: String,
    content: Value,
}

/// Entries of a user in a column family keyed `user 0xFF <string part> ...`, counting at
/// most `limit`.
fn count_user_entries(db: &Db, cf: Cf, user: &UserId, limit: usize) -> Result<usize, StorageError> {
    let (start, end) = (keys::user_prefix(user), keys::user_range_end(user));
    Ok(db.scan_range(cf, start, end, false, limit)?.len())
}

use storage::now_ms;

fn random_string(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// (user, device) — the key of the last-seen cache.
type DeviceKey = (OwnedUserId, OwnedDeviceId);
/// When a device's `last_seen_*` was last written, and the IP written.
type LastSeen = (u64, Option<String>);

/// The held write lock: on release (after the change it guarded is written) the token
/// cache is emptied. Every change that may delete a token holds one of these; changes that
/// cannot (last-seen, profiles) take the plain lock, so they keep the cache.
pub(crate) struct WriteGuard<'a> {
    _lock: MutexGuard<'a, ()>,
    tokens: &'a token_cache::TokenCache,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.tokens.invalidate();
    }
}

impl AccountService {
    /// Take the write lock (see [`WriteGuard`]).
    pub(crate) fn write_guard(&self) -> WriteGuard<'_> {
        WriteGuard {
            _lock: lock(&self.write_lock),
            tokens: &self.tokens,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Local accounts: registration, login, devices, tokens, profiles, account data, filters.
pub struct AccountService {
    db: Arc<Db>,
    server_name: OwnedServerName,
    hashing: PasswordHashing,
    /// Serialises read-modify-write changes of user and device records. Every change that
    /// may delete a token takes it through [`AccountService::write_guard`], whose release
    /// empties `tokens`.
    write_lock: Mutex<()>,
    /// Sessions of recently used access tokens ([`token_cache`]).
    tokens: token_cache::TokenCache,
    /// Shared-secret registration nonces and when they were issued.
    nonces: Mutex<HashMap<String, Instant>>,
    /// When each device's `last_seen_*` was last written, and with which IP.
    seen: Mutex<HashMap<DeviceKey, LastSeen>>,
    /// A hash verified against when the user does not exist, so that a failed login
    /// takes as long for unknown users as for wrong passwords.
    dummy_hash: OnceLock<Option<String>>,
    /// Bounds concurrent argon2 runs (memory: each allocates its full cost).
    hash_pool: HashingPool,
    /// Serialises one user's account data writes (sharded by user): the positioned write
    /// reads the previous entry to drop its change-log row, outside any global lock.
    account_data_locks: storage::KeyLocks,
}

impl AccountService {
    /// Create the service. Invalid `hashing` parameters fall back to the defaults (with a
    /// warning); validate them at config load with [`PasswordHashing::validate`].
    pub fn new(db: Arc<Db>, server_name: OwnedServerName, hashing: PasswordHashing) -> Self {
        let hashing = match hashing.validate() {
            Ok(()) => hashing,
            Err(e) => {
                tracing::warn!(error = %e, "invalid password hashing parameters; using the defaults");
                PasswordHashing::default()
            }
        };
        AccountService {
            db,
            server_name,
            hashing,
            write_lock: Mutex::new(()),
            tokens: token_cache::TokenCache::default(),
            nonces: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            dummy_hash: OnceLock::new(),
            hash_pool: HashingPool::per_cpu(),
            account_data_locks: storage::KeyLocks::default(),
        }
    }

    /// Replace the password-hashing pool (its size and how long excess hashes wait).
    pub fn with_hashing_pool(mut self, pool: HashingPool) -> Self {
        self.hash_pool = pool;
        self
    }

    /// Run one argon2 operation in a pool slot, or `HashingBusy` if none frees up in time.
    fn hashing_slot<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _permit = self.hash_pool.acquire().ok_or(AccountError::HashingBusy)?;
        Ok(f())
    }

    /// This server's name (the part after the colon of local user IDs).
    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// The password hashing parameters in use.
    pub fn hashing(&self) -> PasswordHashing {
        self.hashing
    }
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod migrate_tests;
#[cfg(test)]
mod tests;
