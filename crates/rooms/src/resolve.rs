//! State resolution v2 (via `ruma::state_res::resolve`; v1 in `state_res_v1.rs`) for forked DAGs, plus the
//! event cache the authorization rules and resolution fetch events through.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::room_version_rules::{RoomVersionRules, StateResolutionVersion};
use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId};

use crate::pdu::Pdu;
use crate::{Result, RoomError, RoomService, StateMap};

/// Parsed events, loaded from `Cf::Events` on first use.
pub(crate) struct EventCache<'a> {
    svc: &'a RoomService,
    map: RefCell<HashMap<OwnedEventId, Option<Arc<Pdu>>>>,
}

impl<'a> EventCache<'a> {
    pub fn new(svc: &'a RoomService) -> Self {
        EventCache {
            svc,
            map: RefCell::new(HashMap::new()),
        }
    }

    pub fn insert(&self, pdu: Arc<Pdu>) {
        self.map
            .borrow_mut()
            .insert(pdu.event_id.clone(), Some(pdu));
    }

    pub fn get(&self, id: &EventId) -> Option<Arc<Pdu>> {
        if let Some(hit) = self.map.borrow().get(id) {
            return hit.clone();
        }
        let loaded = match self.svc.event_any(id) {
            Ok(Some(ev)) => match Pdu::parse(ev.event_id.clone(), &ev.pdu) {
                Ok(mut p) => {
                    // The authorization rules and state resolution skip rejected events.
                    p.rejected = ev.status == crate::store::EventStatus::Rejected;
                    Some(Arc::new(p))
                }
                Err(e) => {
                    tracing::warn!(event_id = %id, error = %e, "stored event does not parse");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(event_id = %id, error = %e, "cannot load event");
                None
            }
        };
        self.map.borrow_mut().insert(id.to_owned(), loaded.clone());
        loaded
    }
}

/// The conflicted state subgraph (state resolution v2.1, room v12): the events on an
/// `auth_events` path from one conflicted state event to another, the conflicted events
/// included.
fn conflicted_state_subgraph(
    conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>,
    cache: &EventCache<'_>,
) -> EventIdSet<OwnedEventId> {
    let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    // Everything reachable from a conflicted event through auth_events.
    let mut reached: HashSet<OwnedEventId> = HashSet::new();
    let mut stack: Vec<OwnedEventId> = targets.iter().cloned().collect();
    while let Some(id) = stack.pop() {
        if let Some(ev) = cache.get(&id) {
            for a in ev.auth_parents() {
                if reached.insert(a.clone()) {
                    stack.push(a.clone());
                }
            }
        }
    }
    // Of those, the ones from which a conflicted event is reachable (memoised; the auth
    // graph is acyclic, and an event in progress counts as not reaching, so a malformed
    // cycle cannot loop).
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    fn reaches_target(
        id: &OwnedEventId,
        targets: &HashSet<OwnedEventId>,
        cache: &EventCache<'_>,
        memo: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if let Some(r) = memo.get(id) {
            return *r;
        }
        memo.insert(id.clone(), false);
        let mut found = false;
        if let Some(ev) = cache.get(id) {
            for a in ev.auth_parents() {
                if targets.contains(a) || reaches_target(a, targets, cache, memo) {
                    found = true;
                    break;
                }
            }
        }
        memo.insert(id.clone(), found);
        found
    }
    let mut out: EventIdSet<OwnedEventId> = targets.iter().cloned().collect();
    for id in &reached {
        if targets.contains(id) || reaches_target(id, &targets, cache, &mut reaches) {
            out.insert(id.clone());
        }
    }
    out
}

impl RoomService {
    /// Resolve several states of one room into one (state resolution v2; v1 for room
    /// version 1, `state_res_v1.rs`).
    pub(crate) fn resolve_state_maps(
        &self,
        rules: &RoomVersionRules,
        maps: &[StateMap],
        cache: &EventCache<'_>,
    ) -> Result<StateMap> {
        let Some(first) = maps.first() else {
            return Ok(StateMap::new());
        };
        if maps.iter().all(|m| m == first) {
            return Ok(first.clone());
        }
        let res_rules = match &rules.state_res {
            StateResolutionVersion::V2(r) => r,
            StateResolutionVersion::V1 => {
                return crate::state_res_v1::resolve_v1(rules, maps, cache);
            }
            _ => {
                return Err(RoomError::Internal(
                    "unknown state resolution version".into(),
                ));
            }
        };
        let ruma_maps: Vec<ruma::state_res::StateMap<OwnedEventId>> = maps
            .iter()
            .map(|m| {
                m.iter()
                    .map(|((t, k), e)| ((StateEventType::from(t.as_str()), k.clone()), e.clone()))
                    .collect()
            })
            .collect();
        let auth_chains: Vec<EventIdSet<OwnedEventId>> = maps
            .iter()
            .map(|m| self.auth_chain(m.values(), cache).into_iter().collect())
            .collect();
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            res_rules,
            ruma_maps.iter(),
            auth_chains,
            |id| cache.get(id),
            |conflicted| Some(conflicted_state_subgraph(conflicted, cache)),
        )
        .map_err(|e| RoomError::Internal(format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((t, k), e)| ((t.to_string(), k), e))
            .collect())
    }

    /// Resolve the given states of a room (exposed for federation and tests).
    pub fn resolve_states(&self, room: &ruma::RoomId, maps: &[StateMap]) -> Result<StateMap> {
        let summary = self.require_summary(room)?;
        let rules = crate::persist::rules_for(&summary.version)?;
        let cache = EventCache::new(self);
        self.resolve_state_maps(&rules, maps, &cache)
    }
}
