//! # accounts — users, passwords, devices, access tokens, profiles, account data, filters
//!
//! [`AccountService`] owns everything about local accounts. Storage layout (all values JSON):
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `Users` | `user_id` (raw) | `UserRecord`: argon2id PHC hash, admin flag, deactivated flag, profile |
//! | `Tokens` | `access_token` (raw) | [`Session`] (user, device) |
//! | `Devices` | `user_id 0xFF device_id 0xFF` | device record: [`Device`] plus the device's access tokens |
//! | `AccountData` | `user_id 0xFF room_id-or-empty 0xFF type 0xFF` | `{pos, content}` |
//! | `AccountDataLog` | `user_id 0xFF pos` | `{room_id, type, content}`: the latest write of that (room, type) |
//! | `Filters` | `user_id 0xFF filter_id 0xFF` | the filter JSON as uploaded (validated) |
//!
//! Invariants: every token in `Tokens` is listed in its device record and vice versa;
//! deleting a device deletes its tokens (and its transaction IDs in `Txns`) in the same
//! [`Batch`]. Account data is written with [`Db::write_with_position`], and the change log
//! keeps exactly one entry per (user, room, type) — the latest — so "what changed since
//! position P" is one range scan.
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
use storage::{Batch, Cf, Db, Key, KeyReader, StorageError};

pub mod filter;
mod password;

pub use filter::{EventFilter, EventFormat, Filter, RoomEventFilter, RoomFilter, glob_match};
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
}

/// The result of [`AccountService::register`]. `device_id` and `access_token` are `None`
/// when registering without logging in (`inhibit_login`).
#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: OwnedUserId,
    pub device_id: Option<OwnedDeviceId>,
    pub access_token: Option<String>,
}

/// A new logged-in session ([`AccountService::login_password`], [`AccountService::create_session`]).
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
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
    #[serde(default)]
    tokens: Vec<String>,
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

fn device_key(user: &UserId, device: &DeviceId) -> Key {
    Key::new().str(user.as_str()).str(device.as_str())
}

fn user_prefix(user: &UserId) -> Key {
    Key::new().str(user.as_str())
}

fn account_data_key(user: &UserId, room: Option<&RoomId>, event_type: &str) -> Key {
    Key::new()
        .str(user.as_str())
        .str(room.map(RoomId::as_str).unwrap_or(""))
        .str(event_type)
}

fn account_data_log_key(user: &UserId, pos: u64) -> Key {
    Key::new().str(user.as_str()).u64(pos)
}

/// Entries of a user in a column family keyed `user 0xFF ...`, counting at most `limit`
/// (the parts are UTF-8, never 0xFF; an empty part — global account data — gives
/// `user 0xFF 0xFF type`, so `user 0xFF 0xFF 0xFF` is past every key of the user).
fn count_user_entries(db: &Db, cf: Cf, user: &UserId, limit: usize) -> Result<usize, StorageError> {
    let start = user_prefix(user).into_bytes();
    let mut end = start.clone();
    end.extend([0xFF, 0xFF]);
    Ok(db.scan_range(cf, start, end, false, limit)?.len())
}

fn filter_key(user: &UserId, filter_id: &str) -> Key {
    Key::new().str(user.as_str()).str(filter_id)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_string(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// (user, device) — the key of the last-seen cache.
type DeviceKey = (OwnedUserId, OwnedDeviceId);
/// When a device's `last_seen_*` was last written, and the IP written.
type LastSeen = (u64, Option<String>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Local accounts: registration, login, devices, tokens, profiles, account data, filters.
pub struct AccountService {
    db: Arc<Db>,
    server_name: OwnedServerName,
    hashing: PasswordHashing,
    /// Serialises read-modify-write changes of user and device records.
    write_lock: Mutex<()>,
    /// Shared-secret registration nonces and when they were issued.
    nonces: Mutex<HashMap<String, Instant>>,
    /// When each device's `last_seen_*` was last written, and with which IP.
    seen: Mutex<HashMap<DeviceKey, LastSeen>>,
    /// A hash verified against when the user does not exist, so that a failed login
    /// takes as long for unknown users as for wrong passwords.
    dummy_hash: OnceLock<Option<String>>,
    /// Bounds concurrent argon2 runs (memory: each allocates its full cost).
    hash_pool: HashingPool,
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
            nonces: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            dummy_hash: OnceLock::new(),
            hash_pool: HashingPool::per_cpu(),
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

    // ----- users ------------------------------------------------------------------------

    /// The session of an access token, if it is valid.
    pub fn authenticate(&self, access_token: &str) -> Result<Option<Session>, StorageError> {
        if access_token.is_empty() {
            return Ok(None);
        }
        self.db.get_json(Cf::Tokens, access_token)
    }

    /// Validate a requested localpart and return it case-folded to lower case.
    ///
    /// Rules (spec: user identifiers): after lower-casing only `a-z 0-9 . _ = - / +`,
    /// not empty, and the full `@localpart:server` at most 255 bytes.
    pub fn validate_localpart(&self, localpart: &str) -> Result<String> {
        let lower = localpart.to_lowercase();
        if lower.is_empty() {
            return Err(AccountError::InvalidUsername(
                "the username must not be empty".into(),
            ));
        }
        if let Some(bad) = lower
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(AccountError::InvalidUsername(format!(
                "the username may only contain a-z, 0-9 and ._=-/+ (found {bad:?})"
            )));
        }
        if lower.len() + self.server_name.as_str().len() + 2 > MAX_USER_ID_LEN {
            return Err(AccountError::InvalidUsername(format!(
                "the user ID must be at most {MAX_USER_ID_LEN} bytes"
            )));
        }
        Ok(lower)
    }

    /// The local user ID for an already validated (lower-case) localpart.
    fn user_id_for(&self, localpart: &str) -> Result<OwnedUserId> {
        OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| AccountError::InvalidUsername(e.to_string()))
    }

    /// Check that a localpart could be registered now: valid, and not taken (a
    /// deactivated account keeps its ID). Returns the user ID it would get.
    pub fn check_username_available(&self, localpart: &str) -> Result<OwnedUserId> {
        let localpart = self.validate_localpart(localpart)?;
        let user_id = self.user_id_for(&localpart)?;
        if self.db.exists(Cf::Users, user_id.as_str())? {
            return Err(AccountError::UserInUse);
        }
        Ok(user_id)
    }

    /// A random, currently unused localpart (for registrations without a username).
    pub fn generate_localpart(&self) -> Result<String> {
        loop {
            let lp = random_string(12).to_lowercase();
            match self.check_username_available(&lp) {
                Ok(_) => return Ok(lp),
                Err(AccountError::UserInUse) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Create a user. `localpart` is validated and case-folded; `password` is hashed with
    /// argon2id (`None`: no password login possible). The profile starts with the
    /// localpart as display name. With `login`, also creates a device (from `device`) and
    /// an access token. Everything is written in one batch.
    pub fn register(
        &self,
        localpart: &str,
        password: Option<&str>,
        device: NewDevice,
        admin: bool,
        login: bool,
    ) -> Result<Registered> {
        let user_id = self.check_username_available(localpart)?;
        if let Some(p) = password {
            check_password_len(p)?;
        }
        if login {
            check_new_device(&device)?;
        }
        let password_hash = password
            .map(|p| self.hashing_slot(|| self.hashing.hash(p)))
            .transpose()?
            .transpose()
            .map_err(AccountError::Hashing)?;
        let _guard = lock(&self.write_lock);
        if self.db.exists(Cf::Users, user_id.as_str())? {
            return Err(AccountError::UserInUse);
        }
        let record = UserRecord {
            password_hash,
            admin,
            deactivated: false,
            created_ts: now_ms(),
            profile: Profile {
                displayname: Some(user_id.localpart().to_owned()),
                avatar_url: None,
            },
        };
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, user_id.as_str(), &record);
        let (device_id, access_token) = if login {
            let (d, t) = self.add_session(&mut batch, &user_id, device, None)?;
            (Some(d), Some(t))
        } else {
            (None, None)
        };
        self.db.write(batch)?;
        tracing::info!(%user_id, admin, "registered user");
        Ok(Registered {
            user_id,
            device_id,
            access_token,
        })
    }

    fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, StorageError> {
        self.db.get_json(Cf::Users, user.as_str())
    }

    /// Whether a local user with this ID exists (deactivated users still exist).
    pub fn user_exists(&self, user: &UserId) -> Result<bool, StorageError> {
        self.db.exists(Cf::Users, user.as_str())
    }

    /// Whether the user is a server admin (false for unknown users).
    pub fn is_admin(&self, user: &UserId) -> Result<bool, StorageError> {
        Ok(self
            .user_record(user)?
            .is_some_and(|r| r.admin && !r.deactivated))
    }

    /// Whether the user has been deactivated (false for unknown users).
    pub fn is_deactivated(&self, user: &UserId) -> Result<bool, StorageError> {
        Ok(self.user_record(user)?.is_some_and(|r| r.deactivated))
    }

    /// Turn what a client typed to log in (a localpart or a full user ID, any case)
    /// into an existing local user ID. `None` if it is not a known local user.
    pub fn resolve_user(&self, user: &str) -> Result<Option<OwnedUserId>, StorageError> {
        let localpart = if let Some(rest) = user.strip_prefix('@') {
            let Some((lp, server)) = rest.split_once(':') else {
                return Ok(None);
            };
            if server != self.server_name.as_str() {
                return Ok(None);
            }
            lp
        } else {
            user
        };
        let Ok(localpart) = self.validate_localpart(localpart) else {
            return Ok(None);
        };
        let Ok(user_id) = self.user_id_for(&localpart) else {
            return Ok(None);
        };
        Ok(self.user_exists(&user_id)?.then_some(user_id))
    }

    /// Spend about as long as a real verification (in a pool slot, so unknown users cost
    /// time but no more memory than the pool allows). `HashingBusy` when no slot is free.
    fn burn_hash_time(&self, password: &str) -> Result<()> {
        self.hashing_slot(|| {
            let dummy = self
                .dummy_hash
                .get_or_init(|| self.hashing.hash("pulse-dummy-password").ok());
            if let Some(h) = dummy {
                let _ = PasswordHashing::verify(password, h);
            }
        })
    }

    /// Check a user's password: `Forbidden` for an unknown user, no password or a wrong
    /// one; `UserDeactivated` for a deactivated account.
    pub fn check_password(&self, user: &UserId, password: &str) -> Result<()> {
        let Some(record) = self.user_record(user)? else {
            self.burn_hash_time(password)?;
            return Err(AccountError::Forbidden);
        };
        if record.deactivated {
            return Err(AccountError::UserDeactivated);
        }
        match &record.password_hash {
            Some(_) if password.len() > MAX_PASSWORD_LEN => Err(AccountError::Forbidden),
            Some(h) => {
                if self.hashing_slot(|| PasswordHashing::verify(password, h))? {
                    Ok(())
                } else {
                    Err(AccountError::Forbidden)
                }
            }
            None => {
                self.burn_hash_time(password)?;
                Err(AccountError::Forbidden)
            }
        }
    }

    /// `m.login.password`: `user` is a localpart or a user ID (case-insensitive). On
    /// success creates (or reuses) a device and returns a new access token.
    pub fn login_password(
        &self,
        user: &str,
        password: &str,
        device: NewDevice,
        ip: Option<&str>,
    ) -> Result<LoggedIn> {
        check_new_device(&device)?;
        let Some(user_id) = self.resolve_user(user)? else {
            self.burn_hash_time(password)?;
            return Err(AccountError::Forbidden);
        };
        self.check_password(&user_id, password)?;
        self.create_session(&user_id, device, ip)
    }

    /// Create (or reuse) a device for an existing, active user and issue an access token,
    /// without checking any credentials (callers have done that).
    pub fn create_session(
        &self,
        user: &UserId,
        device: NewDevice,
        ip: Option<&str>,
    ) -> Result<LoggedIn> {
        check_new_device(&device)?;
        let _guard = lock(&self.write_lock);
        match self.user_record(user)? {
            None => return Err(AccountError::UnknownUser),
            Some(r) if r.deactivated => return Err(AccountError::UserDeactivated),
            Some(_) => {}
        }
        let mut batch = Batch::new();
        let (device_id, access_token) = self.add_session(&mut batch, user, device, ip)?;
        self.db.write(batch)?;
        Ok(LoggedIn {
            user_id: user.to_owned(),
            device_id,
            access_token,
        })
    }

    /// Add a token (and the device, if new) to `batch`. Caller holds `write_lock`.
    fn add_session(
        &self,
        batch: &mut Batch,
        user: &UserId,
        device: NewDevice,
        ip: Option<&str>,
    ) -> Result<(OwnedDeviceId, String)> {
        let device_id: OwnedDeviceId = match device.device_id.filter(|d| !d.is_empty()) {
            Some(d) => d.into(),
            None => loop {
                let d = DeviceId::new();
                if !self.db.exists(Cf::Devices, device_key(user, &d))? {
                    break d;
                }
            },
        };
        let key = device_key(user, &device_id);
        let now = now_ms();
        let mut record = match self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? {
            Some(r) => r,
            None => DeviceRecord {
                device: Device {
                    device_id: device_id.clone(),
                    display_name: device.display_name,
                    last_seen_ip: None,
                    last_seen_ts: None,
                },
                tokens: Vec::new(),
            },
        };
        record.device.last_seen_ts = Some(now);
        if let Some(ip) = ip {
            record.device.last_seen_ip = Some(ip.to_owned());
        }
        // Logging in again with an existing device replaces its session: the device's
        // old tokens stop working (spec: `device_id` on `/login`).
        for old in record.tokens.drain(..) {
            batch.delete(Cf::Tokens, old);
        }
        let token = random_string(TOKEN_LEN);
        record.tokens.push(token.clone());
        batch.put_json(Cf::Devices, &key, &record);
        batch.put_json(
            Cf::Tokens,
            &token,
            &Session {
                user_id: user.to_owned(),
                device_id: device_id.clone(),
            },
        );
        lock(&self.seen).insert(
            (user.to_owned(), device_id.clone()),
            (now, ip.map(str::to_owned)),
        );
        Ok((device_id, token))
    }

    /// Change a password. With `logout_devices`, every other device of the user is
    /// deleted and every other access token revoked; the device and token of
    /// `keep_token` (the request's own, if any) survive.
    pub fn change_password(
        &self,
        user: &UserId,
        new_password: &str,
        logout_devices: bool,
        keep_token: Option<&str>,
    ) -> Result<()> {
        check_password_len(new_password)?;
        if new_password.is_empty() {
            return Err(AccountError::InvalidParam(
                "the new password must not be empty".into(),
            ));
        }
        let hash = self
            .hashing_slot(|| self.hashing.hash(new_password))?
            .map_err(AccountError::Hashing)?;
        let _guard = lock(&self.write_lock);
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        if record.deactivated {
            return Err(AccountError::UserDeactivated);
        }
        record.password_hash = Some(hash);
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, user.as_str(), &record);
        if logout_devices {
            let keep = match keep_token {
                Some(t) => self.authenticate(t)?.filter(|s| s.user_id == user),
                None => None,
            };
            for (key, mut dev) in self.device_records(user)? {
                match (&keep, keep_token) {
                    (Some(s), Some(t)) if s.device_id == dev.device.device_id => {
                        for other in dev.tokens.iter().filter(|x| x.as_str() != t) {
                            batch.delete(Cf::Tokens, other);
                        }
                        dev.tokens.retain(|x| x == t);
                        batch.put_json(Cf::Devices, &key, &dev);
                    }
                    _ => self.delete_device_into(&mut batch, user, &dev)?,
                }
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Deactivate an account: it can never log in again (the password hash is dropped),
    /// all devices and tokens are deleted, and the user ID stays reserved. Idempotent.
    pub fn deactivate(&self, user: &UserId) -> Result<()> {
        let _guard = lock(&self.write_lock);
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        record.deactivated = true;
        record.admin = false;
        record.password_hash = None;
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, user.as_str(), &record);
        for (_, dev) in self.device_records(user)? {
            self.delete_device_into(&mut batch, user, &dev)?;
        }
        self.db.write(batch)?;
        tracing::info!(%user, "deactivated user");
        Ok(())
    }

    // ----- devices and tokens -----------------------------------------------------------

    fn device_records(&self, user: &UserId) -> Result<Vec<(Vec<u8>, DeviceRecord)>, StorageError> {
        self.db
            .scan_prefix(Cf::Devices, user_prefix(user))?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice::<DeviceRecord>(&v)
                    .map(|r| (k, r))
                    .map_err(|e| StorageError::Corrupt {
                        cf: Cf::Devices.name(),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// Delete a device, its tokens and its transaction IDs into `batch`. Caller holds `write_lock`.
    fn delete_device_into(
        &self,
        batch: &mut Batch,
        user: &UserId,
        dev: &DeviceRecord,
    ) -> Result<(), StorageError> {
        for t in &dev.tokens {
            batch.delete(Cf::Tokens, t);
        }
        let key = device_key(user, &dev.device.device_id);
        // `Txns` keys are `user 0xFF device 0xFF txn`: the device key is their prefix.
        for (k, _) in self.db.scan_prefix(Cf::Txns, &key)? {
            batch.delete(Cf::Txns, k);
        }
        batch.delete(Cf::Devices, &key);
        lock(&self.seen).remove(&(user.to_owned(), dev.device.device_id.clone()));
        Ok(())
    }

    /// All devices of a user, ordered by device ID.
    pub fn devices(&self, user: &UserId) -> Result<Vec<Device>, StorageError> {
        Ok(self
            .device_records(user)?
            .into_iter()
            .map(|(_, r)| r.device)
            .collect())
    }

    /// One device of a user.
    pub fn device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<Device>, StorageError> {
        Ok(self
            .db
            .get_json::<DeviceRecord>(Cf::Devices, device_key(user, device_id))?
            .map(|r| r.device))
    }

    /// Set a device's display name (`None` leaves it unchanged). `UnknownDevice` if the
    /// user has no such device.
    pub fn update_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        if let Some(n) = &display_name
            && n.chars().count() > MAX_DEVICE_NAME_LEN
        {
            return Err(AccountError::InvalidParam(format!(
                "display_name is longer than {MAX_DEVICE_NAME_LEN} characters"
            )));
        }
        let _guard = lock(&self.write_lock);
        let key = device_key(user, device_id);
        let Some(mut record) = self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? else {
            return Err(AccountError::UnknownDevice);
        };
        if display_name.is_some() {
            record.device.display_name = display_name;
            let mut batch = Batch::new();
            batch.put_json(Cf::Devices, &key, &record);
            self.db.write(batch)?;
        }
        Ok(())
    }

    /// Delete devices (and their tokens). Unknown device IDs are ignored. Returns the
    /// IDs that existed and were deleted.
    pub fn delete_devices(
        &self,
        user: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<OwnedDeviceId>> {
        let _guard = lock(&self.write_lock);
        let mut batch = Batch::new();
        let mut deleted = Vec::new();
        for d in device_ids {
            if let Some(record) = self
                .db
                .get_json::<DeviceRecord>(Cf::Devices, device_key(user, d))?
                && !deleted.contains(d)
            {
                self.delete_device_into(&mut batch, user, &record)?;
                deleted.push(d.clone());
            }
        }
        self.db.write(batch)?;
        Ok(deleted)
    }

    /// Delete one device (and its tokens). Returns whether it existed.
    pub fn delete_device(&self, user: &UserId, device_id: &DeviceId) -> Result<bool> {
        Ok(!self
            .delete_devices(user, &[device_id.to_owned()])?
            .is_empty())
    }

    /// `POST /logout`: revoke this token and delete its device (with the device's other
    /// tokens). Returns false if the token was not valid.
    pub fn logout(&self, access_token: &str) -> Result<bool> {
        let Some(session) = self.authenticate(access_token)? else {
            return Ok(false);
        };
        let _guard = lock(&self.write_lock);
        let mut batch = Batch::new();
        batch.delete(Cf::Tokens, access_token);
        if let Some(record) = self.db.get_json::<DeviceRecord>(
            Cf::Devices,
            device_key(&session.user_id, &session.device_id),
        )? {
            self.delete_device_into(&mut batch, &session.user_id, &record)?;
        }
        self.db.write(batch)?;
        Ok(true)
    }

    /// `POST /logout/all`: revoke every token and delete every device of the user.
    pub fn logout_all(&self, user: &UserId) -> Result<()> {
        let _guard = lock(&self.write_lock);
        let mut batch = Batch::new();
        for (_, dev) in self.device_records(user)? {
            self.delete_device_into(&mut batch, user, &dev)?;
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Whether [`AccountService::touch_device`] would write now (cheap: memory only).
    pub fn last_seen_due(&self, user: &UserId, device_id: &DeviceId, ip: Option<&str>) -> bool {
        let now = now_ms();
        let seen = lock(&self.seen);
        !seen
            .get(&(user.to_owned(), device_id.to_owned()))
            .is_some_and(|(at, last_ip)| {
                now.saturating_sub(*at) < LAST_SEEN_INTERVAL_MS
                    && (ip.is_none() || last_ip.as_deref() == ip)
            })
    }

    /// Record that a device was used now from `ip`. Cheap: writes at most once per
    /// [`LAST_SEEN_INTERVAL_MS`] per device unless the IP changes. Unknown devices are ignored.
    pub fn touch_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        ip: Option<&str>,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        let cache_key = (user.to_owned(), device_id.to_owned());
        {
            let seen = lock(&self.seen);
            if let Some((at, last_ip)) = seen.get(&cache_key)
                && now.saturating_sub(*at) < LAST_SEEN_INTERVAL_MS
                && (ip.is_none() || last_ip.as_deref() == ip)
            {
                return Ok(());
            }
        }
        let _guard = lock(&self.write_lock);
        let key = device_key(user, device_id);
        let Some(mut record) = self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? else {
            return Ok(());
        };
        record.device.last_seen_ts = Some(now);
        if let Some(ip) = ip {
            record.device.last_seen_ip = Some(ip.to_owned());
        }
        let mut batch = Batch::new();
        batch.put_json(Cf::Devices, &key, &record);
        self.db.write(batch)?;
        let mut seen = lock(&self.seen);
        if seen.len() > 100_000 {
            seen.clear();
        }
        seen.insert(cache_key, (now, ip.map(str::to_owned)));
        Ok(())
    }

    // ----- profiles ---------------------------------------------------------------------

    /// A local user's profile; `None` if the user does not exist.
    pub fn profile(&self, user: &UserId) -> Result<Option<Profile>, StorageError> {
        Ok(self.user_record(user)?.map(|r| r.profile))
    }

    fn update_profile(&self, user: &UserId, change: impl FnOnce(&mut Profile)) -> Result<Profile> {
        let _guard = lock(&self.write_lock);
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        change(&mut record.profile);
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, user.as_str(), &record);
        self.db.write(batch)?;
        Ok(record.profile)
    }

    /// Set (or with `None` / an empty string, remove) the display name. Returns the new profile.
    pub fn set_displayname(&self, user: &UserId, displayname: Option<String>) -> Result<Profile> {
        let displayname = displayname.filter(|d| !d.is_empty());
        if let Some(d) = &displayname
            && d.chars().count() > MAX_DISPLAYNAME_LEN
        {
            return Err(AccountError::InvalidParam(format!(
                "displayname is longer than {MAX_DISPLAYNAME_LEN} characters"
            )));
        }
        self.update_profile(user, |p| p.displayname = displayname)
    }

    /// Set (or with `None` / an empty string, remove) the avatar URL. Returns the new profile.
    pub fn set_avatar_url(&self, user: &UserId, avatar_url: Option<String>) -> Result<Profile> {
        let avatar_url = avatar_url.filter(|d| !d.is_empty());
        if let Some(a) = &avatar_url
            && a.len() > MAX_AVATAR_URL_LEN
        {
            return Err(AccountError::InvalidParam(format!(
                "avatar_url is longer than {MAX_AVATAR_URL_LEN} bytes"
            )));
        }
        self.update_profile(user, |p| p.avatar_url = avatar_url)
    }

    // ----- account data -----------------------------------------------------------------

    /// Store account data (global when `room` is `None`) at a new stream position, which
    /// is returned (wake the user's syncs with it). `content` must be a JSON object.
    pub fn set_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        event_type: &str,
        content: &Value,
    ) -> Result<u64> {
        if !content.is_object() {
            return Err(AccountError::BadJson(
                "account data content must be a JSON object".into(),
            ));
        }
        if event_type.is_empty() || event_type.len() > MAX_ACCOUNT_DATA_TYPE_LEN {
            return Err(AccountError::InvalidParam(format!(
                "the account data type must be 1 to {MAX_ACCOUNT_DATA_TYPE_LEN} bytes long"
            )));
        }
        let key = account_data_key(user, room, event_type);
        if !self.db.exists(Cf::AccountData, &key)?
            && count_user_entries(&self.db, Cf::AccountData, user, MAX_ACCOUNT_DATA_PER_USER)?
                >= MAX_ACCOUNT_DATA_PER_USER
        {
            return Err(AccountError::QuotaExceeded(format!(
                "at most {MAX_ACCOUNT_DATA_PER_USER} account data entries per user; \
                 overwrite an existing type instead"
            )));
        }
        let (pos, ()) = self
            .db
            .write_with_position::<_, AccountError>(|pos, batch| {
                // Keep one log entry per (room, type): drop the previous write's entry.
                if let Some(prev) = self
                    .db
                    .get_json::<AccountDataRecord>(Cf::AccountData, &key)?
                {
                    batch.delete(Cf::AccountDataLog, account_data_log_key(user, prev.pos));
                }
                batch.put_json(
                    Cf::AccountData,
                    &key,
                    &AccountDataRecord {
                        pos,
                        content: content.clone(),
                    },
                );
                batch.put_json(
                    Cf::AccountDataLog,
                    account_data_log_key(user, pos),
                    &AccountDataLogRecord {
                        room_id: room.map(ToOwned::to_owned),
                        event_type: event_type.to_owned(),
                        content: content.clone(),
                    },
                );
                Ok(())
            })?;
        Ok(pos)
    }

    /// One piece of account data, if set.
    pub fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        event_type: &str,
    ) -> Result<Option<Value>, StorageError> {
        Ok(self
            .db
            .get_json::<AccountDataRecord>(
                Cf::AccountData,
                account_data_key(user, room, event_type),
            )?
            .map(|r| r.content))
    }

    /// Account data whose latest write has a stream position in `(since_pos, up_to]`,
    /// with that write's content, in position order. A (room, type) written again after
    /// `up_to` is left out here and reported by the next call that covers its position.
    pub fn account_data_since(
        &self,
        user: &UserId,
        since_pos: u64,
        up_to: u64,
    ) -> Result<Vec<AccountDataChange>> {
        let up_to = up_to.min(u64::MAX - 1);
        if since_pos >= up_to {
            return Ok(Vec::new());
        }
        let start = account_data_log_key(user, since_pos + 1);
        let end = account_data_log_key(user, up_to + 1);
        let mut latest: BTreeMap<(Option<OwnedRoomId>, String), (u64, Value)> = BTreeMap::new();
        for (k, v) in self
            .db
            .scan_range(Cf::AccountDataLog, start, end, false, usize::MAX)?
        {
            let mut r = KeyReader::new(&k);
            let pos = r.str().and_then(|_| r.u64()).unwrap_or(0);
            let rec: AccountDataLogRecord =
                serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt {
                    cf: Cf::AccountDataLog.name(),
                    reason: e.to_string(),
                })?;
            latest.insert((rec.room_id, rec.event_type), (pos, rec.content));
        }
        let mut out: Vec<(u64, AccountDataChange)> = latest
            .into_iter()
            .map(|((room_id, event_type), (pos, content))| {
                (
                    pos,
                    AccountDataChange {
                        room_id,
                        event_type,
                        content,
                    },
                )
            })
            .collect();
        out.sort_by_key(|(pos, _)| *pos);
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    /// All of a user's account data, global and per room (for an initial sync).
    pub fn all_account_data(&self, user: &UserId) -> Result<Vec<AccountDataChange>> {
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Cf::AccountData, user_prefix(user))? {
            let mut r = KeyReader::new(&k);
            let corrupt = || StorageError::Corrupt {
                cf: Cf::AccountData.name(),
                reason: "bad key".into(),
            };
            r.str().ok_or_else(corrupt)?;
            let room = r.str().ok_or_else(corrupt)?;
            let event_type = r.str().ok_or_else(corrupt)?.to_owned();
            let room_id = if room.is_empty() {
                None
            } else {
                Some(OwnedRoomId::try_from(room).map_err(|_| corrupt())?)
            };
            let rec: AccountDataRecord =
                serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt {
                    cf: Cf::AccountData.name(),
                    reason: e.to_string(),
                })?;
            out.push(AccountDataChange {
                room_id,
                event_type,
                content: rec.content,
            });
        }
        Ok(out)
    }

    /// Global account data of `event_type` of every user who has it (start-up loading of
    /// settings other services cache, such as the presence sharing config).
    pub fn global_account_data_of_type(
        &self,
        event_type: &str,
    ) -> Result<Vec<(OwnedUserId, Value)>, StorageError> {
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Cf::Users, [])? {
            let Some(user) = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| OwnedUserId::try_from(s).ok())
            else {
                continue;
            };
            if let Some(content) = self.account_data(&user, None, event_type)? {
                out.push((user, content));
            }
        }
        Ok(out)
    }

    // ----- filters ----------------------------------------------------------------------

    /// Validate and store a filter; returns its new ID. `BadJson` if it is not a valid
    /// filter. The JSON is stored as given, so it reads back exactly.
    pub fn create_filter(&self, user: &UserId, filter: &Value) -> Result<String> {
        Filter::from_json(filter.clone()).map_err(AccountError::BadJson)?;
        if count_user_entries(&self.db, Cf::Filters, user, MAX_FILTERS_PER_USER)?
            >= MAX_FILTERS_PER_USER
        {
            return Err(AccountError::QuotaExceeded(format!(
                "at most {MAX_FILTERS_PER_USER} filters per user"
            )));
        }
        let mut batch = Batch::new();
        let id = loop {
            // Never starts with `{` (sync tells inline filters by that).
            let id = random_string(10);
            if !self.db.exists(Cf::Filters, filter_key(user, &id))? {
                break id;
            }
        };
        batch.put_json(Cf::Filters, filter_key(user, &id), filter);
        self.db.write(batch)?;
        Ok(id)
    }

    /// A stored filter of this user, parsed.
    pub fn filter(&self, user: &UserId, filter_id: &str) -> Result<Option<Filter>> {
        match self.filter_json(user, filter_id)? {
            None => Ok(None),
            Some(v) => Filter::from_json(v).map(Some).map_err(|e| {
                StorageError::Corrupt {
                    cf: Cf::Filters.name(),
                    reason: e,
                }
                .into()
            }),
        }
    }

    /// A stored filter of this user, as uploaded.
    pub fn filter_json(
        &self,
        user: &UserId,
        filter_id: &str,
    ) -> Result<Option<Value>, StorageError> {
        if filter_id.is_empty() {
            return Ok(None);
        }
        self.db.get_json(Cf::Filters, filter_key(user, filter_id))
    }

    // ----- shared-secret registration nonces -----------------------------------------------

    /// Issue a single-use nonce for shared-secret registration (valid for [`NONCE_TTL`]).
    /// `None` when [`MAX_NONCES`] unexpired nonces are outstanding: live nonces are never
    /// dropped to make room, so an unauthenticated caller cannot invalidate another's.
    pub fn new_registration_nonce(&self) -> Option<String> {
        let now = Instant::now();
        let mut nonces = lock(&self.nonces);
        if nonces.len() >= MAX_NONCES {
            nonces.retain(|_, at| now.duration_since(*at) < NONCE_TTL);
            if nonces.len() >= MAX_NONCES {
                return None;
            }
        }
        let nonce = random_string(32);
        nonces.insert(nonce.clone(), now);
        Some(nonce)
    }

    /// Consume a nonce: true if it was issued, is unexpired and not used before.
    pub fn take_registration_nonce(&self, nonce: &str) -> bool {
        lock(&self.nonces)
            .remove(nonce)
            .is_some_and(|at| at.elapsed() < NONCE_TTL)
    }
}

fn check_password_len(password: &str) -> Result<()> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AccountError::InvalidParam(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_new_device(device: &NewDevice) -> Result<()> {
    if let Some(d) = &device.device_id
        && d.len() > MAX_DEVICE_ID_LEN
    {
        return Err(AccountError::InvalidParam(format!(
            "device_id is longer than {MAX_DEVICE_ID_LEN} bytes"
        )));
    }
    if let Some(n) = &device.display_name
        && n.chars().count() > MAX_DEVICE_NAME_LEN
    {
        return Err(AccountError::InvalidParam(format!(
            "initial_device_display_name is longer than {MAX_DEVICE_NAME_LEN} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
