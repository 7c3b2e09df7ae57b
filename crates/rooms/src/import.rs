//! Rooms that start elsewhere: importing the state of a room joined over federation
//! ([`RoomService::import_join`], after `send_join`) and remote invites
//! ([`RoomService::receive_invite`]).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules};
use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedUserId, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::Value;
use storage::Cf;

use crate::pdu::Pdu;
use crate::persist::rules_for;
use crate::remote::{KeyLookup, outlier_record, room_of};
use crate::resolve::EventCache;
use crate::store::{
    EventStatus, MembershipRecord, PrevState, RoomSummary, StateAtRecord, StoredEvent,
    invite_state_key, log_prefix, map_to_entries, member_key, membership_key, state_key,
    summary_key, timeline_key,
};
use crate::{Membership, Result, RoomError, RoomService, SentEvent, StateMap};

/// Most events a `send_join` answer (state + auth chain) may bring.
pub const MAX_IMPORTED_EVENTS: usize = 100_000;

/// Most stripped state events kept with a remote invite.
pub const MAX_INVITE_STATE: usize = 50;

/// The authorization rules against an event's own auth events (spec: checks on receipt,
/// step 4), the check an outlier gets.
pub(crate) fn check_against_auth_events(
    rules: &RoomVersionRules,
    pdu: &Arc<Pdu>,
    cache: &EventCache<'_>,
) -> std::result::Result<(), String> {
    check_state_independent_auth_rules(&rules.authorization, &**pdu, |id| cache.get(id))?;
    if pdu.kind == ruma::events::TimelineEventType::RoomCreate {
        return Ok(());
    }
    let auth_state = crate::version::auth_events_state(rules, pdu, cache);
    check_state_dependent_auth_rules(
        &rules.authorization,
        &**pdu,
        |t: &StateEventType, k: &str| auth_state.get(&(t.to_string(), k.to_owned())).cloned(),
    )
}

/// Order events so that each comes after the auth events it cites from the same set
/// (Kahn's algorithm); events in a cycle come last, in input order.
fn auth_order(
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
    input: &[OwnedEventId],
) -> Vec<OwnedEventId> {
    let mut pending: HashMap<&OwnedEventId, usize> = HashMap::new();
    let mut dependents: HashMap<&OwnedEventId, Vec<&OwnedEventId>> = HashMap::new();
    for id in input {
        let pdu = &events[id];
        let deps: HashSet<&OwnedEventId> = pdu
            .auth_parents()
            .filter(|a| events.contains_key(*a))
            .collect();
        pending.insert(id, deps.len());
        for d in deps {
            dependents.entry(d).or_default().push(id);
        }
    }
    let mut ready: Vec<&OwnedEventId> = input.iter().filter(|id| pending[id] == 0).collect();
    ready.reverse();
    let mut out = Vec::with_capacity(input.len());
    let mut done: HashSet<&OwnedEventId> = HashSet::new();
    while let Some(id) = ready.pop() {
        if !done.insert(id) {
            continue;
        }
        out.push(id.clone());
        for d in dependents.get(id).into_iter().flatten() {
            if let Some(n) = pending.get_mut(d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    ready.push(d);
                }
            }
        }
    }
    for id in input {
        if !done.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

fn content_membership(pdu: &Pdu) -> Option<Membership> {
    serde_json::from_str::<Value>(pdu.content.get())
        .ok()
        .and_then(|c| {
            c.get("membership")
                .and_then(|m| m.as_str())
                .and_then(Membership::parse)
        })
}

impl RoomService {
    /// Join a room that lives elsewhere, with what `send_join` answered: `state` (the room
    /// state before the join) and `auth_chain`. Every one of those events is checked
    /// (signatures, hash, authorization rules against its own auth events) and stored as
    /// an outlier (failures are stored as rejected and left out of the state); then
    /// `join_event` (our user's join, as the resident server returned it) must pass the
    /// authorization rules against the imported state and becomes the first timeline
    /// event, with the imported state as the state before it. The room summary, current
    /// state and memberships are written in the same batch: the room exists here fully or
    /// not at all. Also used to rejoin a room this server knew before (the old state is
    /// replaced).
    pub fn import_join(
        &self,
        room: &RoomId,
        version: &RoomVersionId,
        join_event: CanonicalJsonObject,
        state: Vec<CanonicalJsonObject>,
        auth_chain: Vec<CanonicalJsonObject>,
        keys: &dyn KeyLookup,
    ) -> Result<SentEvent> {
        if state.len() + auth_chain.len() > MAX_IMPORTED_EVENTS {
            return Err(RoomError::TooLarge(format!(
                "the room's state and auth chain exceed {MAX_IMPORTED_EVENTS} events"
            )));
        }
        crate::parse_room_version(version.as_str())?;
        if let Some(v) = self.room_version(room)?
            && v != *version
        {
            return Err(RoomError::BadJson(format!(
                "room {room} is version {v}, not {version}"
            )));
        }
        let rules = rules_for(version)?;

        // 1. Signatures and hashes; events that fail them are dropped.
        let mut objs: HashMap<OwnedEventId, CanonicalJsonObject> = HashMap::new();
        let mut parsed: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let mut input = Vec::new();
        let mut state_ids = Vec::new();
        let n_state = state.len();
        for (i, obj) in state.into_iter().chain(auth_chain).enumerate() {
            if room_of(&obj).ok().as_deref() != Some(room) {
                return Err(RoomError::BadJson(
                    "an imported event is in another room".into(),
                ));
            }
            let (id, obj) = match self.verify_remote(version, obj, keys) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "dropping an imported event");
                    continue;
                }
            };
            if i < n_state {
                state_ids.push(id.clone());
            }
            if objs.contains_key(&id) {
                continue;
            }
            parsed.insert(id.clone(), Arc::new(Pdu::parse(id.clone(), &obj)?));
            objs.insert(id.clone(), obj);
            input.push(id);
        }
        let (join_id, join_obj) = self.verify_remote(version, join_event, keys)?;
        let join = Arc::new(Pdu::parse(join_id.clone(), &join_obj)?);
        if join.room_id != *room
            || join.kind != ruma::events::TimelineEventType::RoomMember
            || join.state_key.as_deref() != Some(join.sender.as_str())
            || join.sender.server_name() != self.server_name
            || content_membership(&join) != Some(Membership::Join)
        {
            return Err(RoomError::BadJson(
                "the join event is not a local user's join to this room".into(),
            ));
        }

        let _guard = self.lock_room(room);
        // 2. The authorization rules of each event against its own auth events, auth
        // events first.
        let cache = EventCache::new(self);
        for p in parsed.values() {
            cache.insert(p.clone());
        }
        let mut status: HashMap<OwnedEventId, EventStatus> = HashMap::new();
        for id in auth_order(&parsed, &input) {
            if let Some(known) = self.event_any(&id)? {
                status.insert(id, known.status);
                continue;
            }
            let pdu = &parsed[&id];
            match check_against_auth_events(&rules, pdu, &cache) {
                Ok(()) => {
                    status.insert(id, EventStatus::Outlier);
                }
                Err(reason) => {
                    tracing::warn!(%room, event_id = %id, %reason, "imported event rejected");
                    let mut rejected = Pdu::parse(id.clone(), &objs[&id])?;
                    rejected.rejected = true;
                    cache.insert(Arc::new(rejected));
                    status.insert(id, EventStatus::Rejected);
                }
            }
        }

        // 3. The state before the join.
        let mut before = StateMap::new();
        for id in &state_ids {
            if status.get(id) == Some(&EventStatus::Rejected) {
                continue;
            }
            let Some(pair) = parsed.get(id).and_then(|p| p.state_pair()) else {
                return Err(RoomError::BadJson(format!(
                    "{id} in the state is not a state event"
                )));
            };
            if before
                .insert(pair.clone(), id.clone())
                .is_some_and(|old| old != *id)
            {
                return Err(RoomError::BadJson(format!("two state events for {pair:?}")));
            }
        }
        let create_id = before
            .get(&("m.room.create".to_owned(), String::new()))
            .cloned()
            .ok_or_else(|| RoomError::BadJson("the room state has no m.room.create".into()))?;
        let create = cache
            .get(&create_id)
            .ok_or_else(|| RoomError::Internal("create event vanished".into()))?;
        let create_version = serde_json::from_str::<Value>(create.content.get())
            .ok()
            .and_then(|c| {
                c.get("room_version")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "1".to_owned());
        if create_version != version.as_str() {
            return Err(RoomError::BadJson(format!(
                "the create event says room version {create_version}, not {version}"
            )));
        }

        // 4. The join against its auth events and the state before it.
        cache.insert(join.clone());
        check_against_auth_events(&rules, &join, &cache)
            .map_err(|e| RoomError::Forbidden(format!("join event: {e}")))?;
        check_state_dependent_auth_rules(&rules.authorization, &*join, |t: &StateEventType, k| {
            before
                .get(&(t.to_string(), k.to_owned()))
                .and_then(|id| cache.get(id))
        })
        .map_err(|e| RoomError::Forbidden(format!("join event against the room state: {e}")))?;

        // 5. One write.
        let mut after = before.clone();
        after.insert(
            ("m.room.member".to_owned(), join.sender.to_string()),
            join_id.clone(),
        );
        let old_state = self.current_state(room)?;
        let old_summary = self.summary(room)?;
        // Another local user may already be in the room: two first joins that raced each
        // other through make_join/send_join each got a state without the other's join.
        // Then the held state and the answered one are two forks of the room: resolve
        // them (instead of replacing the held state, which would drop an acknowledged
        // join), and both ends stay forward extremities.
        let participating = old_summary.is_some()
            && old_state.iter().any(|((t, k), id)| {
                t == "m.room.member"
                    && UserId::parse(k.as_str()).is_ok_and(|u| u.server_name() == self.server_name)
                    && cache
                        .get(id)
                        .is_some_and(|p| content_membership(&p) == Some(Membership::Join))
            });
        if participating && old_state != after {
            after = self.resolve_state_maps(&rules, &[old_state.clone(), after], &cache)?;
            if after.get(&("m.room.member".to_owned(), join.sender.to_string())) != Some(&join_id) {
                return Err(RoomError::Forbidden(
                    "the join loses state resolution against the room's current state".into(),
                ));
            }
        }
        let member_of = |id: &OwnedEventId| -> Option<Membership> {
            parsed
                .get(id)
                .cloned()
                .or_else(|| (*id == join_id).then(|| join.clone()))
                .or_else(|| cache.get(id))
                .and_then(|p| content_membership(&p))
        };
        let members: Vec<(String, Membership, OwnedEventId)> = after
            .iter()
            .filter(|((t, _), _)| t == "m.room.member")
            .filter_map(|((_, k), id)| member_of(id).map(|m| (k.clone(), m, id.clone())))
            .collect();
        let prev_state = match before.get(&("m.room.member".to_owned(), join.sender.to_string())) {
            Some(id) => parsed.get(id).map(|p| PrevState {
                event_id: id.clone(),
                sender: p.sender.clone(),
                content: serde_json::from_str(p.content.get()).unwrap_or(Value::Null),
            }),
            None => None,
        };
        let old_members: Vec<String> = old_state
            .keys()
            .filter(|(t, _)| t == "m.room.member")
            .map(|(_, k)| k.clone())
            .collect();
        // Read before the positioned write (which holds up every room's writes).
        let mut new_outliers = Vec::new();
        for id in &input {
            if self.event_any(id)?.is_none() {
                new_outliers.push(outlier_record(id, objs[id].clone(), status[id]));
            }
        }
        drop(objs);
        let (pos, ()) = self.db.write_with_position(|pos, b| -> Result<()> {
            for rec in &new_outliers {
                b.put_json(Cf::Events, rec.event_id.as_str(), rec);
            }
            let record = StoredEvent {
                event_id: join_id.clone(),
                pos,
                pdu: join_obj,
                txn: None,
                redacted_because: None,
                prev_state,
                status: EventStatus::Timeline,
                off_stream: false,
            };
            b.put_json(Cf::Events, join_id.as_str(), &record);
            b.put(
                Cf::Timeline,
                timeline_key(room, pos),
                join_id.as_str().as_bytes().to_vec(),
            );
            crate::topo::put(b, room, join.depth, pos, &join_id);
            b.put_json(
                Cf::StateAt,
                join_id.as_str(),
                &StateAtRecord::Full {
                    state: map_to_entries(&before),
                },
            );
            b.put(
                Cf::RoomStream,
                crate::keys::room_stream::key(pos),
                room.as_str().as_bytes().to_vec(),
            );
            for (t, k) in old_state.keys() {
                if !after.contains_key(&(t.clone(), k.clone())) {
                    b.delete(Cf::Rooms, state_key(room, t, k));
                }
            }
            // The imported state is logged just before the join, so history visibility
            // and membership "at" the join and later see it.
            let log_pos = pos.saturating_sub(1);
            for ((t, k), id) in &after {
                b.put(
                    Cf::Rooms,
                    state_key(room, t, k),
                    id.as_str().as_bytes().to_vec(),
                );
                let at = if *id == join_id { pos } else { log_pos };
                b.put(
                    Cf::Rooms,
                    log_prefix(room, t, k).u64(at),
                    id.as_str().as_bytes().to_vec(),
                );
            }
            for user in &old_members {
                if !members.iter().any(|(u, _, _)| u == user) {
                    b.delete(Cf::Rooms, member_key(room, user));
                    b.delete(Cf::Memberships, membership_key(user, room));
                }
            }
            for (user, m, id) in &members {
                b.put(
                    Cf::Rooms,
                    member_key(room, user),
                    m.as_str().as_bytes().to_vec(),
                );
                let rec = MembershipRecord {
                    membership: *m,
                    pos,
                    event_id: id.clone(),
                    forgotten: false,
                };
                b.put_json(Cf::Memberships, membership_key(user, room), &rec);
            }
            b.delete(Cf::Rooms, invite_state_key(room, &join.sender));
            let summary = match old_summary {
                Some(s) => RoomSummary {
                    extremities: if participating {
                        let mut ends = s.extremities.clone();
                        ends.retain(|e| *e != join_id);
                        ends.push(join_id.clone());
                        ends
                    } else {
                        vec![join_id.clone()]
                    },
                    max_depth: s.max_depth.max(join.depth),
                    last_pos: pos,
                    ..s
                },
                None => RoomSummary {
                    version: version.clone(),
                    create_event: create_id.clone(),
                    extremities: vec![join_id.clone()],
                    max_depth: join.depth,
                    last_pos: pos,
                    public: false,
                },
            };
            b.put_json(Cf::Rooms, summary_key(room), &summary);
            Ok(())
        })?;
        if let Some(observer) = self.membership_observer.get() {
            for user in &old_members {
                if !members.iter().any(|(u, _, _)| u == user)
                    && let Ok(u) = <&UserId>::try_from(user.as_str())
                {
                    observer.membership_changed(room, u, None);
                }
            }
            for (user, m, _) in &members {
                if let Ok(u) = <&UserId>::try_from(user.as_str()) {
                    observer.membership_changed(room, u, Some(*m));
                }
            }
        }
        Ok(SentEvent {
            event_id: join_id,
            pos,
        })
    }

    /// A remote server invites a local user (`PUT /_matrix/federation/v2/invite`): the
    /// invite must be an `m.room.member` invite of a local user, sent by a user of
    /// `origin` and signed by it. It is countersigned with this server's key (the
    /// returned PDU is what the federation answer carries) and stored as an outlier with
    /// `invite_room_state` (stripped state, at most [`MAX_INVITE_STATE`] events); the
    /// invitee's membership becomes `invite` at a new stream position, so `/sync` shows
    /// the invite with that stripped state ([`RoomService::invite_state`]).
    pub fn receive_invite(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        invite: CanonicalJsonObject,
        invite_room_state: Vec<Value>,
        keys: &dyn KeyLookup,
    ) -> Result<CanonicalJsonObject> {
        crate::parse_room_version(version.as_str())?;
        let room = room_of(&invite)?;
        if let Some(v) = self.room_version(&room)?
            && v != *version
        {
            return Err(RoomError::BadJson(format!(
                "room {room} is version {v}, not {version}"
            )));
        }
        let (event_id, mut obj) = self.verify_remote(version, invite, keys)?;
        let pdu = Pdu::parse(event_id.clone(), &obj)?;
        let invitee = pdu
            .state_key
            .as_deref()
            .and_then(|k| OwnedUserId::try_from(k).ok())
            .ok_or_else(|| RoomError::BadJson("invite without a user as state_key".into()))?;
        if pdu.kind != ruma::events::TimelineEventType::RoomMember
            || content_membership(&pdu) != Some(Membership::Invite)
        {
            return Err(RoomError::BadJson("not an invite".into()));
        }
        if invitee.server_name() != self.server_name {
            return Err(RoomError::BadJson(
                "the invitee is not a user of this server".into(),
            ));
        }
        if pdu.sender.server_name() != origin {
            return Err(RoomError::Forbidden(format!(
                "{origin} may not invite on behalf of {}",
                pdu.sender
            )));
        }
        let mut stripped = crate::stripped::sanitize_remote(&room, invite_room_state);
        let rules = rules_for(version)?;
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            self.key.pair(),
            &mut obj,
            &rules.redaction,
        )
        .map_err(|e| RoomError::BadJson(format!("cannot countersign the invite: {e}")))?;

        let _guard = self.lock_room(&room);
        if let Some(m) = self.membership_state(&room, &invitee)?
            && matches!(m, Membership::Join | Membership::Ban)
        {
            return Err(RoomError::Forbidden(format!(
                "{invitee} is {} in {room}",
                m.as_str()
            )));
        }
        let record = outlier_record(&event_id, obj.clone(), EventStatus::Outlier);
        stripped.push(record.to_stripped_state());
        let known = self.event_any(&event_id)?.is_some();
        self.db.write_with_position(|pos, b| -> Result<()> {
            if !known {
                b.put_json(Cf::Events, event_id.as_str(), &record);
            }
            b.put_json(Cf::Rooms, invite_state_key(&room, &invitee), &stripped);
            b.put_json(
                Cf::Memberships,
                membership_key(invitee.as_str(), &room),
                &MembershipRecord {
                    membership: Membership::Invite,
                    pos,
                    event_id: event_id.clone(),
                    forgotten: false,
                },
            );
            Ok(())
        })?;
        if let Some(observer) = self.membership_observer.get() {
            observer.membership_changed(&room, &invitee, Some(Membership::Invite));
        }
        Ok(obj)
    }

    /// The stripped state stored with a remote invite of `user` (see
    /// [`RoomService::receive_invite`]), if their invite is one.
    pub(crate) fn remote_invite_state(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Option<Vec<Value>>> {
        let Some(rec) = self.membership(room, user)? else {
            return Ok(None);
        };
        if rec.membership != Membership::Invite {
            return Ok(None);
        }
        match self.event_any(&rec.event_id)? {
            Some(ev) if ev.status == EventStatus::Outlier => {
                Ok(self.db.get_json(Cf::Rooms, invite_state_key(room, user))?)
            }
            _ => Ok(None),
        }
    }
}
