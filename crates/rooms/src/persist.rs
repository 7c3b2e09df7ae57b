//! Building PDUs (hash, sign, reference-hash id) and appending them to a room: the
//! authorization rules, the state before the event, forward extremities, current state,
//! memberships and the stream position, in one atomic write.
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::{
    auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules,
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, Int, OwnedDeviceId, OwnedEventId,
    OwnedRoomId, RoomId, RoomVersionId, UserId,
};
use serde_json::Value;
use storage::{Batch, Cf, Key};

use crate::pdu::Pdu;
use crate::resolve::EventCache;
use crate::store::{
    MembershipRecord, PrevState, RoomSummary, StateAtRecord, StoredEvent, log_prefix,
    map_to_entries, member_key, membership_key, state_key, summary_key, timeline_key,
};
use crate::{
    MAX_PDU_BYTES, MAX_STATE_DELTA, Membership, Result, RoomError, RoomService, SentEvent, StateMap,
};

/// Spec size limit for `type`, `state_key`, ids.
const MAX_ID_BYTES: usize = 255;

/// What a local client asks to send.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    /// Redactions only.
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: &str, state_key: &str, content: Value) -> NewEvent {
        NewEvent {
            kind: kind.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
        }
    }
}

/// Extra writes for the batch of an event, given its stream position.
pub(crate) type ExtraWrites = Box<dyn FnOnce(u64, &mut Batch)>;

/// Local extras written together with an event.
#[derive(Default)]
pub(crate) struct AppendOpts {
    /// `(Cf::Txns key, device, txn id)` for send idempotency and `unsigned.transaction_id`.
    pub txn: Option<(Key, OwnedDeviceId, String)>,
    /// More writes for the same batch (alias records on room creation).
    pub extra: Option<ExtraWrites>,
    /// Room creation: collect the users' membership records here instead of writing them,
    /// so the room stays out of everyone's room list (and `/sync`) until it is complete.
    pub defer_memberships: Option<MembershipSink>,
}

/// Membership records held back by [`AppendOpts::defer_memberships`]: user → record
/// (`None`: the membership was removed), in stream order.
pub(crate) type MembershipSink = Rc<RefCell<Vec<(String, Option<MembershipRecord>)>>>;

pub(crate) use crate::version::rules_for;

pub(crate) fn to_canonical(v: Value) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(v)
        .map_err(|e| RoomError::BadJson(format!("content is not canonical JSON: {e}")))
}

fn int(n: u64) -> Result<CanonicalJsonValue> {
    Int::try_from(n)
        .map(CanonicalJsonValue::Integer)
        .map_err(|_| RoomError::Internal("integer out of range".into()))
}

impl RoomService {
    /// Hash, sign and id a PDU; enforce the size limit.
    pub(crate) fn sign_pdu(
        &self,
        rules: &RoomVersionRules,
        mut obj: CanonicalJsonObject,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let unsigned_size = serde_json::to_string(&obj)
            .map_err(|e| RoomError::Internal(e.to_string()))?
            .len();
        if unsigned_size > MAX_PDU_BYTES {
            return Err(RoomError::TooLarge(format!(
                "event is {unsigned_size} bytes, the limit is {MAX_PDU_BYTES}"
            )));
        }
        crate::version::assign_local_event_id(rules, &mut obj, &self.server_name);
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            self.key.pair(),
            &mut obj,
            &rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => {
                RoomError::TooLarge("event too large".into())
            }
            e => RoomError::BadJson(format!("cannot sign event: {e}")),
        })?;
        let size = serde_json::to_string(&obj)
            .map_err(|e| RoomError::Internal(e.to_string()))?
            .len();
        if size > MAX_PDU_BYTES {
            return Err(RoomError::TooLarge(format!(
                "event is {size} bytes, the limit is {MAX_PDU_BYTES}"
            )));
        }
        let event_id = crate::version::event_id_of(rules, &obj)?;
        Ok((event_id, obj))
    }

    /// Build a signed PDU for a local sender against the room's current state and
    /// forward extremities. `summary` is `None` only for `m.room.create`.
    pub(crate) fn build_event(
        &self,
        version: &RoomVersionId,
        summary: Option<&RoomSummary>,
        room: &RoomId,
        sender: &UserId,
        new: &NewEvent,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        match summary {
            None => self.build_event_on(version, room, sender, new, &[], |_, _| Ok(None)),
            Some(s) => {
                let start = s.extremities.len().saturating_sub(20);
                self.build_event_on(
                    version,
                    room,
                    sender,
                    new,
                    &s.extremities[start..],
                    |t, k| self.current_state_event_id(room, t, k),
                )
            }
        }
    }

    /// Build a signed PDU on the given `prev_events`, choosing `auth_events` from the
    /// state `state` describes (the state before the event).
    pub(crate) fn build_event_on(
        &self,
        version: &RoomVersionId,
        room: &RoomId,
        sender: &UserId,
        new: &NewEvent,
        prev_events: &[OwnedEventId],
        state: impl Fn(&str, &str) -> Result<Option<OwnedEventId>>,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let rules = rules_for(version)?;
        if new.kind.len() > MAX_ID_BYTES {
            return Err(RoomError::TooLarge(
                "event type is longer than 255 bytes".into(),
            ));
        }
        if new
            .state_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_ID_BYTES)
        {
            return Err(RoomError::TooLarge(
                "state key is longer than 255 bytes".into(),
            ));
        }
        let content = to_canonical(new.content.clone())?;
        if !matches!(content, CanonicalJsonValue::Object(_)) {
            return Err(RoomError::BadJson("event content must be an object".into()));
        }
        let mut auth_events = Vec::new();
        let mut depth = 0;
        if new.kind != "m.room.create" {
            let raw = serde_json::value::to_raw_value(&new.content)
                .map_err(|e| RoomError::BadJson(e.to_string()))?;
            let types = auth_types_for_event(
                &TimelineEventType::from(new.kind.as_str()),
                sender,
                new.state_key.as_deref(),
                &raw,
                &rules.authorization,
            )
            .map_err(RoomError::BadJson)?;
            for (t, k) in types {
                if let Some(id) = state(&t.to_string(), &k)?
                    && !auth_events.contains(&id)
                {
                    auth_events.push(id);
                }
            }
            for p in prev_events {
                depth = depth.max(self.event(p)?.map(|e| e.depth()).unwrap_or(0));
            }
        }
        let mut obj = CanonicalJsonObject::new();
        let lookup = |id: &EventId| self.event(id);
        obj.insert(
            "auth_events".into(),
            crate::version::event_refs(&rules, &auth_events, lookup)?,
        );
        obj.insert(
            "prev_events".into(),
            crate::version::event_refs(&rules, prev_events, lookup)?,
        );
        obj.insert("content".into(), content);
        obj.insert("depth".into(), int(depth + 1)?);
        obj.insert("origin_server_ts".into(), int(crate::now_ms())?);
        // v12: the room ID is derived from the create event, which has none.
        if !(new.kind == "m.room.create" && crate::version::room_id_from_create_event(&rules)) {
            obj.insert(
                "room_id".into(),
                CanonicalJsonValue::String(room.to_string()),
            );
        }
        obj.insert(
            "sender".into(),
            CanonicalJsonValue::String(sender.to_string()),
        );
        obj.insert("type".into(), CanonicalJsonValue::String(new.kind.clone()));
        if let Some(k) = &new.state_key {
            obj.insert("state_key".into(), CanonicalJsonValue::String(k.clone()));
        }
        if let Some(r) = &new.redacts {
            // Room v11 moved `redacts` into the content (set there by the caller).
            if !rules.redaction.keep_room_redaction_redacts {
                obj.insert("redacts".into(), CanonicalJsonValue::String(r.to_string()));
            }
        }
        self.sign_pdu(&rules, obj)
    }

    /// Append a complete PDU received from elsewhere (federation): its event id is its
    /// reference hash; it must pass the authorization rules against its auth events and
    /// the state before it (forks are resolved with state resolution v2). The caller
    /// must have checked its signatures and hashes (`ruma::signatures::verify_event`)
    /// and fetched missing `prev_events`/`auth_events` first.
    pub fn append_pdu(&self, pdu: CanonicalJsonObject) -> Result<SentEvent> {
        let room = match pdu.get("room_id") {
            Some(CanonicalJsonValue::String(r)) => OwnedRoomId::try_from(r.as_str())
                .map_err(|_| RoomError::BadJson("invalid room_id".into()))?,
            _ => return Err(RoomError::BadJson("PDU without room_id".into())),
        };
        let _guard = self.lock();
        let version = self.require_summary(&room)?.version;
        let rules = rules_for(&version)?;
        let event_id = crate::version::event_id_of(&rules, &pdu)?;
        self.append(event_id, pdu, AppendOpts::default())
    }

    /// Build a local event and append it. Caller holds the write lock.
    pub(crate) fn send_locked(
        &self,
        room: &RoomId,
        sender: &UserId,
        mut new: NewEvent,
        opts: AppendOpts,
    ) -> Result<SentEvent> {
        let summary = self.require_summary(room)?;
        self.prepare_local_member(room, sender, &mut new)?;
        let (event_id, obj) =
            self.build_event(&summary.version, Some(&summary), room, sender, &new)?;
        self.append(event_id, obj, opts)
    }

    /// The `StateAt` record for an event whose only prev event is `prev`.
    fn state_after_record(&self, prev: &EventId) -> Result<StateAtRecord> {
        let p = self.require_event(prev)?;
        let rec = self
            .state_at_record(prev)?
            .ok_or_else(|| RoomError::Internal(format!("no state stored for {prev}")))?;
        let entry = p
            .state_key()
            .map(|k| (p.kind().to_owned(), k.to_owned(), p.event_id.clone()));
        Ok(match rec {
            StateAtRecord::Full { .. } => StateAtRecord::Delta {
                base: prev.to_owned(),
                changes: entry.into_iter().collect(),
            },
            StateAtRecord::Delta { base, mut changes } => {
                if let Some(e) = entry {
                    match changes.iter_mut().find(|c| c.0 == e.0 && c.1 == e.1) {
                        Some(slot) => *slot = e,
                        None => changes.push(e),
                    }
                }
                if changes.len() > MAX_STATE_DELTA {
                    let map = self.materialize(&StateAtRecord::Delta { base, changes })?;
                    StateAtRecord::Full {
                        state: map_to_entries(&map),
                    }
                } else {
                    StateAtRecord::Delta { base, changes }
                }
            }
        })
    }

    /// Append a signed PDU to its room: authorization rules against the auth events and
    /// the state before the event (resolving forked `prev_events` with state resolution
    /// v2), then one atomic positioned write. Caller holds the write lock.
    pub(crate) fn append(
        &self,
        event_id: OwnedEventId,
        obj: CanonicalJsonObject,
        opts: AppendOpts,
    ) -> Result<SentEvent> {
        if self.db.exists(Cf::Events, event_id.as_str())? {
            let ev = self.require_event(&event_id)?;
            return Ok(SentEvent {
                event_id,
                pos: ev.pos,
            });
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

        // 1. State-independent rules (the auth events themselves).
        check_state_independent_auth_rules(&rules.authorization, &*pdu, |id| cache.get(id))
            .map_err(RoomError::Forbidden)?;

        // 2. The state before the event.
        let linear = match &summary {
            Some(s) => s.extremities.len() == 1 && pdu.prev_events == s.extremities,
            None => false,
        };
        let before_map: Option<StateMap> = if is_create {
            Some(StateMap::new())
        } else if linear {
            None // the current state, read point-wise
        } else {
            for p in &pdu.prev_events {
                if self.event(p)?.is_none() {
                    return Err(RoomError::NotFound(format!("missing prev event {p}")));
                }
            }
            let maps = pdu
                .prev_events
                .iter()
                .map(|p| self.require_event(p).and_then(|e| self.state_after(&e)))
                .collect::<Result<Vec<_>>>()?;
            Some(self.resolve_state_maps(&rules, &maps, &cache)?)
        };
        let lookup_before = |t: &str, k: &str| -> Option<OwnedEventId> {
            match &before_map {
                Some(m) => m.get(&(t.to_owned(), k.to_owned())).cloned(),
                None => self.current_state_event_id(&room, t, k).ok().flatten(),
            }
        };

        // 3. State-dependent rules, against the auth events and against the state before.
        if !is_create {
            let mut auth_state: BTreeMap<(String, String), Arc<Pdu>> = BTreeMap::new();
            for a in &pdu.auth_events {
                if let Some(ev) = cache.get(a)
                    && let Some(pair) = ev.state_pair()
                {
                    auth_state.insert(pair, ev);
                }
            }
            // v12: the create event is not among the auth events but is always part of them.
            if crate::version::room_id_from_create_event(&rules)
                && let Some(s) = &summary
                && let Some(create) = cache.get(&s.create_event)
            {
                auth_state.insert(("m.room.create".to_owned(), String::new()), create);
            }
            check_state_dependent_auth_rules(
                &rules.authorization,
                &*pdu,
                |t: &StateEventType, k: &str| {
                    auth_state.get(&(t.to_string(), k.to_owned())).cloned()
                },
            )
            .map_err(RoomError::Forbidden)?;
            check_state_dependent_auth_rules(
                &rules.authorization,
                &*pdu,
                |t: &StateEventType, k: &str| {
                    lookup_before(&t.to_string(), k).and_then(|id| cache.get(&id))
                },
            )
            .map_err(RoomError::Forbidden)?;
        }

        // 4. Record of the state before this event.
        let state_rec = match (&before_map, &summary) {
            (Some(m), _) => StateAtRecord::Full {
                state: map_to_entries(m),
            },
            (None, Some(s)) => self.state_after_record(&s.extremities[0])?,
            (None, None) => StateAtRecord::Full { state: Vec::new() },
        };
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

        // 5. New forward extremities and the current-state changes.
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
                        maps.push(self.state_after(&self.require_event(e)?)?);
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
                    .event(id)?
                    .and_then(|e| e.membership())
                    .map(|m| (m, id.clone())),
            };
            member_changes.push((k.clone(), m));
        }

        // 6. One atomic write.
        let redaction_target = match (&pdu.redacts, pdu.kind == TimelineEventType::RoomRedaction) {
            (Some(target), true) => self.event(target)?.filter(|t| t.room_id() == room.as_str()),
            _ => None,
        };
        let redaction_target = match redaction_target {
            Some(t) => {
                let pl_content = match lookup_before("m.room.power_levels", "") {
                    Some(id) => self.event(&id)?.map(|e| e.content()),
                    None => None,
                };
                let creators = match &summary {
                    Some(s) => self.creators(s)?,
                    None => crate::version::Creators {
                        users: Vec::new(),
                        privileged: false,
                    },
                };
                self.redaction_allowed(&pdu.sender, &t, pl_content, creators)?
                    .then_some(t)
            }
            None => None,
        };
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
        let state_pair = pdu.state_pair();
        let (pos, ()) = self.db.write_with_position(|pos, b| -> Result<()> {
            let record = StoredEvent {
                event_id: event_id.clone(),
                pos,
                pdu: obj,
                txn: txn.as_ref().map(|(_, d, t)| (d.clone(), t.clone())),
                redacted_because: None,
                prev_state,
            };
            b.put_json(Cf::Events, event_id.as_str(), &record);
            b.put(
                Cf::Timeline,
                timeline_key(&room, pos),
                event_id.as_str().as_bytes().to_vec(),
            );
            b.put_json(Cf::StateAt, event_id.as_str(), &state_rec);
            b.put(
                Cf::RoomStream,
                Key::new().u64(pos),
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
            if let Some((t, k)) = &state_pair {
                b.put(
                    Cf::Rooms,
                    log_prefix(&room, t, k).u64(pos),
                    event_id.as_str().as_bytes().to_vec(),
                );
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
                    creator: pdu.sender.clone(),
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
            if let Some(extra) = extra {
                extra(pos, b);
            }
            Ok(())
        })?;
        // Tell the observer (the presence audience index) after the commit, still under the
        // room write lock, so it sees membership changes in stream order.
        if let Some(observer) = self.membership_observer.get()
            && defer_memberships.is_none()
        {
            for (user, m) in &member_changes {
                if let Ok(user) = <&ruma::UserId>::try_from(user.as_str()) {
                    observer.membership_changed(&room, user, m.as_ref().map(|(m, _)| *m));
                }
            }
        }
        Ok(SentEvent { event_id, pos })
    }

    /// The room version's redaction rule, for every path an `m.room.redaction` arrives by
    /// (`/redact`, `PUT /send` and `PUT /state`, federation): the redaction applies when its
    /// sender sent the target or has the `redact` power level in the state before it; a
    /// remote redaction also applies to events from its own server (the rule servers
    /// follow for v3+ rooms). A local sender's disallowed redaction is refused; a remote
    /// one is kept as an event but not applied.
    fn redaction_allowed(
        &self,
        sender: &UserId,
        target: &crate::store::StoredEvent,
        power_levels: Option<Value>,
        creators: crate::version::Creators,
    ) -> Result<bool> {
        if target.sender() == sender.as_str() {
            return Ok(true);
        }
        let pl = crate::ops::PowerLevels::new(power_levels, creators);
        if pl.user(sender.as_str()) >= pl.action("redact") {
            return Ok(true);
        }
        if sender.server_name() == self.server_name {
            return Err(RoomError::Forbidden(
                "you may not redact other users' events".into(),
            ));
        }
        let same_server = <&UserId>::try_from(target.sender())
            .is_ok_and(|t| t.server_name() == sender.server_name());
        Ok(same_server)
    }

    /// The auth chain (recursive `auth_events`, excluding the starting events) of a set of events.
    pub(crate) fn auth_chain<'a>(
        &self,
        start: impl IntoIterator<Item = &'a OwnedEventId>,
        cache: &EventCache<'_>,
    ) -> HashSet<OwnedEventId> {
        let mut seen = HashSet::new();
        let mut stack: Vec<OwnedEventId> = Vec::new();
        for id in start {
            if let Some(ev) = cache.get(id) {
                stack.extend(ev.auth_events.iter().cloned());
            }
        }
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(ev) = cache.get(&id) {
                stack.extend(
                    ev.auth_events
                        .iter()
                        .filter(|a| !seen.contains(*a))
                        .cloned(),
                );
            }
        }
        seen
    }
}
