//! Appending a signed PDU to its room, for local and remote events alike: the checks on
//! receipt of a PDU (authorization rules against the auth events, against the state
//! before the event, and — for remote events — against the current state), then one
//! atomic write of the event, its state, forward extremities, current state and
//! memberships.
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules};
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId};
use serde_json::Value;
use storage::{Batch, Cf, Key};

use crate::pdu::Pdu;
use crate::persist::{AppendOpts, rules_for};
use crate::resolve::EventCache;
use crate::store::{
    EventStatus, MembershipRecord, PrevState, RoomSummary, StateAtRecord, StoredEvent, log_prefix,
    map_to_entries, member_key, membership_key, state_key, summary_key, timeline_key,
};
use crate::{Membership, Result, RoomError, RoomService, SentEvent, StateMap};

/// What became of an appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// In the timeline (also: it was there already).
    Timeline(SentEvent),
    /// Stored as [`EventStatus::SoftFailed`], with the reason.
    SoftFailed(OwnedEventId, String),
    /// Stored as [`EventStatus::Rejected`], with the reason.
    Rejected(OwnedEventId, String),
}

/// The inputs only a remote event has.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteAppend {
    /// The caller accepts a gap: prev events this server does not hold (or holds only as
    /// outliers, without state) are replaced by this state, the state before the event
    /// as another server reported it (`/state_ids`). `None`: every prev must be known.
    pub gap_state: Option<StateMap>,
}

/// The verdict of the authorization checks.
enum Verdict {
    Accept,
    SoftFail(String),
    Reject(String),
}

impl RoomService {
    /// Append a signed local PDU: an authorization failure is an error and nothing is stored.
    /// Caller holds the room's lock.
    pub(crate) fn append(
        &self,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
        opts: AppendOpts,
    ) -> Result<SentEvent> {
        match self.append_event(event_id, obj, opts, None)? {
            Outcome::Timeline(sent) => Ok(sent),
            Outcome::SoftFailed(id, why) | Outcome::Rejected(id, why) => Err(RoomError::Forbidden(
                format!("event {id} was refused earlier: {why}"),
            )),
        }
    }

    /// Append a signed PDU to its room. Local events (`remote: None`) that fail the
    /// authorization rules are refused with [`RoomError::Forbidden`]; remote ones are
    /// stored as rejected or soft-failed (see [`EventStatus`]). An event stored before as
    /// an outlier is placed in the DAG now. Caller holds the room's lock.
    pub(crate) fn append_event(
        &self,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
        opts: AppendOpts,
        remote: Option<&RemoteAppend>,
    ) -> Result<Outcome> {
        if let Some(existing) = self.event_any(&event_id)? {
            match existing.status {
                EventStatus::Timeline => {
                    return Ok(Outcome::Timeline(SentEvent {
                        event_id,
                        pos: existing.pos,
                    }));
                }
                EventStatus::SoftFailed => {
                    return Ok(Outcome::SoftFailed(event_id, "soft-failed before".into()));
                }
                EventStatus::Rejected => {
                    return Ok(Outcome::Rejected(event_id, "rejected before".into()));
                }
                EventStatus::Outlier => {}
            }
        }
        let pdu = Arc::new(Pdu::parse(event_id.clone(), &obj)?);
        let room: OwnedRoomId = pdu.room_id.clone();
        let is_create = pdu.kind == TimelineEventType::RoomCreate;
        let summary = if is_create {
            if self.room_exists(&room)? {
                return Err(RoomError::Forbidden("room already exists".into()));
            }
            None
        } else {
            Some(self.require_summary(&room)?)
        };
        let version = match &summary {
            Some(s) => s.version.clone(),
            None => {
                let v = serde_json::from_str::<Value>(pdu.content.get())
                    .ok()
                    .and_then(|c| {
                        c.get("room_version")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "1".to_owned());
                crate::parse_room_version(&v)?
            }
        };
        let rules = rules_for(&version)?;
        let cache = EventCache::new(self);
        cache.insert(pdu.clone());

        // 1. The state before the event: the current state when the event extends the
        // single forward extremity, otherwise the resolution of the states after its prevs.
        let linear = match &summary {
            Some(s) => s.extremities.len() == 1 && pdu.prev_events == s.extremities,
            None => false,
        };
        let before_map: Option<StateMap> = if is_create {
            Some(StateMap::new())
        } else if linear {
            None // the current state, read point-wise
        } else {
            let mut maps = Vec::with_capacity(pdu.prev_events.len() + 1);
            let mut missing = Vec::new();
            for p in &pdu.prev_events {
                match self.event_any(p)? {
                    Some(e) if self.state_at_record(p)?.is_some() => {
                        maps.push(self.state_after(&e)?)
                    }
                    _ => missing.push(p.clone()),
                }
            }
            match remote.and_then(|r| r.gap_state.as_ref()) {
                Some(gap) if !missing.is_empty() || maps.is_empty() => maps.push(gap.clone()),
                _ if !missing.is_empty() => {
                    return Err(RoomError::NotFound(format!(
                        "missing prev events {missing:?}"
                    )));
                }
                _ => {}
            }
            Some(self.resolve_state_maps(&rules, &maps, &cache)?)
        };
        let lookup_before = |t: &str, k: &str| -> Option<OwnedEventId> {
            match &before_map {
                Some(m) => m.get(&(t.to_owned(), k.to_owned())).cloned(),
                None => self.current_state_event_id(&room, t, k).ok().flatten(),
            }
        };

        // 2. The checks on receipt: auth events, state before (failing either rejects),
        // current state (failing it soft-fails; only differs from the state before on a fork).
        let verdict = self.authorize(
            &rules,
            &pdu,
            is_create,
            linear,
            remote.is_some(),
            &cache,
            &lookup_before,
            &room,
        );
        match (&verdict, remote.is_some()) {
            (Verdict::Accept, _) => {}
            (Verdict::SoftFail(why) | Verdict::Reject(why), false) => {
                return Err(RoomError::Forbidden(why.clone()));
            }
            (Verdict::SoftFail(_) | Verdict::Reject(_), true) => {}
        }

        // 3. Record of the state before this event.
        let state_rec = match (&before_map, &summary) {
            (Some(m), _) => StateAtRecord::Full {
                state: map_to_entries(m),
            },
            (None, Some(s)) => self.state_after_record(&s.extremities[0])?,
            (None, None) => StateAtRecord::Full { state: Vec::new() },
        };
        let (status, outcome_why) = match verdict {
            Verdict::Accept => (EventStatus::Timeline, String::new()),
            Verdict::SoftFail(why) => (EventStatus::SoftFailed, why),
            Verdict::Reject(why) => (EventStatus::Rejected, why),
        };
        if status != EventStatus::Timeline {
            // In the DAG with the state before it, and nowhere else.
            let record = StoredEvent {
                event_id: event_id.clone(),
                pos: 0,
                pdu: obj,
                txn: None,
                redacted_because: None,
                prev_state: None,
                status,
                off_stream: false,
            };
            let mut b = Batch::new();
            b.put_json(Cf::Events, event_id.as_str(), &record);
            b.put_json(Cf::StateAt, event_id.as_str(), &state_rec);
            self.db.write(b)?;
            tracing::info!(event_id = %event_id, room = %room, ?status, reason = %outcome_why, "remote event not accepted");
            return Ok(match status {
                EventStatus::SoftFailed => Outcome::SoftFailed(event_id, outcome_why),
                _ => Outcome::Rejected(event_id, outcome_why),
            });
        }

        let prev_state = match pdu.state_pair() {
            Some((t, k)) => match lookup_before(&t, &k) {
                Some(id) => self.event(&id)?.map(|p| PrevState {
                    event_id: p.event_id.clone(),
                    sender: ruma::OwnedUserId::try_from(p.sender())
                        .unwrap_or_else(|_| pdu.sender.clone()),
                    content: p.content(),
                }),
                None => None,
            },
            None => None,
        };

        // 4. New forward extremities and the current-state changes.
        let old_ext: Vec<OwnedEventId> = summary
            .as_ref()
            .map(|s| s.extremities.clone())
            .unwrap_or_default();
        let mut new_ext: Vec<OwnedEventId> = old_ext
            .iter()
            .filter(|e| !pdu.prev_events.contains(e))
            .cloned()
            .collect();
        new_ext.push(event_id.clone());
        let mut changes: Vec<(String, String, Option<OwnedEventId>)> = Vec::new();
        if is_create || linear {
            if let Some((t, k)) = pdu.state_pair() {
                changes.push((t, k, Some(event_id.clone())));
            }
        } else {
            let mut after_this = before_map.clone().unwrap_or_default();
            if let Some(pair) = pdu.state_pair() {
                after_this.insert(pair, event_id.clone());
            }
            let new_state = if new_ext.len() == 1 {
                after_this
            } else {
                let mut maps = Vec::with_capacity(new_ext.len());
                for e in &new_ext {
                    if *e == event_id {
                        maps.push(after_this.clone());
                    } else {
                        maps.push(self.state_after(&self.require_dag_event(e)?)?);
                    }
                }
                self.resolve_state_maps(&rules, &maps, &cache)?
            };
            let old_state = self.current_state(&room)?;
            for (key, id) in &new_state {
                if old_state.get(key) != Some(id) {
                    changes.push((key.0.clone(), key.1.clone(), Some(id.clone())));
                }
            }
            for key in old_state.keys() {
                if !new_state.contains_key(key) {
                    changes.push((key.0.clone(), key.1.clone(), None));
                }
            }
        }
        // Memberships affected by the change: user → (membership, event id).
        let mut member_changes: Vec<(String, Option<(Membership, OwnedEventId)>)> = Vec::new();
        for (t, k, id) in &changes {
            if t != "m.room.member" {
                continue;
            }
            let m = match id {
                None => None,
                Some(id) if *id == event_id => {
                    let m = serde_json::from_str::<Value>(pdu.content.get())
                        .ok()
                        .and_then(|c| {
                            c.get("membership")
                                .and_then(|m| m.as_str())
                                .and_then(Membership::parse)
                        });
                    m.map(|m| (m, id.clone()))
                }
                Some(id) => self
                    .event_any(id)?
                    .and_then(|e| e.membership())
                    .map(|m| (m, id.clone())),
            };
            member_changes.push((k.clone(), m));
        }

        // 5. Redactions: this event redacting a known target, or a redaction that arrived
        // before this event applying to it now.
        let redaction_target = match (&pdu.redacts, pdu.kind == TimelineEventType::RoomRedaction) {
            (Some(target), true) => self.event(target)?.filter(|t| t.room_id() == room.as_str()),
            _ => None,
        };
        let redaction_target = match redaction_target {
            Some(t) => {
                let power_levels = match lookup_before("m.room.power_levels", "") {
                    Some(id) => self.event_any(&id)?,
                    None => None,
                };
                self.redaction_allowed(
                    &pdu.sender,
                    &event_id,
                    &t.event_id,
                    t.sender(),
                    summary.as_ref(),
                    power_levels.as_ref(),
                )?
                .then_some(t)
            }
            None => None,
        };
        let early_redaction = self.pending_redaction_for(&room, &event_id, &pdu.sender)?;
        let max_depth = summary
            .as_ref()
            .map(|s| s.max_depth)
            .unwrap_or(0)
            .max(pdu.depth);
        let AppendOpts {
            txn,
            extra,
            defer_memberships,
        } = opts;
        let pending_target = match (&pdu.redacts, pdu.kind == TimelineEventType::RoomRedaction) {
            (Some(target), true) if self.event_any(target)?.is_none() => Some(target.clone()),
            _ => None,
        };
        let observed = self.observes_sender(&pdu.sender).then(|| obj.clone());
        let (pos, ()) = self.db.write_with_position(|pos, b| -> Result<()> {
            let mut record = StoredEvent {
                event_id: event_id.clone(),
                pos,
                pdu: obj,
                txn: txn.as_ref().map(|(_, d, t)| (d.clone(), t.clone())),
                redacted_because: None,
                prev_state,
                status: EventStatus::Timeline,
                off_stream: !linear && !is_create,
            };
            if let Some((redaction, key)) = &early_redaction {
                record.pdu =
                    ruma::canonical_json::redact(record.pdu.clone(), &rules.redaction, None)
                        .map_err(|e| RoomError::Internal(format!("redaction failed: {e}")))?;
                record.redacted_because = Some(redaction.client_event(None, None));
                b.delete(Cf::Rooms, key);
            }
            b.put_json(Cf::Events, event_id.as_str(), &record);
            b.put(
                Cf::Timeline,
                timeline_key(&room, pos),
                event_id.as_str().as_bytes().to_vec(),
            );
            crate::topo::put(b, &room, pdu.depth, pos, &event_id);
            b.put_json(Cf::StateAt, event_id.as_str(), &state_rec);
            b.put(
                Cf::RoomStream,
                crate::keys::room_stream::key(pos),
                room.as_str().as_bytes().to_vec(),
            );
            for (t, k, id) in &changes {
                match id {
                    Some(id) => b.put(
                        Cf::Rooms,
                        state_key(&room, t, k),
                        id.as_str().as_bytes().to_vec(),
                    ),
                    None => b.delete(Cf::Rooms, state_key(&room, t, k)),
                }
            }
            for (user, m) in &member_changes {
                match m {
                    Some((m, id)) => {
                        b.put(
                            Cf::Rooms,
                            member_key(&room, user),
                            m.as_str().as_bytes().to_vec(),
                        );
                        let rec = MembershipRecord {
                            membership: *m,
                            pos,
                            event_id: id.clone(),
                            forgotten: false,
                        };
                        match &defer_memberships {
                            Some(sink) => sink.borrow_mut().push((user.clone(), Some(rec))),
                            None => b.put_json(Cf::Memberships, membership_key(user, &room), &rec),
                        }
                    }
                    None => {
                        b.delete(Cf::Rooms, member_key(&room, user));
                        match &defer_memberships {
                            Some(sink) => sink.borrow_mut().push((user.clone(), None)),
                            None => b.delete(Cf::Memberships, membership_key(user, &room)),
                        }
                    }
                }
            }
            // The state log follows the current state (not every state event: one that
            // loses a resolution is not logged), so the log read just before a later
            // position is the state linear events there were authorised against. (An
            // entry a resolution removes altogether cannot be logged; that is rare.)
            for (t, k, id) in &changes {
                if let Some(id) = id {
                    b.put(
                        Cf::Rooms,
                        log_prefix(&room, t, k).u64(pos),
                        id.as_str().as_bytes().to_vec(),
                    );
                }
            }
            let new_summary = match summary {
                Some(s) => RoomSummary {
                    extremities: new_ext,
                    max_depth,
                    last_pos: pos,
                    ..s
                },
                None => RoomSummary {
                    version: version.clone(),
                    create_event: event_id.clone(),
                    extremities: new_ext,
                    max_depth,
                    last_pos: pos,
                    public: false,
                },
            };
            b.put_json(Cf::Rooms, summary_key(&room), &new_summary);
            if let Some((key, _, _)) = &txn {
                b.put(Cf::Txns, key, event_id.as_str().as_bytes().to_vec());
            }
            if let Some(mut target) = redaction_target {
                let redacted =
                    ruma::canonical_json::redact(target.pdu.clone(), &rules.redaction, None)
                        .map_err(|e| RoomError::Internal(format!("redaction failed: {e}")))?;
                target.pdu = redacted;
                target.redacted_because = Some(record.client_event(None, None));
                b.put_json(Cf::Events, target.event_id.as_str(), &target);
            }
            if let Some(target) = &pending_target {
                b.put(
                    Cf::Rooms,
                    crate::store::pending_redaction_key(&room, target),
                    event_id.as_str().as_bytes().to_vec(),
                );
            }
            if let Some(extra) = extra {
                extra(pos, b);
            }
            Ok(())
        })?;
        // Tell the observer (the presence audience index) after the commit, still under the
        // room's lock, so it sees each room's membership changes in stream order.
        if let Some(observer) = self.membership_observer.get()
            && defer_memberships.is_none()
        {
            for (user, m) in &member_changes {
                if let Ok(user) = <&ruma::UserId>::try_from(user.as_str()) {
                    observer.membership_changed(&room, user, m.as_ref().map(|(m, _)| *m));
                }
            }
        }
        if let Some(obj) = &observed {
            self.notify_event_observer(&room, &event_id, pos, obj);
        }
        Ok(Outcome::Timeline(SentEvent { event_id, pos }))
    }

    /// The checks on receipt of a PDU that involve the authorization rules.
    #[allow(clippy::too_many_arguments)]
    fn authorize(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        pdu: &Arc<Pdu>,
        is_create: bool,
        linear: bool,
        remote: bool,
        cache: &EventCache<'_>,
        lookup_before: &dyn Fn(&str, &str) -> Option<OwnedEventId>,
        room: &ruma::RoomId,
    ) -> Verdict {
        // State-independent rules (the auth events themselves).
        if let Err(e) =
            check_state_independent_auth_rules(&rules.authorization, &**pdu, |id| cache.get(id))
        {
            return Verdict::Reject(format!("auth events: {e}"));
        }
        if is_create {
            return Verdict::Accept;
        }
        let auth_state = crate::version::auth_events_state(rules, pdu, cache);
        if let Err(e) = check_state_dependent_auth_rules(
            &rules.authorization,
            &**pdu,
            |t: &StateEventType, k: &str| auth_state.get(&(t.to_string(), k.to_owned())).cloned(),
        ) {
            return Verdict::Reject(format!("against its auth events: {e}"));
        }
        if let Err(e) = check_state_dependent_auth_rules(
            &rules.authorization,
            &**pdu,
            |t: &StateEventType, k: &str| {
                lookup_before(&t.to_string(), k).and_then(|id| cache.get(&id))
            },
        ) {
            return Verdict::Reject(format!("against the state before it: {e}"));
        }
        if remote
            && !linear
            && let Err(e) = check_state_dependent_auth_rules(
                &rules.authorization,
                &**pdu,
                |t: &StateEventType, k: &str| {
                    self.current_state_event_id(room, &t.to_string(), k)
                        .ok()
                        .flatten()
                        .and_then(|id| cache.get(&id))
                },
            )
        {
            return Verdict::SoftFail(format!("against the current state: {e}"));
        }
        Verdict::Accept
    }

    /// A redaction of `target` that arrived before it, if it may apply to it: its key (to
    /// clear in the target's batch) and the redaction event.
    fn pending_redaction_for(
        &self,
        room: &ruma::RoomId,
        target: &ruma::EventId,
        target_sender: &ruma::UserId,
    ) -> Result<Option<(StoredEvent, Key)>> {
        let key = crate::store::pending_redaction_key(room, target);
        let Some(v) = self.db.get(Cf::Rooms, &key)? else {
            return Ok(None);
        };
        let Some(id) = String::from_utf8(v)
            .ok()
            .and_then(|s| OwnedEventId::try_from(s).ok())
        else {
            return Ok(None);
        };
        let Some(redaction) = self.event(&id)? else {
            return Ok(None);
        };
        let Ok(sender) = <&ruma::UserId>::try_from(redaction.sender()) else {
            return Ok(None);
        };
        let power_levels = match self
            .state_before(&id)?
            .get(&("m.room.power_levels".to_owned(), String::new()))
        {
            Some(pl) => self.event_any(pl)?,
            None => None,
        };
        let summary = self.require_summary(room)?;
        let allowed = self
            .redaction_allowed(
                sender,
                &id,
                target,
                target_sender.as_str(),
                Some(&summary),
                power_levels.as_ref(),
            )
            .unwrap_or(false);
        Ok(allowed.then_some((redaction, key)))
    }
}
