//! The user directory (`POST /user_directory/search`), kept in memory.
//!
//! As Synapse's default (`search_all_users: false`): a searcher finds the users who share
//! a joined room with them and the users joined to a public room (join rule `public` or
//! history visibility `world_readable`). Users are matched on their user ID and display
//! name: every word of the search term must be the prefix of a word of either
//! (case-insensitive; words are runs of letters and digits).
//!
//! Names are the global profile for local users (as Synapse, room-specific display names
//! never enter the directory) and the newest `m.room.member` display name seen for remote
//! users. The index is built once at start-up (every joined membership, the public state
//! of each room, each user's profile) and then kept current incrementally: memberships by
//! [`rooms::MembershipObserver`] (which also sees the state a remote join imports), and
//! profile and join-rule changes by following the timeline ([`Directory::catch_up`]: a
//! profile change is a new member event in every joined room). A search never scans.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rooms::{Membership, RoomService, StoredEvent};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{Error, Result};

const STEP: usize = 512;

/// A user's global profile: (display name, avatar URL); `None` for unknown users.
pub type ProfileSource = dyn Fn(&UserId) -> Option<(Option<String>, Option<String>)> + Send + Sync;

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

#[derive(Default)]
struct Entry {
    display_name: Option<String>,
    avatar_url: Option<String>,
    words: Vec<String>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<OwnedUserId, Entry>,
    /// Word → users whose ID or name has it.
    words: BTreeMap<String, HashSet<OwnedUserId>>,
    user_rooms: HashMap<OwnedUserId, HashSet<OwnedRoomId>>,
    room_members: HashMap<OwnedRoomId, HashSet<OwnedUserId>>,
    /// Rooms whose public-ness is known, and whether they are public.
    public: HashMap<OwnedRoomId, bool>,
    /// The timeline position profile and join-rule changes were followed up to.
    cursor: u64,
}

/// Lowercased words: maximal runs of alphanumeric characters.
pub fn words(s: &str) -> Vec<String> {
    let mut out: Vec<String> = s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out
}

pub struct Directory {
    inner: Mutex<Inner>,
    rooms: Arc<RoomService>,
    profiles: Arc<ProfileSource>,
    catch_up: Mutex<()>,
}

impl Directory {
    /// Build the directory from the room engine's current memberships.
    pub fn build(rooms: Arc<RoomService>, profiles: Arc<ProfileSource>) -> Result<Directory> {
        let cursor = rooms.current_position();
        let dir = Directory {
            inner: Mutex::new(Inner {
                cursor,
                ..Default::default()
            }),
            rooms,
            profiles,
            catch_up: Mutex::new(()),
        };
        for (room, user) in dir.rooms.all_joined_memberships()? {
            dir.membership_changed(&room, &user, Some(Membership::Join));
        }
        Ok(dir)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| Error::poisoned())
    }

    /// Is `room` public (join rule `public` or history `world_readable`) now?
    fn room_is_public(&self, room: &RoomId) -> bool {
        let state = |kind: &str, field: &str| {
            self.rooms
                .current_state_event(room, kind, "")
                .ok()
                .flatten()
                .and_then(|e| e.content_str(field).map(str::to_owned))
        };
        state("m.room.join_rules", "join_rule").as_deref() == Some("public")
            || state("m.room.history_visibility", "history_visibility").as_deref()
                == Some("world_readable")
    }

    /// The name a user is listed under: the global profile for local users, the member
    /// event in `room` for remote ones.
    fn load_profile(&self, user: &UserId, room: &RoomId) -> (Option<String>, Option<String>) {
        if user.server_name() == self.rooms.server_name() {
            return (self.profiles)(user).unwrap_or_default();
        }
        match self
            .rooms
            .current_state_event(room, "m.room.member", user.as_str())
        {
            Ok(Some(ev)) => member_profile(&ev),
            _ => (None, None),
        }
    }

    fn set_profile(inner: &mut Inner, user: &UserId, name: Option<String>, avatar: Option<String>) {
        let mut new_words = words(user.as_str());
        if let Some(n) = &name {
            new_words.extend(words(n));
        }
        new_words.sort();
        new_words.dedup();
        let entry = inner.users.entry(user.to_owned()).or_default();
        let old = std::mem::take(&mut entry.words);
        entry.display_name = name.filter(|n| !n.is_empty());
        entry.avatar_url = avatar.filter(|a| !a.is_empty());
        entry.words = new_words.clone();
        for w in old.iter().filter(|w| !new_words.contains(w)) {
            if let Some(set) = inner.words.get_mut(w) {
                set.remove(user);
                if set.is_empty() {
                    inner.words.remove(w);
                }
            }
        }
        for w in new_words {
            inner.words.entry(w).or_default().insert(user.to_owned());
        }
    }

    fn remove_user(inner: &mut Inner, user: &UserId) {
        if let Some(e) = inner.users.remove(user) {
            for w in e.words {
                if let Some(set) = inner.words.get_mut(&w) {
                    set.remove(user);
                    if set.is_empty() {
                        inner.words.remove(&w);
                    }
                }
            }
        }
    }

    /// A user's membership in a room changed (joined members are in the directory).
    pub fn membership_changed(&self, room: &RoomId, user: &UserId, m: Option<Membership>) {
        let Ok(mut inner) = self.lock() else { return };
        if m == Some(Membership::Join) {
            if !inner.public.contains_key(room) {
                let public = self.room_is_public(room);
                inner.public.insert(room.to_owned(), public);
            }
            inner
                .room_members
                .entry(room.to_owned())
                .or_default()
                .insert(user.to_owned());
            inner
                .user_rooms
                .entry(user.to_owned())
                .or_default()
                .insert(room.to_owned());
            if !inner.users.contains_key(user) {
                let (name, avatar) = self.load_profile(user, room);
                Self::set_profile(&mut inner, user, name, avatar);
            }
            return;
        }
        if let Some(set) = inner.room_members.get_mut(room) {
            set.remove(user);
            if set.is_empty() {
                inner.room_members.remove(room);
                inner.public.remove(room);
            }
        }
        let gone = match inner.user_rooms.get_mut(user) {
            Some(set) => {
                set.remove(room);
                set.is_empty()
            }
            None => true,
        };
        if gone {
            inner.user_rooms.remove(user);
            Self::remove_user(&mut inner, user);
        }
    }

    /// Follow the timeline to the current position: member events (profile changes) and
    /// join rule / history visibility changes.
    pub fn catch_up(&self) -> Result<()> {
        let _one = self.catch_up.lock().map_err(|_| Error::poisoned())?;
        let upto = self.rooms.current_position();
        let mut cursor = self.lock()?.cursor;
        while cursor < upto {
            let (events, last) = self.rooms.timeline_events_between(cursor, upto, STEP)?;
            for c in &events {
                self.apply(&c.room_id, &c.event)?;
            }
            cursor = last;
            self.lock()?.cursor = cursor;
        }
        Ok(())
    }

    fn apply(&self, room: &RoomId, ev: &StoredEvent) -> Result<()> {
        match ev.kind() {
            "m.room.join_rules" | "m.room.history_visibility" => {
                let public = self.room_is_public(room);
                let mut inner = self.lock()?;
                if inner.room_members.contains_key(room) {
                    inner.public.insert(room.to_owned(), public);
                }
            }
            "m.room.member" if ev.membership() == Some(Membership::Join) => {
                let Some(user) = ev.state_key().and_then(|k| UserId::parse(k).ok()) else {
                    return Ok(());
                };
                let (name, avatar) = if user.server_name() == self.rooms.server_name() {
                    (self.profiles)(&user).unwrap_or_default()
                } else {
                    member_profile(ev)
                };
                let mut inner = self.lock()?;
                if inner.users.contains_key(&user) {
                    Self::set_profile(&mut inner, &user, name, avatar);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Search as `searcher`: at most `limit` users, and whether more matched.
    pub fn search(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<Found>, bool)> {
        self.catch_up()?;
        let terms = words(term);
        if terms.is_empty() {
            return Ok((Vec::new(), false));
        }
        let inner = self.lock()?;
        // Users with a word starting with each term, smallest set first.
        let mut sets: Vec<HashSet<&OwnedUserId>> = terms
            .iter()
            .map(|t| {
                inner
                    .words
                    .range::<str, _>((
                        std::ops::Bound::Included(t.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(w, _)| w.starts_with(t.as_str()))
                    .flat_map(|(_, users)| users.iter())
                    .collect()
            })
            .collect();
        sets.sort_by_key(|s| s.len());
        let (first, rest) = sets
            .split_first()
            .ok_or_else(|| Error::Index("no terms".into()))?;
        let empty = HashSet::new();
        let mine = inner.user_rooms.get(searcher).unwrap_or(&empty);
        let visible = |u: &OwnedUserId| -> bool {
            let theirs = inner.user_rooms.get(u).unwrap_or(&empty);
            if theirs
                .iter()
                .any(|r| inner.public.get(r).copied().unwrap_or(false))
            {
                return true;
            }
            if u == searcher {
                return false;
            }
            let (small, big) = if mine.len() <= theirs.len() {
                (mine, theirs)
            } else {
                (theirs, mine)
            };
            small.iter().any(|r| big.contains(r))
        };
        let mut found: Vec<Found> = first
            .iter()
            .filter(|u| rest.iter().all(|s| s.contains(*u)))
            .filter(|u| visible(u))
            .filter_map(|u| {
                inner.users.get(*u).map(|e| Found {
                    user_id: (*u).clone(),
                    display_name: e.display_name.clone(),
                    avatar_url: e.avatar_url.clone(),
                })
            })
            .collect();
        // Synapse's order: users with a display name, then with an avatar, first.
        found.sort_by(|a, b| {
            (a.display_name.is_none(), a.avatar_url.is_none(), &a.user_id).cmp(&(
                b.display_name.is_none(),
                b.avatar_url.is_none(),
                &b.user_id,
            ))
        });
        let limited = found.len() > limit;
        found.truncate(limit);
        Ok((found, limited))
    }
}

impl rooms::MembershipObserver for Directory {
    fn membership_changed(&self, room: &RoomId, user: &UserId, membership: Option<Membership>) {
        Directory::membership_changed(self, room, user, membership);
    }
}

fn member_profile(ev: &StoredEvent) -> (Option<String>, Option<String>) {
    (
        ev.content_str("displayname").map(str::to_owned),
        ev.content_str("avatar_url").map(str::to_owned),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{setup, user};
    use rooms::{CreateRoomRequest, MemberProfile, Preset};
    use serde_json::json;

    #[test]
    fn words_split_ids_and_names() {
        assert_eq!(
            words("@user-1-alice:hs1"),
            vec!["1", "alice", "hs1", "user"]
        );
        assert_eq!(words("Alice COOPER"), vec!["alice", "cooper"]);
        assert!(words("  -- ").is_empty());
    }

    #[test]
    fn finds_users_sharing_a_room_or_in_public_rooms_by_global_name() {
        let (_d, rooms) = setup();
        let rooms = Arc::new(rooms);
        let names: HashMap<String, String> = [("alice", "Alice Cooper"), ("bob", "Bob")]
            .into_iter()
            .map(|(u, n)| (user(u).to_string(), n.to_owned()))
            .collect();
        let profiles: Arc<ProfileSource> =
            Arc::new(move |u: &UserId| Some((names.get(u.as_str()).cloned(), None)));
        let dir = Arc::new(Directory::build(rooms.clone(), profiles).expect("build"));
        rooms.set_membership_observer(dir.clone());
        let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
        let none = MemberProfile::default();
        // Alice in a public room; Bob and Alice in a private room where Alice has a
        // room-specific name.
        let public = rooms
            .create_room(
                &alice,
                CreateRoomRequest {
                    preset: Some(Preset::PublicChat),
                    ..Default::default()
                },
            )
            .expect("create");
        let private = rooms
            .create_room(
                &bob,
                CreateRoomRequest {
                    preset: Some(Preset::PrivateChat),
                    invite: vec![alice.to_string()],
                    ..Default::default()
                },
            )
            .expect("create");
        rooms
            .join(&alice, private.as_str(), &none, None)
            .expect("join");
        rooms
            .send_state_event(
                &alice,
                &private,
                "m.room.member",
                alice.as_str(),
                json!({"membership": "join", "displayname": "Freddy"}),
            )
            .expect("room name");
        let ids = |r: (Vec<Found>, bool)| -> Vec<String> {
            r.0.into_iter().map(|f| f.user_id.to_string()).collect()
        };
        assert_eq!(
            ids(dir.search(&eve, "alice coop", 10).expect("s")),
            vec![alice.to_string()]
        );
        assert!(ids(dir.search(&eve, "freddy", 10).expect("s")).is_empty());
        assert!(
            ids(dir.search(&eve, "bob", 10).expect("s")).is_empty(),
            "private only"
        );
        assert_eq!(
            ids(dir.search(&alice, "bob", 10).expect("s")),
            vec![bob.to_string()]
        );
        // Alice finds herself (she is in a public room) and Bob; Bob finds only Alice.
        assert_eq!(dir.search(&alice, "example", 10).expect("s").0.len(), 2);
        let (found, limited) = dir.search(&alice, "example", 1).expect("s");
        assert_eq!((found.len(), limited), (1, true));
        assert_eq!(
            ids(dir.search(&bob, "example", 10).expect("s")),
            vec![alice.to_string()]
        );
        assert_eq!(found[0].display_name.as_deref(), Some("Alice Cooper"));
        // Bob leaves the private room: Alice no longer finds him.
        rooms.leave(&bob, &private, None).expect("leave");
        assert!(ids(dir.search(&alice, "bob", 10).expect("s")).is_empty());
        // The public room turns invite-only: Eve no longer finds Alice.
        rooms
            .send_state_event(
                &alice,
                &public,
                "m.room.join_rules",
                "",
                json!({"join_rule": "invite"}),
            )
            .expect("join rules");
        assert!(ids(dir.search(&eve, "alice", 10).expect("s")).is_empty());
    }
}
