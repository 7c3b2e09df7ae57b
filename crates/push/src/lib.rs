//! # push — push rules, notification counts and pushers
//!
//! [`PushService`] owns what the spec's push module keeps per user:
//!
//! * **Push rules** (`rules.rs`): ruma's [`ruma::push::Ruleset`], stored as global account data
//!   `m.push_rules` (so `/sync` carries them), merged with the server defaults on read, edited
//!   one writer per user.
//! * **Notifications** (`notify.rs`): every event of a joined room is evaluated once per
//!   local member with ruma's evaluator (`eval.rs`); those whose actions `notify` are stored in
//!   `Cf::Push` with their highlight flag and thread. Evaluation is *lazy*: it runs for a
//!   (user, room) when the user's `/sync` or `GET /notifications` needs the counts, over the
//!   events since the last evaluation, so it covers events from every source (local
//!   clients, federation, imports) without a hook in the room engine's write path (whose
//!   `EventObserver` sees only local senders and already serves the federation sender).
//! * **Read positions**: the user's own `m.read` / `m.read.private` receipts (per thread, as
//!   the spec's threaded receipts ask), taken from the ephemeral service as an
//!   [`ephemeral::EphemeralObserver`]; counts are the notifications after them.
//! * **Pushers** (`pushers.rs`): stored and listed; the `push-gateway` crate delivers to them.
//!
//! All methods do storage I/O: call them from the blocking pool.
use std::sync::Arc;

use accounts::{AccountError, AccountService};
use rooms::{RoomError, RoomService};
use storage::{Db, KeyLocks, StorageError};

pub mod eval;
pub mod notify;
pub mod pushers;
pub mod rules;

pub use notify::{Counts, NotifRecord, Notification, UnreadCounts};
pub use pushers::Pusher;

/// Why a push request failed; the client API maps each to its Matrix error.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// 404 `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// 400 `M_INVALID_PARAM`.
    #[error("{0}")]
    InvalidParam(String),
    /// 400 `M_MISSING_PARAM`.
    #[error("{0}")]
    MissingParam(String),
    /// 400 `M_BAD_JSON`.
    #[error("{0}")]
    BadJson(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Room(#[from] RoomError),
}

pub type Result<T, E = PushError> = std::result::Result<T, E>;

/// Push rules, notifications and pushers; see the crate documentation.
pub struct PushService {
    db: Arc<Db>,
    accounts: Arc<AccountService>,
    rooms: Arc<RoomService>,
    /// One rule editor per user at a time (read, change, store).
    rule_locks: KeyLocks,
    /// One pusher writer per user at a time.
    pusher_locks: KeyLocks,
}

impl PushService {
    pub fn new(db: Arc<Db>, accounts: Arc<AccountService>, rooms: Arc<RoomService>) -> Self {
        PushService {
            db,
            accounts,
            rooms,
            rule_locks: KeyLocks::default(),
            pusher_locks: KeyLocks::default(),
        }
    }
}

#[cfg(test)]
mod tests;
