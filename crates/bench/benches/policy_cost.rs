//! What MSC4325 policy evaluation costs the server for one presence update in a
//! 10,000-member room with a 1,000-entry sharing config. A measurement, not a check (it
//! asserts nothing about time); run it (release profile):
//!
//! ```sh
//! cargo bench -p bench --bench policy_cost
//! ```
//!
//! Per-update times are the mean CPU time of the measuring thread over at least 0.5 s of
//! repetitions (`/proc/thread-self/schedstat`), with the median wall time per call beside it;
//! one-off costs are single wall-clock measurements. Results are recorded in
//! docs/benchmarks.md ("Presence privacy policy").
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use presence_core::DeviceState;
use presence_service::{PresenceService, PresenceServiceConfig, SyncWaker};
use ruma::{OwnedRoomId, OwnedUserId, UserId, server_name};
use serde_json::{Value, json};
use storage::Db;

mod common;
use common::measure;

const MEMBERS: usize = 10_000;

/// Counts woken users (the notifier's own work is not policy cost).
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl SyncWaker for CountingWaker {
    fn wake_users(&self, users: &[&UserId], _position: u64) {
        self.0.fetch_add(users.len(), Ordering::Relaxed);
    }
}

fn member(i: usize) -> OwnedUserId {
    format!("@user{i:05}:example.org").try_into().expect("id")
}

/// 1,000 entries: exact IDs (some of them members), globs and room IDs in both lists.
fn mixed_config() -> Value {
    let allowed: Vec<String> = (0..500)
        .map(|i| match i % 5 {
            0..=2 => format!("@user{:05}:example.org", i * 17 % MEMBERS),
            3 => format!("@friend{i}*:example.org"),
            _ => format!("!allowed{i}:example.org"),
        })
        .collect();
    let denied: Vec<String> = (0..500)
        .map(|i| match i % 5 {
            0..=2 => format!("@user{:05}:example.org", i * 31 % MEMBERS + 1),
            3 => format!("@*spam{i}*:*"),
            _ => format!("!denied{i}:example.org"),
        })
        .collect();
    json!({ "allowed_users": allowed, "denied_users": denied })
}

/// 1,000 globs, none of them a plain prefix or suffix (the slow path of `GlobSet`).
fn glob_config() -> Value {
    let allowed: Vec<String> = (0..500).map(|i| format!("@user{i:03}?*:ex*.org")).collect();
    let denied: Vec<String> = (0..500).map(|i| format!("@*r{i:03}*:*")).collect();
    json!({ "allowed_users": allowed, "denied_users": denied })
}

fn main() {
    for (name, config) in [
        ("no config (legacy)", None),
        ("1,000 mixed entries", Some(mixed_config())),
        ("1,000 globs", Some(glob_config())),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), false).expect("db"));
        let waker = Arc::new(CountingWaker::default());
        let svc = PresenceService::open(
            db,
            PresenceServiceConfig {
                status_per_second: 0.0,
                ..Default::default()
            },
            waker.clone(),
        )
        .expect("open");
        svc.set_server_name(server_name!("example.org").to_owned());
        let owner: OwnedUserId = "@owner:example.org".try_into().expect("id");
        let room: OwnedRoomId = "!big:example.org".try_into().expect("room");
        svc.membership_changed(&room, &owner, true);
        let members: Vec<OwnedUserId> = (0..MEMBERS).map(member).collect();
        for m in &members {
            svc.membership_changed(&room, m, true);
        }
        svc.set_status(&owner, "D", DeviceState::Online, None)
            .expect("ok");

        let once = Duration::ZERO;
        let (_, config_change, _) = measure(once, 1, || {
            if let Some(c) = &config {
                svc.set_sharing_config(&owner, Some(c)).expect("stored");
            }
        });
        let budget = Duration::from_millis(500);
        // Builds the cache on first use, like the first update would.
        let audience = svc.fanout(&owner);
        let mut toggle = false;
        let (update_cpu, update_wall, _) = measure(budget, 20_000, || {
            toggle = !toggle;
            let state = if toggle {
                DeviceState::Unavailable
            } else {
                DeviceState::Online
            };
            svc.set_status(&owner, "D", state, None).expect("ok")
        });
        let (serving_cpu, serving_wall, visible) = measure(budget, 1_000, || {
            members.iter().filter(|v| svc.pushes_to(v, &owner)).count()
        });
        // For comparison: the rule evaluated from scratch for every member (what each update
        // would cost without the cached push audience).
        let (uncached_cpu, _, _) = measure(budget, 20, || {
            members.iter().filter(|v| svc.may_see(v, &owner)).count()
        });
        let newcomer: OwnedUserId = "@newcomer:example.org".try_into().expect("id");
        let (_, join, _) = measure(once, 1, || svc.membership_changed(&room, &newcomer, true));
        let (_, leave, _) = measure(once, 1, || svc.membership_changed(&room, &newcomer, false));
        println!(
            "{name}: push audience {} of {MEMBERS} members\n  \
             per update (engine + fan-out decision + RocksDB write + waking): {update_cpu:?} CPU \
             ({update_wall:?} wall)\n  \
             serving: {serving_cpu:?} CPU ({serving_wall:?} wall) for all {MEMBERS} viewers' /sync \
             checks, {visible} carry it\n  \
             uncached: the rule evaluated for all {MEMBERS} members {uncached_cpu:?} CPU\n  \
             one-off (wall): config change (compile + diff + markers) {config_change:?}, \
             a join {join:?}, a leave {leave:?}",
            audience.len() - 1,
        );
    }
}
