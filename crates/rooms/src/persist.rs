//! Building local PDUs (hash, sign, reference-hash id), the state-before records and the
//! redaction rule; appending lives in `append.rs`.
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::auth_types_for_event;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, Int, OwnedDeviceId, OwnedEventId, RoomId,
    RoomVersionId, UserId,
};
use serde_json::Value;
use storage::{Batch, Key};

use crate::resolve::EventCache;
use crate::store::{MembershipRecord, RoomSummary, StateAtRecord, map_to_entries};
use crate::{MAX_PDU_BYTES, MAX_STATE_DELTA, Result, RoomError, RoomService, SentEvent};

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
        let obj = self.unsigned_event_on(version, room, sender, new, prev_events, state)?;
        self.sign_pdu(&rules, obj)
    }

    /// The unsigned, unhashed PDU [`RoomService::build_event_on`] signs.
    pub(crate) fn unsigned_event_on(
        &self,
        version: &RoomVersionId,
        room: &RoomId,
        sender: &UserId,
        new: &NewEvent,
        prev_events: &[OwnedEventId],
        state: impl Fn(&str, &str) -> Result<Option<OwnedEventId>>,
    ) -> Result<CanonicalJsonObject> {
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
        Ok(obj)
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
    pub(crate) fn state_after_record(&self, prev: &EventId) -> Result<StateAtRecord> {
        let p = self.require_dag_event(prev)?;
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

    /// The room version's redaction rule, for every path an `m.room.redaction` arrives by
    /// (`/redact`, `PUT /send` and `PUT /state`, federation): the redaction applies when its
    /// sender sent the target or has the `redact` power level in the state before the
    /// redaction. A remote redaction also applies to events from its own server: from v3
    /// the sender's server and the target's sender's server are compared (the authorization
    /// rules leave redactions to the receiving server); in v1/v2 the servers of the two
    /// event IDs (the authorization rule of those versions, which the redaction already
    /// passed). A local sender's disallowed redaction is refused; a remote one is kept as
    /// an event but not applied.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn redaction_allowed(
        &self,
        sender: &UserId,
        redaction_id: &ruma::EventId,
        target_id: &ruma::EventId,
        target_sender: &str,
        summary: Option<&RoomSummary>,
        power_levels: Option<&crate::store::StoredEvent>,
    ) -> Result<bool> {
        if target_sender == sender.as_str() {
            return Ok(true);
        }
        if let Some(summary) = summary
            && self
                .power_levels_of(summary, power_levels)?
                .user_can_redact_event_of_other(sender)
        {
            return Ok(true);
        }
        if sender.server_name() == self.server_name {
            return Err(RoomError::Forbidden(
                "you may not redact other users' events".into(),
            ));
        }
        let event_id_rule = match summary {
            Some(s) => {
                rules_for(&s.version)?
                    .authorization
                    .special_case_room_redaction
            }
            None => false,
        };
        if event_id_rule {
            return Ok(redaction_id.server_name().is_some()
                && redaction_id.server_name() == target_id.server_name());
        }
        let same_server = <&UserId>::try_from(target_sender)
            .is_ok_and(|t| t.server_name() == sender.server_name());
        Ok(same_server)
    }

    /// The auth chain (recursive `auth_events`, with v12's implicit create event, excluding
    /// the starting events) of a set of events.
    pub(crate) fn auth_chain<'a>(
        &self,
        start: impl IntoIterator<Item = &'a OwnedEventId>,
        cache: &EventCache<'_>,
    ) -> HashSet<OwnedEventId> {
        let mut seen = HashSet::new();
        let mut stack: Vec<OwnedEventId> = Vec::new();
        for id in start {
            if let Some(ev) = cache.get(id) {
                stack.extend(ev.auth_parents().cloned());
            }
        }
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(ev) = cache.get(&id) {
                stack.extend(ev.auth_parents().filter(|a| !seen.contains(*a)).cloned());
            }
        }
        seen
    }
}
