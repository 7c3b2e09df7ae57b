//! Counters of what the presence service did, for the server's `/metrics` and status page.
//!
//! Plain relaxed atomics owned by the service and read at scrape time: the hot path (every
//! `/sync`, every status update, every audience decision) pays one uncontended `fetch_add`,
//! takes no lock and allocates nothing, and this crate needs no metrics library. The binary
//! turns a [`PresenceStatsSnapshot`] into Prometheus series.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use presence_core::PresenceState;

#[derive(Debug, Default)]
pub struct PresenceStats {
    /// Presence inputs from local clients: `PUT .../status`, overrides, `/sync` with
    /// `set_presence`.
    updates_in_local: AtomicU64,
    /// Presence entries accepted from other servers (`m.presence` EDUs).
    updates_in_federation: AtomicU64,
    /// Visible presence changes published (stored and fanned out to local `/sync`s).
    published: AtomicU64,
    /// Published changes by their new state, in [`PresenceState::ALL`] order.
    transitions: [AtomicU64; 5],
    /// Local users whose last published state is each state, in [`PresenceState::ALL`]
    /// order (offline is not kept: users who never came online are not counted).
    current: [AtomicI64; 5],
    /// Audience decisions made by a user's sharing policy (MSC4325 config or ignore list).
    sharing_allowed: AtomicU64,
    sharing_denied: AtomicU64,
}

/// One reading of [`PresenceStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceStatsSnapshot {
    pub updates_in_local: u64,
    pub updates_in_federation: u64,
    pub published: u64,
    /// `(state, published changes into it)`, for every state.
    pub transitions: Vec<(PresenceState, u64)>,
    /// `(state, local users in it now)`, for every state but offline.
    pub users_now: Vec<(PresenceState, u64)>,
    pub sharing_allowed: u64,
    pub sharing_denied: u64,
}

fn state_index(state: PresenceState) -> usize {
    match state {
        PresenceState::Online => 0,
        PresenceState::Unavailable => 1,
        PresenceState::Offline => 2,
        PresenceState::Busy => 3,
        PresenceState::Disabled => 4,
    }
}

impl PresenceStats {
    pub(crate) fn local_input(&self) {
        self.updates_in_local.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn federation_inputs(&self, n: usize) {
        self.updates_in_federation
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A published change from `previous` (what viewers were last told) to `current`.
    pub(crate) fn published(&self, previous: PresenceState, current: PresenceState) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.transitions[state_index(current)].fetch_add(1, Ordering::Relaxed);
        if previous != current {
            if previous != PresenceState::Offline {
                self.current[state_index(previous)].fetch_sub(1, Ordering::Relaxed);
            }
            if current != PresenceState::Offline {
                self.current[state_index(current)].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn sharing_decision(&self, allowed: bool) {
        let c = if allowed {
            &self.sharing_allowed
        } else {
            &self.sharing_denied
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PresenceStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PresenceStatsSnapshot {
            updates_in_local: get(&self.updates_in_local),
            updates_in_federation: get(&self.updates_in_federation),
            published: get(&self.published),
            transitions: PresenceState::ALL
                .iter()
                .map(|s| (*s, get(&self.transitions[state_index(*s)])))
                .collect(),
            users_now: PresenceState::ALL
                .iter()
                .filter(|s| **s != PresenceState::Offline)
                .map(|s| {
                    let n = self.current[state_index(*s)].load(Ordering::Relaxed);
                    (*s, n.max(0) as u64)
                })
                .collect(),
            sharing_allowed: get(&self.sharing_allowed),
            sharing_denied: get(&self.sharing_denied),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_series() {
        let s = PresenceStats::default();
        s.local_input();
        s.federation_inputs(3);
        s.published(PresenceState::Offline, PresenceState::Busy);
        s.published(PresenceState::Offline, PresenceState::Online);
        s.published(PresenceState::Busy, PresenceState::Online);
        s.sharing_decision(true);
        s.sharing_decision(false);
        s.sharing_decision(false);
        let snap = s.snapshot();
        assert_eq!((snap.updates_in_local, snap.updates_in_federation), (1, 3));
        assert_eq!(snap.published, 3);
        let of = |st| snap.transitions.iter().find(|(s, _)| *s == st).unwrap().1;
        assert_eq!(of(PresenceState::Online), 2);
        assert_eq!(of(PresenceState::Busy), 1);
        assert_eq!(of(PresenceState::Offline), 0);
        assert_eq!((snap.sharing_allowed, snap.sharing_denied), (1, 2));
        let now = |st| snap.users_now.iter().find(|(s, _)| *s == st).unwrap().1;
        assert_eq!(
            (now(PresenceState::Online), now(PresenceState::Busy)),
            (2, 0)
        );
        assert!(
            snap.users_now
                .iter()
                .all(|(s, _)| *s != PresenceState::Offline)
        );
    }
}
