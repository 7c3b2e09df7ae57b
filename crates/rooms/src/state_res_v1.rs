//! State resolution v1 (spec: "Room version 1 — state resolution"), the algorithm of
//! room version 1 only; ruma-state-res implements v2 and v2.1, not this one.
//!
//! To resolve states S1…Sn:
//! 1. R = the union of the states, leaving out conflicted keys (a key is conflicted when
//!    two states hold different events for it; a key only some states hold is not).
//! 2. `m.room.power_levels` conflicts: the candidates sorted by ascending depth, then
//!    descending sha1(event ID); the first goes into R, each next one replaces it while it
//!    passes the authorization rules in state R; the first that fails stops the walk.
//! 3. The same for `m.room.join_rules`, then for every conflicted `m.room.member` key
//!    (each against R as it stood when the member step began, as Synapse does).
//! 4. Every other conflicted key: the event with the highest depth and lowest
//!    sha1(event ID) that passes the authorization rules in R; if none does, the one with
//!    the lowest depth (Synapse's choice, which the spec leaves open).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ruma::OwnedEventId;
use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::check_state_dependent_auth_rules;
use sha1::{Digest, Sha1};

use crate::pdu::Pdu;
use crate::resolve::EventCache;
use crate::{Result, RoomError, StateMap};

type Key = (String, String);

/// Resolve `maps` (states of one room of version 1) into one.
pub(crate) fn resolve_v1(
    rules: &RoomVersionRules,
    maps: &[StateMap],
    cache: &EventCache<'_>,
) -> Result<StateMap> {
    let mut candidates: BTreeMap<Key, BTreeSet<OwnedEventId>> = BTreeMap::new();
    for m in maps {
        for (k, id) in m {
            candidates.entry(k.clone()).or_default().insert(id.clone());
        }
    }
    let mut resolved = StateMap::new();
    let mut conflicted: BTreeMap<Key, Vec<Arc<Pdu>>> = BTreeMap::new();
    for (k, ids) in candidates {
        if ids.len() == 1 {
            resolved.extend(ids.into_iter().map(|id| (k.clone(), id)));
            continue;
        }
        let mut events = Vec::with_capacity(ids.len());
        for id in &ids {
            let ev = cache.get(id).ok_or_else(|| {
                RoomError::Internal(format!("state resolution v1: unknown event {id}"))
            })?;
            events.push(ev);
        }
        conflicted.insert(k, events);
    }

    let pl = ("m.room.power_levels".to_owned(), String::new());
    if let Some(events) = conflicted.remove(&pl)
        && let Some(winner) = resolve_auth_events(rules, events, &resolved, cache)
    {
        resolved.insert(pl, winner);
    }
    let jr = ("m.room.join_rules".to_owned(), String::new());
    if let Some(events) = conflicted.remove(&jr)
        && let Some(winner) = resolve_auth_events(rules, events, &resolved, cache)
    {
        resolved.insert(jr, winner);
    }
    let member_keys: Vec<Key> = conflicted
        .keys()
        .filter(|(t, _)| t == "m.room.member")
        .cloned()
        .collect();
    let before_members = resolved.clone();
    for k in member_keys {
        if let Some(events) = conflicted.remove(&k)
            && let Some(winner) = resolve_auth_events(rules, events, &before_members, cache)
        {
            resolved.insert(k, winner);
        }
    }
    let auth_state = resolved.clone();
    for (k, events) in conflicted {
        if let Some(winner) = resolve_normal_events(rules, events, &auth_state, cache) {
            resolved.insert(k, winner);
        }
    }
    Ok(resolved)
}

fn sha1_of(id: &OwnedEventId) -> Vec<u8> {
    Sha1::digest(id.as_str().as_bytes()).to_vec()
}

/// Whether `ev` passes the authorization rules in state `state`.
fn allowed(
    rules: &RoomVersionRules,
    ev: &Arc<Pdu>,
    state: &StateMap,
    cache: &EventCache<'_>,
) -> bool {
    check_state_dependent_auth_rules(&rules.authorization, &**ev, |t: &StateEventType, k| {
        state
            .get(&(t.to_string(), k.to_owned()))
            .and_then(|id| cache.get(id))
    })
    .is_ok()
}

/// Steps 2 and 3: ascending depth, then descending sha1; walk while each passes.
fn resolve_auth_events(
    rules: &RoomVersionRules,
    mut events: Vec<Arc<Pdu>>,
    state: &StateMap,
    cache: &EventCache<'_>,
) -> Option<OwnedEventId> {
    events.sort_by(|a, b| {
        a.depth
            .cmp(&b.depth)
            .then_with(|| sha1_of(&b.event_id).cmp(&sha1_of(&a.event_id)))
    });
    let mut r = state.clone();
    let mut iter = events.iter();
    // Conflicted keys have at least two candidates.
    let first = iter.next()?;
    let mut winner = first;
    for ev in iter {
        // The previous winner is part of R for this check.
        if let Some(pair) = winner.state_pair() {
            r.insert(pair, winner.event_id.clone());
        }
        if !allowed(rules, ev, &r, cache) {
            break;
        }
        winner = ev;
    }
    Some(winner.event_id.clone())
}

/// Step 4: highest depth, then lowest sha1, that passes; else the lowest depth.
fn resolve_normal_events(
    rules: &RoomVersionRules,
    mut events: Vec<Arc<Pdu>>,
    state: &StateMap,
    cache: &EventCache<'_>,
) -> Option<OwnedEventId> {
    events.sort_by(|a, b| {
        b.depth
            .cmp(&a.depth)
            .then_with(|| sha1_of(&a.event_id).cmp(&sha1_of(&b.event_id)))
    });
    for ev in &events {
        if allowed(rules, ev, state, cache) {
            return Some(ev.event_id.clone());
        }
    }
    events.last().map(|e| e.event_id.clone())
}

#[cfg(test)]
mod tests {
    use ruma::RoomVersionId;
    use serde_json::json;

    use crate::tests_remote::{Fixture, message, st};
    use crate::{Received, StateMap};

    fn pl_key() -> (String, String) {
        ("m.room.power_levels".to_owned(), String::new())
    }

    fn name_key() -> (String, String) {
        ("m.room.name".to_owned(), String::new())
    }

    fn after(f: &Fixture, id: &ruma::OwnedEventId) -> StateMap {
        let ev = f.svc.event_any(id).expect("read").expect("known");
        f.svc.state_after(&ev).expect("state")
    }

    #[test]
    fn power_levels_walk_stops_at_the_first_unauthorised_event() {
        let f = Fixture::new(&RoomVersionId::V1, 50);
        // Bob (50) may change the power levels.
        let mut pl = f.current_content("m.room.power_levels");
        pl["events"]["m.room.power_levels"] = json!(50);
        f.svc
            .send_state_event(&f.alice, &f.room, "m.room.power_levels", "", pl)
            .expect("power levels");
        let fork = f.extremities()[0].clone();
        // Branch A (depth +1): Alice takes Bob's power away.
        let mut pl = f.current_content("m.room.power_levels");
        pl["users"][f.bob.as_str()] = json!(0);
        let a = f
            .svc
            .send_state_event(&f.alice, &f.room, "m.room.power_levels", "", pl)
            .expect("demote");
        // Branch B (depth +2, so after A in the walk): Bob, still 50 there, changes the
        // power levels too.
        let (m_id, m) = f.remote_on(&f.bob, message("hi"), &fork, crate::now_ms());
        assert!(matches!(f.receive(m), Received::Accepted { .. }));
        let bobs = after(&f, &m_id);
        let pl_before = bobs[&pl_key()].clone();
        let mut content = f
            .svc
            .event_any(&pl_before)
            .expect("r")
            .expect("pl")
            .content();
        content["users"]["@carol:remote.example"] = json!(10);
        let (b_id, b) = f.remote_on(
            &f.bob,
            st("m.room.power_levels", "", content),
            &m_id,
            crate::now_ms(),
        );
        // It passes its auth events; against the current state (Alice's demotion) it
        // soft-fails, which keeps it in the DAG with its own state after it.
        let r = f.receive(b);
        assert!(
            matches!(r, Received::Accepted { .. } | Received::SoftFailed { .. }),
            "{r:?}"
        );
        let bobs = after(&f, &b_id);
        assert_eq!(bobs[&pl_key()], b_id);
        let alices = after(&f, &a.event_id);
        let resolved = f
            .svc
            .resolve_states(&f.room, &[alices, bobs])
            .expect("resolve");
        assert_eq!(
            resolved[&pl_key()],
            a.event_id,
            "Bob's change is not allowed once Alice's is in R"
        );
    }

    #[test]
    fn other_conflicts_go_to_the_deepest_allowed_event() {
        let f = Fixture::new(&RoomVersionId::V1, 50);
        let fork = f.extremities()[0].clone();
        // Alice names the room on one branch, later in time but shallower.
        let a = f
            .svc
            .send_state_event(&f.alice, &f.room, "m.room.name", "", json!({"name": "A"}))
            .expect("name A");
        // Bob's branch: two events, the name deeper and older.
        let old = crate::now_ms() - 60_000;
        let (m_id, m) = f.remote_on(&f.bob, message("first"), &fork, old);
        assert!(matches!(f.receive(m), Received::Accepted { .. }));
        let (b_id, b) = f.remote_on(
            &f.bob,
            st("m.room.name", "", json!({"name": "B"})),
            &m_id,
            old,
        );
        assert!(matches!(f.receive(b), Received::Accepted { .. }));
        let resolved = f
            .svc
            .resolve_states(&f.room, &[after(&f, &a.event_id), after(&f, &b_id)])
            .expect("resolve");
        // v1 goes by depth (v2 would apply the later timestamp, Alice's, last).
        assert_eq!(resolved[&name_key()], b_id);
        // The room's current state is that resolution too.
        assert_eq!(
            f.svc.current_state(&f.room).expect("state")[&name_key()],
            b_id
        );
        // Keys only one side changed, or neither, are unconflicted and kept.
        let jr = ("m.room.join_rules".to_owned(), String::new());
        assert_eq!(resolved[&jr], after(&f, &a.event_id)[&jr]);
    }
}
