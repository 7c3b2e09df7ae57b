//! Notifications in storage and the counts `/sync` shows.
//!
//! `Cf::Push` keys (strings `0xFF`-terminated, positions big-endian):
//! * `"n" user room pos` → [`NotifRecord`]: an event at stream position `pos` that notifies
//!   `user`;
//! * `"u" user pos` → room id: the same notifications in stream order across rooms, for
//!   `GET /notifications`;
//! * `"c" user room` → the position up to which the room's events were evaluated for `user`;
//! * `"r" user room thread` → the position the user's latest receipt points at (thread `""`:
//!   an unthreaded receipt, `main`: the main timeline, else a thread root's event ID).
//!
//! Evaluation is lazy and idempotent: [`PushService::catch_up`] evaluates the events in
//! `(cursor, up_to]` and writes their notifications and the new cursor in one batch, so two
//! concurrent calls at worst evaluate an event twice and write the same keys. A user who has
//! never been evaluated in a room starts at their membership event. At most
//! [`MAX_EVALUATED`] events are evaluated per call; a longer gap skips the older events (their
//! notifications are lost, the newest are kept), and counts stop at [`MAX_COUNTED`].
//!
//! Not done: notifications are never pruned (Synapse keeps them for a month), and the state
//! used for evaluation is the room's current state, not the state at the event.
use std::collections::{BTreeMap, HashMap};

use ruma::push::{Action, Ruleset};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Batch, Cf, Key, KeyReader};

use crate::eval::{evaluate, thread_of};
use crate::{PushService, Result};

/// Events evaluated per (user, room) and call, newest kept.
pub const MAX_EVALUATED: usize = 1_000;
/// Unread notifications counted per room (a client shows "999+" long before).
pub const MAX_COUNTED: usize = 10_000;
/// Page size of `GET /notifications`.
pub const MAX_NOTIFICATIONS_PAGE: usize = 100;

/// One stored notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifRecord {
    pub event_id: OwnedEventId,
    pub highlight: bool,
    pub actions: Vec<Action>,
    /// When it was evaluated (ms since the epoch).
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

/// `{notification_count, highlight_count}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub notification_count: u64,
    pub highlight_count: u64,
}

/// A room's unread counts: all of them in `main` unless split by thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    pub main: Counts,
    /// Thread root → counts (only when asked for by thread, only non-zero threads).
    pub threads: BTreeMap<String, Counts>,
}

/// One entry of `GET /notifications`.
#[derive(Debug, Clone)]
pub struct Notification {
    pub room_id: OwnedRoomId,
    pub pos: u64,
    pub record: NotifRecord,
    pub read: bool,
}

fn notif_prefix(user: &UserId, room: &RoomId) -> Key {
    Key::new().str("n").str(user.as_str()).str(room.as_str())
}
fn by_user_prefix(user: &UserId) -> Key {
    Key::new().str("u").str(user.as_str())
}
fn cursor_key(user: &UserId, room: &RoomId) -> Key {
    Key::new().str("c").str(user.as_str()).str(room.as_str())
}
fn read_key(user: &UserId, room: &RoomId, thread: &str) -> Key {
    Key::new()
        .str("r")
        .str(user.as_str())
        .str(room.as_str())
        .str(thread)
}

impl PushService {
    fn get_u64(&self, key: &Key) -> Result<Option<u64>> {
        Ok(self
            .db
            .get(Cf::Push, key)?
            .and_then(|v| storage::decode_u64(&v)))
    }

    /// Evaluate the room's events in `(cursor, up_to]` for `user` and store those that notify.
    pub fn catch_up(&self, user: &UserId, room: &RoomId, up_to: u64) -> Result<()> {
        let cursor = match self.get_u64(&cursor_key(user, room))? {
            Some(c) => c,
            None => match self.rooms.membership(room, user)? {
                Some(m) => m.pos,
                None => return Ok(()),
            },
        };
        if cursor >= up_to {
            return Ok(());
        }
        // The newest MAX_EVALUATED events of the gap, oldest first.
        let (events, _) = self
            .rooms
            .timeline(room, Some(cursor), up_to, MAX_EVALUATED)?;
        let mut batch = Batch::new();
        let mut rules: Option<Ruleset> = None;
        let mut ctx = None;
        let ignored = self.ignored_users(user)?;
        let now = storage::now_ms();
        for ev in &events {
            if ev.sender() == user.as_str() || ignored.iter().any(|i| i == ev.sender()) {
                continue;
            }
            let rules = match &rules {
                Some(r) => r,
                None => rules.insert(self.rules(user)?),
            };
            let ctx = match &ctx {
                Some(c) => c,
                None => ctx.insert(self.room_ctx(room, user)?),
            };
            let client = ev.to_client_event(None, now);
            let verdict = evaluate(rules, ctx, &client);
            if !verdict.notify {
                continue;
            }
            let record = NotifRecord {
                event_id: ev.event_id.clone(),
                highlight: verdict.highlight,
                actions: verdict.actions,
                ts: now,
                thread: thread_of(&client),
            };
            batch.put_json(Cf::Push, notif_prefix(user, room).u64(ev.pos), &record);
            batch.put(
                Cf::Push,
                by_user_prefix(user).u64(ev.pos),
                room.as_str().as_bytes().to_vec(),
            );
        }
        batch.put(
            Cf::Push,
            cursor_key(user, room),
            up_to.to_be_bytes().to_vec(),
        );
        self.db.write(batch)?;
        Ok(())
    }

    fn ignored_users(&self, user: &UserId) -> Result<Vec<String>> {
        Ok(self
            .accounts
            .account_data(user, None, "m.ignored_user_list")?
            .and_then(|c| {
                c.get("ignored_users")
                    .and_then(Value::as_object)
                    .map(|o| o.keys().cloned().collect())
            })
            .unwrap_or_default())
    }

    /// Where the user has read up to in `thread` (`None`: the main timeline), taking an
    /// unthreaded receipt into account.
    fn read_up_to(
        &self,
        user: &UserId,
        room: &RoomId,
        thread: Option<&str>,
        cache: &mut HashMap<String, u64>,
    ) -> Result<u64> {
        let t = thread.unwrap_or("main");
        if let Some(p) = cache.get(t) {
            return Ok(*p);
        }
        let unthreaded = match cache.get("") {
            Some(p) => *p,
            None => {
                let p = self.get_u64(&read_key(user, room, ""))?.unwrap_or(0);
                cache.insert(String::new(), p);
                p
            }
        };
        let p = self
            .get_u64(&read_key(user, room, t))?
            .unwrap_or(0)
            .max(unthreaded);
        cache.insert(t.to_owned(), p);
        Ok(p)
    }

    /// The room's unread counts for `user` at `up_to` (evaluating what is new first);
    /// `by_thread` splits threaded notifications out (`unread_thread_notifications`).
    pub fn unread_counts(
        &self,
        user: &UserId,
        room: &RoomId,
        up_to: u64,
        by_thread: bool,
    ) -> Result<UnreadCounts> {
        self.catch_up(user, room, up_to)?;
        let mut reads = HashMap::new();
        // Nothing at or before an unthreaded receipt is unread, whatever its thread.
        let unthreaded = self.get_u64(&read_key(user, room, ""))?.unwrap_or(0);
        let prefix = notif_prefix(user, room);
        let rows = self.db.scan_range(
            Cf::Push,
            prefix.clone().u64(unthreaded.saturating_add(1)),
            prefix.clone().u64(up_to.saturating_add(1)),
            false,
            MAX_COUNTED,
        )?;
        let plen = prefix.as_bytes().len();
        let mut out = UnreadCounts::default();
        for (k, v) in rows {
            let Some(pos) = KeyReader::new(&k[plen..]).u64() else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<NotifRecord>(&v) else {
                continue;
            };
            if pos <= self.read_up_to(user, room, rec.thread.as_deref(), &mut reads)? {
                continue;
            }
            let counts = match (&rec.thread, by_thread) {
                (Some(t), true) => out.threads.entry(t.clone()).or_default(),
                _ => &mut out.main,
            };
            counts.notification_count += 1;
            if rec.highlight {
                counts.highlight_count += 1;
            }
        }
        Ok(out)
    }

    /// The notification `event` at stream position `pos` gave `user`, if it notified
    /// (call [`Self::catch_up`] up to `pos` first).
    pub fn notification_at(
        &self,
        user: &UserId,
        room: &RoomId,
        pos: u64,
    ) -> Result<Option<NotifRecord>> {
        Ok(self
            .db
            .get_json::<NotifRecord>(Cf::Push, notif_prefix(user, room).u64(pos))?)
    }

    /// How many of the user's joined rooms have unread notifications at `up_to`: the badge
    /// a push gateway shows (Synapse's default, `group_unread_count_by_room`).
    pub fn rooms_with_unread(&self, user: &UserId, up_to: u64) -> Result<u64> {
        let mut n = 0;
        for room in self.rooms.joined_rooms(user)? {
            let c = self.unread_counts(user, &room, up_to, false)?;
            if c.main.notification_count > 0 {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The user read up to `event` in `room` (`thread`: `None` unthreaded, `main`, or a
    /// thread root): called for each of the user's own receipts.
    pub fn mark_read(
        &self,
        user: &UserId,
        room: &RoomId,
        thread: Option<&str>,
        event: &EventId,
    ) -> Result<()> {
        let Some(ev) = self.rooms.event(event)? else {
            return Ok(());
        };
        let key = read_key(user, room, thread.unwrap_or(""));
        let _guard = self.rule_locks.lock(key.as_bytes());
        if self.get_u64(&key)?.is_some_and(|p| p >= ev.pos) {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put(Cf::Push, key, ev.pos.to_be_bytes().to_vec());
        self.db.write(batch)?;
        Ok(())
    }

    /// `GET /notifications`: the user's notifications before position `from` (all when
    /// `None`), newest first, at most `limit`; only highlights when `only_highlight`. Returns
    /// them and the `next_token` position when there may be more.
    pub fn notifications(
        &self,
        user: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
        up_to: u64,
    ) -> Result<(Vec<Notification>, Option<u64>)> {
        for room in self.rooms.joined_rooms(user)? {
            self.catch_up(user, &room, up_to)?;
        }
        let limit = limit.clamp(1, MAX_NOTIFICATIONS_PAGE);
        let prefix = by_user_prefix(user);
        let plen = prefix.as_bytes().len();
        let mut hi = from.unwrap_or(up_to.saturating_add(1));
        let mut out = Vec::new();
        let mut reads: HashMap<OwnedRoomId, HashMap<String, u64>> = HashMap::new();
        // Highlights may be sparse: look at a bounded number of pages.
        for _ in 0..20 {
            let rows = self.db.scan_range(
                Cf::Push,
                prefix.clone().u64(0),
                prefix.clone().u64(hi),
                true,
                limit,
            )?;
            let full = rows.len() == limit;
            for (k, v) in rows {
                let Some(pos) = KeyReader::new(&k[plen..]).u64() else {
                    continue;
                };
                hi = pos;
                let Some(room) = String::from_utf8(v)
                    .ok()
                    .and_then(|s| OwnedRoomId::try_from(s).ok())
                else {
                    continue;
                };
                let Some(record) = self
                    .db
                    .get_json::<NotifRecord>(Cf::Push, notif_prefix(user, &room).u64(pos))?
                else {
                    continue;
                };
                if only_highlight && !record.highlight {
                    continue;
                }
                let cache = reads.entry(room.clone()).or_default();
                let read = pos <= self.read_up_to(user, &room, record.thread.as_deref(), cache)?;
                out.push(Notification {
                    room_id: room,
                    pos,
                    record,
                    read,
                });
                if out.len() == limit {
                    return Ok((out, Some(pos)));
                }
            }
            if !full {
                return Ok((out, None));
            }
        }
        Ok((out, Some(hi)))
    }
}

/// The push service follows the user's own receipts to reset counts.
impl ephemeral::EphemeralObserver for PushService {
    fn changed(&self, change: &ephemeral::EphemeralChange) {
        let ephemeral::EphemeralChange::Receipt { receipt, .. } = change else {
            return;
        };
        if receipt.user_id.server_name() != self.rooms.server_name() {
            return;
        }
        if let Err(e) = self.mark_read(
            &receipt.user_id,
            &receipt.room_id,
            receipt.thread_id.as_deref(),
            &receipt.event_id,
        ) {
            tracing::warn!(user = %receipt.user_id, room = %receipt.room_id, "cannot store a read position: {e}");
        }
    }
}
