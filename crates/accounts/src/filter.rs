//! The typed sync filter of the client-server spec (`Filter`, `EventFilter`, `RoomFilter`,
//! `RoomEventFilter`), validated on upload and applied by `/sync` and `/messages`.
//!
//! Parsing is strict about types (a string where a list is expected, a number in a list of
//! event types, a room ID that is not a room ID, a sender that is not a user ID are all
//! errors, which the HTTP layer turns into 400 `M_BAD_JSON`) and lenient about absence:
//! every field is optional, an explicit `null` means "absent", and unknown fields are
//! ignored as the spec asks.
//!
//! Matching follows the spec: `not_*` lists win over their positive counterparts, an
//! absent positive list includes everything, an empty one includes nothing, and `*` in
//! an event type is a wildcard for any sequence of characters.
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Deserializer, Serialize};

/// Deserialise `null` (or an absent field, with `#[serde(default)]`) as `T::default()`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// The format of events in a sync response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The client-server format (the default).
    #[default]
    Client,
    /// The raw PDU as received over federation.
    Federation,
}

/// A filter for a sync (or `/messages`) request: the spec's `Filter` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Fields to include in each event (dotted paths); absent means all fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_fields: Option<Vec<String>>,
    /// `client` (default) or `federation`.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub event_format: EventFormat,
    /// Which presence updates to include.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub presence: EventFilter,
    /// Which global account data to include.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub account_data: EventFilter,
    /// Filters for everything inside rooms.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub room: RoomFilter,
}

/// The spec's `EventFilter` (presence, global account data).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    /// Maximum number of events to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Event types to include (`*` wildcards); absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Event types to exclude; wins over `types`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_types: Option<Vec<String>>,
    /// Senders to include; absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<OwnedUserId>>,
    /// Senders to exclude; wins over `senders`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_senders: Option<Vec<OwnedUserId>>,
}

/// The spec's `RoomFilter`: which rooms, and what of them, to include.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    /// Rooms to include; absent means all. Applies to every room section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<OwnedRoomId>>,
    /// Rooms to exclude; wins over `rooms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_rooms: Option<Vec<OwnedRoomId>>,
    /// Include rooms the user has left (the `leave` section of sync).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub include_leave: bool,
    /// Events in the `timeline` section.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub timeline: RoomEventFilter,
    /// Events in the `state` section.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub state: RoomEventFilter,
    /// Ephemeral events (typing, receipts).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub ephemeral: RoomEventFilter,
    /// Per-room account data.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub account_data: RoomEventFilter,
}

/// The spec's `RoomEventFilter` (also used for `StateFilter`, which has the same fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomEventFilter {
    /// Maximum number of events to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Event types to include (`*` wildcards); absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Event types to exclude; wins over `types`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_types: Option<Vec<String>>,
    /// Senders to include; absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<OwnedUserId>>,
    /// Senders to exclude; wins over `senders`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_senders: Option<Vec<OwnedUserId>>,
    /// Rooms to include; absent means all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<OwnedRoomId>>,
    /// Rooms to exclude; wins over `rooms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_rooms: Option<Vec<OwnedRoomId>>,
    /// `Some(true)`: only events with a `url` key in their content; `Some(false)`: only
    /// events without; `None`: both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contains_url: Option<bool>,
    /// Lazy-load room members (only the senders of returned events in `state`).
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub lazy_load_members: bool,
    /// With lazy loading: resend members the client should already have.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub include_redundant_members: bool,
    /// Per-thread notification counts in sync.
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_default")]
    pub unread_thread_notifications: bool,
}

impl Filter {
    /// Parse and validate a filter from JSON (an uploaded filter, or an inline `/sync`
    /// `filter` parameter). The error is a human-readable reason for a 400 `M_BAD_JSON`.
    pub fn from_json(value: serde_json::Value) -> Result<Filter, String> {
        if !value.is_object() {
            return Err("filter must be a JSON object".to_owned());
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Parse a filter from a JSON string (e.g. a `/sync?filter={...}` parameter).
    pub fn from_str_json(s: &str) -> Result<Filter, String> {
        let value: serde_json::Value =
            serde_json::from_str(s).map_err(|e| format!("filter is not JSON: {e}"))?;
        Filter::from_json(value)
    }
}

/// Event-type globs in filters are Matrix globs; the matcher is owned by `presence-core`.
pub use presence_core::sharing::glob_match;

fn types_match(
    types: &Option<Vec<String>>,
    not_types: &Option<Vec<String>>,
    event_type: &str,
) -> bool {
    if let Some(not) = not_types
        && not.iter().any(|p| glob_match(p, event_type))
    {
        return false;
    }
    match types {
        Some(types) => types.iter().any(|p| glob_match(p, event_type)),
        None => true,
    }
}

fn senders_match(
    senders: &Option<Vec<OwnedUserId>>,
    not_senders: &Option<Vec<OwnedUserId>>,
    sender: &UserId,
) -> bool {
    if let Some(not) = not_senders
        && not.iter().any(|s| s == sender)
    {
        return false;
    }
    match senders {
        Some(senders) => senders.iter().any(|s| s == sender),
        None => true,
    }
}

fn rooms_match(
    rooms: &Option<Vec<OwnedRoomId>>,
    not_rooms: &Option<Vec<OwnedRoomId>>,
    room: &RoomId,
) -> bool {
    if let Some(not) = not_rooms
        && not.iter().any(|r| r == room)
    {
        return false;
    }
    match rooms {
        Some(rooms) => rooms.iter().any(|r| r == room),
        None => true,
    }
}

/// Clamp a filter's `limit` to `1..=max`, using `default` when absent.
fn clamp_limit(limit: Option<u64>, default: usize, max: usize) -> usize {
    match limit {
        None => default.min(max),
        Some(n) => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .clamp(1, max.max(1)),
    }
}

impl EventFilter {
    /// Does an event of this type (and sender, when it has one) pass the filter?
    /// Without a sender (global account data) only the type lists apply.
    pub fn matches(&self, event_type: &str, sender: Option<&UserId>) -> bool {
        types_match(&self.types, &self.not_types, event_type)
            && sender.is_none_or(|s| senders_match(&self.senders, &self.not_senders, s))
    }

    /// The number of events to return: `limit` clamped to `1..=max`, or `default`.
    pub fn limit_or(&self, default: usize, max: usize) -> usize {
        clamp_limit(self.limit, default, max)
    }

    /// True when the filter excludes every event type (`types: []` or `not_types: ["*"]`),
    /// so the section can be skipped without computing it.
    pub fn excludes_all(&self) -> bool {
        self.types.as_ref().is_some_and(Vec::is_empty)
            || self
                .not_types
                .as_ref()
                .is_some_and(|n| n.iter().any(|t| t == "*"))
    }
}

impl RoomFilter {
    /// Is this room included at all (the top-level `rooms` / `not_rooms`)?
    pub fn matches_room(&self, room: &RoomId) -> bool {
        rooms_match(&self.rooms, &self.not_rooms, room)
    }
}

impl RoomEventFilter {
    /// Is this room included by this section's `rooms` / `not_rooms`?
    pub fn matches_room(&self, room: &RoomId) -> bool {
        rooms_match(&self.rooms, &self.not_rooms, room)
    }

    /// Does an event pass this filter? `sender` is `None` for per-room account data;
    /// `contains_url` is whether the event's content has a string `url` key.
    pub fn matches(
        &self,
        room: &RoomId,
        event_type: &str,
        sender: Option<&UserId>,
        contains_url: bool,
    ) -> bool {
        self.matches_room(room)
            && types_match(&self.types, &self.not_types, event_type)
            && sender.is_none_or(|s| senders_match(&self.senders, &self.not_senders, s))
            && self.contains_url.is_none_or(|want| want == contains_url)
    }

    /// Does a full client-format event (JSON) pass this filter in `room`?
    pub fn matches_json(&self, room: &RoomId, event: &serde_json::Value) -> bool {
        let event_type = event
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let sender = event
            .get("sender")
            .and_then(|v| v.as_str())
            .and_then(|s| <&UserId>::try_from(s).ok());
        let contains_url = event
            .get("content")
            .and_then(|c| c.get("url"))
            .is_some_and(|u| u.is_string());
        self.matches(room, event_type, sender, contains_url)
    }

    /// The number of events to return: `limit` clamped to `1..=max`, or `default`.
    pub fn limit_or(&self, default: usize, max: usize) -> usize {
        clamp_limit(self.limit, default, max)
    }

    /// True when the filter excludes every event type (`types: []` or `not_types: ["*"]`).
    pub fn excludes_all(&self) -> bool {
        self.types.as_ref().is_some_and(Vec::is_empty)
            || self
                .not_types
                .as_ref()
                .is_some_and(|n| n.iter().any(|t| t == "*"))
            || self.rooms.as_ref().is_some_and(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn room(s: &str) -> OwnedRoomId {
        s.try_into().expect("room id")
    }
    fn user(s: &str) -> OwnedUserId {
        s.try_into().expect("user id")
    }

    #[test]
    fn parses_the_full_schema() {
        let f = Filter::from_json(json!({
            "event_fields": ["type", "content.body"],
            "event_format": "federation",
            "presence": {"limit": 3, "types": ["m.presence"], "not_senders": ["@a:x"]},
            "account_data": {"not_types": ["*"]},
            "room": {
                "rooms": ["!r:x"],
                "not_rooms": ["!s:x"],
                "include_leave": true,
                "timeline": {"limit": 10, "lazy_load_members": true, "contains_url": false},
                "state": {"lazy_load_members": true, "include_redundant_members": true},
                "ephemeral": {"types": ["m.typing"]},
                "account_data": {"senders": ["@b:x"]},
                "unknown_field": 1
            }
        }))
        .expect("valid filter");
        assert_eq!(f.event_format, EventFormat::Federation);
        assert_eq!(
            f.event_fields.as_deref(),
            Some(&["type".to_owned(), "content.body".to_owned()][..])
        );
        assert_eq!(f.presence.limit, Some(3));
        assert!(f.account_data.excludes_all());
        assert!(f.room.include_leave);
        assert_eq!(f.room.timeline.limit, Some(10));
        assert!(f.room.timeline.lazy_load_members);
        assert_eq!(f.room.timeline.contains_url, Some(false));
        assert!(f.room.state.include_redundant_members);
        assert!(f.room.matches_room(&room("!r:x")));
        assert!(!f.room.matches_room(&room("!s:x")));
        assert!(!f.room.matches_room(&room("!t:x")));
    }

    #[test]
    fn nulls_and_empty_objects_are_defaults() {
        let f = Filter::from_json(
            json!({"room": null, "presence": {"types": null}, "event_format": null}),
        )
        .expect("ok");
        assert_eq!(f, Filter::default());
        assert_eq!(Filter::from_json(json!({})).expect("ok"), Filter::default());
    }

    #[test]
    fn rejects_wrong_types_like_complement_does() {
        let bad = [
            json!({"presence": "not_an_object"}),
            json!({"room": {"timeline": "not_an_object"}}),
            json!({"room": {"state": "not_an_object"}}),
            json!({"room": {"ephemeral": "not_an_object"}}),
            json!({"room": {"account_data": "not_an_object"}}),
            json!({"room": {"timeline": {"rooms": "not_a_list"}}}),
            json!({"room": {"timeline": {"not_rooms": "not_a_list"}}}),
            json!({"room": {"timeline": {"senders": "not_a_list"}}}),
            json!({"room": {"timeline": {"not_senders": "not_a_list"}}}),
            json!({"room": {"timeline": {"types": "not_a_list"}}}),
            json!({"room": {"timeline": {"not_types": "not_a_list"}}}),
            json!({"room": {"timeline": {"types": [1]}}}),
            json!({"room": {"timeline": {"rooms": ["not_a_room_id"]}}}),
            json!({"room": {"timeline": {"senders": ["not_a_sender_id"]}}}),
            json!({"room": {"timeline": {"limit": -1}}}),
            json!({"room": {"timeline": {"limit": "10"}}}),
            json!({"event_format": "xml"}),
            json!({"event_fields": "type"}),
            json!({"room": {"include_leave": "yes"}}),
            json!([]),
            json!("filter"),
        ];
        for b in bad {
            assert!(Filter::from_json(b.clone()).is_err(), "accepted {b}");
        }
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("m.*", "m.room.message"));
        assert!(glob_match("*", ""));
        assert!(glob_match("m.room.*e", "m.room.message"));
        assert!(glob_match("*.member", "m.room.member"));
        assert!(!glob_match("m.room.*", "m.presence"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("m.room.message", "m.room.message"));
        assert!(!glob_match("m.room.message", "m.room.messages"));
    }

    #[test]
    fn event_matching_follows_the_precedence_rules() {
        let f = RoomEventFilter {
            types: Some(vec!["m.room.*".into()]),
            not_types: Some(vec!["m.room.member".into()]),
            not_senders: Some(vec![user("@spam:x")]),
            ..Default::default()
        };
        let r = room("!r:x");
        let a = user("@a:x");
        assert!(f.matches(&r, "m.room.message", Some(&a), false));
        assert!(!f.matches(&r, "m.room.member", Some(&a), false));
        assert!(!f.matches(&r, "m.reaction", Some(&a), false));
        assert!(!f.matches(&r, "m.room.message", Some(&user("@spam:x")), false));
        assert!(f.matches(&r, "m.room.message", None, false));

        let urls = RoomEventFilter {
            contains_url: Some(true),
            ..Default::default()
        };
        assert!(urls.matches(&r, "m.room.message", Some(&a), true));
        assert!(!urls.matches(&r, "m.room.message", Some(&a), false));
        let ev =
            json!({"type": "m.room.message", "sender": "@a:x", "content": {"url": "mxc://x/y"}});
        assert!(urls.matches_json(&r, &ev));

        let none = EventFilter {
            types: Some(vec![]),
            ..Default::default()
        };
        assert!(!none.matches("m.presence", Some(&a)));
        assert!(none.excludes_all());
        assert!(EventFilter::default().matches("anything", None));
    }

    #[test]
    fn limits_are_clamped() {
        let f = RoomEventFilter {
            limit: Some(0),
            ..Default::default()
        };
        assert_eq!(f.limit_or(10, 100), 1);
        let f = RoomEventFilter {
            limit: Some(1_000_000),
            ..Default::default()
        };
        assert_eq!(f.limit_or(10, 100), 100);
        assert_eq!(RoomEventFilter::default().limit_or(10, 100), 10);
    }
}
