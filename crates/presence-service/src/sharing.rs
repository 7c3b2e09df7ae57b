//! MSC4325 presence sharing inside the service: the compiled policy of every user who has a
//! `m.presence_sharing_config`, the *push audience* derived from it, and the per-viewer
//! visibility markers that tell a viewer's next `/sync` that their view of a user changed.
//!
//! ## Two questions
//!
//! * **May V see U?** — [`PresenceService::may_see`]: exactly the rule of
//!   `SharingPolicy::may_see` (docs/presence.md), including allowed globs that match V without
//!   a shared room. `GET /presence/{U}/status` answers with it.
//! * **Does V's `/sync` carry U's presence?** — the *push audience*: V may see U **and** V shares
//!   a joined room with U or U's config names V exactly in `allowed_users`. Users reached only
//!   through a glob are not enumerable (that would mean matching every account on every
//!   update), so they are neither woken nor sent U's presence in `/sync` — initial or
//!   incremental, consistently; they still get it from `GET .../status`.
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
//!
//! ## Visibility markers
//!
//! When a config change or a leave changes whether V's `/sync` carries U, the service writes a
//! marker `(V, position, U)` (`Cf::Misc`, one per (V, U) pair: a newer one replaces the older)
//! with `write_with_position` and wakes exactly V. `events_since` reads V's markers in
//! `(since, now]` and, for each marked U, sends what V should see *now*: U's current presence
//! if V is in U's push audience, otherwise one final `offline` with no status message and no
//! `last_active_ago` — so V is not left showing a stale "online", and nobody else sees
//! anything. Joins need no marker: `/sync` already sends the presence of users who newly
//! share a room (from the join events).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{MutexGuard, RwLockReadGuard};

use presence_core::audience::{AudienceDelta, AudienceIndex};
use presence_core::sharing::{
    AllowedRecipients, EntryError, IncomingRecipients, MAX_INCOMING_RECIPIENTS, RoomFacts,
    SharingConfig, SharingConfigError, SharingEntry, SharingList, SharingPolicy,
};
use ruma::{OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};
use serde::Serialize;
use serde_json::{Value, json};
use storage::{Cf, Key, KeyReader, StorageError};

use crate::PresenceService;

#[cfg(test)]
mod tests;

pub use presence_core::sharing::{EVENT_TYPE, UNSTABLE_EVENT_TYPE};

/// The account-data types of the sharing config, in precedence order: when both are stored,
/// the stable one wins.
pub const SHARING_CONFIG_TYPES: [&str; 2] = [EVENT_TYPE, UNSTABLE_EVENT_TYPE];

/// Most viewers kept in push-audience caches, over all users with a config (about 100 bytes
/// each). Past it, new caches are not built and those users are evaluated directly.
pub const MAX_CACHED_VIEWERS: usize = 4_000_000;

/// Default and maximum number of local users the audience preview lists.
pub const PREVIEW_DEFAULT_LIMIT: usize = 100;
/// See [`PREVIEW_DEFAULT_LIMIT`].
pub const PREVIEW_MAX_LIMIT: usize = 1000;

/// Key prefix of visibility markers: `presence_vis 0xFF viewer 0xFF pos owner 0xFF`.
const MARKER: &str = "presence_vis";
/// Key prefix of the marker index: `presence_vis_pair 0xFF viewer 0xFF owner 0xFF` → pos.
const MARKER_PAIR: &str = "presence_vis_pair";

/// Whether `event_type` is one of the sharing-config account-data types.
pub fn is_sharing_config_type(event_type: &str) -> bool {
    SHARING_CONFIG_TYPES.contains(&event_type)
}

/// Validates sharing-config content for a PUT or a preview (the error names the list, index
/// and entry). On top of `SharingConfig::from_json`, room IDs must be well-formed: ruma accepts
/// any string starting with `!` as a room ID (room version 12 made them opaque), which would
/// let `"!"` or `"!room:"` through. Accepted: `!opaque:server` with a non-empty opaque part
/// and a valid server name, or `!` followed by unpadded base64 (the v12 form, also MSC4325's
/// `!co1dcoffee`).
pub fn validate_sharing_config(content: &Value) -> Result<SharingConfig, SharingConfigError> {
    let config = SharingConfig::from_json(content)?;
    for (list, entries) in [
        (SharingList::AllowedUsers, &config.allowed_users),
        (SharingList::DeniedUsers, &config.denied_users),
    ] {
        for (index, entry) in entries.iter().enumerate() {
            if let SharingEntry::Room(room) = entry
                && let Some(problem) = room_id_problem(room.as_str())
            {
                let mut shown = room.as_str().to_owned();
                if shown.len() > 64 {
                    let mut end = 64;
                    while !shown.is_char_boundary(end) {
                        end -= 1;
                    }
                    shown.truncate(end);
                    shown.push('…');
                }
                return Err(SharingConfigError::InvalidEntry {
                    list,
                    index,
                    entry: shown,
                    reason: EntryError::InvalidRoomId(problem.to_owned()),
                });
            }
        }
    }
    Ok(config)
}

/// What is wrong with a room ID ruma accepted, if anything.
fn room_id_problem(id: &str) -> Option<&'static str> {
    let body = id.strip_prefix('!').unwrap_or(id);
    match body.split_once(':') {
        Some((opaque, server)) => {
            if opaque.is_empty() {
                Some("the part before the server name is empty")
            } else if opaque.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Some("it contains whitespace")
            } else if ServerName::parse(server).is_err() {
                Some("the server name is invalid")
            } else {
                None
            }
        }
        None if body.is_empty() => Some("it is empty after `!`"),
        None if !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/')) =>
        {
            Some("a room ID without a server name must be unpadded base64")
        }
        None => None,
    }
}

/// The compiled config of one user who has one.
pub(crate) struct OwnerSharing {
    policy: SharingPolicy,
    /// `allowed_users` IDs not also denied exactly: pushed to even without a shared room.
    explicit: HashSet<OwnedUserId>,
    /// The `allowed_users` globs, as written (for the audience preview).
    allowed_globs: Vec<String>,
    /// Whether the stored content failed to parse (the policy is then "only self").
    invalid: bool,
    /// The local members of the push audience, when built (see the module docs).
    fanout: Option<HashSet<OwnedUserId>>,
}

impl OwnerSharing {
    /// `None` when there is no config (legacy). Content that does not parse fails closed and
    /// is logged.
    fn from_content(owner: &UserId, content: Option<&Value>) -> Option<OwnerSharing> {
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

    fn compile(config: &SharingConfig) -> OwnerSharing {
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
    fn pushes_to(&self, owner: &UserId, viewer: &UserId, facts: &impl SharedRooms) -> bool {
        owner == viewer
            || ((self.explicit.contains(viewer) || facts.share_room(owner, viewer))
                && self.policy.may_see(owner, viewer, facts))
    }
}

/// Room facts that can also answer "do these two share a room" (fast for the index).
trait SharedRooms: RoomFacts {
    fn share_room(&self, a: &UserId, b: &UserId) -> bool;
}

impl SharedRooms for AudienceIndex {
    fn share_room(&self, a: &UserId, b: &UserId) -> bool {
        self.shares_room(a, b)
    }
}

/// The index as it was before `user` left `room` (the index has already applied the leave).
struct BeforeLeave<'a> {
    index: &'a AudienceIndex,
    room: &'a RoomId,
    user: &'a UserId,
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
    owners: HashMap<OwnedUserId, OwnerSharing>,
    /// viewer → owners whose `allowed_users` names the viewer exactly.
    allowers: HashMap<OwnedUserId, HashSet<OwnedUserId>>,
    /// owner → the users on the owner's `m.ignored_user_list`: they never see the owner.
    ignored: HashMap<OwnedUserId, HashSet<OwnedUserId>>,
    /// owner → stream position of the ignore list in `ignored` (0: loaded at start-up), so a
    /// list stored earlier but applied later never replaces a newer one.
    ignored_pos: HashMap<OwnedUserId, u64>,
    /// Entries in all `fanout` sets.
    cached_viewers: usize,
    /// Bumped by every change that can change a push audience (memberships, configs).
    version: u64,
}

impl SharingState {
    /// Whether `owner` ignores `viewer` (MSC4325: an ignored user never sees the owner).
    fn ignores(&self, owner: &UserId, viewer: &UserId) -> bool {
        self.ignored
            .get(owner)
            .is_some_and(|set| set.contains(viewer))
    }

    fn install(&mut self, owner: &UserId, new: Option<OwnerSharing>) {
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

/// Who can currently see a user's presence (the audience preview).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudiencePreview {
    /// `"default"` (no config: everyone sharing a room), `"config"`, or `"invalid_config"`
    /// (a stored config that does not parse: nobody).
    pub policy: &'static str,
    /// Local users whose `/sync` carries the presence, sorted, at most `limit`.
    pub local_users: Vec<OwnedUserId>,
    /// How many local users that is in total.
    pub local_user_count: usize,
    /// Whether `local_users` was cut at the limit.
    pub limited: bool,
    /// Remote servers and how many of their users (known from shared rooms or named exactly)
    /// may see the presence. (Nothing is sent over federation yet.)
    pub remote_servers: BTreeMap<OwnedServerName, usize>,
    /// Allowed globs: users they match (and no more specific deny excludes) may also fetch the
    /// presence with `GET /presence/{userId}/status` without sharing a room; they are not
    /// counted above and their `/sync` does not carry it.
    pub allowed_globs: Vec<String>,
    /// Only for a preview of a candidate config: local users who would start / stop seeing
    /// the presence if it were applied (at most `limit` each) and how many in total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<PreviewChanges>,
}

/// What applying a candidate config would change for local users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewChanges {
    pub gained: Vec<OwnedUserId>,
    pub gained_count: usize,
    pub lost: Vec<OwnedUserId>,
    pub lost_count: usize,
}

impl PresenceService {
    /// The server's name: users on it are local. Without it every user counts as local.
    pub fn set_server_name(&self, name: OwnedServerName) {
        let _ = self.server_name.set(name);
    }

    fn is_local(&self, user: &UserId) -> bool {
        self.server_name
            .get()
            .is_none_or(|name| user.server_name() == name)
    }

    /// `user`'s compiled sharing policy (`None`: no config, legacy).
    pub(crate) fn sharing_policy_of(&self, user: &UserId) -> Option<SharingPolicy> {
        self.sharing().owners.get(user).map(|o| o.policy.clone())
    }

    /// Whether `viewer`'s ignore list names `user` (then `viewer` sees none of `user`'s presence).
    pub(crate) fn viewer_ignores(&self, viewer: &UserId, user: &UserId) -> bool {
        self.sharing().ignores(viewer, user)
    }

    fn sharing(&self) -> RwLockReadGuard<'_, SharingState> {
        self.sharing.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self) -> RwLockReadGuard<'_, AudienceIndex> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner())
    }

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
        self.notify_audience_changed(user);
        marked
    }

    /// For a config change of `user` to `new`: the local viewers whose push-audience
    /// membership flips, and the new local push audience.
    fn diff_config(
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

    /// Writes a marker for each `(viewer, owner)` whose `/sync` view changed, then wakes those
    /// viewers. Owners who never published a change are skipped: nobody was ever shown
    /// anything but "offline" for them.
    fn mark_visibility_changed<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a UserId, &'a UserId)>,
    ) -> Result<(), StorageError> {
        let pairs: Vec<(&UserId, &UserId)> = {
            let published = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
            pairs
                .into_iter()
                .filter(|(viewer, owner)| viewer != owner && published.get(owner) > 0)
                .collect()
        };
        if pairs.is_empty() {
            return Ok(());
        }
        let written = self
            .db
            .write_with_position::<_, StorageError>(|pos, batch| {
                for (viewer, owner) in &pairs {
                    let pair_key = Key::new()
                        .str(MARKER_PAIR)
                        .str(viewer.as_str())
                        .str(owner.as_str());
                    if let Some(old) = self.db.get(Cf::Misc, &pair_key)?
                        && let Some(old) = storage::decode_u64(&old)
                    {
                        batch.delete(Cf::Misc, marker_key(viewer, old, owner));
                    }
                    batch.put(Cf::Misc, marker_key(viewer, pos, owner), Vec::new());
                    batch.put(Cf::Misc, pair_key, pos.to_be_bytes().to_vec());
                }
                Ok(())
            });
        let (pos, ()) = written?;
        let mut viewers: Vec<&UserId> = pairs.iter().map(|(v, _)| *v).collect();
        viewers.sort_unstable();
        viewers.dedup();
        self.waker.wake_users(&viewers, pos);
        Ok(())
    }

    /// Owners with a visibility marker for `viewer` in `(since, up_to]`.
    pub(crate) fn marked_owners(
        &self,
        viewer: &UserId,
        since: u64,
        up_to: u64,
    ) -> Result<Vec<OwnedUserId>, StorageError> {
        let prefix = Key::new().str(MARKER).str(viewer.as_str());
        let start = prefix.clone().u64(since + 1);
        let end = prefix.clone().u64(up_to.saturating_add(1));
        let skip = prefix.as_bytes().len();
        let mut out = Vec::new();
        for (k, _) in self
            .db
            .scan_range(Cf::Misc, start, end, false, usize::MAX)?
        {
            let mut r = KeyReader::new(&k[skip..]);
            let _pos = r.u64();
            if let Some(owner) = r.str().and_then(|s| OwnedUserId::try_from(s).ok()) {
                out.push(owner);
            }
        }
        Ok(out)
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
    fn update_for_membership(
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
            return false;
        }
        let rooms = self.index();
        match sharing.owners.get(user) {
            None => rooms.shares_room(viewer, user),
            Some(o) => o.policy.may_see(user, viewer, &*rooms),
        }
    }

    /// Whether `viewer`'s `/sync` carries `user`'s presence (the push audience).
    pub fn pushes_to(&self, viewer: &UserId, user: &UserId) -> bool {
        let sharing = self.sharing();
        let rooms = self.index();
        pushes_to_locked(&sharing, &rooms, user, viewer)
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
            .filter(|owner| pushes_to_locked(&sharing, &rooms, owner, viewer))
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
            .filter(|owner| pushes_to_locked(&sharing, &rooms, owner, viewer))
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
    fn build_fanout(&self, user: &UserId) -> Option<Vec<OwnedUserId>> {
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

    /// Who can currently see `user`'s presence — or, with `candidate` (validated config
    /// content), who could if it were applied (nothing is stored or changed).
    pub fn audience_preview(
        &self,
        user: &UserId,
        candidate: Option<&SharingConfig>,
        limit: usize,
    ) -> AudiencePreview {
        let limit = limit.min(PREVIEW_MAX_LIMIT);
        let candidate = candidate.map(OwnerSharing::compile);
        let sharing = self.sharing();
        let rooms = self.index();
        let current = sharing.owners.get(user);
        let evaluated = candidate.as_ref().or(current);
        let mut everyone: HashSet<&UserId> = rooms.audience(user).collect();
        if let Some(o) = evaluated {
            everyone.extend(o.explicit.iter().map(|u| &**u));
        }
        let mut local = Vec::new();
        let mut remote_servers: BTreeMap<OwnedServerName, usize> = BTreeMap::new();
        for v in &everyone {
            if *v == user {
                continue;
            }
            if self.is_local(v) {
                let sees = match evaluated {
                    None => true,
                    Some(o) => o.pushes_to(user, v, &*rooms),
                };
                if sees {
                    local.push((*v).to_owned());
                }
            } else {
                let sees = match evaluated {
                    None => true,
                    Some(o) => o.policy.may_see(user, v, &*rooms),
                };
                if sees {
                    *remote_servers
                        .entry(v.server_name().to_owned())
                        .or_default() += 1;
                }
            }
        }
        local.sort();
        let changes = candidate.as_ref().map(|_| {
            let now: HashSet<&UserId> = everyone
                .iter()
                .copied()
                .chain(current.iter().flat_map(|o| o.explicit.iter().map(|u| &**u)))
                .filter(|v| *v != user && self.is_local(v))
                .filter(|v| match current {
                    None => rooms.shares_room(user, v),
                    Some(o) => o.pushes_to(user, v, &*rooms),
                })
                .collect();
            let then: HashSet<&UserId> = local.iter().map(|u| &**u).collect();
            let mut gained: Vec<OwnedUserId> =
                then.difference(&now).map(|u| (*u).to_owned()).collect();
            let mut lost: Vec<OwnedUserId> =
                now.difference(&then).map(|u| (*u).to_owned()).collect();
            gained.sort();
            lost.sort();
            let (gained_count, lost_count) = (gained.len(), lost.len());
            gained.truncate(limit);
            lost.truncate(limit);
            PreviewChanges {
                gained,
                gained_count,
                lost,
                lost_count,
            }
        });
        let local_user_count = local.len();
        local.truncate(limit);
        AudiencePreview {
            policy: match evaluated {
                None => "default",
                Some(o) if o.invalid => "invalid_config",
                Some(_) => "config",
            },
            limited: local_user_count > local.len(),
            local_users: local,
            local_user_count,
            remote_servers,
            allowed_globs: evaluated
                .map(|o| o.allowed_globs.clone())
                .unwrap_or_default(),
            changes,
        }
    }
}

fn pushes_to_locked(
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

/// The account-data type of a user's ignore list.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The user IDs in `m.ignored_user_list` content (`{"ignored_users": {"@u:hs": {}}}`);
/// anything malformed is skipped.
fn parse_ignored_users(content: Option<&Value>) -> HashSet<OwnedUserId> {
    content
        .and_then(|c| c.get("ignored_users"))
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| OwnedUserId::try_from(k.as_str()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn marker_key(viewer: &UserId, pos: u64, owner: &UserId) -> Key {
    Key::new()
        .str(MARKER)
        .str(viewer.as_str())
        .u64(pos)
        .str(owner.as_str())
}

/// The final presence a viewer who lost sight of `owner` is sent: offline, nothing else.
pub(crate) fn final_offline(owner: &UserId) -> Value {
    json!({ "type": "m.presence", "sender": owner, "content": { "presence": "offline" } })
}
