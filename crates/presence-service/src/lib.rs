//! # presence-service — drives the pure presence engine inside the server
//!
//! [`presence_core::PresenceEngine`] decides; this crate gives it a clock, a timer, storage
//! and an audience:
//!
//! * **Inputs** come from the client API: [`PresenceService::sync_started`] (returns a
//!   [`SyncGuard`] whose drop ends the sync, however the request ends — returned, timed out or
//!   cancelled by a disconnect), [`PresenceService::set_status`] (rate limited per user),
//!   [`PresenceService::set_override`], [`PresenceService::activity`].
//! * **One timer task** sleeps until the engine's next deadline (or until an input arms an
//!   earlier one) and fires every due timer at once — no task per user.
//! * **Edge-triggered publishing**: only a [`presence_core::PresenceChange`] is written and
//!   fanned out. A change is one RocksDB batch: the user's snapshot plus a stream entry at a
//!   new stream position (the user's previous stream entry is deleted, so the stream holds at
//!   most one entry per user and "who changed since position N" is one range scan). Then the
//!   sync long-polls of exactly the users who may see the change are woken.
//! * **Batched persistence**: inputs that change nothing visible (e.g. another sync) only mark
//!   the user dirty; the timer task writes dirty snapshots every few seconds, so a restart keeps
//!   overrides, status messages and last-active times without a write per sync.
//! * **Audience and privacy** ([`sharing`]): who shares a joined room with whom, maintained
//!   from membership changes ([`PresenceService::membership_changed`]), and each user's
//!   compiled MSC4325 sharing config ([`PresenceService::set_sharing_config`]).
//!   [`PresenceService::may_see`] is the visibility rule (`GET .../status`);
//!   [`PresenceService::pushes_to`] adds "and is reachable" for `/sync` (room sharers and
//!   users allowed by exact ID). Viewers whose view changes because of a config change or a
//!   leave get a per-viewer marker, so their next `/sync` shows the current presence or one
//!   final `offline`.
//!
//! Lock order: `sharing_updates` → `markers` → `stream_pos` → `engine`, and `sharing` →
//! `rooms`; the engine lock is never held while taking `sharing` or `rooms`, nor the other
//! way round. Closures given to `Db::write_with_position` take none of these (a caller may
//! hold them while waiting for its position's turn).
mod remote;
pub mod sharing;
pub mod stats;

pub use remote::{
    MAX_PUSH_ENTRIES, MAX_REMOTE_USERS, PresenceObserver, REMOTE_PRESENCE_TIMEOUT_MS, RemoteReceipt,
};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use presence_core::audience::AudienceIndex;
use presence_core::{
    Audience, DeviceState, EffectivePresence, PresenceChange, PresenceConfig, PresenceEngine,
    PresenceOverride, PresenceSnapshot, StatusMsg, SyncTicket,
};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storage::{Batch, Cf, Db, Key, KeyReader, StorageError};
use tokio::sync::Notify;

/// Wakes the `/sync` long-polls of the given users (implemented by the client API).
pub trait SyncWaker: Send + Sync + 'static {
    fn wake_users(&self, users: &[&UserId], position: u64);
}

/// Settings of the presence service (the `[presence]` config section).
#[derive(Debug, Clone, Copy)]
pub struct PresenceServiceConfig {
    pub engine: PresenceConfig,
    /// `PUT /presence/{userId}/status` per user: sustained updates per second.
    pub status_per_second: f64,
    /// ... and burst.
    pub status_burst: f64,
    /// How often snapshots of users with invisible changes are written.
    pub persist_interval: Duration,
}

impl Default for PresenceServiceConfig {
    fn default() -> Self {
        PresenceServiceConfig {
            engine: PresenceConfig::default(),
            status_per_second: 1.0,
            status_burst: 10.0,
            persist_interval: Duration::from_secs(5),
        }
    }
}

/// `PUT .../status` came too fast; retry after this many milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited(pub u64);

/// Why `PUT .../status` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetStatusError {
    #[error("rate limited; retry after {} ms", .0.0)]
    RateLimited(RateLimited),
    /// The change could not be stored: it must not be acknowledged.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What is stored per user in `Cf::Presence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPresence {
    snapshot: PresenceSnapshot,
    /// Stream position of the user's latest published change (0: none).
    #[serde(default)]
    stream_pos: u64,
}

/// Above this many changes in a sync's window, `events_since` probes the viewer's
/// candidates instead of walking the window.
const WINDOW_SCAN_LIMIT: usize = 256;

/// Each user's latest presence stream position, and the reverse (position → users).
#[derive(Default)]
struct StreamIndex {
    by_user: HashMap<OwnedUserId, u64>,
    by_pos: BTreeMap<u64, Vec<OwnedUserId>>,
}

impl StreamIndex {
    fn get(&self, user: &UserId) -> u64 {
        self.by_user.get(user).copied().unwrap_or(0)
    }

    fn set(&mut self, user: &UserId, pos: u64) {
        if let Some(old) = self.by_user.insert(user.to_owned(), pos)
            && let Some(users) = self.by_pos.get_mut(&old)
        {
            users.retain(|u| u != user);
            if users.is_empty() {
                self.by_pos.remove(&old);
            }
        }
        if pos > 0 {
            self.by_pos.entry(pos).or_default().push(user.to_owned());
        }
    }

    /// Users whose latest change is in `(since, up_to]`, or `None` if there are more than
    /// `limit`.
    fn changed_in(&self, since: u64, up_to: u64, limit: usize) -> Option<Vec<OwnedUserId>> {
        let mut out = Vec::new();
        for users in self
            .by_pos
            .range(since.saturating_add(1)..=up_to)
            .map(|(_, u)| u)
        {
            if out.len() + users.len() > limit {
                return None;
            }
            out.extend(users.iter().cloned());
        }
        Some(out)
    }
}

/// The `PUT /presence` token buckets by user, swept of refilled ones.
struct StatusBuckets {
    map: HashMap<OwnedUserId, presence_core::token_bucket::TokenBucket>,
    /// Sweep again once the map holds this many (twice what the last sweep left, at least
    /// [`StatusBuckets::MIN_SWEEP`]).
    sweep_at: usize,
}

impl Default for StatusBuckets {
    fn default() -> Self {
        StatusBuckets {
            map: HashMap::new(),
            sweep_at: Self::MIN_SWEEP,
        }
    }
}

impl StatusBuckets {
    const MIN_SWEEP: usize = 1024;

    fn sweep(&mut self, now: Instant, rate: f64, burst: f64) {
        self.map.retain(|_, b| !b.is_full(now, rate, burst));
        self.sweep_at = (self.map.len() * 2).max(Self::MIN_SWEEP);
    }
}

pub struct PresenceService {
    db: Arc<Db>,
    config: PresenceServiceConfig,
    engine: Mutex<PresenceEngine>,
    /// Who shares a joined room with whom (presence-core's incremental index).
    rooms: RwLock<AudienceIndex>,
    /// Compiled sharing configs and push-audience caches ([`sharing`]).
    sharing: RwLock<sharing::SharingState>,
    /// See [`PresenceService::lock_sharing_updates`].
    sharing_updates: Mutex<()>,
    /// Users on this server are local ([`PresenceService::set_server_name`]).
    server_name: OnceLock<OwnedServerName>,
    /// Latest stream position per user, indexed both ways (rebuilt at start-up from
    /// `StoredPresence::stream_pos`): "who changed since position N" is an in-memory range.
    stream_pos: Mutex<StreamIndex>,
    /// Serialises visibility-marker writes: each reads a pair's previous marker to replace
    /// it, and the positioned write no longer serialises callers' closures. Taken before
    /// `stream_pos`, never held by a closure.
    markers: Mutex<()>,
    waker: Arc<dyn SyncWaker>,
    /// Deadline the timer task is sleeping towards (ms; u64::MAX when none).
    armed_deadline: AtomicU64,
    kick: Notify,
    /// `PUT /presence` rate limit per user. A bucket that refilled to the burst answers as a
    /// new one, so those are dropped ([`PresenceService::prune_status_buckets`]): only users
    /// who set a status in the last `burst / rate` seconds (10 s by default) are held.
    status_buckets: Mutex<StatusBuckets>,
    /// (time, stream position) samples of the timer task, oldest first: the position a
    /// marker must be at to be younger than `MARKER_RETENTION` ([`sharing`], pruning).
    position_samples: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    /// Presence of remote users received over federation ([`remote`]).
    remote: Mutex<remote::RemoteStore>,
    /// Told about every published change of a local user (the federation sender).
    observer: OnceLock<Arc<dyn PresenceObserver>>,
    /// What the service did, for `/metrics` ([`stats`]).
    stats: stats::PresenceStats,
}

pub use storage::now_ms;

impl PresenceService {
    /// Restore every stored user and return the service. Call [`PresenceService::spawn_timer`]
    /// once the runtime runs.
    pub fn open(
        db: Arc<Db>,
        config: PresenceServiceConfig,
        waker: Arc<dyn SyncWaker>,
    ) -> Result<Arc<Self>, StorageError> {
        let mut engine = PresenceEngine::new(config.engine);
        let mut stream_pos = StreamIndex::default();
        let now = now_ms();
        let mut restored_changes = Vec::new();
        for (k, v) in db.scan_prefix(Cf::Presence, [])? {
            let Some(user) = KeyReader::new(&k)
                .str()
                .and_then(|s| OwnedUserId::try_from(s).ok())
            else {
                continue;
            };
            let stored: StoredPresence = match serde_json::from_slice(&v) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%user, "unreadable stored presence ignored: {e}");
                    continue;
                }
            };
            stream_pos.set(&user, stored.stream_pos);
            if let Some(change) = engine.restore(&user, stored.snapshot, now) {
                restored_changes.push(change);
            }
        }
        let _ = engine.take_dirty();
        let remote = remote::RemoteStore::load(&db, now)?;
        let service = Arc::new(PresenceService {
            db,
            config,
            engine: Mutex::new(engine),
            rooms: RwLock::new(AudienceIndex::new()),
            sharing: RwLock::new(sharing::SharingState::default()),
            sharing_updates: Mutex::new(()),
            server_name: OnceLock::new(),
            stream_pos: Mutex::new(stream_pos),
            markers: Mutex::new(()),
            waker,
            armed_deadline: AtomicU64::new(u64::MAX),
            kick: Notify::new(),
            status_buckets: Mutex::new(StatusBuckets::default()),
            position_samples: Mutex::new(std::collections::VecDeque::new()),
            remote: Mutex::new(remote),
            observer: OnceLock::new(),
            stats: stats::PresenceStats::default(),
        });
        service.publish(restored_changes)?;
        Ok(service)
    }

    /// Counters of inputs, published changes and audience decisions ([`stats`]).
    pub fn stats(&self) -> stats::PresenceStatsSnapshot {
        self.stats.snapshot()
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, PresenceEngine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the single timer task: fires due presence timers and persists dirty snapshots.
    pub fn spawn_timer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_persist = Instant::now();
            loop {
                let now = now_ms();
                let next = me.engine().next_deadline();
                me.armed_deadline
                    .store(next.unwrap_or(u64::MAX), Ordering::SeqCst);
                let until_timer = next.map_or(Duration::from_secs(3600), |d| {
                    Duration::from_millis(d.saturating_sub(now))
                });
                let until_persist = me
                    .config
                    .persist_interval
                    .saturating_sub(last_persist.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(until_timer.min(until_persist)) => {}
                    _ = me.kick.notified() => {}
                }
                // The writes (and a possible fsync) run on the blocking pool, not on an async
                // worker that other requests are waiting for.
                let worker = me.clone();
                match tokio::task::spawn_blocking(move || worker.fire_due(last_persist)).await {
                    Ok(persisted_at) => last_persist = persisted_at,
                    Err(e) => tracing::error!("presence timer work failed: {e}"),
                }
            }
        })
    }

    /// One timer tick: publish every due timer's change, and persist dirty snapshots when the
    /// interval since `last_persist` passed. Returns the new time of the last persist.
    fn fire_due(&self, last_persist: Instant) -> Instant {
        let changes = self.engine().advance(now_ms());
        if let Err(e) = self.publish(changes) {
            tracing::error!("writing timed presence changes failed: {e}");
        }
        self.expire_remote(now_ms());
        self.prune_markers_if_due(Instant::now());
        self.prune_status_buckets();
        if last_persist.elapsed() < self.config.persist_interval {
            return last_persist;
        }
        if let Err(e) = self.persist_dirty() {
            tracing::error!("persisting presence snapshots failed: {e}");
        }
        Instant::now()
    }

    /// Sample the stream position (one sample per prune interval) and delete markers older
    /// than `MARKER_RETENTION`: those before the newest sample at least that old.
    fn prune_markers_if_due(&self, now: Instant) {
        let horizon = {
            let mut samples = self
                .position_samples
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = samples
                .back()
                .is_none_or(|(t, _)| now.duration_since(*t) >= sharing::MARKER_PRUNE_INTERVAL);
            if !due {
                return;
            }
            samples.push_back((now, self.db.current_position()));
            let mut horizon = None;
            while let Some((t, pos)) = samples.front().copied() {
                if now.duration_since(t) < sharing::MARKER_RETENTION {
                    break;
                }
                horizon = Some(pos);
                samples.pop_front();
            }
            horizon
        };
        if let Some(horizon) = horizon {
            match self.prune_markers_before(horizon) {
                Ok(n) if n > 0 => tracing::debug!("pruned {n} presence visibility markers"),
                Ok(_) => {}
                Err(e) => tracing::error!("pruning presence visibility markers failed: {e}"),
            }
        }
    }

    /// Write the snapshots of users whose state changed invisibly (at shutdown too).
    pub fn persist_dirty(&self) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        {
            let stream_pos = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
            let mut engine = self.engine();
            for user in engine.take_dirty() {
                let key = Key::new().str(user.as_str());
                match engine.snapshot(&user) {
                    Some(snapshot) => {
                        let pos = stream_pos.get(&user);
                        batch.put_json(
                            Cf::Presence,
                            &key,
                            &StoredPresence {
                                snapshot,
                                stream_pos: pos,
                            },
                        );
                    }
                    None => batch.delete(Cf::Presence, &key),
                }
            }
        }
        self.db.write(batch)
    }

    /// Re-arm the timer task if the engine now has an earlier deadline than it sleeps towards.
    fn rearm(&self, engine: &PresenceEngine) {
        if let Some(d) = engine.next_deadline()
            && d < self.armed_deadline.load(Ordering::SeqCst)
        {
            self.armed_deadline.store(d, Ordering::SeqCst);
            self.kick.notify_one();
        }
    }

    /// Persist and fan out visible changes: one batch, one stream position, then wake the
    /// audience of every changed user. On a storage error nothing is published (the
    /// in-memory engine already moved; viewers see it with the next change) and the error is
    /// returned, so a request that caused it is not acknowledged.
    fn publish(&self, changes: Vec<PresenceChange>) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Lock order everywhere: stream_pos, then engine. Taking the snapshots under the
        // stream_pos lock means two racing publishes of one user write in snapshot order.
        let mut stream_pos = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
        let snapshots: Vec<(OwnedUserId, Option<PresenceSnapshot>)> = {
            let engine = self.engine();
            changes
                .iter()
                .map(|c| (c.user_id.clone(), engine.snapshot(&c.user_id)))
                .collect()
        };
        let written = self
            .db
            .write_with_position::<_, StorageError>(|pos, batch| {
                for (user, snapshot) in &snapshots {
                    let key = Key::new().str(user.as_str());
                    match snapshot {
                        Some(snapshot) => batch.put_json(
                            Cf::Presence,
                            &key,
                            &StoredPresence {
                                snapshot: snapshot.clone(),
                                stream_pos: pos,
                            },
                        ),
                        None => batch.delete(Cf::Presence, &key),
                    }
                }
                Ok(())
            });
        let (pos, ()) = written?;
        for (user, _) in &snapshots {
            stream_pos.set(user, pos);
        }
        drop(stream_pos);
        for c in &changes {
            self.stats.published(c.previous.state, c.current.state);
        }
        // Wake each changed user's push audience (a user in several audiences may be woken
        // more than once; that is harmless and cheaper than merging big lists).
        for c in &changes {
            self.with_fanout(&c.user_id, |users| self.waker.wake_users(users, pos));
        }
        self.notify_observer(&changes);
        Ok(())
    }

    /// [`Self::publish`] for inputs no request waits on (syncs, activity, device removal):
    /// the error can only be logged.
    fn publish_logged(&self, changes: Vec<PresenceChange>) {
        if let Err(e) = self.publish(changes) {
            tracing::error!("writing presence changes failed: {e}");
        }
    }

    /// A `/sync` began. Keep the guard for the whole request.
    pub fn sync_started(
        self: &Arc<Self>,
        user: &UserId,
        device: &str,
        set_presence: Option<DeviceState>,
    ) -> SyncGuard {
        if set_presence.is_some() {
            self.stats.local_input();
        }
        let started = {
            let mut engine = self.engine();
            let s = engine.sync_started(user, device, set_presence, now_ms());
            self.rearm(&engine);
            s
        };
        self.publish_logged(started.change.into_iter().collect());
        SyncGuard {
            service: self.clone(),
            ticket: started.ticket,
        }
    }

    fn sync_ended(&self, ticket: SyncTicket) {
        let change = {
            let mut engine = self.engine();
            let c = engine.sync_ended(ticket, now_ms());
            self.rearm(&engine);
            c
        };
        self.publish_logged(change.into_iter().collect());
    }

    /// `PUT /presence/{userId}/status`.
    pub fn set_status(
        &self,
        user: &UserId,
        device: &str,
        state: DeviceState,
        status_msg: Option<StatusMsg>,
    ) -> Result<(), SetStatusError> {
        self.check_status_rate(user)
            .map_err(SetStatusError::RateLimited)?;
        self.stats.local_input();
        let change = {
            let mut engine = self.engine();
            let c = engine.set_status(user, device, state, status_msg, now_ms());
            self.rearm(&engine);
            c
        };
        self.publish(change.into_iter().collect())?;
        Ok(())
    }

    fn check_status_rate(&self, user: &UserId) -> Result<(), RateLimited> {
        let (rate, burst) = (self.config.status_per_second, self.config.status_burst);
        if rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self
            .status_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Amortised: sweep when the map doubled since the last sweep (and on the timer).
        if buckets.map.len() >= buckets.sweep_at {
            buckets.sweep(now, rate, burst);
        }
        buckets
            .map
            .entry(user.to_owned())
            .or_insert_with(|| presence_core::token_bucket::TokenBucket::full(burst, now))
            .take(now, rate, burst)
            .map_err(RateLimited)
    }

    /// Drop the `PUT /presence` buckets that refilled (the presence timer calls this every
    /// tick). Returns how many are left.
    pub fn prune_status_buckets(&self) -> usize {
        let (rate, burst) = (self.config.status_per_second, self.config.status_burst);
        let mut buckets = self
            .status_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if rate > 0.0 {
            buckets.sweep(Instant::now(), rate, burst);
        } else {
            buckets.map.clear();
        }
        buckets.map.len()
    }

    /// MSC4043: set (`Some`) or clear (`None`) the override. Written at once (not batched):
    /// an override is a deliberate, rare act that must survive a crash.
    pub fn set_override(
        &self,
        user: &UserId,
        presence_override: Option<PresenceOverride>,
    ) -> Result<(), StorageError> {
        self.stats.local_input();
        let change = {
            let mut engine = self.engine();
            let c = engine.set_override(user, presence_override, now_ms());
            self.rearm(&engine);
            c
        };
        match change {
            Some(c) => self.publish(vec![c])?,
            None => self.persist_dirty()?,
        }
        Ok(())
    }

    pub fn get_override(&self, user: &UserId) -> Option<PresenceOverride> {
        self.engine().get_override(user).cloned()
    }

    /// A pro-active action (sending an event, typing, a receipt).
    pub fn activity(&self, user: &UserId, device: &str) {
        let change = {
            let mut engine = self.engine();
            let c = engine.activity(user, device, now_ms());
            self.rearm(&engine);
            c
        };
        self.publish_logged(change.into_iter().collect());
    }

    /// A device was logged out or deleted.
    pub fn device_removed(&self, user: &UserId, device: &str) {
        let change = self.engine().device_removed(user, device, now_ms());
        self.publish_logged(change.into_iter().collect());
    }

    pub fn current(&self, user: &UserId) -> EffectivePresence {
        self.engine().current(user, now_ms())
    }

    /// What the engine holds about `user` (override, devices, last published presence):
    /// the admin API's presence view. `None` for a user it knows nothing about.
    pub fn snapshot(&self, user: &UserId) -> Option<PresenceSnapshot> {
        self.engine().snapshot(user)
    }

    /// The `m.presence` event of `user` as a local client sees it now.
    pub fn event_for(&self, user: &UserId) -> Value {
        let now = now_ms();
        let content = self
            .engine()
            .current(user, now)
            .content(now, Audience::Msc4042Client);
        json!({ "type": "m.presence", "sender": user, "content": content })
    }

    /// Presence events for an initial sync: the viewer's own, and every user whose presence
    /// the viewer's sync carries ([`PresenceService::pushes_to`]) who is not offline.
    pub fn initial_events(&self, viewer: &UserId) -> Vec<Value> {
        let (remote, users): (Vec<OwnedUserId>, Vec<OwnedUserId>) = self
            .initial_candidates(viewer)
            .into_iter()
            .partition(|u| self.is_remote(u));
        let now = now_ms();
        let engine = self.engine();
        let mut out = Vec::new();
        let own = engine
            .current(viewer, now)
            .content(now, Audience::Msc4042Client);
        out.push(json!({ "type": "m.presence", "sender": viewer, "content": own }));
        for user in users {
            let p = engine.current(&user, now);
            if p.state != presence_core::PresenceState::Offline {
                out.push(json!({ "type": "m.presence", "sender": user, "content": p.content(now, Audience::Msc4042Client) }));
            }
        }
        drop(engine);
        for user in remote {
            let event = self.remote_event_for(viewer, &user);
            if event["content"]["presence"] != "offline" {
                out.push(event);
            }
        }
        out
    }

    /// Presence events for an incremental sync: the latest presence of every user whose
    /// presence changed in `(since, up_to]` and whose presence the viewer's sync carries, plus
    /// one event per visibility marker of the viewer in that range (module [`sharing`]).
    pub fn events_since(
        &self,
        viewer: &UserId,
        since: u64,
        up_to: u64,
    ) -> Result<Vec<Value>, StorageError> {
        if since >= up_to {
            return Ok(Vec::new());
        }
        // Who changed in the window: the window itself when it is short, else the viewer's
        // candidates (everyone sharing a room, exact allowers, themselves) probed one by one.
        // Either way the cost is bounded by the smaller of the two, not by the server's
        // total update rate.
        let changed: Vec<OwnedUserId> = {
            let index = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
            match index.changed_in(since, up_to, WINDOW_SCAN_LIMIT) {
                Some(users) => users,
                None => {
                    let mut candidates = self.initial_candidates(viewer);
                    candidates.push(viewer.to_owned());
                    candidates.retain(|u| {
                        let pos = index.get(u);
                        pos > since && pos <= up_to
                    });
                    candidates
                }
            }
        };
        let marked = self.marked_owners(viewer, since, up_to)?;
        let mut seen: HashSet<&UserId> = HashSet::new();
        let changed: Vec<&UserId> = changed
            .iter()
            .map(|u| &**u)
            .filter(|u| seen.insert(u))
            .collect();
        let marked: Vec<&UserId> = marked
            .iter()
            .map(|u| &**u)
            .filter(|u| seen.insert(u))
            .collect();
        let visible: HashSet<OwnedUserId> = self
            .pushed_owners(viewer, changed.iter().chain(&marked).copied())
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for user in changed {
            if visible.contains(user) {
                out.push(self.event_for_viewer(viewer, user));
            }
        }
        // A marker: the viewer's view of this user changed (config change or leave). Show
        // what they should see now — the presence, or one final offline.
        for user in marked {
            out.push(if visible.contains(user) {
                self.event_for_viewer(viewer, user)
            } else {
                sharing::final_offline(user)
            });
        }
        Ok(out)
    }

    /// How many rooms `user` is joined to, counting no further than `cap` (from the
    /// in-memory room index, no storage read).
    pub fn joined_room_count_up_to(&self, user: &UserId, cap: usize) -> usize {
        self.index().rooms_of(user).take(cap).count()
    }

    /// Number of users the engine holds (metrics, benchmarks).
    pub fn user_count(&self) -> usize {
        self.engine().user_count()
    }
}

/// Ends the sync it was created for when dropped.
pub struct SyncGuard {
    service: Arc<PresenceService>,
    ticket: Option<SyncTicket>,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.service.sync_ended(ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct RecordingWaker(Mutex<Vec<(Vec<OwnedUserId>, u64)>>);
    impl SyncWaker for RecordingWaker {
        fn wake_users(&self, users: &[&UserId], position: u64) {
            let mut users: Vec<OwnedUserId> = users.iter().map(|u| (*u).to_owned()).collect();
            users.sort();
            self.0.lock().expect("lock").push((users, position));
        }
    }

    fn uid(s: &str) -> OwnedUserId {
        OwnedUserId::try_from(s).expect("user id")
    }

    fn service(dir: &std::path::Path) -> (Arc<PresenceService>, Arc<RecordingWaker>) {
        let db = Arc::new(Db::open(dir, false).expect("db"));
        let waker = Arc::new(RecordingWaker::default());
        let config = PresenceServiceConfig {
            status_per_second: 0.0,
            ..Default::default()
        };
        (
            PresenceService::open(db, config, waker.clone()).expect("open"),
            waker,
        )
    }

    #[test]
    fn status_change_wakes_exactly_room_sharers_and_appears_once_in_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (svc, waker) = service(dir.path());
        let room: ruma::OwnedRoomId = "!r:x".try_into().expect("room");
        let (a, b, c) = (uid("@a:x"), uid("@b:x"), uid("@c:x"));
        svc.membership_changed(&room, &a, true);
        svc.membership_changed(&room, &b, true);
        svc.set_status(
            &a,
            "D",
            DeviceState::Online,
            StatusMsg::new("hi").expect("msg"),
        )
        .expect("not limited");
        svc.set_status(&a, "D", DeviceState::Unavailable, None)
            .expect("not limited");
        let wakes = waker.0.lock().expect("lock").clone();
        assert_eq!(wakes.len(), 2);
        assert_eq!(wakes[0].0, vec![a.clone(), b.clone()]);
        let events = svc
            .events_since(&b, 0, svc.db.current_position())
            .expect("events");
        assert_eq!(events.len(), 1, "latest only: {events:?}");
        assert_eq!(events[0]["content"]["presence"], "unavailable");
        assert!(
            svc.events_since(&c, 0, svc.db.current_position())
                .expect("events")
                .is_empty()
        );
    }

    #[test]
    fn a_busy_server_window_still_yields_exactly_the_viewers_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (svc, _) = service(dir.path());
        let viewer = uid("@viewer:x");
        let friend = uid("@friend:x");
        let shared: ruma::OwnedRoomId = "!shared:x".try_into().expect("room");
        svc.membership_changed(&shared, &viewer, true);
        svc.membership_changed(&shared, &friend, true);
        let since = svc.db.current_position();
        // Far more strangers change than the window walk allows...
        for i in 0..(WINDOW_SCAN_LIMIT + 50) {
            let stranger = uid(&format!("@s{i}:x"));
            let room: ruma::OwnedRoomId = format!("!r{i}:x").as_str().try_into().expect("room");
            svc.membership_changed(&room, &stranger, true);
            svc.set_status(&stranger, "D", DeviceState::Online, None)
                .expect("ok");
        }
        // ...and one room-mate.
        svc.set_status(&friend, "D", DeviceState::Unavailable, None)
            .expect("ok");
        let events = svc
            .events_since(&viewer, since, svc.db.current_position())
            .expect("events");
        let senders: Vec<&str> = events.iter().filter_map(|e| e["sender"].as_str()).collect();
        assert_eq!(senders, vec!["@friend:x"], "{events:?}");
        // A short window is walked directly and gives the same answer.
        let before_friend = svc.db.current_position();
        svc.set_status(&friend, "D", DeviceState::Online, None)
            .expect("ok");
        let events = svc
            .events_since(&viewer, before_friend, svc.db.current_position())
            .expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["content"]["presence"], "online");
    }

    #[test]
    fn an_unchanged_sync_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (svc, waker) = service(dir.path());
        let a = uid("@a:x");
        let g1 = svc.sync_started(&a, "D", None);
        drop(g1);
        let pos = svc.db.current_position();
        let g2 = svc.sync_started(&a, "D", None);
        drop(g2);
        assert_eq!(
            svc.db.current_position(),
            pos,
            "second sync changed nothing visible"
        );
        assert_eq!(waker.0.lock().expect("lock").len(), 1);
    }

    #[test]
    fn override_and_status_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = uid("@a:x");
        {
            let (svc, _) = service(dir.path());
            svc.set_status(
                &a,
                "D",
                DeviceState::Online,
                StatusMsg::new("lunch").expect("msg"),
            )
            .expect("ok");
            svc.set_override(
                &a,
                Some(PresenceOverride::state(presence_core::PresenceState::Busy)),
            )
            .expect("ok");
        }
        let (svc, _) = service(dir.path());
        assert_eq!(svc.current(&a).state, presence_core::PresenceState::Busy);
        assert!(svc.get_override(&a).is_some());
    }

    #[test]
    fn status_rate_limit_reports_retry_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), false).expect("db"));
        let config = PresenceServiceConfig {
            status_per_second: 1.0,
            status_burst: 2.0,
            ..Default::default()
        };
        let svc =
            PresenceService::open(db, config, Arc::new(RecordingWaker::default())).expect("open");
        let a = uid("@a:x");
        assert!(svc.set_status(&a, "D", DeviceState::Online, None).is_ok());
        assert!(svc.set_status(&a, "D", DeviceState::Online, None).is_ok());
        let Err(SetStatusError::RateLimited(RateLimited(ms))) =
            svc.set_status(&a, "D", DeviceState::Online, None)
        else {
            panic!("expected rate limiting");
        };
        assert!(ms > 0 && ms <= 1000);
    }

    /// Issue 19 item 6: one `PUT /presence` bucket per user who ever set a status used to
    /// stay forever. Buckets that refilled are swept (on insert once the map doubled, and by
    /// the timer), so churning through many users keeps the map flat.
    #[test]
    fn status_buckets_of_idle_users_are_pruned_and_stay_flat_under_churn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), false).expect("db"));
        // Refills in 20 ms: a user idle that long needs no bucket.
        let config = PresenceServiceConfig {
            status_per_second: 100.0,
            status_burst: 2.0,
            ..Default::default()
        };
        let svc =
            PresenceService::open(db, config, Arc::new(RecordingWaker::default())).expect("open");
        let held = |svc: &PresenceService| svc.status_buckets.lock().expect("lock").map.len();
        // The timer's sweep: after each round of 3000 new users nothing idle is left.
        for round in 0..4 {
            for i in 0..3000 {
                svc.check_status_rate(&uid(&format!("@t{round}_{i}:x")))
                    .expect("within the burst");
            }
            assert!(held(&svc) <= 3000, "round {round}: {}", held(&svc));
            std::thread::sleep(Duration::from_millis(25));
            assert_eq!(
                svc.prune_status_buckets(),
                0,
                "round {round}: idle buckets kept"
            );
        }
        // The sweep on insert alone: 12,000 users, a pause (longer than the refill) every
        // 1000. Without pruning the map would hold 12,000; with it, at most the users of the
        // last pause interval, twice over.
        let mut peak = 0;
        for i in 0..12_000 {
            svc.check_status_rate(&uid(&format!("@c{i}:x")))
                .expect("within the burst");
            peak = peak.max(held(&svc));
            if i % 1000 == 999 {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        assert!(peak <= 2048, "the map grew to {peak}");
        // A user still limited keeps the bucket: the limit is not reset by a sweep.
        let busy = uid("@busy:x");
        svc.check_status_rate(&busy).expect("1st");
        svc.check_status_rate(&busy).expect("2nd");
        assert_eq!(svc.prune_status_buckets(), 1);
        assert!(
            svc.check_status_rate(&busy).is_err(),
            "a sweep reset the limit"
        );
    }

    /// Records the thread each wake-up ran on.
    struct ThreadWaker(Mutex<Vec<std::thread::ThreadId>>);
    impl SyncWaker for ThreadWaker {
        fn wake_users(&self, _users: &[&UserId], _position: u64) {
            self.0
                .lock()
                .expect("lock")
                .push(std::thread::current().id());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn timer_writes_run_off_the_async_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), false).expect("db"));
        let waker = Arc::new(ThreadWaker(Mutex::new(Vec::new())));
        let config = PresenceServiceConfig {
            status_per_second: 0.0,
            engine: PresenceConfig {
                idle_timeout_ms: 50,
                ..Default::default()
            },
            ..Default::default()
        };
        let svc = PresenceService::open(db, config, waker.clone()).expect("open");
        let timer = svc.spawn_timer();
        let a = uid("@a:x");
        svc.set_status(&a, "D", DeviceState::Online, None)
            .expect("stored");
        let worker = std::thread::current().id();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The idle timer turns a unavailable and publishes that from the timer task.
        while waker.0.lock().expect("lock").len() < 2 {
            assert!(Instant::now() < deadline, "idle timer never fired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        timer.abort();
        let threads = waker.0.lock().expect("lock").clone();
        assert_eq!(threads[0], worker, "the PUT itself ran here");
        assert_ne!(threads[1], worker, "timer write ran on the async worker");
    }

    #[test]
    fn storage_failure_is_returned_not_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), false).expect("db"));
        let config = PresenceServiceConfig {
            status_per_second: 0.0,
            ..Default::default()
        };
        let svc = PresenceService::open(db.clone(), config, Arc::new(RecordingWaker::default()))
            .expect("open");
        let a = uid("@a:x");
        db.fail_writes(true);
        assert!(matches!(
            svc.set_status(&a, "D", DeviceState::Online, None),
            Err(SetStatusError::Storage(_))
        ));
        let over = PresenceOverride {
            state: presence_core::PresenceState::Unavailable,
            status_msg: None,
        };
        assert!(svc.set_override(&a, Some(over)).is_err());
        let room: ruma::OwnedRoomId = "!r:x".try_into().expect("room");
        db.fail_writes(false);
        svc.set_server_name("x".try_into().expect("server name"));
        // A fresh owner: a's failed override is in force in memory, so a changes nothing.
        let (a, b, c) = (uid("@d:x"), uid("@b:x"), uid("@c:x"));
        svc.membership_changed(&room, &a, true);
        svc.membership_changed(&room, &b, true);
        svc.membership_changed(&room, &c, true);
        svc.set_status(&a, "D", DeviceState::Busy, None)
            .expect("stored");
        db.fail_writes(true);
        // Ignoring b hides a's presence from b: that marker write fails, so does the call.
        assert!(
            svc.set_ignored_users(&a, Some(&json!({ "ignored_users": { "@b:x": {} } })), 1)
                .is_err()
        );
        assert!(
            svc.set_sharing_config(&a, Some(&json!({ "denied_users": ["@c:x"] })))
                .is_err()
        );
    }
}
