//! # ephemeral — typing notifications and read receipts, below the HTTP layer
//!
//! One service ([`EphemeralService`]) owns both kinds of ephemeral room data so a client
//! request (`PUT /typing`, `POST /receipt`) and an inbound federation EDU (`m.typing`,
//! `m.receipt`) go through the same code. Callers check *who may* (membership, that the
//! user belongs to the sending server); this crate keeps the state:
//!
//! * **Typing** lives in memory: per room the typing users and their expiry, and the
//!   stream position of the last change of the room's *set* of typing users. A change of
//!   the set (start, stop, expiry) allocates a position on the single stream with an empty
//!   positioned write, so sync tokens stay one number; a refresh of someone already typing
//!   writes nothing. Expiry is one tokio task sleeping until the earliest deadline, which
//!   does its writes on the blocking pool. Typing does not survive a restart.
//! * **Receipts** (`m.read`, `m.read.private`, optionally per thread) are persisted, the
//!   latest per (room, user, type, thread), and only move forwards: a receipt for an event
//!   earlier in the stream than the current one is accepted and ignored.
//!
//! Every change is reported to the registered [`EphemeralObserver`]s with its
//! [`Origin`]: the client API wakes the room's syncs, the federation sender forwards
//! local changes (never `m.read.private`). Sync reads with [`EphemeralService::typing_since`]
//! and [`EphemeralService::receipt_event`].
//!
//! All methods do storage I/O or take locks held only briefly; call them from the
//! blocking pool.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, UserId};
use serde_json::Value;
use storage::{Db, Key, KeyLocks, StorageError};
use tokio::sync::Notify;
use tokio::time::Instant;

mod receipts;
mod typing;

use typing::TypingRooms;
pub use typing::{IDLE_ROOM_RETENTION, MAX_IDLE_ROOMS};

/// Upper bound (and default) of a typing notification's timeout, in milliseconds.
pub const MAX_TYPING_TIMEOUT_MS: u64 = 30_000;
/// Receipts per room in one sync response (the most recent ones).
pub const MAX_RECEIPTS_PER_ROOM: usize = 1_000;

/// Where a change came from: the federation sender forwards only local ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client of this server (or this server's own timer, for an expiry).
    Local,
    /// An EDU from this remote server.
    Remote(OwnedServerName),
}

/// The receipt types stored here (`m.fully_read` is room account data, not a receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptType {
    /// `m.read`: shown to every member, federated.
    Read,
    /// `m.read.private`: only ever shown to its owner, never federated.
    ReadPrivate,
}

impl ReceiptType {
    /// `m.read` / `m.read.private`; anything else is `None`.
    pub fn parse(s: &str) -> Option<ReceiptType> {
        match s {
            "m.read" => Some(ReceiptType::Read),
            "m.read.private" => Some(ReceiptType::ReadPrivate),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptType::Read => "m.read",
            ReceiptType::ReadPrivate => "m.read.private",
        }
    }
}

/// One receipt: `user_id` has read up to `event_id` in `room_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    pub receipt_type: ReceiptType,
    pub event_id: OwnedEventId,
    /// `main` or a thread root's event ID; `None` for an unthreaded receipt.
    pub thread_id: Option<String>,
    /// Milliseconds since the Unix epoch (the sender's clock for a remote receipt).
    pub ts: u64,
}

/// A change of ephemeral data, as observers see it (after it is stored and visible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EphemeralChange {
    /// The set of typing users of `room` changed at stream position `pos`; `user`
    /// started (`typing: true`) or stopped / timed out.
    Typing {
        room: OwnedRoomId,
        user: OwnedUserId,
        typing: bool,
        pos: u64,
        origin: Origin,
    },
    /// A receipt was stored at stream position `pos`.
    Receipt {
        receipt: Receipt,
        pos: u64,
        origin: Origin,
    },
}

/// Told about every change (the client API's sync wake-ups, the federation sender).
/// Called synchronously on the writer's thread: keep it short, never block on I/O that
/// waits for this service.
pub trait EphemeralObserver: Send + Sync {
    fn changed(&self, change: &EphemeralChange);
}

/// Typing and receipts; see the crate documentation.
pub struct EphemeralService {
    db: Arc<Db>,
    typing: Mutex<TypingRooms>,
    observers: RwLock<Vec<Arc<dyn EphemeralObserver>>>,
    /// Re-arms the expiry task when an earlier deadline may have been added.
    kick: Arc<Notify>,
    timer_started: AtomicBool,
    /// Set once by [`EphemeralService::new`]: the timer task holds only this.
    me: Weak<EphemeralService>,
    /// Serialise one (room, user)'s typing changes and one receipt kind's writes from the
    /// check through the positioned write to the observers, so each key's changes are
    /// decided, stored and reported in stream order (the positioned write itself no longer
    /// serialises callers' closures).
    typing_locks: KeyLocks,
    receipt_locks: KeyLocks,
}

impl EphemeralService {
    pub fn new(db: Arc<Db>) -> Arc<Self> {
        Arc::new_cyclic(|me| EphemeralService {
            db,
            typing: Mutex::default(),
            observers: RwLock::default(),
            kick: Arc::new(Notify::new()),
            timer_started: AtomicBool::new(false),
            me: me.clone(),
            typing_locks: KeyLocks::default(),
            receipt_locks: KeyLocks::default(),
        })
    }

    pub fn add_observer(&self, observer: Arc<dyn EphemeralObserver>) {
        self.observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
    }

    fn notify(&self, change: EphemeralChange) {
        let observers = self.observers.read().unwrap_or_else(|p| p.into_inner());
        for o in observers.iter() {
            o.changed(&change);
        }
    }

    fn lock(&self) -> MutexGuard<'_, TypingRooms> {
        self.typing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start (`typing`, for `timeout`, capped at [`MAX_TYPING_TIMEOUT_MS`]) or stop typing.
    /// Returns the stream position when the room's set of typing users changed (observers
    /// have been told by then); `None` for a refresh or a stop of someone not typing.
    pub fn set_typing(
        &self,
        room: &RoomId,
        user: &UserId,
        typing: bool,
        timeout: Duration,
        origin: Origin,
    ) -> Result<Option<u64>, StorageError> {
        let until = typing
            .then(|| Instant::now() + timeout.min(Duration::from_millis(MAX_TYPING_TIMEOUT_MS)));
        if typing {
            self.ensure_timer();
        }
        let _user = self.typing_locks.lock(typing_lock_key(room, user));
        {
            // A refresh of someone already typing, or a stop of someone who is not, changes
            // no set: no stream position, no wake-up.
            let mut inner = self.lock();
            if inner.is_typing(room, user) == typing {
                inner.set(room, user, until, None);
                drop(inner);
                if typing {
                    self.kick.notify_one();
                }
                return Ok(None);
            }
        }
        // Checked again in the positioned write: the expiry timer may have removed the user
        // since. Lock order: this (room, user)'s lock, then `typing` (only inside the closure,
        // never across the write). The in-memory change is made inside the positioned write,
        // so once the position is visible the change is.
        let written = self.db.write_with_position(|pos, _batch| {
            let mut inner = self.lock();
            if inner.is_typing(room, user) == typing {
                inner.set(room, user, until, None);
                return Ok(None);
            }
            inner.set(room, user, until, Some(pos));
            Ok::<_, StorageError>(Some(pos))
        });
        if typing {
            self.kick.notify_one();
        }
        // An unchanged set still used a position (an empty write): harmless, rare.
        let Some(pos) = written?.1 else {
            return Ok(None);
        };
        self.notify(EphemeralChange::Typing {
            room: room.to_owned(),
            user: user.to_owned(),
            typing,
            pos,
            origin,
        });
        Ok(Some(pos))
    }

    /// The typing users of `room` if the set changed in `(since, now]` (initial sync,
    /// `since` = `None`: if anyone types). Callers hide users no longer joined.
    pub fn typing_since(
        &self,
        room: &RoomId,
        since: Option<u64>,
        now: u64,
    ) -> Option<Vec<OwnedUserId>> {
        self.lock().due(room, since, now)
    }

    /// Rooms whose typing state is held in memory (typed in now, or idle and not yet
    /// forgotten: see `typing.rs`).
    pub fn typing_room_count(&self) -> usize {
        self.lock().room_count()
    }

    /// Who types in `room` now.
    pub fn typing_users(&self, room: &RoomId) -> Vec<OwnedUserId> {
        self.lock().users(room)
    }

    /// Store a receipt for an event at stream position `event_pos` (callers check the
    /// event is in the room). Returns the stream position when stored, `None` when the
    /// current receipt of that kind is already for this event or a later one.
    pub fn put_receipt(
        &self,
        receipt: Receipt,
        event_pos: u64,
        origin: Origin,
    ) -> Result<Option<u64>, StorageError> {
        // Held until observers are told, so one receipt kind's changes reach them in order.
        let _kind = self.receipt_locks.lock(receipts::receipt_key(&receipt));
        let Some(pos) = receipts::store(&self.db, &receipt, event_pos)? else {
            return Ok(None);
        };
        self.notify(EphemeralChange::Receipt {
            receipt,
            pos,
            origin,
        });
        Ok(Some(pos))
    }

    /// The `m.receipt` event (`{type, content}`) of `room` for `viewer`: receipts written
    /// in `(since, now]` (initial sync: the current ones), at most
    /// [`MAX_RECEIPTS_PER_ROOM`]; others' private receipts are left out.
    pub fn receipt_event(
        &self,
        viewer: &UserId,
        room: &RoomId,
        since: Option<u64>,
        now: u64,
    ) -> Result<Option<Value>, StorageError> {
        receipts::event(&self.db, viewer, room, since, now)
    }

    /// Remove every typing user expired at `now`, telling observers. Each (room, user) is
    /// expired under its own lock, like [`EphemeralService::set_typing`], so a stop by
    /// expiry and a fresh start of the same user reach observers in stream order.
    pub fn expire_typing(&self, now: Instant) -> Result<(), StorageError> {
        let due = self.lock().users_due(now);
        for (room, user) in due {
            let _user = self.typing_locks.lock(typing_lock_key(&room, &user));
            let (pos, expired) = self.db.write_with_position(|pos, _batch| {
                Ok::<_, StorageError>(self.lock().expire_user(&room, &user, now, pos))
            })?;
            if expired {
                self.notify(EphemeralChange::Typing {
                    room,
                    user,
                    typing: false,
                    pos,
                    origin: Origin::Local,
                });
            }
        }
        Ok(())
    }

    /// Start the expiry task once, on first use inside a tokio runtime (without one, as
    /// in unit tests, call [`EphemeralService::expire_typing`] directly).
    fn ensure_timer(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.timer_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.me.clone();
        let kick = self.kick.clone();
        handle.spawn(async move {
            loop {
                let next = match weak.upgrade() {
                    Some(svc) => svc.lock().next_deadline(),
                    None => return,
                };
                match next {
                    Some(deadline) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => {}
                            _ = kick.notified() => continue,
                        }
                    }
                    None => {
                        kick.notified().await;
                        continue;
                    }
                }
                let Some(svc) = weak.upgrade() else { return };
                let done =
                    tokio::task::spawn_blocking(move || svc.expire_typing(Instant::now())).await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!("expiring typing notifications failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!("typing expiry task failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

/// The key of one (room, user)'s typing lock.
fn typing_lock_key(room: &RoomId, user: &UserId) -> Key {
    Key::new().str(room.as_str()).str(user.as_str())
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod tests;
