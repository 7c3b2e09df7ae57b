//! The compiled policy of each user with a config, the push-audience caches (`fanout`) built
//! from it, and the state that holds both.
//!
//! ## Caching
//!
//! A policy is compiled once per account-data change. Matching a viewer against hundreds of
//! globs costs microseconds, far too much to repeat for every member of a 10,000-member room
//! on every presence update, so for each user with a config the service keeps the local
//! members of the push audience as a set (`fanout`), built on first use and then kept current
//! incrementally: a join or leave re-evaluates only the pair(s) it touches, a config change
//! rebuilds the set. A presence update then wakes that set without evaluating anything, and
//! `/sync` answers "does V see U" with one hash probe. The sets hold at most
//! [`MAX_CACHED_VIEWERS`] entries in total; past that, evaluation is direct (correct, slower).
//! Users without a config (legacy: everyone sharing a room) need no cache.
use std::collections::{HashMap, HashSet};

use presence_core::audience::AudienceIndex;
use presence_core::sharing::{RoomFacts, SharingConfig, SharingEntry, SharingPolicy};
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::Value;

/// Most viewers kept in push-audience caches, over all users with a config (about 100 bytes
/// each). Past it, new caches are not built and those users are evaluated directly.
pub const MAX_CACHED_VIEWERS: usize = 4_000_000;

/// The compiled config of one user who has one.
pub(crate) struct OwnerSharing {
    pub(super) policy: SharingPolicy,
    /// `allowed_users` IDs not also denied exactly: pushed to even without a shared room.
    pub(super) explicit: HashSet<OwnedUserId>,
    /// The `allowed_users` globs, as written (for the audience preview).
    pub(super) allowed_globs: Vec<String>,
    /// Whether the stored content failed to parse (the policy is then "only self").
    pub(super) invalid: bool,
    /// The local members of the push audience, when built (see the module docs).
    pub(super) fanout: Option<HashSet<OwnedUserId>>,
}

impl OwnerSharing {
    /// `None` when there is no config (legacy). Content that does not parse fails closed and
    /// is logged.
    pub(super) fn from_content(owner: &UserId, content: Option<&Value>) -> Option<OwnerSharing> {
        let content = content?;
        Some(match SharingConfig::from_json(content) {
            Ok(config) => OwnerSharing::compile(&config),
            Err(e) => {
                tracing::warn!(
                    user = %owner,
                    "stored presence sharing config does not parse ({e}); sharing presence with nobody"
                );
                OwnerSharing {
                    policy: SharingPolicy::only_self(),
                    explicit: HashSet::new(),
                    allowed_globs: Vec::new(),
                    invalid: true,
                    fanout: None,
                }
            }
        })
    }

    pub(super) fn compile(config: &SharingConfig) -> OwnerSharing {
        let policy = SharingPolicy::compile(config);
        let explicit = policy
            .explicitly_allowed_users()
            .map(ToOwned::to_owned)
            .collect();
        let allowed_globs = config
            .allowed_users
            .iter()
            .filter_map(|e| match e {
                SharingEntry::UserGlob(g) => Some(g.as_str().to_owned()),
                _ => None,
            })
            .collect();
        OwnerSharing {
            policy,
            explicit,
            allowed_globs,
            invalid: false,
            fanout: None,
        }
    }

    /// Whether `viewer` is in `owner`'s push audience (given these room facts).
    pub(super) fn pushes_to(
        &self,
        owner: &UserId,
        viewer: &UserId,
        facts: &impl SharedRooms,
    ) -> bool {
        owner == viewer
            || ((self.explicit.contains(viewer) || facts.share_room(owner, viewer))
                && self.policy.may_see(owner, viewer, facts))
    }
}

/// Room facts that can also answer "do these two share a room" (fast for the index).
pub(super) trait SharedRooms: RoomFacts {
    fn share_room(&self, a: &UserId, b: &UserId) -> bool;
}

impl SharedRooms for AudienceIndex {
    fn share_room(&self, a: &UserId, b: &UserId) -> bool {
        self.shares_room(a, b)
    }
}

/// The index as it was before `user` left `room` (the index has already applied the leave).
pub(super) struct BeforeLeave<'a> {
    pub(super) index: &'a AudienceIndex,
    pub(super) room: &'a RoomId,
    pub(super) user: &'a UserId,
}

impl RoomFacts for BeforeLeave<'_> {
    fn joined_rooms<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a RoomId> + 'a {
        let extra = (user == self.user).then_some(self.room);
        self.index.rooms_of(user).chain(extra)
    }

    fn is_joined(&self, user: &UserId, room: &RoomId) -> bool {
        (user == self.user && room == self.room) || self.index.is_joined(user, room)
    }
}

impl SharedRooms for BeforeLeave<'_> {
    fn share_room(&self, a: &UserId, b: &UserId) -> bool {
        a != b && self.joined_rooms(a).any(|room| self.is_joined(b, room))
    }
}

/// Users with a config, and the reverse index of exact allows.
#[derive(Default)]
pub(crate) struct SharingState {
    pub(super) owners: HashMap<OwnedUserId, OwnerSharing>,
    /// viewer → owners whose `allowed_users` names the viewer exactly.
    pub(super) allowers: HashMap<OwnedUserId, HashSet<OwnedUserId>>,
    /// owner → the users on the owner's `m.ignored_user_list`: they never see the owner.
    pub(super) ignored: HashMap<OwnedUserId, HashSet<OwnedUserId>>,
    /// owner → stream position of the ignore list in `ignored` (0: loaded at start-up), so a
    /// list stored earlier but applied later never replaces a newer one.
    pub(super) ignored_pos: HashMap<OwnedUserId, u64>,
    /// Entries in all `fanout` sets.
    pub(super) cached_viewers: usize,
    /// Bumped by every change that can change a push audience (memberships, configs).
    pub(super) version: u64,
}

impl SharingState {
    /// Whether `owner` ignores `viewer` (MSC4325: an ignored user never sees the owner).
    pub(super) fn ignores(&self, owner: &UserId, viewer: &UserId) -> bool {
        self.ignored
            .get(owner)
            .is_some_and(|set| set.contains(viewer))
    }

    pub(super) fn install(&mut self, owner: &UserId, new: Option<OwnerSharing>) {
        self.version += 1;
        if let Some(old) = self.owners.remove(owner) {
            self.cached_viewers -= old.fanout.as_ref().map_or(0, HashSet::len);
            for viewer in &old.explicit {
                if let Some(set) = self.allowers.get_mut(viewer) {
                    set.remove(owner);
                    if set.is_empty() {
                        self.allowers.remove(viewer);
                    }
                }
            }
        }
        if let Some(new) = new {
            self.cached_viewers += new.fanout.as_ref().map_or(0, HashSet::len);
            for viewer in &new.explicit {
                self.allowers
                    .entry(viewer.clone())
                    .or_default()
                    .insert(owner.to_owned());
            }
            self.owners.insert(owner.to_owned(), new);
        }
    }
}

pub(super) fn pushes_to_locked(
    sharing: &SharingState,
    rooms: &AudienceIndex,
    owner: &UserId,
    viewer: &UserId,
) -> bool {
    if owner == viewer {
        return true;
    }
    if sharing.ignores(owner, viewer) {
        return false;
    }
    match sharing.owners.get(owner) {
        None => rooms.shares_room(owner, viewer),
        Some(o) => match &o.fanout {
            Some(f) => f.contains(viewer),
            None => o.pushes_to(owner, viewer, rooms),
        },
    }
}
