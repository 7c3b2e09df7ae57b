//! A parsed PDU implementing ruma-state-res's [`Event`] trait, so the authorization
//! rules and state resolution can run over our stored events. It reads every room
//! version's format: `prev_events`/`auth_events` as plain IDs (v3+) or `[id, hashes]` pairs
//! (v1/v2), and v12 create events without `room_id` (the room ID is then derived from the
//! event ID).
use ruma::events::TimelineEventType;
use ruma::state_res::Event;
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{Result, RoomError};

#[derive(Debug)]
pub(crate) struct Pdu {
    pub event_id: OwnedEventId,
    /// The room, also for a v12 create event (derived from its ID).
    pub room_id: OwnedRoomId,
    /// Whether the PDU has a `room_id` field (every event except a v12 create event).
    pub has_room_id: bool,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    /// v12: the create event the room ID names, an auth event of every other event
    /// without being listed in `auth_events` (so part of every auth chain).
    pub implicit_create: Option<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub rejected: bool,
}

#[derive(Deserialize)]
struct RawPdu {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
}

/// An entry of `prev_events` / `auth_events`: an event ID (v3+) or, in v1/v2, an
/// `[event_id, {"sha256": ...}]` pair.
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn into_id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::Pair(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    pub fn parse(event_id: OwnedEventId, pdu: &CanonicalJsonObject) -> Result<Pdu> {
        let text = serde_json::to_string(pdu).map_err(|e| RoomError::Internal(e.to_string()))?;
        let raw: RawPdu = serde_json::from_str(&text)
            .map_err(|e| RoomError::BadJson(format!("malformed PDU {event_id}: {e}")))?;
        let redacts = match raw.redacts {
            Some(r) => Some(r),
            None if raw.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(raw.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        let has_room_id = raw.room_id.is_some();
        let room_id = match raw.room_id {
            Some(r) => r,
            None if raw.kind == TimelineEventType::RoomCreate => {
                crate::version::room_id_of_create_event(&event_id)?
            }
            None => return Err(RoomError::BadJson(format!("PDU {event_id} has no room_id"))),
        };
        let implicit_create =
            if raw.kind != TimelineEventType::RoomCreate && room_id.server_name().is_none() {
                crate::version::create_event_id_of_room(&room_id).ok()
            } else {
                None
            };
        Ok(Pdu {
            event_id,
            implicit_create,
            room_id,
            has_room_id,
            sender: raw.sender,
            origin_server_ts: raw.origin_server_ts,
            kind: raw.kind,
            content: raw.content,
            state_key: raw.state_key,
            prev_events: raw.prev_events.into_iter().map(EventRef::into_id).collect(),
            auth_events: raw.auth_events.into_iter().map(EventRef::into_id).collect(),
            redacts,
            depth: raw.depth,
            rejected: false,
        })
    }

    /// The events this one's auth chain continues with: its `auth_events`, and in v12
    /// the room's create event (named by the room ID, never listed).
    pub fn auth_parents(&self) -> impl Iterator<Item = &OwnedEventId> {
        self.auth_events.iter().chain(
            self.implicit_create
                .iter()
                .filter(|c| !self.auth_events.contains(c)),
        )
    }

    /// `(type, state_key)` for state events.
    pub fn state_pair(&self) -> Option<(String, String)> {
        self.state_key
            .as_ref()
            .map(|k| (self.kind.to_string(), k.clone()))
    }
}

impl Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &OwnedEventId {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&OwnedEventId> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
