//! Who shares a joined room with whom, kept up to date from membership changes.
//!
//! Two maps, room → joined members and user → joined rooms, and nothing else: memory is
//! O(memberships), never O(pairs) (one 10 000-member room would be 10⁸ pairs). Whether two
//! users share a room costs O(min(rooms of either)) set probes; a user's audience is the union
//! of their rooms' member sets, with no scan of all users.

use std::collections::{BTreeSet, HashMap, HashSet};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId};

use crate::sharing::RoomFacts;

/// What a membership change did to the "shares a joined room" relation. Every pair is
/// `(user whose membership changed, other)`; the relation is symmetric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudienceDelta {
    /// Users who now share a joined room with the user and did not before: send each side the
    /// other's current presence.
    pub gained: Vec<OwnedUserId>,
    /// Users who no longer share any joined room with the user: each side should stop seeing
    /// the other (e.g. a final `offline` if visibility came only from rooms).
    pub lost: Vec<OwnedUserId>,
}

impl AudienceDelta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty()
    }
}

/// Joined memberships of all rooms the server knows, indexed both ways.
#[derive(Debug, Clone, Default)]
pub struct AudienceIndex {
    room_members: HashMap<OwnedRoomId, HashSet<OwnedUserId>>,
    user_rooms: HashMap<OwnedUserId, HashSet<OwnedRoomId>>,
}

impl AudienceIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `user` joined (`joined = true`) or stopped being joined to `room` (leave,
    /// kick, ban, or an invite/knock replacing a join), and returns who gained or lost a shared
    /// room with `user`. Repeating the current membership changes nothing.
    pub fn apply_membership(
        &mut self,
        room: &RoomId,
        user: &UserId,
        joined: bool,
    ) -> AudienceDelta {
        if joined == self.is_joined(user, room) {
            return AudienceDelta::default();
        }
        let mut delta = AudienceDelta::default();
        if joined {
            if let Some(members) = self.room_members.get(room) {
                // Everyone already in the room is new audience unless another room links them.
                delta.gained = members
                    .iter()
                    .filter(|other| !self.shares_room(user, other))
                    .cloned()
                    .collect();
            }
            self.room_members
                .entry(room.to_owned())
                .or_default()
                .insert(user.to_owned());
            self.user_rooms
                .entry(user.to_owned())
                .or_default()
                .insert(room.to_owned());
        } else {
            remove_from(&mut self.room_members, room, user);
            remove_from(&mut self.user_rooms, user, room);
            if let Some(members) = self.room_members.get(room) {
                delta.lost = members
                    .iter()
                    .filter(|other| !self.shares_room(user, other))
                    .cloned()
                    .collect();
            }
        }
        delta.gained.sort_unstable();
        delta.lost.sort_unstable();
        delta
    }

    /// Whether `user` is joined to `room`.
    pub fn is_joined(&self, user: &UserId, room: &RoomId) -> bool {
        self.user_rooms
            .get(user)
            .is_some_and(|rooms| rooms.contains(room))
    }

    /// Whether `a` and `b` share at least one joined room (false when `a == b`: nobody is
    /// their own audience).
    pub fn shares_room(&self, a: &UserId, b: &UserId) -> bool {
        if a == b {
            return false;
        }
        let (Some(rooms_a), Some(rooms_b)) = (self.user_rooms.get(a), self.user_rooms.get(b))
        else {
            return false;
        };
        let (smaller, larger) = if rooms_a.len() <= rooms_b.len() {
            (rooms_a, rooms_b)
        } else {
            (rooms_b, rooms_a)
        };
        smaller.iter().any(|room| larger.contains(room))
    }

    /// Everyone who shares at least one joined room with `user`, each once, `user` excluded.
    pub fn audience<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a UserId> + 'a {
        let mut seen: HashSet<&UserId> = HashSet::new();
        for room in self.rooms_of(user) {
            seen.extend(self.members(room));
        }
        seen.remove(user);
        seen.into_iter()
    }

    /// The servers of `user`'s audience: the destinations of a federation presence update.
    /// The user's own server is included if it is in the audience; filter it out as needed.
    pub fn audience_servers<'a>(&'a self, user: &'a UserId) -> BTreeSet<&'a ServerName> {
        self.audience(user).map(UserId::server_name).collect()
    }

    /// `(room, member)` for each room of `owner` and each of its members on `server`: the
    /// input of [`SharingPolicy::allowed_recipients`](crate::sharing::SharingPolicy::allowed_recipients).
    pub fn members_on_server<'a>(
        &'a self,
        owner: &'a UserId,
        server: &'a ServerName,
    ) -> impl Iterator<Item = (&'a RoomId, &'a UserId)> + 'a {
        self.rooms_of(owner).flat_map(move |room| {
            self.members(room)
                .filter(move |member| member.server_name() == server)
                .map(move |member| (room, member))
        })
    }

    /// The rooms `user` is joined to.
    pub fn rooms_of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a RoomId> + 'a {
        self.user_rooms
            .get(user)
            .into_iter()
            .flatten()
            .map(|room| &**room)
    }

    /// The joined members of `room`.
    pub fn members<'a>(&'a self, room: &RoomId) -> impl Iterator<Item = &'a UserId> + 'a {
        self.room_members
            .get(room)
            .into_iter()
            .flatten()
            .map(|user| &**user)
    }

    /// Number of rooms with at least one joined member.
    pub fn room_count(&self) -> usize {
        self.room_members.len()
    }
}

impl RoomFacts for AudienceIndex {
    fn joined_rooms<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a RoomId> + 'a {
        self.rooms_of(user)
    }

    fn is_joined(&self, user: &UserId, room: &RoomId) -> bool {
        AudienceIndex::is_joined(self, user, room)
    }
}

/// Removes `value` from `map[key]`, dropping the entry when it becomes empty.
fn remove_from<K, V, Q, R>(map: &mut HashMap<K, HashSet<V>>, key: &Q, value: &R)
where
    K: std::borrow::Borrow<Q> + Eq + std::hash::Hash,
    V: std::borrow::Borrow<R> + Eq + std::hash::Hash,
    Q: Eq + std::hash::Hash + ?Sized,
    R: Eq + std::hash::Hash + ?Sized,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use ruma::{room_id, server_name, user_id};

    use super::*;
    use crate::sharing::SharingPolicy;

    fn sorted<'a>(it: impl Iterator<Item = &'a UserId>) -> Vec<&'a UserId> {
        let mut v: Vec<_> = it.collect();
        v.sort();
        v
    }

    #[test]
    fn joins_and_leaves_report_changed_pairs() {
        let mut index = AudienceIndex::new();
        let (r1, r2) = (room_id!("!one:hs"), room_id!("!two:hs"));
        let (a, b, c) = (user_id!("@a:hs"), user_id!("@b:hs"), user_id!("@c:remote"));

        assert!(index.apply_membership(r1, a, true).is_empty());
        assert_eq!(
            index.apply_membership(r1, b, true).gained,
            vec![a.to_owned()]
        );
        assert_eq!(
            index.apply_membership(r2, b, true),
            AudienceDelta::default()
        );
        assert_eq!(
            index.apply_membership(r2, a, true),
            AudienceDelta::default(),
            "already share r1"
        );
        assert_eq!(
            index.apply_membership(r2, c, true).gained,
            vec![a.to_owned(), b.to_owned()]
        );
        assert!(
            index.apply_membership(r2, c, true).is_empty(),
            "repeat is a no-op"
        );

        assert_eq!(sorted(index.audience(a)), vec![b, c]);
        assert_eq!(sorted(index.audience(c)), vec![a, b]);
        assert!(index.shares_room(a, c));

        // a leaves r1: still shares r2 with b.
        assert!(index.apply_membership(r1, a, false).is_empty());
        // a leaves r2: loses b and c.
        assert_eq!(
            index.apply_membership(r2, a, false).lost,
            vec![b.to_owned(), c.to_owned()]
        );
        assert_eq!(index.audience(a).count(), 0);
        assert!(
            index.apply_membership(r2, a, false).is_empty(),
            "leaving twice is a no-op"
        );
        assert_eq!(
            index.audience_servers(b).into_iter().collect::<Vec<_>>(),
            vec![server_name!("remote")]
        );
    }

    #[test]
    fn empty_rooms_and_users_are_dropped() {
        let mut index = AudienceIndex::new();
        let room = room_id!("!r:hs");
        index.apply_membership(room, user_id!("@a:hs"), true);
        index.apply_membership(room, user_id!("@a:hs"), false);
        assert_eq!(index.room_count(), 0);
        assert!(index.user_rooms.is_empty());
    }

    #[test]
    fn feeds_the_sharing_policy() {
        let mut index = AudienceIndex::new();
        let room = room_id!("!r:hs");
        let (owner, x, y) = (
            user_id!("@o:hs"),
            user_id!("@x:remote"),
            user_id!("@y:other"),
        );
        for user in [owner, x, y] {
            index.apply_membership(room, user, true);
        }
        assert!(SharingPolicy::legacy().may_see(owner, x, &index));
        assert!(!SharingPolicy::legacy().may_see(owner, user_id!("@z:remote"), &index));
        let pairs: Vec<_> = index
            .members_on_server(owner, server_name!("remote"))
            .collect();
        assert_eq!(pairs, vec![(room, x)]);
    }

    /// The naive model: a set of (room, user) memberships.
    fn naive_shares(model: &BTreeSet<(usize, usize)>, a: usize, b: usize) -> bool {
        a != b
            && model
                .iter()
                .any(|&(r, u)| u == a && model.contains(&(r, b)))
    }

    fn uid(i: usize) -> OwnedUserId {
        UserId::parse(format!("@u{i}:hs{}", i % 2)).unwrap()
    }

    fn rid(i: usize) -> OwnedRoomId {
        RoomId::parse(format!("!r{i}:hs")).unwrap()
    }

    const USERS: usize = 6;

    proptest! {
        #[test]
        fn matches_the_naive_model(ops in prop::collection::vec((0..4usize, 0..USERS, any::<bool>()), 0..80)) {
            let mut index = AudienceIndex::new();
            let mut model: BTreeSet<(usize, usize)> = BTreeSet::new();
            for (room, user, joined) in ops {
                let before: Vec<bool> = (0..USERS).map(|v| naive_shares(&model, user, v)).collect();
                if joined { model.insert((room, user)); } else { model.remove(&(room, user)); }
                let after: Vec<bool> = (0..USERS).map(|v| naive_shares(&model, user, v)).collect();
                let expected_gained: Vec<OwnedUserId> =
                    (0..USERS).filter(|&v| !before[v] && after[v]).map(uid).collect::<BTreeSet<_>>().into_iter().collect();
                let expected_lost: Vec<OwnedUserId> =
                    (0..USERS).filter(|&v| before[v] && !after[v]).map(uid).collect::<BTreeSet<_>>().into_iter().collect();

                let delta = index.apply_membership(&rid(room), &uid(user), joined);
                prop_assert_eq!(delta.gained, expected_gained);
                prop_assert_eq!(delta.lost, expected_lost);

                for a in 0..USERS {
                    let expected: BTreeSet<OwnedUserId> =
                        (0..USERS).filter(|&b| naive_shares(&model, a, b)).map(uid).collect();
                    let ua = uid(a);
                    let actual: BTreeSet<OwnedUserId> = index.audience(&ua).map(ToOwned::to_owned).collect();
                    prop_assert_eq!(&actual, &expected);
                    for b in 0..USERS {
                        prop_assert_eq!(index.shares_room(&ua, &uid(b)), a != b && naive_shares(&model, a, b));
                    }
                }
            }
        }
    }
}
