//! Property tests: random sequences of inputs for two users and three devices, driven the way
//! the server drives the engine (timers fired at their deadlines), checking the invariants
//! after every step.
//!
//! The oracle for "visible" is not the engine's own `visibly_differs` but what a viewer is
//! actually served: the `m.presence` content a client receives ([`Seen`]), built here from the
//! public view, so a bug in the engine's notion of visibility cannot hide itself.

use std::collections::HashMap;

use proptest::prelude::*;
use ruma::{OwnedUserId, UserId, user_id};

use super::*;
use crate::Audience;

const T0: u64 = 1_700_000_000_000;
const DEVICES: [&str; 3] = ["A", "B", "C"];

fn users() -> [&'static UserId; 2] {
    [user_id!("@alice:example.org"), user_id!("@bob:example.org")]
}

#[derive(Debug, Clone)]
enum Op {
    StartSync {
        user: usize,
        device: usize,
        set_presence: Option<DeviceState>,
    },
    EndSync {
        ticket: usize,
    },
    SetStatus {
        user: usize,
        device: usize,
        state: DeviceState,
        status_msg: Option<&'static str>,
    },
    SetOverride {
        user: usize,
        value: Option<(PresenceState, Option<&'static str>)>,
    },
    Activity {
        user: usize,
        device: usize,
    },
    RemoveDevice {
        user: usize,
        device: usize,
    },
    Wait {
        ms: u64,
    },
}

fn device_state() -> impl Strategy<Value = DeviceState> {
    prop_oneof![
        Just(DeviceState::Offline),
        Just(DeviceState::Unavailable),
        Just(DeviceState::Online),
        Just(DeviceState::Busy),
    ]
}

fn presence_state() -> impl Strategy<Value = PresenceState> {
    prop::sample::select(PresenceState::ALL.to_vec())
}

fn status_msg() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec!["lunch", "call", "zzz"]))
}

fn wait() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..2_000,
        25_000u64..35_000,
        55_000u64..65_000,
        295_000u64..305_000,
        Just(3_600_000u64),
        0u64..7_200_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0usize..2;
    let device = 0usize..DEVICES.len();
    prop_oneof![
        3 => (user.clone(), device.clone(), prop::option::of(device_state()))
            .prop_map(|(user, device, set_presence)| Op::StartSync { user, device, set_presence }),
        3 => (0usize..16).prop_map(|ticket| Op::EndSync { ticket }),
        2 => (user.clone(), device.clone(), device_state(), status_msg())
            .prop_map(|(user, device, state, status_msg)| Op::SetStatus { user, device, state, status_msg }),
        1 => (user.clone(), prop::option::of((presence_state(), status_msg())))
            .prop_map(|(user, value)| Op::SetOverride { user, value }),
        2 => (user.clone(), device.clone()).prop_map(|(user, device)| Op::Activity { user, device }),
        1 => (user, device).prop_map(|(user, device)| Op::RemoveDevice { user, device }),
        3 => wait().prop_map(|ms| Op::Wait { ms }),
    ]
}

fn rank(state: PresenceState) -> u8 {
    match state {
        PresenceState::Offline => 0,
        PresenceState::Unavailable => 1,
        PresenceState::Online => 2,
        PresenceState::Busy => 3,
        PresenceState::Disabled => 4,
    }
}

/// What a client is served for a presence, minus the age of the last activity (which the
/// view builder recomputes at serve time): the fields whose change a viewer can notice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    presence: PresenceState,
    status_msg: Option<String>,
    currently_active: Option<bool>,
    shows_last_active: bool,
}

fn seen(p: &EffectivePresence, now: u64) -> Seen {
    let c = p.content(now, Audience::Msc4042Client);
    Seen {
        presence: c.presence,
        status_msg: c.status_msg,
        currently_active: c.currently_active,
        shows_last_active: c.last_active_ago.is_some(),
    }
}

/// Drives an engine like the server would and checks every emitted change.
struct Harness {
    engine: PresenceEngine,
    now: u64,
    tickets: Vec<SyncTicket>,
    /// What each user's viewers were last told, rebuilt only from emitted changes.
    told: HashMap<OwnedUserId, EffectivePresence>,
    overrides: HashMap<OwnedUserId, PresenceOverride>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            engine: PresenceEngine::new(PresenceConfig::default()),
            now: T0,
            tickets: Vec::new(),
            told: HashMap::new(),
            overrides: HashMap::new(),
        }
    }

    fn record(&mut self, change: Option<PresenceChange>) -> Result<(), TestCaseError> {
        let Some(change) = change else { return Ok(()) };
        let now = self.now;
        // No change is emitted unless something a viewer is served changed...
        prop_assert!(
            seen(&change.previous, now) != seen(&change.current, now),
            "invisible change emitted: {change:?}"
        );
        // ...and changes chain: `previous` is exactly what viewers were told.
        let told = self
            .told
            .get(&change.user_id)
            .cloned()
            .unwrap_or_else(EffectivePresence::unknown);
        prop_assert_eq!(
            seen(&told, now),
            seen(&change.previous, now),
            "gap before {:?}",
            change
        );
        self.told.insert(change.user_id.clone(), change.current);
        Ok(())
    }

    /// Fires every timer up to `until`, at its exact deadline, like the server's timer task.
    fn run_timers(&mut self, until: u64) -> Result<(), TestCaseError> {
        while let Some(deadline) = self.engine.next_deadline().filter(|&d| d <= until) {
            prop_assert!(deadline >= self.now, "deadline in the past");
            self.now = deadline;
            for change in self.engine.advance(deadline) {
                self.record(Some(change))?;
            }
        }
        self.now = until;
        for change in self.engine.advance(until) {
            self.record(Some(change))?;
        }
        // Idempotence: a second advance at the same instant finds nothing.
        prop_assert!(self.engine.advance(until).is_empty());
        Ok(())
    }

    fn check_invariants(&mut self) -> Result<(), TestCaseError> {
        for user in users() {
            let current = self.engine.current(user, self.now);
            // Edge-triggered completeness: what viewers were told is what is true now.
            let told = self
                .told
                .get(user)
                .cloned()
                .unwrap_or_else(EffectivePresence::unknown);
            prop_assert_eq!(
                seen(&told, self.now),
                seen(&current, self.now),
                "{} told {:?} but is {:?}",
                user,
                told,
                current
            );
            // The override always wins.
            if let Some(ov) = self.overrides.get(user) {
                prop_assert_eq!(current.state, ov.state);
                prop_assert!(current.overridden);
                prop_assert!(!current.currently_active);
                prop_assert_eq!(current.last_active_ts, None);
                if ov.state != PresenceState::Disabled {
                    prop_assert_eq!(&current.status_msg, &ov.status_msg);
                }
            } else {
                prop_assert!(!current.overridden);
                prop_assert_ne!(current.state, PresenceState::Disabled);
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        match *op {
            Op::StartSync {
                user,
                device,
                set_presence,
            } => {
                let user = users()[user];
                let before = self.engine.current(user, now).state;
                let started = self
                    .engine
                    .sync_started(user, DEVICES[device], set_presence, now);
                prop_assert_eq!(
                    started.ticket.is_none(),
                    set_presence == Some(DeviceState::Offline)
                );
                if set_presence == Some(DeviceState::Offline) {
                    prop_assert!(started.change.is_none());
                }
                self.record(started.change)?;
                if set_presence.is_none() {
                    // A plain sync never lowers presence; in particular busy stays busy.
                    let after = self.engine.current(user, now).state;
                    prop_assert!(
                        rank(after) >= rank(before),
                        "plain sync {before} -> {after}"
                    );
                }
                self.tickets.extend(started.ticket);
            }
            Op::EndSync { ticket } => {
                if !self.tickets.is_empty() {
                    let ticket = self.tickets.swap_remove(ticket % self.tickets.len());
                    let change = self.engine.sync_ended(ticket, now);
                    self.record(change)?;
                }
            }
            Op::SetStatus {
                user,
                device,
                state,
                status_msg,
            } => {
                let msg = status_msg.map(|m| StatusMsg::new(m).unwrap().unwrap());
                let change =
                    self.engine
                        .set_status(users()[user], DEVICES[device], state, msg, now);
                self.record(change)?;
            }
            Op::SetOverride { user, value } => {
                let user = users()[user];
                let value = value.map(|(state, msg)| PresenceOverride {
                    state,
                    status_msg: msg.map(|m| StatusMsg::new(m).unwrap().unwrap()),
                });
                match &value {
                    Some(v) => self.overrides.insert(user.to_owned(), v.clone()),
                    None => self.overrides.remove(user),
                };
                let change = self.engine.set_override(user, value, now);
                self.record(change)?;
            }
            Op::Activity { user, device } => {
                let change = self.engine.activity(users()[user], DEVICES[device], now);
                self.record(change)?;
            }
            Op::RemoveDevice { user, device } => {
                let change = self
                    .engine
                    .device_removed(users()[user], DEVICES[device], now);
                self.record(change)?;
            }
            Op::Wait { ms } => self.run_timers(now + ms)?,
        }
        self.check_invariants()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Override wins, plain syncs never lower presence, every change is visible and none is
    /// missed, `advance` is idempotent.
    #[test]
    fn invariants_hold_for_any_input_sequence(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op)?;
        }
    }

    /// Once every sync has ended and nothing else happens, every user without an override ends
    /// offline within the busy timeout, and the engine goes quiet.
    #[test]
    fn devices_that_stop_syncing_end_offline(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op)?;
        }
        for ticket in std::mem::take(&mut h.tickets) {
            let change = h.engine.sync_ended(ticket, h.now);
            h.record(change)?;
        }
        let config = *h.engine.config();
        let horizon = h.now + config.busy_timeout_ms.max(config.sync_online_timeout_ms);
        h.run_timers(horizon)?;
        h.check_invariants()?;
        for user in users() {
            if !h.overrides.contains_key(user) {
                prop_assert_eq!(h.engine.current(user, h.now).state, PresenceState::Offline);
            }
        }
        prop_assert_eq!(h.engine.next_deadline(), None);
    }

    /// Snapshot and restore at the same instant is invisible.
    #[test]
    fn restore_is_invisible(ops in prop::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op)?;
        }
        let mut restarted = PresenceEngine::new(*h.engine.config());
        for user in users() {
            let before = h.engine.current(user, h.now);
            if let Some(snapshot) = h.engine.snapshot(user) {
                let json = serde_json::to_string(&snapshot).unwrap();
                let snapshot: PresenceSnapshot = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(restarted.restore(user, snapshot, h.now), None);
            }
            let after = restarted.current(user, h.now);
            prop_assert_eq!(seen(&before, h.now), seen(&after, h.now), "{:?} != {:?}", before, after);
            prop_assert_eq!(before.last_active_ts, after.last_active_ts);
        }
    }
}
