//! Applying a change that can move a push audience — a sharing config, an ignore list, a
//! joined membership — and marking the viewers whose view flips (revocation: a final
//! `offline`; grant: the current presence at once).
use std::collections::HashSet;
use std::sync::MutexGuard;

use presence_core::audience::{AudienceDelta, AudienceIndex};
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::Value;
use storage::StorageError;

use super::config::parse_ignored_users;
use super::policy::{
    BeforeLeave, MAX_CACHED_VIEWERS, OwnerSharing, SharingState, pushes_to_locked,
};
use crate::PresenceService;

impl PresenceService {
    /// Serialises "store the config, read the effective one, apply it" across requests, so
    /// two racing PUTs cannot leave an older config applied. Hold it around all three.
    pub fn lock_sharing_updates(&self) -> MutexGuard<'_, ()> {
        self.sharing_updates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Start-up: install the stored configs (`(user, effective content)`) without computing
    /// visibility changes — nothing has been served yet.
    pub fn load_sharing_configs(&self, configs: impl IntoIterator<Item = (OwnedUserId, Value)>) {
        let mut sharing = self.sharing.write().unwrap_or_else(|p| p.into_inner());
        for (user, content) in configs {
            let compiled = OwnerSharing::from_content(&user, Some(&content));
            sharing.install(&user, compiled);
        }
    }

    /// The users `owner` ignores (`m.ignored_user_list` content; `None`: none stored). They
    /// stop seeing the owner's presence: a viewer whose `/sync` carried it gets one final
    /// `offline`; a viewer no longer ignored gets the current presence at once.
    ///
    /// `pos` is the stream position the list was stored at: a list older than the one in
    /// force is ignored, so two racing PUTs leave the newer list applied whatever order they
    /// get here in. Call under [`Self::lock_sharing_updates`], like a sharing config change.
    ///
    /// Fails if the markers cannot be stored (the list is applied in memory all the same).
    pub fn set_ignored_users(
        &self,
        owner: &UserId,
        content: Option<&Value>,
        pos: u64,
    ) -> Result<(), StorageError> {
        let new = parse_ignored_users(content);
        let changed: Vec<OwnedUserId> = {
            let mut sharing = self.sharing.write().unwrap_or_else(|p| p.into_inner());
            if sharing.ignored_pos.get(owner).is_some_and(|p| *p > pos) {
                return Ok(());
            }
            sharing.ignored_pos.insert(owner.to_owned(), pos);
            // A config change evaluated concurrently under the read locks must be redone:
            // who the owner pushes to may have just changed.
            sharing.version += 1;
            let rooms = self.index();
            let old = sharing.ignored.get(owner).cloned().unwrap_or_default();
            let touched: Vec<OwnedUserId> = old.symmetric_difference(&new).cloned().collect();
            let before: Vec<bool> = touched
                .iter()
                .map(|v| pushes_to_locked(&sharing, &rooms, owner, v))
                .collect();
            if new.is_empty() {
                sharing.ignored.remove(owner);
            } else {
                sharing.ignored.insert(owner.to_owned(), new);
            }
            touched
                .into_iter()
                .zip(before)
                .filter(|(v, was)| pushes_to_locked(&sharing, &rooms, owner, v) != *was)
                .map(|(v, _)| v)
                .collect()
        };
        let marked = self.mark_visibility_changed(changed.iter().map(|v| (&**v, owner)));
        // Remote servers' view (federation routing) follows the same change.
        self.notify_audience_changed(owner);
        marked
    }

    /// Start-up: install every user's stored ignore list without visibility changes.
    pub fn load_ignored_users(&self, lists: impl IntoIterator<Item = (OwnedUserId, Value)>) {
        let mut sharing = self.sharing.write().unwrap_or_else(|p| p.into_inner());
        for (owner, content) in lists {
            let set = parse_ignored_users(Some(&content));
            if !set.is_empty() {
                sharing.ignored.insert(owner, set);
            }
        }
    }

    /// The effective sharing config of `user` changed (`None`: none stored). Recompiles the
    /// policy, and gives every local viewer whose `/sync` view of `user` changes a marker:
    /// those who lose it get one final `offline`, those who gain it the current presence at
    /// once. Call after the account data is stored, under [`Self::lock_sharing_updates`].
    /// Fails if the markers cannot be stored (the config is applied in memory all the same).
    pub fn set_sharing_config(
        &self,
        user: &UserId,
        content: Option<&Value>,
    ) -> Result<(), StorageError> {
        let mut new = OwnerSharing::from_content(user, content);
        // Evaluating old and new view for a big audience can take long (docs/benchmarks.md),
        // so it is done under the read locks; the write lock only installs the result — unless
        // something that could change it (a membership, another config change) happened
        // meanwhile, in which case it is redone under the write lock.
        let (version, mut diff) = {
            let sharing = self.sharing();
            let rooms = self.index();
            (
                sharing.version,
                self.diff_config(&sharing, &rooms, user, &new),
            )
        };
        let changed = {
            let mut sharing = self.sharing.write().unwrap_or_else(|p| p.into_inner());
            if sharing.version != version {
                let rooms = self.index();
                diff = self.diff_config(&sharing, &rooms, user, &new);
            }
            let (changed, after_set) = diff;
            let freed = sharing
                .owners
                .get(user)
                .and_then(|o| o.fanout.as_ref())
                .map_or(0, HashSet::len);
            if let Some(n) = &mut new
                && sharing.cached_viewers - freed + after_set.len() <= MAX_CACHED_VIEWERS
            {
                n.fanout = Some(after_set);
            }
            sharing.install(user, new);
            changed
        };
        let marked = self.mark_visibility_changed(changed.iter().map(|v| (&**v, user)));
        // Remote servers' view (federation routing) follows the same change.
        self.notify_audience_changed(user);
        marked
    }

    /// For a config change of `user` to `new`: the local viewers whose push-audience
    /// membership flips, and the new local push audience.
    pub(super) fn diff_config(
        &self,
        sharing: &SharingState,
        rooms: &AudienceIndex,
        user: &UserId,
        new: &Option<OwnerSharing>,
    ) -> (Vec<OwnedUserId>, HashSet<OwnedUserId>) {
        let old = sharing.owners.get(user);
        let mut candidates: HashSet<&UserId> = rooms.audience(user).collect();
        candidates.extend(old.iter().flat_map(|o| o.explicit.iter().map(|u| &**u)));
        candidates.extend(new.iter().flat_map(|o| o.explicit.iter().map(|u| &**u)));
        candidates.retain(|v| self.is_local(v) && *v != user);
        let before = |v: &UserId| match old {
            None => rooms.shares_room(user, v),
            Some(o) => match &o.fanout {
                Some(f) => f.contains(v),
                None => o.pushes_to(user, v, rooms),
            },
        };
        let mut after_set = HashSet::new();
        let mut changed = Vec::new();
        for v in candidates {
            let after = match new {
                None => rooms.shares_room(user, v),
                Some(n) => n.pushes_to(user, v, rooms),
            };
            if after != before(v) {
                changed.push(v.to_owned());
            }
            if after {
                after_set.insert(v.to_owned());
            }
        }
        (changed, after_set)
    }

    /// A joined-membership change: keeps the audience index and the push-audience caches
    /// current, and gives viewers who no longer see a user because of a leave (their last
    /// shared room, or the last one the owner's config does not deny) a final `offline`.
    ///
    /// A join gives markers too, to each pair that newly shares a room and now sees the other:
    /// this runs after the join is committed, so a `/sync` racing it can return the join
    /// while the index does not have it yet (no presence sent) and move its token past the
    /// join; the marker, at a later position, makes its next `/sync` send the presence.
    pub fn membership_changed(&self, room: &RoomId, user: &UserId, joined: bool) {
        let changed: Vec<(OwnedUserId, OwnedUserId)> = {
            let mut sharing = self.sharing.write().unwrap_or_else(|p| p.into_inner());
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            if rooms.is_joined(user, room) == joined {
                return; // a repeated membership changes nothing
            }
            let delta = rooms.apply_membership(room, user, joined);
            sharing.version += 1;
            let mut changed = if sharing.owners.is_empty() && (joined || delta.lost.is_empty()) {
                Vec::new()
            } else {
                self.update_for_membership(&mut sharing, &rooms, room, user, joined, &delta)
            };
            if joined {
                let user_is_local = self.is_local(user);
                for other in &delta.gained {
                    if self.is_local(other) && pushes_to_locked(&sharing, &rooms, user, other) {
                        changed.push((other.clone(), user.to_owned()));
                    }
                    if user_is_local && pushes_to_locked(&sharing, &rooms, other, user) {
                        changed.push((user.to_owned(), other.clone()));
                    }
                }
            }
            changed
        };
        if let Err(e) = self.mark_visibility_changed(changed.iter().map(|(v, o)| (&**v, &**o))) {
            // The membership is committed already; nothing to refuse.
            tracing::error!("writing presence visibility markers failed: {e}");
        }
    }

    /// Returns the `(viewer, owner)` pairs that lost visibility.
    pub(super) fn update_for_membership(
        &self,
        sharing: &mut SharingState,
        rooms: &AudienceIndex,
        room: &RoomId,
        user: &UserId,
        joined: bool,
        delta: &AudienceDelta,
    ) -> Vec<(OwnedUserId, OwnedUserId)> {
        let mut lost = Vec::new();
        let before = BeforeLeave {
            index: rooms,
            room,
            user,
        };
        let user_is_local = self.is_local(user);
        // The room's other members with a config (probing the smaller side).
        let configured: Vec<OwnedUserId> = if sharing.owners.len() < 64 {
            sharing
                .owners
                .keys()
                .filter(|o| *o != user && rooms.is_joined(o, room))
                .cloned()
                .collect()
        } else {
            rooms
                .members(room)
                .filter(|m| *m != user && sharing.owners.contains_key(*m))
                .map(ToOwned::to_owned)
                .collect()
        };
        // Others as owners, `user` as viewer.
        let mut cache_delta: isize = 0;
        if user_is_local {
            for owner in &configured {
                let Some(o) = sharing.owners.get_mut(owner) else {
                    continue;
                };
                let now = o.pushes_to(owner, user, rooms);
                let was = match &o.fanout {
                    Some(f) => f.contains(user),
                    None if joined => now,
                    None => o.pushes_to(owner, user, &before),
                };
                if let Some(f) = &mut o.fanout {
                    if now && f.insert(user.to_owned()) {
                        cache_delta += 1;
                    } else if !now && f.remove(user) {
                        cache_delta -= 1;
                    }
                }
                if was && !now {
                    lost.push((user.to_owned(), owner.clone()));
                }
            }
            if !joined {
                // Legacy owners: lost exactly when no room is shared any more.
                for other in &delta.lost {
                    if !sharing.owners.contains_key(other) {
                        lost.push((user.to_owned(), other.clone()));
                    }
                }
            }
        }
        // `user` as owner.
        match sharing.owners.get_mut(user) {
            None => {
                for other in &delta.lost {
                    if self.is_local(other) {
                        lost.push((other.clone(), user.to_owned()));
                    }
                }
            }
            Some(o) if joined => {
                // New room, new audience: rebuilt on next use.
                if let Some(f) = o.fanout.take() {
                    cache_delta -= f.len() as isize;
                }
            }
            Some(o) => {
                for member in rooms.members(room).filter(|m| self.is_local(m)) {
                    let was = match &o.fanout {
                        Some(f) => f.contains(member),
                        None => o.pushes_to(user, member, &before),
                    };
                    if was && !o.pushes_to(user, member, rooms) {
                        if let Some(f) = &mut o.fanout {
                            f.remove(member);
                            cache_delta -= 1;
                        }
                        lost.push((member.to_owned(), user.to_owned()));
                    }
                }
            }
        }
        sharing.cached_viewers = sharing.cached_viewers.saturating_add_signed(cache_delta);
        lost
    }
}
