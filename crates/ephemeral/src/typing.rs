//! In-memory typing state: per room the typing users with their expiry, and the stream
//! position of the last change of the room's *set* of typing users. No I/O here: the
//! service allocates positions and calls in.
use std::collections::{BTreeSet, HashMap};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct TypingRooms {
    rooms: HashMap<OwnedRoomId, RoomTyping>,
    /// Every typing user's expiry, earliest first (one timer serves them all).
    deadlines: BTreeSet<(Instant, OwnedRoomId, OwnedUserId)>,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Stream position of the last change of the set of typing users (0: none since start).
    changed_at: u64,
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
        let r = self.rooms.get(room)?;
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
}
