//! In-memory typing state: per room the typing users with their expiry, and the stream
//! position of the last change of the room's *set* of typing users. No I/O here: the
//! service allocates positions and calls in.
//!
//! **Idle rooms are forgotten** (issue 19 item 6): a room whose typing set became empty is
//! kept for [`IDLE_ROOM_RETENTION`] — so an incremental sync from before the stop still sees
//! the empty set — then dropped, oldest first and at once when more than
//! [`MAX_IDLE_ROOMS`] are waiting. The highest change position of a dropped room is kept
//! (`forgotten_up_to`): a sync from before it gets an empty typing set for every room it
//! asks about that is not tracked (the truth, and what it may have missed), so forgetting
//! never leaves a client showing someone typing. Memory is bounded by the rooms with typers
//! plus at most [`MAX_IDLE_ROOMS`].
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::time::Instant;

/// How long a room nobody types in any more is remembered.
pub const IDLE_ROOM_RETENTION: Duration = Duration::from_secs(300);
/// At most this many idle rooms are remembered (the oldest go first).
pub const MAX_IDLE_ROOMS: usize = 10_000;

#[derive(Default)]
pub(crate) struct TypingRooms {
    rooms: HashMap<OwnedRoomId, RoomTyping>,
    /// Every typing user's expiry, earliest first (one timer serves them all).
    deadlines: BTreeSet<(Instant, OwnedRoomId, OwnedUserId)>,
    /// Rooms whose set became empty, in that order, with when. A room typed in again and
    /// emptied again has a newer entry; the older one is then skipped (`emptied_at`).
    idle: VecDeque<(Instant, OwnedRoomId)>,
    /// The highest change position of a forgotten room (0: none forgotten).
    forgotten_up_to: u64,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Stream position of the last change of the set of typing users (0: none since start).
    changed_at: u64,
    /// When the set last became empty (its entry in `idle`).
    emptied_at: Option<Instant>,
}

impl TypingRooms {
    pub(crate) fn is_typing(&self, room: &RoomId, user: &UserId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.users.contains_key(user))
    }

    /// Set (or with `None` clear) the user's expiry; `pos` becomes the room's change position.
    pub(crate) fn set(
        &mut self,
        room: &RoomId,
        user: &UserId,
        until: Option<Instant>,
        pos: Option<u64>,
    ) {
        if until.is_none() && !self.rooms.contains_key(room) {
            return;
        }
        let entry = self.rooms.entry(room.to_owned()).or_default();
        let old = match until {
            Some(t) => entry.users.insert(user.to_owned(), t),
            None => entry.users.remove(user),
        };
        if let Some(pos) = pos {
            // Changes of different users may be applied out of position order (their
            // positioned writes run side by side): the room's change position only grows.
            entry.changed_at = entry.changed_at.max(pos);
        }
        if let Some(old) = old {
            self.deadlines
                .remove(&(old, room.to_owned(), user.to_owned()));
        }
        if let Some(t) = until {
            self.deadlines.insert((t, room.to_owned(), user.to_owned()));
        }
        self.after_change(room, Instant::now());
    }

    /// Book-keeping after a change of `room`: queue it if it just became idle, and forget
    /// rooms idle for too long.
    fn after_change(&mut self, room: &RoomId, now: Instant) {
        if let Some(entry) = self.rooms.get_mut(room) {
            if entry.users.is_empty() {
                if entry.emptied_at.is_none() {
                    entry.emptied_at = Some(now);
                    self.idle.push_back((now, room.to_owned()));
                }
            } else {
                entry.emptied_at = None;
            }
        }
        self.prune(now);
    }

    /// Forget rooms idle since before `now - IDLE_ROOM_RETENTION`, and the oldest idle ones
    /// beyond [`MAX_IDLE_ROOMS`]. O(1) amortised: each queued room is popped once.
    pub(crate) fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.idle.front() {
            let expired = now.saturating_duration_since(*at) >= IDLE_ROOM_RETENTION;
            if !expired && self.idle.len() <= MAX_IDLE_ROOMS {
                break;
            }
            let Some((at, room)) = self.idle.pop_front() else {
                break;
            };
            let still_idle = self
                .rooms
                .get(&room)
                .is_some_and(|r| r.users.is_empty() && r.emptied_at == Some(at));
            if still_idle && let Some(r) = self.rooms.remove(&room) {
                self.forgotten_up_to = self.forgotten_up_to.max(r.changed_at);
            }
        }
    }

    /// Rooms tracked (typed in now, or idle and not yet forgotten).
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Remove `user` from `room` if their deadline is at or before `now`; true if they were.
    pub(crate) fn expire_user(
        &mut self,
        room: &RoomId,
        user: &UserId,
        now: Instant,
        pos: u64,
    ) -> bool {
        let Some(entry) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(&deadline) = entry.users.get(user).filter(|t| **t <= now) else {
            return false;
        };
        entry.users.remove(user);
        entry.changed_at = entry.changed_at.max(pos);
        self.deadlines
            .remove(&(deadline, room.to_owned(), user.to_owned()));
        self.after_change(room, now);
        true
    }

    /// Every (room, user) whose deadline is at or before `now`, earliest first.
    pub(crate) fn users_due(&self, now: Instant) -> Vec<(OwnedRoomId, OwnedUserId)> {
        self.deadlines
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .map(|(_, r, u)| (r.clone(), u.clone()))
            .collect()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _, _)| *t)
    }

    /// The room's typing users, sorted.
    pub(crate) fn users(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let mut users: Vec<OwnedUserId> = self
            .rooms
            .get(room)
            .map(|r| r.users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort_unstable();
        users
    }

    /// The typing users of a room if the set is due in a sync covering `(since, now]`
    /// (initial sync: when anyone types).
    pub(crate) fn due(
        &self,
        room: &RoomId,
        since: Option<u64>,
        now: u64,
    ) -> Option<Vec<OwnedUserId>> {
        let Some(r) = self.rooms.get(room) else {
            // Not tracked: nobody types. A sync from before a forgotten change may have
            // missed that the set emptied; tell it (an empty set is the truth anyway).
            return since
                .is_some_and(|s| s < self.forgotten_up_to && s < now)
                .then(Vec::new);
        };
        let due = match since {
            None => !r.users.is_empty(),
            Some(s) => r.changed_at > s && r.changed_at <= now,
        };
        due.then(|| self.users(room))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn room() -> OwnedRoomId {
        "!r:x".try_into().expect("room")
    }
    fn user(s: &str) -> OwnedUserId {
        s.try_into().expect("user")
    }

    #[test]
    fn typing_set_changes_and_expiry() {
        let mut t = TypingRooms::default();
        let (r, a, b) = (room(), user("@a:x"), user("@b:x"));
        let now = Instant::now();
        t.set(&r, &a, Some(now + Duration::from_secs(5)), Some(3));
        t.set(&r, &b, Some(now + Duration::from_secs(10)), Some(4));
        assert!(t.is_typing(&r, &a));
        assert_eq!(t.due(&r, Some(2), 4), Some(vec![a.clone(), b.clone()]));
        assert!(t.due(&r, Some(4), 9).is_none(), "nothing new after 4");
        assert!(t.due(&r, None, 9).is_some(), "initial sync shows typers");
        // A refresh moves the deadline without a second entry.
        t.set(&r, &a, Some(now + Duration::from_secs(20)), None);
        assert_eq!(t.deadlines.len(), 2);
        let later = now + Duration::from_secs(11);
        assert_eq!(t.users_due(later), vec![(r.clone(), b.clone())]);
        assert!(!t.expire_user(&r, &a, later, 7), "a's deadline moved on");
        assert!(t.expire_user(&r, &b, later, 7));
        assert!(!t.is_typing(&r, &b));
        assert!(t.is_typing(&r, &a));
        assert_eq!(t.deadlines.len(), 1);
        t.set(&r, &a, None, Some(8));
        assert!(t.deadlines.is_empty());
        assert_eq!(t.due(&r, Some(7), 8), Some(vec![]), "stop is a change");
        assert!(t.due(&r, None, 8).is_none(), "nobody types");
        // Applied out of position order, the room's change position does not go back.
        t.set(&r, &a, Some(now + Duration::from_secs(5)), Some(10));
        t.set(&r, &b, Some(now + Duration::from_secs(5)), Some(9));
        assert_eq!(t.due(&r, Some(9), 10), Some(vec![a.clone(), b.clone()]));
    }

    #[test]
    fn idle_rooms_are_forgotten_and_memory_stays_flat() {
        let mut t = TypingRooms::default();
        let a = user("@a:x");
        let start = Instant::now();
        // Churn: 3 × MAX_IDLE_ROOMS rooms, each typed in once and stopped.
        let mut pos = 0;
        let mut peak = 0;
        for i in 0..(3 * MAX_IDLE_ROOMS) {
            let r: OwnedRoomId = format!("!r{i}:x").try_into().expect("room");
            pos += 1;
            t.set(&r, &a, Some(start + Duration::from_secs(30)), Some(pos));
            pos += 1;
            t.set(&r, &a, None, Some(pos));
            peak = peak.max(t.room_count()).max(t.idle.len());
        }
        assert!(
            peak <= MAX_IDLE_ROOMS + 1,
            "idle rooms grew to {peak} (bound {MAX_IDLE_ROOMS})"
        );
        assert!(t.deadlines.is_empty());
        // After the retention every idle room is gone.
        t.prune(start + IDLE_ROOM_RETENTION + Duration::from_secs(1));
        assert_eq!(t.room_count(), 0);
        assert!(t.idle.is_empty());
        // A sync from before the last stop still learns the set is empty...
        let r0: OwnedRoomId = "!r0:x".try_into().expect("room");
        assert_eq!(t.due(&r0, Some(1), pos), Some(vec![]));
        // ...a current one hears nothing, nor does an initial sync.
        assert_eq!(t.due(&r0, Some(pos), pos), None);
        assert_eq!(t.due(&r0, None, pos), None);
    }

    #[test]
    fn rooms_with_typers_are_never_forgotten() {
        let mut t = TypingRooms::default();
        let (r, a, b) = (room(), user("@a:x"), user("@b:x"));
        let now = Instant::now();
        t.set(&r, &a, Some(now + Duration::from_secs(30)), Some(1));
        t.set(&r, &a, None, Some(2));
        // Typed in again before the idle entry was due: that entry must not forget it.
        t.set(&r, &b, Some(now + Duration::from_secs(3000)), Some(3));
        t.prune(now + IDLE_ROOM_RETENTION + Duration::from_secs(1));
        assert!(t.is_typing(&r, &b));
        assert_eq!(t.due(&r, Some(2), 3), Some(vec![b.clone()]));
    }
}
