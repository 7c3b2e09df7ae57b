//! The effective-presence engine: folds per-device signals, manual statuses and overrides into
//! one presence per user, owns every presence timer, and reports only visible changes.
//!
//! See the crate documentation for the rules; `docs/presence.md` has them as a truth table.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    config::PresenceConfig,
    state::{DeviceState, PresenceState, StatusMsg},
    timers::DeadlineQueue,
};

/// A user's MSC4043 override: authoritative for both the state and the status message.
///
/// The override replaces the whole visible presence (state *and* `status_msg`): the point of
/// MSC4043 is that no client can clobber it, and status messages have the same clobbering
/// problem (review of MSC4043). `status_msg: None` therefore shows no message, it does not fall
/// through to the last manual one. A `disabled` override never shows a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceOverride {
    /// The state everyone sees while the override is set.
    pub state: PresenceState,
    /// The message everyone sees while the override is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<StatusMsg>,
}

impl PresenceOverride {
    /// An override of the state only.
    pub fn state(state: PresenceState) -> Self {
        PresenceOverride {
            state,
            status_msg: None,
        }
    }
}

/// The presence of one user as the world should see it at some instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectivePresence {
    /// The state.
    pub state: PresenceState,
    /// The status message (the override's, or the most recent manual one).
    pub status_msg: Option<StatusMsg>,
    /// `state` is online or busy and there was activity within `last_active_granularity`.
    /// Always false under an override.
    pub currently_active: bool,
    /// Last activity, absolute milliseconds. `None` when never active or hidden by an override
    /// (an override cloaks the user; showing real activity would defeat it).
    pub last_active_ts: Option<u64>,
    /// The state comes from an override.
    pub overridden: bool,
    /// When the visible fields last changed (milliseconds). Stands in for `last_active_ago`
    /// where the federation schema requires a value but activity must not be shown.
    pub since_ts: u64,
}

impl EffectivePresence {
    /// A user the engine knows nothing about.
    pub fn unknown() -> Self {
        EffectivePresence {
            state: PresenceState::Offline,
            status_msg: None,
            currently_active: false,
            last_active_ts: None,
            overridden: false,
            since_ts: 0,
        }
    }

    /// Whether `other` would look different to a viewer: state, status message,
    /// `currently_active`, or whether activity is shown at all (`last_active_ago` present).
    /// Being overridden is not itself visible: an override that serves the same content as
    /// the natural presence pushes nothing (the served content is the proptests' oracle).
    /// A bare change of `last_active_ts` is deliberately not visible: the spec only requires `last_active_ago`
    /// to be current when an event is served, which the view builder guarantees.
    pub fn visibly_differs(&self, other: &EffectivePresence) -> bool {
        self.state != other.state
            || self.status_msg != other.status_msg
            || self.currently_active != other.currently_active
            || self.last_active_ts.is_some() != other.last_active_ts.is_some()
    }
}

/// A visible change of one user's presence; the server persists it and fans it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Whose presence changed.
    pub user_id: OwnedUserId,
    /// What viewers were last told.
    pub previous: EffectivePresence,
    /// What they should be told now.
    pub current: EffectivePresence,
}

/// Proof that a `/sync` counts toward presence; hand it back to
/// [`PresenceEngine::sync_ended`] when the request finishes, however it finishes.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a sync that is never ended keeps its device online forever"]
pub struct SyncTicket {
    user_id: OwnedUserId,
    device_id: String,
    /// Distinguishes incarnations of a device record, so that a ticket outliving its device
    /// (removed, or expired and re-created) cannot decrement the new one's counter.
    generation: u64,
}

impl SyncTicket {
    /// The syncing user.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The syncing device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
}

/// What [`PresenceEngine::sync_started`] returns.
#[derive(Debug)]
#[must_use]
pub struct SyncStarted {
    /// `None` when the sync does not count toward presence (`set_presence=offline`); then
    /// there is nothing to end.
    pub ticket: Option<SyncTicket>,
    /// The visible change this sync caused, if any.
    pub change: Option<PresenceChange>,
}

/// Persistent state of one device, as stored in a [`PresenceSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// Last automatic signal from `/sync?set_presence=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<DeviceState>,
    /// Manual state from `PUT /presence/{userId}/status`, while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<DeviceState>,
    /// Last time the device synced, set its status or was active.
    pub last_seen_ts: u64,
}

/// An override with the time it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideSnapshot {
    /// The override.
    #[serde(flatten)]
    pub value: PresenceOverride,
    /// When it was set.
    pub set_at: u64,
}

/// Everything needed to rebuild one user's presence after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSnapshot {
    /// The MSC4043 override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_override: Option<OverrideSnapshot>,
    /// The most recent manual status message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<StatusMsg>,
    /// Last activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_ts: Option<u64>,
    /// Devices that were connected.
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceSnapshot>,
    /// What viewers were last told, so a restart emits nothing unless something really changed.
    pub published: EffectivePresence,
}

#[derive(Debug, Clone)]
struct DeviceRecord {
    generation: u64,
    syncs_in_flight: u32,
    last_seen_ts: u64,
    /// Last `set_presence` of this device's syncs (omitted counts as online); `None` for a
    /// device that has only ever used `PUT /status`.
    automatic: Option<DeviceState>,
    /// The state this device chose with `PUT /status`, until it stops holding (crate docs).
    manual: Option<DeviceState>,
}

impl DeviceRecord {
    /// What this device says about its user while it is connected.
    fn contribution(&self) -> DeviceState {
        // A device record always has at least one of the two (it is created by a sync, a status
        // update or activity, and activity records an automatic `online`).
        self.manual
            .or(self.automatic)
            .unwrap_or(DeviceState::Online)
    }

    /// The instant the device stops counting as connected, or `None` while a sync is in flight.
    fn disconnects_at(&self, config: &PresenceConfig) -> Option<u64> {
        if self.syncs_in_flight > 0 {
            return None;
        }
        let grace = if self.contribution() == DeviceState::Busy {
            config.busy_timeout_ms
        } else {
            config.sync_online_timeout_ms
        };
        Some(self.last_seen_ts.saturating_add(grace))
    }

    fn is_connected(&self, config: &PresenceConfig, now: u64) -> bool {
        self.disconnects_at(config).is_none_or(|at| now < at)
    }
}

#[derive(Debug, Clone)]
struct UserRecord {
    devices: BTreeMap<String, DeviceRecord>,
    status_msg: Option<StatusMsg>,
    last_active_ts: Option<u64>,
    presence_override: Option<OverrideSnapshot>,
    published: EffectivePresence,
}

impl UserRecord {
    fn new() -> Self {
        UserRecord {
            devices: BTreeMap::new(),
            status_msg: None,
            last_active_ts: None,
            presence_override: None,
            published: EffectivePresence::unknown(),
        }
    }

    /// Nothing here that a fresh record would not also say.
    fn is_blank(&self) -> bool {
        self.devices.is_empty()
            && self.status_msg.is_none()
            && self.last_active_ts.is_none()
            && self.presence_override.is_none()
            && !self
                .published
                .visibly_differs(&EffectivePresence::unknown())
    }

    fn bump_activity(&mut self, now: u64) {
        self.last_active_ts = Some(self.last_active_ts.map_or(now, |t| t.max(now)));
    }

    /// Highest contribution among connected devices, before the idle rule.
    fn device_aggregate(&self, config: &PresenceConfig, now: u64) -> DeviceState {
        self.devices
            .values()
            .filter(|d| d.is_connected(config, now))
            .map(DeviceRecord::contribution)
            .max()
            .unwrap_or(DeviceState::Offline)
    }

    fn is_idle(&self, config: &PresenceConfig, now: u64) -> bool {
        self.last_active_ts
            .is_none_or(|t| now >= t.saturating_add(config.idle_timeout_ms))
    }

    fn is_recently_active(&self, config: &PresenceConfig, now: u64) -> bool {
        self.last_active_ts
            .is_some_and(|t| now < t.saturating_add(config.last_active_granularity_ms))
    }

    /// The effective presence at `now`, with `since_ts` carried over when nothing visible
    /// changed since the last publication.
    fn compute(&self, config: &PresenceConfig, now: u64) -> EffectivePresence {
        let mut presence = match &self.presence_override {
            Some(ov) => EffectivePresence {
                state: ov.value.state,
                status_msg: match ov.value.state {
                    PresenceState::Disabled => None,
                    _ => ov.value.status_msg.clone(),
                },
                currently_active: false,
                last_active_ts: None,
                overridden: true,
                since_ts: now,
            },
            None => {
                let state = match self.device_aggregate(config, now) {
                    DeviceState::Online if self.is_idle(config, now) => DeviceState::Unavailable,
                    state => state,
                };
                EffectivePresence {
                    state: state.presence(),
                    status_msg: self.status_msg.clone(),
                    currently_active: matches!(state, DeviceState::Online | DeviceState::Busy)
                        && self.is_recently_active(config, now),
                    last_active_ts: self.last_active_ts,
                    overridden: false,
                    since_ts: now,
                }
            }
        };
        if !presence.visibly_differs(&self.published) {
            presence.since_ts = self.published.since_ts;
        }
        presence
    }

    /// The earliest instant after `now` at which `compute` may give a visibly different result
    /// without any new input.
    fn next_deadline(&self, config: &PresenceConfig, now: u64) -> Option<u64> {
        // Timers never move an overridden state. Devices that expire meanwhile are pruned when
        // the override is cleared.
        if self.presence_override.is_some() {
            return None;
        }
        let device_deadlines = self
            .devices
            .values()
            .filter_map(|d| d.disconnects_at(config));
        let (granularity, idle) = match (self.last_active_ts, self.device_aggregate(config, now)) {
            (Some(active), DeviceState::Online) => (
                Some(active.saturating_add(config.last_active_granularity_ms)),
                Some(active.saturating_add(config.idle_timeout_ms)),
            ),
            (Some(active), DeviceState::Busy) => (
                Some(active.saturating_add(config.last_active_granularity_ms)),
                None,
            ),
            _ => (None, None),
        };
        device_deadlines
            .chain(granularity)
            .chain(idle)
            .filter(|&t| t > now)
            .min()
    }

    /// Forgets devices that are no longer connected: their manual states end with them.
    fn prune(&mut self, config: &PresenceConfig, now: u64) {
        self.devices.retain(|_, d| d.is_connected(config, now));
    }

    fn snapshot(&self) -> PresenceSnapshot {
        PresenceSnapshot {
            presence_override: self.presence_override.clone(),
            status_msg: self.status_msg.clone(),
            last_active_ts: self.last_active_ts,
            devices: self
                .devices
                .iter()
                .map(|(id, d)| {
                    let snapshot = DeviceSnapshot {
                        automatic: d.automatic,
                        manual: d.manual,
                        last_seen_ts: d.last_seen_ts,
                    };
                    (id.clone(), snapshot)
                })
                .collect(),
            published: self.published.clone(),
        }
    }
}

/// The presence engine for all local users of one server. Pure: the caller passes the time
/// (milliseconds since the Unix epoch) into every call, and nothing here blocks or does I/O.
#[derive(Debug, Clone)]
pub struct PresenceEngine {
    config: PresenceConfig,
    users: HashMap<OwnedUserId, UserRecord>,
    timers: DeadlineQueue<OwnedUserId>,
    /// Latest `now` seen. Wall clocks step backwards (NTP); time never does here, so a step
    /// back cannot resurrect an expired device or un-idle a user.
    clock: u64,
    next_generation: u64,
    dirty: HashSet<OwnedUserId>,
}

impl PresenceEngine {
    /// An engine with no users.
    pub fn new(config: PresenceConfig) -> Self {
        PresenceEngine {
            config,
            users: HashMap::new(),
            timers: DeadlineQueue::new(),
            clock: 0,
            next_generation: 0,
            dirty: HashSet::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    /// A `/sync` request of `device` began. `set_presence` is the query parameter (`None` when
    /// omitted, which the spec defines as online).
    ///
    /// `Some(Offline)` does not count toward presence at all: nothing is recorded and no ticket
    /// is returned. Otherwise the device is connected until the ticket is handed to
    /// [`sync_ended`](Self::sync_ended) plus `sync_online_timeout`.
    pub fn sync_started(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        set_presence: Option<DeviceState>,
        now: u64,
    ) -> SyncStarted {
        if set_presence == Some(DeviceState::Offline) {
            return SyncStarted {
                ticket: None,
                change: None,
            };
        }
        let now = self.tick(now);
        let generation = {
            let (user, generation) = self.prepare(user_id, now);
            let device = Self::device_entry(user, device_id, generation, now);
            let previous = device.automatic;
            let automatic = match set_presence {
                Some(explicit) => explicit,
                // A plain sync says only "I am here": it never downgrades a busy that this
                // device reported (synapse#16057 was plain syncs clobbering richer states).
                None if previous == Some(DeviceState::Busy) => DeviceState::Busy,
                None => DeviceState::Online,
            };
            // A manual state gives way only to a newer *explicit* statement from the same
            // device that contradicts it. A plain sync carries no statement ("I am here"), so
            // it never ends one; a manual busy gives way to nothing automatic (MSC3026: do not
            // time busy out behind the user's back).
            if let (Some(explicit), Some(manual)) = (set_presence, device.manual)
                && explicit != manual
                && manual != DeviceState::Busy
            {
                device.manual = None;
            }
            device.automatic = Some(automatic);
            device.syncs_in_flight += 1;
            device.last_seen_ts = device.last_seen_ts.max(now);
            let generation = device.generation;
            // Becoming online or busy (including by connecting) is "changing presence to
            // online", which the spec counts as activity; repeating it is not.
            if previous != Some(automatic)
                && matches!(automatic, DeviceState::Online | DeviceState::Busy)
            {
                user.bump_activity(now);
            }
            generation
        };
        let change = self.settle(user_id, now);
        SyncStarted {
            ticket: Some(SyncTicket {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                generation,
            }),
            change,
        }
    }

    /// The `/sync` that produced `ticket` finished (returned, timed out, or was cancelled).
    /// The device stays connected for `sync_online_timeout` from now.
    pub fn sync_ended(&mut self, ticket: SyncTicket, now: u64) -> Option<PresenceChange> {
        let now = self.tick(now);
        let user = self.users.get_mut(&ticket.user_id)?;
        let device = user
            .devices
            .get_mut(&ticket.device_id)
            .filter(|d| d.generation == ticket.generation)?;
        device.syncs_in_flight = device.syncs_in_flight.saturating_sub(1);
        device.last_seen_ts = device.last_seen_ts.max(now);
        self.settle(&ticket.user_id, now)
    }

    /// `PUT /presence/{userId}/status` from `device`: a manual state for that device and the
    /// user's status message (replacing the previous one; `None` clears it). Online and busy
    /// count as activity.
    pub fn set_status(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        state: DeviceState,
        status_msg: Option<StatusMsg>,
        now: u64,
    ) -> Option<PresenceChange> {
        let now = self.tick(now);
        let (user, generation) = self.prepare(user_id, now);
        let device = Self::device_entry(user, device_id, generation, now);
        device.manual = Some(state);
        device.last_seen_ts = device.last_seen_ts.max(now);
        user.status_msg = status_msg;
        if matches!(state, DeviceState::Online | DeviceState::Busy) {
            user.bump_activity(now);
        }
        self.settle(user_id, now)
    }

    /// MSC4043: sets (`Some`) or clears (`None`) the user's override.
    pub fn set_override(
        &mut self,
        user_id: &UserId,
        presence_override: Option<PresenceOverride>,
        now: u64,
    ) -> Option<PresenceChange> {
        let now = self.tick(now);
        let (user, _) = self.prepare(user_id, now);
        let unchanged =
            user.presence_override.as_ref().map(|o| &o.value) == presence_override.as_ref();
        if !unchanged {
            user.presence_override =
                presence_override.map(|value| OverrideSnapshot { value, set_at: now });
        }
        self.settle(user_id, now)
    }

    /// The user's override, for `GET …/presence/{userId}/override`.
    pub fn get_override(&self, user_id: &UserId) -> Option<&PresenceOverride> {
        self.users
            .get(user_id)?
            .presence_override
            .as_ref()
            .map(|o| &o.value)
    }

    /// A pro-active action of `device`: sending an event, a receipt, a read marker, typing.
    /// Updates the last-active time and keeps the device connected; a device the engine did not
    /// know counts as online (Synapse does the same for clients that never sync).
    pub fn activity(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        now: u64,
    ) -> Option<PresenceChange> {
        let now = self.tick(now);
        let (user, generation) = self.prepare(user_id, now);
        let device = Self::device_entry(user, device_id, generation, now);
        if device.automatic.is_none() && device.manual.is_none() {
            device.automatic = Some(DeviceState::Online);
        }
        device.last_seen_ts = device.last_seen_ts.max(now);
        user.bump_activity(now);
        self.settle(user_id, now)
    }

    /// The device was logged out or deleted: it stops contributing at once, and any manual
    /// state it set ends.
    pub fn device_removed(
        &mut self,
        user_id: &UserId,
        device_id: &str,
        now: u64,
    ) -> Option<PresenceChange> {
        let now = self.tick(now);
        self.users.get_mut(user_id)?.devices.remove(device_id)?;
        self.settle(user_id, now)
    }

    /// Forgets a user entirely (deactivation). Returns the final change to plain `offline` if
    /// viewers were seeing anything else.
    pub fn remove_user(&mut self, user_id: &UserId, now: u64) -> Option<PresenceChange> {
        let now = self.tick(now);
        let user = self.users.remove(user_id)?;
        self.timers.cancel(user_id);
        self.dirty.insert(user_id.to_owned());
        let current = EffectivePresence {
            since_ts: now,
            ..EffectivePresence::unknown()
        };
        user.published
            .visibly_differs(&current)
            .then(|| PresenceChange {
                user_id: user_id.to_owned(),
                previous: user.published,
                current,
            })
    }

    /// Fires every timer due at `now`: devices dropping out, idle, `currently_active` expiring.
    /// Calling it again with the same `now` returns nothing.
    pub fn advance(&mut self, now: u64) -> Vec<PresenceChange> {
        let now = self.tick(now);
        self.timers
            .pop_due(now)
            .into_iter()
            .filter_map(|user_id| self.settle(&user_id, now))
            .collect()
    }

    /// When [`advance`](Self::advance) next needs to be called.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// The user's presence at `now` (for `GET /presence/{userId}/status` and initial syncs).
    /// Unknown users are offline.
    pub fn current(&self, user_id: &UserId, now: u64) -> EffectivePresence {
        let now = now.max(self.clock);
        self.users
            .get(user_id)
            .map_or_else(EffectivePresence::unknown, |user| {
                user.compute(&self.config, now)
            })
    }

    /// The user's persistent state, or `None` for a user the engine knows nothing about.
    pub fn snapshot(&self, user_id: &UserId) -> Option<PresenceSnapshot> {
        self.users.get(user_id).map(UserRecord::snapshot)
    }

    /// Rebuilds a user from a snapshot after a restart, replacing anything known about them.
    ///
    /// Restored devices count as seen at `now`: clients could not sync while the server was
    /// down, so they get one `sync_online_timeout` (busy: `busy_timeout`) to reconnect before
    /// they drop out, instead of everyone going offline and straight back online. Returns a
    /// change only if the presence differs from what viewers were last told (e.g. the user
    /// went idle during the downtime).
    pub fn restore(
        &mut self,
        user_id: &UserId,
        snapshot: PresenceSnapshot,
        now: u64,
    ) -> Option<PresenceChange> {
        let now = self.tick(now);
        let mut user = UserRecord::new();
        for (device_id, device) in snapshot.devices {
            let record = DeviceRecord {
                generation: self.take_generation(),
                syncs_in_flight: 0,
                last_seen_ts: device.last_seen_ts.max(now),
                automatic: device.automatic,
                manual: device.manual,
            };
            if record.automatic.is_some() || record.manual.is_some() {
                user.devices.insert(device_id, record);
            }
        }
        user.presence_override = snapshot.presence_override;
        user.status_msg = snapshot.status_msg;
        user.last_active_ts = snapshot.last_active_ts;
        user.published = snapshot.published;
        self.users.insert(user_id.to_owned(), user);
        self.settle(user_id, now)
    }

    /// Users whose snapshot changed since the last call. Persist these lazily (e.g. every few
    /// seconds); emitted changes are the only thing that must be written promptly.
    pub fn take_dirty(&mut self) -> Vec<OwnedUserId> {
        self.dirty.drain().collect()
    }

    /// Number of users with any state in memory.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    fn tick(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    fn take_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// The user's record with expired devices pruned, and a fresh generation for a device that
    /// may be created.
    fn prepare(&mut self, user_id: &UserId, now: u64) -> (&mut UserRecord, u64) {
        let generation = self.take_generation();
        // Avoid allocating owned IDs on the hot path (every sync of a known user).
        if !self.dirty.contains(user_id) {
            self.dirty.insert(user_id.to_owned());
        }
        if !self.users.contains_key(user_id) {
            self.users.insert(user_id.to_owned(), UserRecord::new());
        }
        let user = self.users.get_mut(user_id).expect("inserted above");
        user.prune(&self.config, now);
        (user, generation)
    }

    fn device_entry<'a>(
        user: &'a mut UserRecord,
        device_id: &str,
        generation: u64,
        now: u64,
    ) -> &'a mut DeviceRecord {
        user.devices
            .entry(device_id.to_owned())
            .or_insert_with(|| DeviceRecord {
                generation,
                syncs_in_flight: 0,
                last_seen_ts: now,
                automatic: None,
                manual: None,
            })
    }

    /// Recomputes `user_id` at `now`, publishes and returns a visible change, and re-arms the
    /// user's single timer.
    fn settle(&mut self, user_id: &UserId, now: u64) -> Option<PresenceChange> {
        let user = self.users.get_mut(user_id)?;
        user.prune(&self.config, now);
        let current = user.compute(&self.config, now);
        let change = current
            .visibly_differs(&user.published)
            .then(|| PresenceChange {
                user_id: user_id.to_owned(),
                previous: std::mem::replace(&mut user.published, current.clone()),
                current,
            });
        let deadline = user.next_deadline(&self.config, now);
        if change.is_some() && !self.dirty.contains(user_id) {
            self.dirty.insert(user_id.to_owned());
        }
        if user.is_blank() {
            self.users.remove(user_id);
            self.timers.cancel(user_id);
        } else {
            self.timers.set(user_id, deadline);
        }
        change
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
