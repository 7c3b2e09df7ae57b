//! # e2ee — the server's half of end-to-end encryption
//!
//! Pulse never sees plaintext: this crate stores and hands out what clients need to set up
//! Olm/Megolm sessions among themselves, with the rules the Matrix spec puts on a server.
//! One service, [`E2eeService`], owns (all in `Cf::E2ee`, layouts in [`keys`]):
//!
//! * **device keys** ([`device_keys`]): a device uploads its own signed identity keys;
//!   anyone may query them;
//! * **one-time keys and fallback keys** ([`otk`]): claimed one at a time in upload order
//!   (MSC4225), a claim removes exactly one key atomically (a per-device lock around the
//!   read and the delete); when a device has none left its fallback key is handed out
//!   (and reported as used until it is replaced);
//! * **cross-signing keys and signatures** ([`cross_signing`]): master, self-signing and
//!   user-signing keys; signatures on one's own devices and master key, and on other
//!   users' master keys (shown only to the signer);
//! * **the device-list stream** ([`device_lists`]): every change of a user's devices or
//!   keys is a positioned write on the single stream, so `/sync` and `/keys/changes` read
//!   "who changed in `(from, to]`" with one range scan; which of those a viewer is told
//!   about (shared rooms) is decided by the caller, which knows rooms;
//! * **remote users' device lists** ([`remote`]): a cache filled from a remote server's
//!   `/user/devices` and kept current by its `m.device_list_update` (`prev_id` chain) and
//!   `m.signing_key_update` EDUs; a broken chain drops the entry, so the next query resyncs;
//! * **to-device messages** ([`to_device`]): a per-device inbox on the stream, idempotent
//!   per `(sender, device, txn id)`, deleted once a later sync acknowledges the response
//!   that delivered them;
//! * **key backup** ([`backup`]): versions with `auth_data`, room-key sessions kept by the
//!   spec's "better key" rule, counts and etags.
//!
//! The crate knows users and devices only by ID: callers check that a device exists, that
//! a remote server speaks only for its own users, and route remote users to federation.
//! Every method reads or writes storage: call it from the blocking pool.
use std::sync::Arc;

use storage::{Db, KeyLocks, StorageError};

pub mod backup;
pub mod cross_signing;
pub mod device_keys;
pub mod device_lists;
pub mod keys;
pub mod otk;
pub mod query;
pub mod remote;
pub mod to_device;
pub mod verify;

#[cfg(test)]
mod tests;

/// What can go wrong; each maps to one Matrix error code at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Malformed keys (`M_BAD_JSON`).
    #[error("{0}")]
    BadJson(String),
    /// Well-formed but not acceptable, e.g. keys for another device (`M_INVALID_PARAM`).
    #[error("{0}")]
    InvalidParam(String),
    /// A signature that is missing or does not verify (`M_INVALID_SIGNATURE`).
    #[error("{0}")]
    InvalidSignature(String),
    /// `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// `M_FORBIDDEN`.
    #[error("{0}")]
    Forbidden(String),
    /// A backup write to a version that is not the current one
    /// (`M_WRONG_ROOM_KEYS_VERSION`, with `current_version`).
    #[error("wrong backup version; the current one is {current:?}")]
    WrongBackupVersion { current: Option<String> },
    /// Too many keys or messages (`M_LIMIT_EXCEEDED`-like refusal, reported as `M_INVALID_PARAM`
    /// with the bound in the message).
    #[error("{0}")]
    TooMany(String),
    /// A caller-supplied lookup failed (e.g. listing a user's devices).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = E2eeError> = std::result::Result<T, E>;

/// The end-to-end encryption store. Cheap to share (`Arc`).
pub struct E2eeService {
    db: Arc<Db>,
    /// Serialises read-modify-writes per (user, device) key space: OTK claims and uploads,
    /// fallback updates, to-device acknowledgements, backup writes.
    locks: KeyLocks,
}

impl E2eeService {
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            locks: KeyLocks::default(),
        }
    }

    /// The current stream position (what a sync token made now would say).
    pub fn current_position(&self) -> u64 {
        self.db.current_position()
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

/// Decode a JSON value stored by this crate.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        E2eeError::Storage(StorageError::Corrupt {
            cf: "e2ee",
            reason: e.to_string(),
        })
    })
}
