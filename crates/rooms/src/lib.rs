//! # rooms — rooms as signed PDUs
//!
//! Every room event Pulse creates is a real federation PDU, in any stable room version
//! 1–12 (what differs per version lives in `version.rs`): a `hashes.sha256` content hash,
//! the version's event ID (server-generated in v1/v2, the reference hash from v3),
//! `auth_events` chosen by the spec's auth-events selection,
//! `prev_events` = the room's forward extremities, `depth`, and the server's ed25519
//! signature (ruma-signatures). Before an event is stored it passes the room version's
//! authorization rules (ruma-state-res), checked against the state before the event.
//!
//! ## Storage (all writes for one event are one [`storage::Db::write_with_position`])
//!
//! Every key is built and parsed in [`keys`], one module per column family.
//!
//! * `Events`: `event_id` → [`StoredEvent`] (stream position, canonical PDU, sending
//!   device + txn id, `redacted_because`, the replaced state event for `unsigned`, its
//!   [`EventStatus`] — timeline, outlier, soft-failed or rejected — and `off_stream` for
//!   events whose state before them is not the state at their stream position).
//! * `Timeline`: `room_id 0xFF pos` → event id.
//! * `Rooms`: `room_id 0xFF` → room summary (version, create event, forward
//!   extremities, max depth); `room_id 0xFF "s" 0xFF type 0xFF state_key 0xFF` → event id
//!   of the current state; `room_id 0xFF "m" 0xFF user_id 0xFF` → current membership
//!   string; `room_id 0xFF "l" 0xFF type 0xFF state_key 0xFF pos` → event id (log of the
//!   current state's changes by stream position, used for history visibility);
//!   `room_id 0xFF "r" 0xFF target 0xFF` → a redaction that arrived before its target;
//!   `room_id 0xFF "i" 0xFF user_id 0xFF` → stripped state of a remote invite;
//!   `"public" 0xFF room_id 0xFF` → empty (the room directory);
//!   `"creating" 0xFF room_id 0xFF` → empty (a createRoom still building).
//! * `StateAt`: `event_id` → the state *before* the event, either a full snapshot or a
//!   delta (≤ [`MAX_STATE_DELTA`] entries) on top of another event's full snapshot.
//! * `Memberships`: `user_id 0xFF room_id 0xFF` → [`MembershipRecord`].
//! * `RoomStream`: `pos` → room id (every timeline event's position): what `/sync` reads
//!   to skip rooms without new events ([`RoomService::rooms_changed_between`]) and the
//!   federation sender's catch-up.
//! * `Topo`: `room_id 0xFF depth pos` → event id (topological order).
//! * `Aliases`: `alias` → alias record (room, creator); `room_id 0xFF alias 0xFF` → empty
//!   (reverse index; room IDs start with `!`, aliases with `#`, so they never collide).
//! * `Txns`: `user_id 0xFF device_id 0xFF scope 0xFF txn_id 0xFF` → event id (the first two
//!   parts are [`storage::device_scope`]: `accounts` deletes them with the device), where scope
//!   is `send <room_id>` or `redact <room_id>`; `"fed" 0xFF origin 0xFF txn_id 0xFF` → the
//!   recorded answer to a federation transaction ([`RoomService::federation_txn`]).
//! * `Meta`: `signing_key` → the server's ed25519 key (PKCS#8, base64) and its key id.
//!
//! ## API
//!
//! * Writes: [`RoomService::create_room`], [`RoomService::send_message_event`] (idempotent
//!   per device + txn id), [`RoomService::send_state_event`] (repeating identical state is a
//!   no-op), [`RoomService::join`], [`RoomService::leave`], [`RoomService::invite`],
//!   [`RoomService::kick`], [`RoomService::ban`], [`RoomService::unban`],
//!   [`RoomService::forget`], [`RoomService::redact`], [`RoomService::update_member_profile`],
//!   aliases ([`RoomService::set_alias`], [`RoomService::resolve_alias`],
//!   [`RoomService::delete_alias`], [`RoomService::room_aliases`]) and the directory
//!   ([`RoomService::set_room_public`], [`RoomService::public_rooms`]).
//! * Reads for `/sync` and the HTTP layer: [`RoomService::rooms_for_user`],
//!   [`RoomService::timeline`], [`RoomService::paginate`], [`RoomService::state_before`],
//!   [`RoomService::state_after`], [`RoomService::current_state`],
//!   [`RoomService::state_at_position`], [`RoomService::event`],
//!   [`RoomService::invite_state`], [`RoomService::joined_members`],
//!   [`RoomService::members`], [`RoomService::room_access`], [`RoomService::visible_to`],
//!   [`RoomService::client_event_for`]; [`StoredEvent::to_client_event`] formats events.
//! * Errors are [`RoomError`]; the HTTP layer maps them to Matrix error codes.
//!
//! Local permission checks (redact, send state, delete an alias, choose a restricted-join
//! authoriser) read ruma's `RoomPowerLevels` under the room version's rules (`power.rs`):
//! integer-only levels from v10, creators above every level from v12. The room engine
//! depends on no other service: [`RoomService::join`], [`RoomService::create_room`] and
//! [`RoomService::update_member_profile`] take the member event's displayname and avatar as
//! a [`MemberProfile`], which the caller reads from `accounts`.
//!
//! Size limit: events over [`MAX_PDU_BYTES`] of canonical JSON are [`RoomError::TooLarge`]
//! (ruma-signatures refuses to hash PDUs over 65,535 bytes, so that is the effective limit).
//!
//! ## Events from elsewhere (`remote.rs`, `import.rs`, `append.rs`)
//!
//! * [`RoomService::receive_pdu`] is the one entry point for a remote PDU: size and
//!   format, signatures through a [`KeyLookup`] (the federation layer's key cache; keys
//!   [`keys_needed`] names must be cached before calling), content hash (redacted on
//!   mismatch), then the authorization rules against its auth events and the state
//!   before it (failing: stored *rejected*) and against the current state (failing:
//!   *soft-failed*); forks go through state resolution v2 (v1 in room version 1,
//!   `state_res_v1.rs`). The answer is a [`Received`];
//!   unknown prev or auth events give [`Received::NeedsMissingEvents`] and store nothing.
//!   [`RoomService::receive_pdu_after_gap`] accepts a gap with the state `/state_ids`
//!   reported; [`RoomService::receive_outlier`] stores fetched auth/state events.
//! * [`RoomService::import_join`] imports a `send_join` answer (state + auth chain as
//!   outliers, the join as the first timeline event) in one batch;
//!   [`RoomService::receive_invite`] countersigns and stores a remote invite so `/sync`
//!   shows it with its stripped state.
//! * Redactions: applied when both the redaction and its target are present (whichever
//!   arrives last), if the redaction's sender sent the target, is on the same server as
//!   its sender (v3+; in v1/v2 the two event IDs' servers are compared), or has the `redact` power level in the state before the redaction.
//!   A refused remote redaction stays an event without effect.
//! * History visibility and `unsigned.membership` of an event come from the state log at
//!   its stream position, or from its stored state-before for `off_stream` events (forks,
//!   late events, gaps).
//! * [`RoomService::federation_txn`]: `(origin, txnId)` is processed once.
//!
//! * Pagination (`/messages`, `/context`) walks the topological order (`topo.rs`:
//!   depth, then stream position), so late and backfilled events sit where the DAG puts
//!   them; `/sync` stays in stream order.
//!
//! Not yet: fetching anything (the federation crates do), backfill, knocking and
//! restricted joins through the API, third-party invites, room upgrades, leaving a room
//! known only by a remote invite.
//!
//! ## Concurrency
//!
//! Writes are serialised per room (a named lock per room id in [`RoomService`]; building
//! an event reads the forward extremities and state it then replaces), so rooms are
//! written in parallel and each room's local DAG is linear. Alias changes take an alias
//! lock first (before any room lock). Stream positions stay one global sequence
//! ([`storage::Db::write_with_position`] commits in position order; the batches are built
//! outside its lock, so nothing reads inside them). A federation transaction holds its
//! own named lock while it is processed.
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId};
use serde::{Deserialize, Serialize};
use storage::{Db, StorageError};

mod append;
mod client;
mod create;
mod import;
pub mod inventory;
mod jump;
pub mod keys;
mod knock;
mod observer;
mod ops;
mod pdu;
mod persist;
mod power;
mod read;
mod remote;
mod resolve;
mod restricted;
#[cfg(test)]
mod security_tests;
pub mod space;
mod state_res_v1;
mod store;
mod stripped;
mod template;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_create;
#[cfg(test)]
mod tests_remote;
#[cfg(test)]
mod tests_remote_dag;
#[cfg(test)]
mod tests_remote_join;
#[cfg(test)]
mod tests_security;
#[cfg(test)]
mod tests_state_res_v21;
#[cfg(test)]
mod tests_stream;
#[cfg(test)]
mod tests_template;
#[cfg(test)]
mod tests_versions;
mod topo;
mod txn;
mod upgrade;
mod version;

pub use create::{CreateRoomRequest, InitialStateEvent, Preset, Visibility};
pub use import::{MAX_IMPORTED_EVENTS, MAX_INVITE_STATE};
pub use observer::{CommittedEvent, EventObserver, departing_remote_target};
pub use ops::MemberProfile;
pub use read::{RoomAccess, STRIPPED_STATE_TYPES};
pub use remote::{
    KeyLookup, MAX_AUTH_EVENTS, MAX_PREV_EVENTS, Received, StaticKeys, event_id_for, keys_needed,
};
pub use space::{SpaceChild, space_children_of, summary_open_to_all};
pub use store::{EventStatus, MembershipRecord, PrevState, StoredEvent};
pub use template::AcceptedMember;
pub use txn::{FederationTxn, MAX_TXN_ID_BYTES};
pub use upgrade::{UPGRADE_COPIED_STATE, Upgraded};

/// Deltas in `StateAt` longer than this are replaced by a full snapshot.
pub const MAX_STATE_DELTA: usize = 100;

/// Largest allowed PDU, in bytes of canonical JSON (spec "size limits").
pub const MAX_PDU_BYTES: usize = 65_536;

/// Room state: `(event type, state key)` → event id.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// The room version used when a client does not ask for one.
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;

pub use jump::{MAX_TS_SCAN, TimeDirection, TimestampHit};
pub use topo::TopoPos;
pub use version::supported_room_versions;

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// 403 `M_FORBIDDEN` (authorization rules, power levels, not a member).
    #[error("{0}")]
    Forbidden(String),
    /// The room is not known to this server (404, or 403 where the spec hides existence).
    #[error("unknown room {0}")]
    UnknownRoom(OwnedRoomId),
    /// 404 `M_NOT_FOUND` (events, aliases).
    #[error("{0}")]
    NotFound(String),
    /// 400 `M_UNSUPPORTED_ROOM_VERSION`.
    #[error("room version {0} is not supported")]
    UnsupportedRoomVersion(String),
    /// 413 `M_TOO_LARGE`.
    #[error("{0}")]
    TooLarge(String),
    /// The alias is taken: 400 `M_ROOM_IN_USE` on createRoom, 409 on `PUT /directory/room`.
    #[error("room alias {0} is already in use")]
    AliasInUse(String),
    /// 400 `M_INVALID_PARAM`.
    #[error("{0}")]
    InvalidParam(String),
    /// 400 `M_BAD_JSON`.
    #[error("{0}")]
    BadJson(String),
    /// 400 `M_BAD_ALIAS` (canonical alias that does not point at the room).
    #[error("{0}")]
    BadAlias(String),
    /// 400 `M_UNKNOWN`: the request is valid but not in this state (e.g. forget while joined).
    #[error("{0}")]
    BadState(String),
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// 400 `M_UNABLE_TO_AUTHORISE_JOIN`: a restricted join whose allow conditions this
    /// server cannot check (no local member in any allowed room): try another server.
    #[error("{0}")]
    UnableToAuthoriseJoin(String),
    /// 400 `M_UNABLE_TO_GRANT_JOIN`: a restricted join this server cannot vouch for (no
    /// local member who may invite): try another server.
    #[error("{0}")]
    UnableToGrantJoin(String),
}

pub type Result<T, E = RoomError> = std::result::Result<T, E>;

/// A room membership state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    Join,
    Invite,
    Leave,
    Ban,
    Knock,
}

impl Membership {
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Join => "join",
            Membership::Invite => "invite",
            Membership::Leave => "leave",
            Membership::Ban => "ban",
            Membership::Knock => "knock",
        }
    }
    pub fn parse(s: &str) -> Option<Membership> {
        Some(match s {
            "join" => Membership::Join,
            "invite" => Membership::Invite,
            "leave" => Membership::Leave,
            "ban" => Membership::Ban,
            "knock" => Membership::Knock,
            _ => return None,
        })
    }
}

/// One of a user's rooms, as sync sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRoom {
    pub room_id: OwnedRoomId,
    pub membership: Membership,
    /// Stream position of the membership event.
    pub pos: u64,
    pub event_id: OwnedEventId,
    /// The user forgot the room (only ever set by
    /// [`RoomService::rooms_for_user_with_forgotten`]).
    pub forgotten: bool,
}

/// The result of a successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEvent {
    pub event_id: OwnedEventId,
    pub pos: u64,
}

/// Told about every committed membership change (e.g. the presence audience index).
pub trait MembershipObserver: Send + Sync {
    /// `membership` is the user's new membership in `room` (`None`: no membership event any more).
    fn membership_changed(
        &self,
        room: &ruma::RoomId,
        user: &ruma::UserId,
        membership: Option<Membership>,
    );
}

/// Rooms, events and membership: the whole room engine.
pub struct RoomService {
    db: Arc<Db>,
    server_name: OwnedServerName,
    /// The server's signing key (owned by the `server-keys` crate).
    key: server_keys::ServerKeys,
    /// Serialises the writes of each room, and each federation transaction (see the crate docs).
    key_locks: KeyLocks,
    /// Serialises alias changes (taken before a room's lock, never after).
    alias_lock: Mutex<()>,
    membership_observer: std::sync::OnceLock<Arc<dyn MembershipObserver>>,
    event_observer: std::sync::OnceLock<Arc<dyn EventObserver>>,
    /// The version of rooms created without `room_version` ([`DEFAULT_ROOM_VERSION`]
    /// unless the operator chose another).
    default_version: RoomVersionId,
}

impl RoomService {
    /// Open the room engine: loads the server's ed25519 signing key from `Cf::Meta`,
    /// generating and persisting one on first start.
    pub fn new(db: Arc<Db>, server_name: OwnedServerName) -> Result<Self> {
        let key = server_keys::ServerKeys::load_or_generate(&db, server_name.clone())
            .map_err(|e| RoomError::Internal(format!("server signing key: {e}")))?;
        let svc = RoomService {
            db,
            server_name,
            key,
            key_locks: KeyLocks::default(),
            alias_lock: Mutex::new(()),
            membership_observer: std::sync::OnceLock::new(),
            event_observer: std::sync::OnceLock::new(),
            default_version: DEFAULT_ROOM_VERSION,
        };
        svc.ensure_topo_index()?;
        svc.purge_unfinished_rooms()?;
        Ok(svc)
    }

    /// Rooms created without `room_version` get `version` (the operator's
    /// `[rooms] default_room_version`).
    pub fn with_default_version(mut self, version: RoomVersionId) -> Self {
        self.default_version = version;
        self
    }

    /// The version of rooms created without `room_version`.
    pub fn default_version(&self) -> &RoomVersionId {
        &self.default_version
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// Register the observer of membership changes (once; later calls are ignored).
    pub fn set_membership_observer(&self, observer: Arc<dyn MembershipObserver>) {
        let _ = self.membership_observer.set(observer);
    }

    /// Every joined membership on this server, as (room, user): seeds indexes at start-up.
    pub fn all_joined_memberships(&self) -> Result<Vec<(OwnedRoomId, OwnedUserId)>> {
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(storage::Cf::Memberships, [])? {
            let Some((user, room)) = keys::memberships::parse(&k) else {
                continue;
            };
            let rec: store::MembershipRecord = serde_json::from_slice(&v)
                .map_err(|e| RoomError::Internal(format!("corrupt membership: {e}")))?;
            if rec.membership == Membership::Join
                && let (Ok(user), Ok(room)) =
                    (OwnedUserId::try_from(user), OwnedRoomId::try_from(room))
            {
                out.push((room, user));
            }
        }
        Ok(out)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The single stream's current position (what a sync token made now would say).
    pub fn current_position(&self) -> u64 {
        self.db.current_position()
    }

    /// The id of the signing key, e.g. `ed25519:AbC123`.
    pub fn signing_key_id(&self) -> &str {
        self.key.key_id()
    }

    /// The public half of the signing key (raw 32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.pair().public_key()
    }

    /// The public key as unpadded standard base64, as `/_matrix/key/v2/server` publishes it.
    pub fn public_key_base64(&self) -> String {
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(self.public_key().to_vec())
            .encode()
    }

    /// Take the write lock of one room (blocks while another write to it runs).
    pub(crate) fn lock_room(&self, room: &ruma::RoomId) -> KeyGuard<'_> {
        self.key_locks.lock(room.as_str())
    }

    /// Take the alias lock (before any room lock).
    pub(crate) fn lock_aliases(&self) -> MutexGuard<'_, ()> {
        self.alias_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Locks by name: a room's writes (its room id) and a federation transaction
/// (`txn <origin> <txn id>`; room ids start with `!`, so the names never collide).
#[derive(Default)]
pub(crate) struct KeyLocks {
    held: Mutex<HashSet<String>>,
    freed: Condvar,
}

impl KeyLocks {
    /// Block until no one holds `key`, then hold it until the guard drops.
    pub(crate) fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(key) {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.insert(key.to_owned());
        KeyGuard {
            locks: self,
            key: key.to_owned(),
        }
    }
}

/// Holds one [`KeyLocks`] key until dropped.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.key);
        drop(held);
        self.locks.freed.notify_all();
    }
}

pub(crate) use storage::now_ms;

pub use version::parse_room_version;

pub(crate) fn owned_user(s: &str) -> Option<OwnedUserId> {
    OwnedUserId::try_from(s).ok()
}
