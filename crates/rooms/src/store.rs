//! Stored records, key builders and the low-level reads (see the crate docs for layouts).
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId,
    OwnedUserId,
};
use ruma::{RoomId, RoomVersionId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::Cf;

use crate::keys::rooms::RoomsKey;

use crate::{Membership, Result, RoomError, RoomService, StateMap};

/// An event as stored in `Cf::Events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredEvent {
    pub event_id: OwnedEventId,
    /// Global stream position at which the event was written.
    pub pos: u64,
    /// The PDU in canonical JSON (the redacted form once redacted).
    pub pdu: CanonicalJsonObject,
    /// The sending device and its transaction id, for `unsigned.transaction_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<(OwnedDeviceId, String)>,
    /// The redaction event, in client format, once the event was redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_because: Option<Value>,
    /// For state events: the state event this one replaced (for `unsigned.prev_content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_state: Option<PrevState>,
    /// Where the event stands in the room (absent in records written before it existed:
    /// those are timeline events).
    #[serde(default, skip_serializing_if = "EventStatus::is_timeline")]
    pub status: EventStatus,
    /// The state before the event is not the state at its stream position (it joined
    /// the DAG on a fork, late, or after a gap): history visibility and memberships "at"
    /// it come from its `StateAt` record instead of the state log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub off_stream: bool,
}

/// How a stored event takes part in its room.
///
/// Only [`EventStatus::Timeline`] events have a `Cf::Timeline` entry, a real stream
/// position, can be forward extremities and change the current state.
/// [`RoomService::event`] serves timeline events and outliers; rejected and soft-failed
/// events are only visible to the engine itself (and soft-failed ones to federation,
/// through [`RoomService::pdu_for_federation`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Accepted into the DAG and the timeline.
    #[default]
    Timeline,
    /// Known with its auth chain (signatures and auth events checked), but not placed
    /// in the DAG: the state and auth chain of a room being joined, a remote invite,
    /// auth events fetched for another event. `pos` is 0 and no state is stored before it.
    Outlier,
    /// Passed the authorization rules against its auth events and the state before it,
    /// but not against the room's current state: kept in the DAG (its state before it is
    /// stored) but hidden from clients, never a forward extremity, never current state.
    SoftFailed,
    /// Failed the authorization rules against its auth events or the state before it:
    /// stored so the DAG stays complete and the event is not fetched again, never served,
    /// never state, and every event authorised by it is rejected too.
    Rejected,
}

impl EventStatus {
    pub fn is_timeline(&self) -> bool {
        *self == EventStatus::Timeline
    }
}

/// The state event a state event replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrevState {
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    pub content: Value,
}

fn str_field<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

impl StoredEvent {
    /// The room; a v12 create event has no `room_id` field, its room ID is its event ID
    /// with the `!` sigil.
    pub fn room_id(&self) -> std::borrow::Cow<'_, str> {
        match str_field(&self.pdu, "room_id") {
            Some(r) => r.into(),
            None if self.kind() == "m.room.create" => {
                format!("!{}", self.event_id.as_str().trim_start_matches('$')).into()
            }
            None => "".into(),
        }
    }
    pub fn sender(&self) -> &str {
        str_field(&self.pdu, "sender").unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        str_field(&self.pdu, "type").unwrap_or_default()
    }
    pub fn state_key(&self) -> Option<&str> {
        str_field(&self.pdu, "state_key")
    }
    pub fn is_state(&self) -> bool {
        self.state_key().is_some()
    }
    pub fn content(&self) -> Value {
        self.pdu
            .get("content")
            .map(|c| Value::from(c.clone()))
            .unwrap_or_else(|| Value::Object(Default::default()))
    }
    /// A string field of the content, without cloning the whole content.
    pub fn content_str(&self, field: &str) -> Option<&str> {
        match self.pdu.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get(field) {
                Some(CanonicalJsonValue::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
    pub fn origin_server_ts(&self) -> u64 {
        match self.pdu.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => 0,
        }
    }
    pub fn depth(&self) -> u64 {
        match self.pdu.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => 0,
        }
    }
    /// For `m.room.member` events: the membership in the content.
    pub fn membership(&self) -> Option<Membership> {
        if self.kind() != "m.room.member" {
            return None;
        }
        self.content_str("membership").and_then(Membership::parse)
    }
    /// For redactions: the redacted event (top level in v10, in `content` since v11).
    pub fn redacts(&self) -> Option<&str> {
        if self.kind() != "m.room.redaction" {
            return None;
        }
        str_field(&self.pdu, "redacts").or_else(|| self.content_str("redacts"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RoomSummary {
    pub version: RoomVersionId,
    /// The room's creators are read from this event (`power.rs`), never stored apart:
    /// which fields name them depends on the version. (Summaries written before carry a
    /// `creator` field, which is ignored.)
    pub create_event: OwnedEventId,
    pub extremities: Vec<OwnedEventId>,
    pub max_depth: u64,
    pub last_pos: u64,
    /// Published in the room directory.
    #[serde(default)]
    pub public: bool,
}

/// `Cf::Memberships` value: a user's current membership in a room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipRecord {
    pub membership: Membership,
    pub pos: u64,
    pub event_id: OwnedEventId,
    /// Set by `forget`; cleared by the next membership change.
    #[serde(default)]
    pub forgotten: bool,
}

pub(crate) type StateEntry = (String, String, OwnedEventId);

/// `Cf::StateAt` value: the state before an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum StateAtRecord {
    Full {
        state: Vec<StateEntry>,
    },
    /// `base` is an event whose record is `Full`; `changes` are applied on top.
    Delta {
        base: OwnedEventId,
        changes: Vec<StateEntry>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

// The key builders under the names the rest of the crate has used for them; they live in
// `keys` (one module per column family), new code can use those directly.
pub(crate) use crate::keys::aliases::reverse as alias_reverse_key;
pub(crate) use crate::keys::memberships::key as membership_key;
pub(crate) use crate::keys::rooms::{
    invite_state as invite_state_key, member as member_key, member_prefix,
    pending_redaction as pending_redaction_key, public as public_key, state as state_key,
    state_log_prefix as log_prefix, state_prefix, state_type_prefix, summary as summary_key,
};
pub(crate) use crate::keys::timeline::{key as timeline_key, prefix as timeline_prefix};
pub(crate) use crate::keys::txns::client as txn_key;

pub(crate) fn entries_to_map(entries: &[StateEntry]) -> StateMap {
    entries
        .iter()
        .map(|(t, k, e)| ((t.clone(), k.clone()), e.clone()))
        .collect()
}

pub(crate) fn map_to_entries(map: &StateMap) -> Vec<StateEntry> {
    map.iter()
        .map(|((t, k), e)| (t.clone(), k.clone(), e.clone()))
        .collect()
}

fn corrupt(what: &str) -> RoomError {
    RoomError::Internal(format!("corrupt room data: {what}"))
}

impl RoomService {
    pub(crate) fn summary(&self, room: &RoomId) -> Result<Option<RoomSummary>> {
        Ok(self.db.get_json(Cf::Rooms, summary_key(room))?)
    }

    pub(crate) fn require_summary(&self, room: &RoomId) -> Result<RoomSummary> {
        self.summary(room)?
            .ok_or_else(|| RoomError::UnknownRoom(room.to_owned()))
    }

    /// Whether this server knows the room.
    pub fn room_exists(&self, room: &RoomId) -> Result<bool> {
        Ok(self.db.exists(Cf::Rooms, summary_key(room))?)
    }

    /// The room's version, if the room is known.
    pub fn room_version(&self, room: &RoomId) -> Result<Option<RoomVersionId>> {
        Ok(self.summary(room)?.map(|s| s.version))
    }

    /// One stored event.
    /// Every served event is read here, so this is where a later redaction of the state
    /// event it replaced reaches its `unsigned.prev_content` (a copy taken at write time).
    /// Rejected and soft-failed events are not served (see [`EventStatus`]).
    pub fn event(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        Ok(self
            .event_any(event_id)?
            .filter(|e| matches!(e.status, EventStatus::Timeline | EventStatus::Outlier)))
    }

    /// An event for another server (`/event`, `/state`, `/get_missing_events`, backfill):
    /// everything but rejected events (soft-failed events are in the DAG other servers see).
    pub fn pdu_for_federation(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        Ok(self
            .event_any(event_id)?
            .filter(|e| e.status != EventStatus::Rejected))
    }

    /// Any stored event, whatever its [`EventStatus`] (the engine's own view of the DAG).
    pub(crate) fn event_any(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        let Some(mut ev) = self
            .db
            .get_json::<StoredEvent>(Cf::Events, event_id.as_str())?
        else {
            return Ok(None);
        };
        if let Some(prev) = ev.prev_state.as_mut()
            && let Some(replaced) = self
                .db
                .get_json::<StoredEvent>(Cf::Events, prev.event_id.as_str())?
            && replaced.redacted_because.is_some()
        {
            prev.content = replaced.content();
        }
        Ok(Some(ev))
    }

    /// An event of the DAG, whatever its status (for state and extremity bookkeeping).
    pub(crate) fn require_dag_event(&self, event_id: &EventId) -> Result<StoredEvent> {
        self.event_any(event_id)?
            .ok_or_else(|| RoomError::NotFound(format!("unknown event {event_id}")))
    }

    pub(crate) fn require_event(&self, event_id: &EventId) -> Result<StoredEvent> {
        self.event(event_id)?
            .ok_or_else(|| RoomError::NotFound(format!("unknown event {event_id}")))
    }

    /// The event id of one entry of the current state.
    pub fn current_state_event_id(
        &self,
        room: &RoomId,
        kind: &str,
        skey: &str,
    ) -> Result<Option<OwnedEventId>> {
        match self.db.get(Cf::Rooms, state_key(room, kind, skey))? {
            None => Ok(None),
            Some(v) => {
                let s = String::from_utf8(v).map_err(|_| corrupt("state entry"))?;
                Ok(Some(
                    OwnedEventId::try_from(s).map_err(|_| corrupt("state entry id"))?,
                ))
            }
        }
    }

    /// One entry of the current state, loaded.
    pub fn current_state_event(
        &self,
        room: &RoomId,
        kind: &str,
        skey: &str,
    ) -> Result<Option<StoredEvent>> {
        match self.current_state_event_id(room, kind, skey)? {
            None => Ok(None),
            Some(id) => self.event(&id),
        }
    }

    /// The room's current state.
    pub fn current_state(&self, room: &RoomId) -> Result<StateMap> {
        let prefix = state_prefix(room);
        let mut map = StateMap::new();
        for (k, v) in self.db.scan_prefix(Cf::Rooms, &prefix)? {
            let Some(RoomsKey::State {
                kind: t,
                state_key: sk,
                ..
            }) = RoomsKey::parse(&k)
            else {
                return Err(corrupt("state key"));
            };
            let id = String::from_utf8(v)
                .ok()
                .and_then(|s| OwnedEventId::try_from(s).ok());
            map.insert(
                (t.to_owned(), sk.to_owned()),
                id.ok_or_else(|| corrupt("state entry"))?,
            );
        }
        Ok(map)
    }

    /// Current-state entries of one type: state key → event id.
    pub fn current_state_of_type(
        &self,
        room: &RoomId,
        kind: &str,
    ) -> Result<Vec<(String, OwnedEventId)>> {
        let prefix = state_type_prefix(room, kind);
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Cf::Rooms, &prefix)? {
            let Some(RoomsKey::State { state_key: sk, .. }) = RoomsKey::parse(&k) else {
                return Err(corrupt("state key"));
            };
            let id = String::from_utf8(v)
                .ok()
                .and_then(|s| OwnedEventId::try_from(s).ok());
            out.push((sk.to_owned(), id.ok_or_else(|| corrupt("state entry"))?));
        }
        Ok(out)
    }

    pub(crate) fn state_at_record(&self, event_id: &EventId) -> Result<Option<StateAtRecord>> {
        Ok(self.db.get_json(Cf::StateAt, event_id.as_str())?)
    }

    pub(crate) fn materialize(&self, rec: &StateAtRecord) -> Result<StateMap> {
        match rec {
            StateAtRecord::Full { state } => Ok(entries_to_map(state)),
            StateAtRecord::Delta { base, changes } => {
                let Some(StateAtRecord::Full { state }) = self.state_at_record(base)? else {
                    return Err(corrupt("state delta base is not a full snapshot"));
                };
                let mut map = entries_to_map(&state);
                for (t, k, e) in changes {
                    map.insert((t.clone(), k.clone()), e.clone());
                }
                Ok(map)
            }
        }
    }

    /// The room state before an event (what its `prev_events` resolve to).
    pub fn state_before(&self, event_id: &EventId) -> Result<StateMap> {
        let rec = self
            .state_at_record(event_id)?
            .ok_or_else(|| RoomError::NotFound(format!("no state stored for {event_id}")))?;
        self.materialize(&rec)
    }

    /// The room state after an event: the state before it, plus the event if it is state
    /// (a rejected event never is).
    pub fn state_after(&self, ev: &StoredEvent) -> Result<StateMap> {
        let mut map = self.state_before(&ev.event_id)?;
        if let Some(sk) = ev.state_key()
            && ev.status != EventStatus::Rejected
        {
            map.insert((ev.kind().to_owned(), sk.to_owned()), ev.event_id.clone());
        }
        Ok(map)
    }

    /// The state after the last event of `room` at or before stream position `pos`
    /// (empty if the room had no events then). In a forked DAG this is the state after
    /// the last event in stream order, not a resolution of all forks.
    pub fn state_at_position(&self, room: &RoomId, pos: u64) -> Result<StateMap> {
        let lo = timeline_key(room, 0);
        let hi = timeline_key(room, pos.saturating_add(1));
        let last = self.db.scan_range(Cf::Timeline, &lo, &hi, true, 1)?;
        let Some((_, id)) = last.into_iter().next() else {
            return Ok(StateMap::new());
        };
        let id = String::from_utf8(id)
            .ok()
            .and_then(|s| OwnedEventId::try_from(s).ok())
            .ok_or_else(|| corrupt("timeline"))?;
        let ev = self.require_event(&id)?;
        self.state_after(&ev)
    }

    /// A user's membership record in a room.
    pub fn membership(&self, room: &RoomId, user: &UserId) -> Result<Option<MembershipRecord>> {
        Ok(self
            .db
            .get_json(Cf::Memberships, membership_key(user.as_str(), room))?)
    }

    /// A user's current membership in a room (`None`: never had one).
    pub fn membership_state(&self, room: &RoomId, user: &UserId) -> Result<Option<Membership>> {
        Ok(self.membership(room, user)?.map(|m| m.membership))
    }

    /// Whether the user is currently joined.
    pub fn is_joined(&self, room: &RoomId, user: &UserId) -> Result<bool> {
        Ok(self.membership_state(room, user)? == Some(Membership::Join))
    }
}
