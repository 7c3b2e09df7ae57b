//! State resolution v2 (via `ruma::state_res::resolve`) for forked DAGs, plus the
//! event cache the authorization rules and resolution fetch events through.
use std::cell::RefCell;
use std::collections::HashMap;
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

impl RoomService {
    /// Resolve several states of one room into one (state resolution v2).
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
        let StateResolutionVersion::V2(res_rules) = &rules.state_res else {
            return Err(RoomError::Internal(
                "room version does not use state resolution v2".into(),
            ));
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
            |_| None,
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
