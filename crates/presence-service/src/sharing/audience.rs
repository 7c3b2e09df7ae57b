//! Audience decisions: may a viewer see a user, whose `/sync` carries a user's presence,
//! who is woken for an update, and who across federation may receive it.
use std::collections::HashSet;

use presence_core::sharing::{
    AllowedRecipients, IncomingRecipients, MAX_INCOMING_RECIPIENTS, SharingEntry, SharingPolicy,
};
use ruma::{OwnedUserId, ServerName, UserId};
use serde_json::Value;

use super::policy::{MAX_CACHED_VIEWERS, pushes_to_locked};
use crate::PresenceService;

impl PresenceService {
    /// May `viewer` see `user`'s presence? The MSC4325 rule (docs/presence.md): the user's
    /// compiled config, or without one, whether they share a joined room. `GET .../status`.
    pub fn may_see(&self, viewer: &UserId, user: &UserId) -> bool {
        if viewer == user {
            return true;
        }
        if self.is_remote(user) {
            return self.remote_visible(viewer, user);
        }
        let sharing = self.sharing();
        if sharing.ignores(user, viewer) {
            self.stats.sharing_decision(false);
            return false;
        }
        let rooms = self.index();
        match sharing.owners.get(user) {
            None => rooms.shares_room(viewer, user),
            Some(o) => {
                let allowed = o.policy.may_see(user, viewer, &*rooms);
                self.stats.sharing_decision(allowed);
                allowed
            }
        }
    }

    /// [`pushes_to_locked`], counted as a sharing-policy decision when `owner` has a
    /// policy (a config or an ignore list) that could refuse `viewer`.
    fn pushes_to_counted(
        &self,
        sharing: &super::SharingState,
        rooms: &presence_core::audience::AudienceIndex,
        owner: &UserId,
        viewer: &UserId,
    ) -> bool {
        let allowed = pushes_to_locked(sharing, rooms, owner, viewer);
        if owner != viewer
            && (sharing.owners.contains_key(owner) || !allowed && sharing.ignores(owner, viewer))
        {
            self.stats.sharing_decision(allowed);
        }
        allowed
    }

    /// Whether `viewer`'s `/sync` carries `user`'s presence (the push audience).
    pub fn pushes_to(&self, viewer: &UserId, user: &UserId) -> bool {
        let sharing = self.sharing();
        let rooms = self.index();
        self.pushes_to_counted(&sharing, &rooms, user, viewer)
    }

    /// Of `candidates` (owners), those whose presence `viewer`'s `/sync` carries.
    pub(crate) fn pushed_owners<'a>(
        &self,
        viewer: &UserId,
        candidates: impl IntoIterator<Item = &'a UserId>,
    ) -> Vec<OwnedUserId> {
        let sharing = self.sharing();
        let rooms = self.index();
        candidates
            .into_iter()
            .filter(|owner| self.pushes_to_counted(&sharing, &rooms, owner, viewer))
            .map(ToOwned::to_owned)
            .collect()
    }

    /// Candidate owners for `viewer`'s initial sync: everyone sharing a room, and everyone
    /// whose config names the viewer exactly.
    pub(crate) fn initial_candidates(&self, viewer: &UserId) -> Vec<OwnedUserId> {
        let sharing = self.sharing();
        let rooms = self.index();
        let mut set: HashSet<&UserId> = rooms.audience(viewer).collect();
        if let Some(allowers) = sharing.allowers.get(viewer) {
            set.extend(allowers.iter().map(|u| &**u));
        }
        set.into_iter()
            .filter(|owner| self.pushes_to_counted(&sharing, &rooms, owner, viewer))
            .map(ToOwned::to_owned)
            .collect()
    }

    /// The users whose `/sync` must wake for a change of `user`'s presence: `user` and the
    /// local push audience. For a user with a config this is the cached set (built here on
    /// first use), so an update costs no policy evaluation.
    pub fn fanout(&self, user: &UserId) -> Vec<OwnedUserId> {
        self.with_fanout(user, |list| list.iter().map(|u| (*u).to_owned()).collect())
    }

    /// Calls `f` with [`Self::fanout`]'s list without copying it (under the read locks; `f`
    /// must not call back into the service).
    pub(crate) fn with_fanout<R>(&self, user: &UserId, f: impl FnOnce(&[&UserId]) -> R) -> R {
        let direct = {
            let sharing = self.sharing();
            match sharing.owners.get(user) {
                None => {
                    let rooms = self.index();
                    let mut list: Vec<&UserId> = vec![user];
                    let mut user_rooms = rooms.rooms_of(user);
                    match (user_rooms.next(), user_rooms.next()) {
                        (None, _) => {}
                        // One room: its members are already distinct, no set needed.
                        (Some(only), None) => {
                            list.extend(rooms.members(only).filter(|m| *m != user));
                        }
                        _ => list.extend(rooms.audience(user)),
                    }
                    return f(&list);
                }
                Some(o) => match &o.fanout {
                    Some(cached) => {
                        let mut list: Vec<&UserId> = Vec::with_capacity(cached.len() + 1);
                        list.push(user);
                        list.extend(cached.iter().map(|u| &**u));
                        return f(&list);
                    }
                    None => {
                        drop(sharing);
                        self.build_fanout(user)
                    }
                },
            }
        };
        match direct {
            Some(direct) => {
                let mut list: Vec<&UserId> = vec![user];
                list.extend(direct.iter().map(|u| &**u));
                f(&list)
            }
            // Built (or the config went away): read it like any other time.
            None => self.with_fanout(user, f),
        }
    }

    /// Builds `user`'s push-audience cache. Returns the audience itself only when it cannot be
    /// cached (over [`MAX_CACHED_VIEWERS`]); `None` means "read it again".
    pub(super) fn build_fanout(&self, user: &UserId) -> Option<Vec<OwnedUserId>> {
        let mut sharing = self.sharing.write().unwrap_or_else(|p| p.into_inner());
        let rooms = self.index();
        let cached = sharing.cached_viewers;
        let o = sharing.owners.get_mut(user)?;
        if o.fanout.is_some() {
            return None;
        }
        let mut set = HashSet::new();
        for v in rooms.audience(user).chain(o.explicit.iter().map(|u| &**u)) {
            if v != user && self.is_local(v) && o.pushes_to(user, v, &*rooms) {
                set.insert(v.to_owned());
            }
        }
        if cached + set.len() > MAX_CACHED_VIEWERS {
            return Some(set.into_iter().collect());
        }
        let len = set.len();
        o.fanout = Some(set);
        sharing.cached_viewers += len;
        None
    }

    /// What to send to `server` for an update of `user`'s presence (the future federation
    /// sender): `Legacy` without a config, `Nobody` when nobody there may see the user (do not
    /// send), else the `allowed_recipients` chunks. Uses the server's joined members in
    /// `user`'s rooms from the audience index.
    pub fn allowed_recipients_for(&self, user: &UserId, server: &ServerName) -> AllowedRecipients {
        let sharing = self.sharing();
        let rooms = self.index();
        let legacy = SharingPolicy::legacy();
        let policy = sharing.owners.get(user).map_or(&legacy, |o| &o.policy);
        policy.allowed_recipients(user, server, rooms.members_on_server(user, server))
    }

    /// Receiving side (no federation wiring yet): the local users an incoming presence update
    /// of remote `sender` may be delivered to, given the push entry's raw `allowed_recipients`
    /// field. Candidates are local users sharing a room with the sender plus local users the
    /// list names exactly (the sender vouched for them); the list filters them. Absent,
    /// `null` or `[]` is legacy: everyone sharing a room.
    pub fn incoming_recipients(&self, sender: &UserId, field: Option<&Value>) -> Vec<OwnedUserId> {
        let filter = IncomingRecipients::from_json(field);
        let rooms = self.index();
        let mut candidates: HashSet<&UserId> = rooms
            .audience(sender)
            .filter(|u| self.is_local(u))
            .collect();
        let named: Vec<OwnedUserId> = match (&filter, field) {
            (IncomingRecipients::Restricted(_), Some(Value::Array(entries))) => entries
                .iter()
                .take(MAX_INCOMING_RECIPIENTS)
                .filter_map(|e| e.as_str())
                .filter_map(|s| match SharingEntry::parse(s) {
                    Ok(SharingEntry::User(u)) => Some(u),
                    _ => None,
                })
                .filter(|u| self.is_local(u) && u != sender)
                .collect(),
            _ => Vec::new(),
        };
        candidates.extend(named.iter().map(|u| &**u));
        let mut out: Vec<OwnedUserId> = candidates
            .into_iter()
            .filter(|u| filter.allows(u))
            .map(ToOwned::to_owned)
            .collect();
        out.sort();
        out
    }
}
