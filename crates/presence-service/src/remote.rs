//! Presence of remote users, received in `m.presence` EDUs over federation.
//!
//! [`PresenceService::receive_remote_presence`] is what the inbound `/send` handler calls with
//! the authenticated origin and the EDU content. Rules:
//!
//! * every `user_id` must belong to the origin (others are dropped and logged), the state must
//!   be a federation state, the status message at most `MAX_STATUS_MSG_BYTES`, and at most
//!   [`MAX_PUSH_ENTRIES`] entries are read per EDU;
//! * an entry's MSC4325 `allowed_recipients` decides which local users get it
//!   ([`PresenceService::incoming_recipients`]: globs matched against local user IDs, entries
//!   for other servers ignored); absent means everyone sharing a room with the remote user;
//! * per remote user we keep a few *views*: the latest legacy one (seen by everyone sharing a
//!   room) and restricted ones, each with its recipient set. A local viewer sees the newest
//!   view that includes them. A newer restricted view removes its recipients from older ones,
//!   so a final `offline` addressed to some users does not touch what the others see;
//! * a viewer who ignores the remote user sees nothing of them;
//! * `last_active_ago` is aged locally, and a remote user not refreshed for
//!   [`REMOTE_PRESENCE_TIMEOUT_MS`] is shown offline (their server stopped talking about them).
//!
//! Remote presence is served from memory and persisted per remote user (`Cf::Misc`,
//! `"remote_presence" 0xFF user_id 0xFF` → the user's views, with absolute timestamps) in the
//! same write that allocates the EDU's stream position: after a restart remote users keep
//! their last state until it expires, with `last_active_ago` still aged from the stored time.

use std::collections::{HashMap, HashSet};

use presence_core::routing::{PresenceRouting, route_presence_ignoring};
use presence_core::sharing::SharingPolicy;
use presence_core::{FederationPresence, MAX_STATUS_MSG_BYTES, PresenceChange, PresenceState};
use std::sync::Arc;

use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storage::{Batch, Cf, Db, Key, KeyReader, StorageError};

use crate::PresenceService;

/// At most this many `push` entries are read from one EDU.
pub const MAX_PUSH_ENTRIES: usize = 1000;
/// A remote user not refreshed for this long is shown offline (Synapse: 30 minutes).
pub const REMOTE_PRESENCE_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// At most this many views are kept per remote user (older ones are dropped).
const MAX_VIEWS: usize = 8;
/// At most this many remote users are tracked; beyond it the stalest are forgotten.
pub const MAX_REMOTE_USERS: usize = 200_000;

/// What a remote server said about one of its users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RemoteState {
    presence: PresenceState,
    status_msg: Option<String>,
    last_active_ts: u64,
    currently_active: bool,
    received_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct View {
    state: RemoteState,
    /// `None`: legacy, every local user sharing a room with the remote user.
    recipients: Option<HashSet<OwnedUserId>>,
}

/// The remote presence store (inside [`PresenceService`]).
#[derive(Debug, Default)]
pub(crate) struct RemoteStore {
    users: HashMap<OwnedUserId, Vec<View>>,
    /// When [`PresenceService::expire_remote`] last swept (ms).
    last_sweep: u64,
}

/// How often stale remote users are swept (their viewers' `/sync` then shows them offline).
const SWEEP_INTERVAL_MS: u64 = 60_000;

/// The outcome of one EDU, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteReceipt {
    /// Entries accepted.
    pub accepted: usize,
    /// Entries dropped (wrong server, malformed, over the limit).
    pub dropped: usize,
    /// Local users woken.
    pub delivered_to: usize,
}

/// Key prefix of persisted remote presence in `Cf::Misc`.
const REMOTE_PREFIX: &str = "remote_presence";

fn remote_key(user: &UserId) -> Key {
    Key::new().str(REMOTE_PREFIX).str(user.as_str())
}

impl RemoteStore {
    /// Start-up: the persisted remote users whose presence has not expired (expired ones are
    /// deleted).
    pub(crate) fn load(db: &Db, now: u64) -> Result<Self, StorageError> {
        let mut store = RemoteStore::default();
        let mut stale = Batch::new();
        for (k, v) in db.scan_prefix(Cf::Misc, Key::new().str(REMOTE_PREFIX))? {
            let mut r = KeyReader::new(&k);
            let user = r
                .str()
                .and(r.str())
                .and_then(|u| OwnedUserId::try_from(u).ok());
            let views: Option<Vec<View>> = serde_json::from_slice(&v).ok();
            match (user, views) {
                (Some(user), Some(views))
                    if !views.is_empty()
                        && store.users.len() < MAX_REMOTE_USERS
                        && views.iter().any(|v| {
                            now.saturating_sub(v.state.received_at) <= REMOTE_PRESENCE_TIMEOUT_MS
                        }) =>
                {
                    store.users.insert(user, views);
                }
                _ => stale.delete(Cf::Misc, &k),
            }
        }
        if !stale.is_empty() {
            db.write(stale)?;
        }
        Ok(store)
    }

    /// The write that makes `user`'s in-memory views durable (`None`: delete them).
    fn persisted(&self, user: &UserId) -> (Key, Option<Vec<u8>>) {
        let value = self
            .users
            .get(user)
            .and_then(|views| serde_json::to_vec(views).ok());
        (remote_key(user), value)
    }

    fn view_for(&self, user: &UserId, viewer: &UserId, shares_room: bool) -> Option<&RemoteState> {
        self.users.get(user)?.iter().rev().find_map(|v| {
            let sees = match &v.recipients {
                None => shares_room,
                Some(r) => r.contains(viewer),
            };
            sees.then_some(&v.state)
        })
    }

    /// Returns the user evicted to make room, if any.
    fn insert(&mut self, user: OwnedUserId, view: View) -> Option<OwnedUserId> {
        let mut evicted = None;
        if !self.users.contains_key(&user) && self.users.len() >= MAX_REMOTE_USERS {
            evicted = self.evict_stalest();
        }
        let views = self.users.entry(user).or_default();
        match &view.recipients {
            None => views.clear(),
            Some(new) => {
                for old in views.iter_mut() {
                    if let Some(r) = &mut old.recipients {
                        r.retain(|u| !new.contains(u));
                    }
                }
                views.retain(|v| v.recipients.as_ref().is_none_or(|r| !r.is_empty()));
            }
        }
        views.push(view);
        if views.len() > MAX_VIEWS {
            let excess = views.len() - MAX_VIEWS;
            views.drain(..excess);
        }
        evicted
    }

    /// Removes users not refreshed for [`REMOTE_PRESENCE_TIMEOUT_MS`]; returns them with the
    /// local users their views named (`None`: legacy, room sharers).
    fn take_expired(&mut self, now: u64) -> Vec<(OwnedUserId, Option<Vec<OwnedUserId>>)> {
        let expired: Vec<OwnedUserId> = self
            .users
            .iter()
            .filter(|(_, views)| {
                views
                    .iter()
                    .all(|v| now.saturating_sub(v.state.received_at) > REMOTE_PRESENCE_TIMEOUT_MS)
            })
            .map(|(u, _)| u.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|u| {
                let views = self.users.remove(&u)?;
                let shown = views
                    .iter()
                    .any(|v| v.state.presence != PresenceState::Offline);
                if !shown {
                    return None; // already offline: nothing visible changes
                }
                let legacy = views.iter().any(|v| v.recipients.is_none());
                let named = (!legacy).then(|| {
                    views
                        .into_iter()
                        .flat_map(|v| v.recipients.unwrap_or_default())
                        .collect()
                });
                Some((u, named))
            })
            .collect()
    }

    fn evict_stalest(&mut self) -> Option<OwnedUserId> {
        let stalest = self
            .users
            .iter()
            .min_by_key(|(_, v)| v.iter().map(|v| v.state.received_at).max().unwrap_or(0))
            .map(|(u, _)| u.clone())?;
        self.users.remove(&stalest);
        Some(stalest)
    }
}

fn parse_entry(origin: &ServerName, entry: &Value, now: u64) -> Option<(OwnedUserId, RemoteState)> {
    let user = UserId::parse(entry.get("user_id")?.as_str()?).ok()?;
    if user.server_name() != origin {
        tracing::warn!(%origin, %user, "presence for a user of another server dropped");
        return None;
    }
    let presence: PresenceState = entry.get("presence")?.as_str()?.parse().ok()?;
    if presence == PresenceState::Disabled {
        return None;
    }
    let status_msg = match entry.get("status_msg") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.len() <= MAX_STATUS_MSG_BYTES => Some(s.clone()),
        Some(_) => return None,
    };
    let ago = entry
        .get("last_active_ago")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some((
        user,
        RemoteState {
            presence,
            status_msg,
            last_active_ts: now.saturating_sub(ago),
            currently_active: entry
                .get("currently_active")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            received_at: now,
        },
    ))
}

impl RemoteState {
    fn content(&self, now: u64) -> Value {
        if now.saturating_sub(self.received_at) > REMOTE_PRESENCE_TIMEOUT_MS {
            return json!({ "presence": "offline" });
        }
        let mut c = json!({
            "presence": self.presence,
            "last_active_ago": now.saturating_sub(self.last_active_ts),
        });
        if let Some(m) = &self.status_msg {
            c["status_msg"] = json!(m);
        }
        if matches!(self.presence, PresenceState::Online | PresenceState::Busy) {
            c["currently_active"] = json!(self.currently_active);
        }
        c
    }
}

/// Told about presence changes of local users, after they are stored (the federation sender
/// implements it). Called outside the service's locks; it may call back into the service.
pub trait PresenceObserver: Send + Sync + 'static {
    /// `user` (local) has a new visible presence.
    fn presence_changed(&self, user: &UserId);
    /// Who may see `user` (local) may have changed without a presence change (a membership
    /// change in one of their rooms): revocations and new viewers are the observer's part.
    fn audience_changed(&self, _user: &UserId) {}
}

impl PresenceService {
    /// Installs the observer (once; later calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn PresenceObserver>) {
        let _ = self.observer.set(observer);
    }

    pub(crate) fn notify_observer(&self, changes: &[PresenceChange]) {
        if let Some(o) = self.observer.get() {
            for c in changes {
                if !self.is_remote(&c.user_id) {
                    o.presence_changed(&c.user_id);
                }
            }
        }
    }

    /// Tells the observer whose audience a committed membership change of `user` in `room`
    /// may have changed: `user` when local; when remote, every local member of the room (a
    /// new or departing remote viewer). Call after [`Self::membership_changed`]. Costs one
    /// routing computation per local member of the room, so only for remote joins/leaves.
    pub fn membership_observed(&self, room: &ruma::RoomId, user: &UserId) {
        let Some(o) = self.observer.get() else {
            return;
        };
        if !self.is_remote(user) {
            o.audience_changed(user);
            return;
        }
        let locals: Vec<OwnedUserId> = {
            let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
            rooms
                .members(room)
                .filter(|u| !self.is_remote(u))
                .map(ToOwned::to_owned)
                .collect()
        };
        for local in locals {
            o.audience_changed(&local);
        }
    }

    /// Tells the observer that local `user`'s sharing config or ignore list changed (who may
    /// see them over federation may have changed).
    pub(crate) fn notify_audience_changed(&self, user: &UserId) {
        if let Some(o) = self.observer.get()
            && !self.is_remote(user)
        {
            o.audience_changed(user);
        }
    }

    /// `user`'s presence as a federation `push` entry body, now.
    pub fn federation_presence(&self, user: &UserId) -> FederationPresence {
        let now = crate::now_ms();
        self.current(user).federation(now)
    }

    /// Where `user`'s presence goes over federation ([`presence_core::routing`]), from their
    /// sharing policy and the audience index; `honours` says which peers apply
    /// `allowed_recipients`. Empty before the server name is set.
    pub fn federation_routing(
        &self,
        user: &UserId,
        honours: impl Fn(&ServerName) -> bool,
    ) -> PresenceRouting {
        let Some(local) = self.server_name.get() else {
            return PresenceRouting::default();
        };
        let policy = self
            .sharing_policy_of(user)
            .unwrap_or_else(SharingPolicy::legacy);
        // The owner's ignore list: ignored users never see the owner, over federation too.
        let ignored = self.ignored_by(user);
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        route_presence_ignoring(
            user,
            local,
            &policy,
            &rooms,
            |u| ignored.contains(u),
            honours,
        )
    }

    /// The remote servers with a joined member in `room` (where the room's PDUs and EDUs go).
    pub fn remote_servers_in_room(&self, room: &ruma::RoomId) -> Vec<ruma::OwnedServerName> {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let mut servers: Vec<ruma::OwnedServerName> = rooms
            .members(room)
            .filter(|u| self.is_remote(u))
            .map(|u| u.server_name().to_owned())
            .collect();
        servers.sort();
        servers.dedup();
        servers
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, RemoteStore> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` is on another server (always false before the server name is set).
    pub fn is_remote(&self, user: &UserId) -> bool {
        self.server_name
            .get()
            .is_some_and(|name| user.server_name() != name)
    }

    /// Handles the content of an `m.presence` EDU from `origin` (already authenticated).
    pub fn receive_remote_presence(&self, origin: &ServerName, content: &Value) -> RemoteReceipt {
        let mut receipt = RemoteReceipt::default();
        let Some(push) = content.get("push").and_then(Value::as_array) else {
            receipt.dropped = 1;
            return receipt;
        };
        receipt.dropped += push.len().saturating_sub(MAX_PUSH_ENTRIES);
        let now = crate::now_ms();
        let mut woken: Vec<(OwnedUserId, Vec<OwnedUserId>)> = Vec::new();
        let mut evicted: Vec<OwnedUserId> = Vec::new();
        for entry in push.iter().take(MAX_PUSH_ENTRIES) {
            let Some((user, state)) = parse_entry(origin, entry, now) else {
                receipt.dropped += 1;
                continue;
            };
            if !self.is_remote(&user) {
                receipt.dropped += 1;
                continue;
            }
            let field = entry.get("allowed_recipients");
            let legacy = matches!(field, None | Some(Value::Null))
                || field.and_then(Value::as_array).is_some_and(Vec::is_empty);
            let recipients = self.incoming_recipients(&user, field);
            receipt.accepted += 1;
            let view = View {
                state,
                recipients: (!legacy).then(|| recipients.iter().cloned().collect()),
            };
            evicted.extend(self.remote().insert(user.clone(), view));
            woken.push((user, recipients));
        }
        self.stats.federation_inputs(receipt.accepted);
        if woken.is_empty() {
            return receipt;
        }
        // The new views, durable in the write that allocates one stream position for the
        // whole EDU (so incremental syncs pick these users up).
        let durable: Vec<(Key, Option<Vec<u8>>)> = {
            let store = self.remote();
            evicted
                .iter()
                .chain(woken.iter().map(|(u, _)| u))
                .map(|u| store.persisted(u))
                .collect()
        };
        let pos = {
            let mut stream_pos = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
            let pos = match self
                .db
                .write_with_position::<_, storage::StorageError>(|_, b| {
                    for (k, v) in durable {
                        match v {
                            Some(v) => b.put(Cf::Misc, k, v),
                            None => b.delete(Cf::Misc, k),
                        }
                    }
                    Ok(())
                }) {
                Ok((pos, ())) => pos,
                Err(e) => {
                    tracing::error!("allocating a stream position failed: {e}");
                    return receipt;
                }
            };
            for (user, _) in &woken {
                stream_pos.set(user, pos);
            }
            pos
        };
        for (user, recipients) in &woken {
            let visible: Vec<&UserId> = recipients
                .iter()
                .map(|u| &**u)
                .filter(|v| !self.viewer_ignores(v, user))
                .collect();
            receipt.delivered_to += visible.len();
            self.waker.wake_users(&visible, pos);
        }
        receipt
    }

    /// Forgets remote users their server stopped refreshing and wakes the local users who saw
    /// them, whose next `/sync` shows them offline. Cheap to call often: sweeps at most once a
    /// minute (the presence timer task calls it).
    pub fn expire_remote(&self, now: u64) {
        let expired = {
            let mut store = self.remote();
            if now.saturating_sub(store.last_sweep) < SWEEP_INTERVAL_MS {
                return;
            }
            store.last_sweep = now;
            store.take_expired(now)
        };
        if expired.is_empty() {
            return;
        }
        let pos = {
            let mut stream_pos = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
            let pos = match self
                .db
                .write_with_position::<_, storage::StorageError>(|_, b| {
                    for (user, _) in &expired {
                        b.delete(Cf::Misc, remote_key(user));
                    }
                    Ok(())
                }) {
                Ok((pos, ())) => pos,
                Err(e) => {
                    tracing::error!("allocating a stream position failed: {e}");
                    return;
                }
            };
            for (user, _) in &expired {
                stream_pos.set(user, pos);
            }
            pos
        };
        for (user, named) in &expired {
            let viewers: Vec<OwnedUserId> = match named {
                Some(named) => named.clone(),
                None => self
                    .rooms
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .audience(user)
                    .filter(|u| !self.is_remote(u))
                    .map(ToOwned::to_owned)
                    .collect(),
            };
            let viewers: Vec<&UserId> = viewers.iter().map(|u| &**u).collect();
            self.waker.wake_users(&viewers, pos);
        }
        tracing::debug!(users = expired.len(), "remote presence timed out");
    }

    /// Whether `viewer` may see remote `user`'s presence at all: not ignored, and sharing a room
    /// or named by one of the user's restricted updates.
    pub(crate) fn remote_visible(&self, viewer: &UserId, user: &UserId) -> bool {
        if self.viewer_ignores(viewer, user) {
            return false;
        }
        let shares = self
            .rooms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .shares_room(viewer, user);
        shares || self.remote().view_for(user, viewer, false).is_some()
    }

    /// The `m.presence` event of remote `user` as `viewer` sees it now: the newest view that
    /// includes the viewer, or offline.
    pub(crate) fn remote_event_for(&self, viewer: &UserId, user: &UserId) -> Value {
        let now = crate::now_ms();
        let shares = self
            .rooms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .shares_room(viewer, user);
        let content = if self.viewer_ignores(viewer, user) {
            None
        } else {
            self.remote()
                .view_for(user, viewer, shares)
                .map(|s| s.content(now))
        };
        let content = content.unwrap_or_else(|| json!({ "presence": "offline" }));
        json!({ "type": "m.presence", "sender": user, "content": content })
    }

    /// The `m.presence` event of `user` (local or remote) as `viewer` sees it now.
    pub fn event_for_viewer(&self, viewer: &UserId, user: &UserId) -> Value {
        if self.is_remote(user) {
            self.remote_event_for(viewer, user)
        } else {
            self.event_for(user)
        }
    }
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
