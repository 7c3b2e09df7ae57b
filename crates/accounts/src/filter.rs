//! Sync filters: ruma's types (`ruma::api::client::filter`), validated on upload, plus
//! the matching `/sync` and `/messages` apply ([`EventFilterExt`], [`RoomFilterExt`],
//! [`RoomEventFilterExt`]).
//!
//! Parsing ([`parse_filter`]) is strict about types (a string where a list is expected, a
//! number in a list of event types, a room ID that is not a room ID, a sender that is not a
//! user ID are all errors, which the HTTP layer turns into 400 `M_BAD_JSON` with serde's
//! message naming the problem) and lenient about absence: every field is optional, an
//! explicit `null` means "absent" (nulls are dropped before ruma sees them), and unknown
//! fields are ignored as the spec asks.
//!
//! Matching follows the spec: `not_*` lists win over their positive counterparts, an
//! absent positive list includes everything, an empty one includes nothing, and event
//! types are Matrix globs (`*`, `?`; the matcher is `presence-core`'s).
use ruma::api::client::filter::UrlFilter;
pub use ruma::api::client::filter::{
    EventFormat, Filter as EventFilter, FilterDefinition as Filter, LazyLoadOptions,
    RoomEventFilter, RoomFilter,
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

/// Event-type globs in filters are Matrix globs; the matcher is owned by `presence-core`.
pub use presence_core::sharing::glob_match;

/// Remove `null` members of every object, recursively (`null` means "absent").
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Parse and validate a filter from JSON (an uploaded filter, or an inline `/sync`
/// `filter` parameter). The error is a human-readable reason for a 400 `M_BAD_JSON`.
pub fn parse_filter(mut value: Value) -> Result<Filter, String> {
    if !value.is_object() {
        return Err("filter must be a JSON object".to_owned());
    }
    drop_nulls(&mut value);
    let filter: Filter = serde_json::from_value(value).map_err(|e| e.to_string())?;
    // ruma keeps unknown formats as a custom value; the spec knows only these two.
    if !matches!(
        filter.event_format,
        EventFormat::Client | EventFormat::Federation
    ) {
        return Err(format!(
            "event_format must be \"client\" or \"federation\", not {:?}",
            filter.event_format.as_str()
        ));
    }
    Ok(filter)
}

/// Parse a filter from a JSON string (e.g. a `/sync?filter={...}` parameter).
pub fn parse_filter_str(s: &str) -> Result<Filter, String> {
    let value: Value = serde_json::from_str(s).map_err(|e| format!("filter is not JSON: {e}"))?;
    parse_filter(value)
}

/// Parse a `RoomEventFilter` alone (the `/messages` and `/context` `filter` parameter).
pub fn parse_room_event_filter_str(s: &str) -> Result<RoomEventFilter, String> {
    let mut value: Value =
        serde_json::from_str(s).map_err(|e| format!("filter is not JSON: {e}"))?;
    if !value.is_object() {
        return Err("filter must be a JSON object".to_owned());
    }
    drop_nulls(&mut value);
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn types_match(types: Option<&[String]>, not_types: &[String], event_type: &str) -> bool {
    if not_types.iter().any(|p| glob_match(p, event_type)) {
        return false;
    }
    types.is_none_or(|types| types.iter().any(|p| glob_match(p, event_type)))
}

fn senders_match(
    senders: Option<&[OwnedUserId]>,
    not_senders: &[OwnedUserId],
    sender: &UserId,
) -> bool {
    if not_senders.iter().any(|s| s == sender) {
        return false;
    }
    senders.is_none_or(|senders| senders.iter().any(|s| s == sender))
}

fn rooms_match(rooms: Option<&[OwnedRoomId]>, not_rooms: &[OwnedRoomId], room: &RoomId) -> bool {
    if not_rooms.iter().any(|r| r == room) {
        return false;
    }
    rooms.is_none_or(|rooms| rooms.iter().any(|r| r == room))
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

fn excludes_all_types(types: Option<&[String]>, not_types: &[String]) -> bool {
    types.is_some_and(<[String]>::is_empty) || not_types.iter().any(|t| t == "*")
}

/// Matching for the spec's `EventFilter` (presence, global account data).
pub trait EventFilterExt {
    /// Does an event of this type (and sender, when it has one) pass the filter?
    /// Without a sender (global account data) only the type lists apply.
    fn matches(&self, event_type: &str, sender: Option<&UserId>) -> bool;
    /// The `limit`, if set.
    fn limit_u64(&self) -> Option<u64>;
    /// The number of events to return: `limit` clamped to `1..=max`, or `default`.
    fn limit_or(&self, default: usize, max: usize) -> usize;
    /// True when the filter excludes every event type (`types: []` or `not_types: ["*"]`),
    /// so the section can be skipped without computing it.
    fn excludes_all(&self) -> bool;
}

impl EventFilterExt for EventFilter {
    fn matches(&self, event_type: &str, sender: Option<&UserId>) -> bool {
        types_match(self.types.as_deref(), &self.not_types, event_type)
            && sender.is_none_or(|s| senders_match(self.senders.as_deref(), &self.not_senders, s))
    }
    fn limit_u64(&self) -> Option<u64> {
        self.limit.map(u64::from)
    }
    fn limit_or(&self, default: usize, max: usize) -> usize {
        clamp_limit(self.limit_u64(), default, max)
    }
    fn excludes_all(&self) -> bool {
        excludes_all_types(self.types.as_deref(), &self.not_types)
    }
}

/// Matching for the spec's `RoomFilter`.
pub trait RoomFilterExt {
    /// Is this room included at all (the top-level `rooms` / `not_rooms`)?
    fn matches_room(&self, room: &RoomId) -> bool;
}

impl RoomFilterExt for RoomFilter {
    fn matches_room(&self, room: &RoomId) -> bool {
        rooms_match(self.rooms.as_deref(), &self.not_rooms, room)
    }
}

/// Matching for the spec's `RoomEventFilter` (also used for `StateFilter`).
pub trait RoomEventFilterExt {
    /// Is this room included by this section's `rooms` / `not_rooms`?
    fn matches_room(&self, room: &RoomId) -> bool;
    /// Does an event pass this filter? `sender` is `None` for per-room account data;
    /// `contains_url` is whether the event's content has a string `url` key.
    fn matches(
        &self,
        room: &RoomId,
        event_type: &str,
        sender: Option<&UserId>,
        contains_url: bool,
    ) -> bool;
    /// Does a full client-format event (JSON) pass this filter in `room`?
    fn matches_json(&self, room: &RoomId, event: &Value) -> bool;
    /// The `limit`, if set.
    fn limit_u64(&self) -> Option<u64>;
    /// The number of events to return: `limit` clamped to `1..=max`, or `default`.
    fn limit_or(&self, default: usize, max: usize) -> usize;
    /// True when the filter excludes every event type (`types: []` or `not_types: ["*"]`)
    /// or every room (`rooms: []`).
    fn excludes_all(&self) -> bool;
    /// Lazy-load room members (only the senders of returned events in `state`).
    fn lazy_load_members(&self) -> bool;
}

impl RoomEventFilterExt for RoomEventFilter {
    fn matches_room(&self, room: &RoomId) -> bool {
        rooms_match(self.rooms.as_deref(), &self.not_rooms, room)
    }
    fn matches(
        &self,
        room: &RoomId,
        event_type: &str,
        sender: Option<&UserId>,
        contains_url: bool,
    ) -> bool {
        let url_ok = match self.url_filter {
            None => true,
            Some(UrlFilter::EventsWithUrl) => contains_url,
            Some(UrlFilter::EventsWithoutUrl) => !contains_url,
        };
        self.matches_room(room)
            && types_match(self.types.as_deref(), &self.not_types, event_type)
            && sender.is_none_or(|s| senders_match(self.senders.as_deref(), &self.not_senders, s))
            && url_ok
    }
    fn matches_json(&self, room: &RoomId, event: &Value) -> bool {
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
    fn limit_u64(&self) -> Option<u64> {
        self.limit.map(u64::from)
    }
    fn limit_or(&self, default: usize, max: usize) -> usize {
        clamp_limit(self.limit_u64(), default, max)
    }
    fn excludes_all(&self) -> bool {
        excludes_all_types(self.types.as_deref(), &self.not_types)
            || self.rooms.as_ref().is_some_and(Vec::is_empty)
    }
    fn lazy_load_members(&self) -> bool {
        !self.lazy_load_options.is_disabled()
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
        let f = parse_filter(json!({
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
        assert_eq!(f.presence.limit_u64(), Some(3));
        assert!(f.account_data.excludes_all());
        assert!(f.room.include_leave);
        assert_eq!(f.room.timeline.limit_u64(), Some(10));
        assert!(f.room.timeline.lazy_load_members());
        assert_eq!(
            f.room.timeline.url_filter,
            Some(UrlFilter::EventsWithoutUrl)
        );
        assert!(matches!(
            f.room.state.lazy_load_options,
            LazyLoadOptions::Enabled {
                include_redundant_members: true
            }
        ));
        assert!(f.room.matches_room(&room("!r:x")));
        assert!(!f.room.matches_room(&room("!s:x")));
        assert!(!f.room.matches_room(&room("!t:x")));
    }

    #[test]
    fn nulls_and_empty_objects_are_defaults() {
        let f =
            parse_filter(json!({"room": null, "presence": {"types": null}, "event_format": null}))
                .expect("ok");
        assert!(f.is_empty());
        assert!(parse_filter(json!({})).expect("ok").is_empty());
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
            assert!(parse_filter(b.clone()).is_err(), "accepted {b}");
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
        let mut f = RoomEventFilter::default();
        f.types = Some(vec!["m.room.*".into()]);
        f.not_types = vec!["m.room.member".into()];
        f.not_senders = vec![user("@spam:x")];
        let r = room("!r:x");
        let a = user("@a:x");
        assert!(f.matches(&r, "m.room.message", Some(&a), false));
        assert!(!f.matches(&r, "m.room.member", Some(&a), false));
        assert!(!f.matches(&r, "m.reaction", Some(&a), false));
        assert!(!f.matches(&r, "m.room.message", Some(&user("@spam:x")), false));
        assert!(f.matches(&r, "m.room.message", None, false));

        let mut urls = RoomEventFilter::default();
        urls.url_filter = Some(UrlFilter::EventsWithUrl);
        assert!(urls.matches(&r, "m.room.message", Some(&a), true));
        assert!(!urls.matches(&r, "m.room.message", Some(&a), false));
        let ev =
            json!({"type": "m.room.message", "sender": "@a:x", "content": {"url": "mxc://x/y"}});
        assert!(urls.matches_json(&r, &ev));

        let mut none = EventFilter::default();
        none.types = Some(vec![]);
        assert!(!none.matches("m.presence", Some(&a)));
        assert!(none.excludes_all());
        assert!(EventFilter::default().matches("anything", None));
    }

    #[test]
    fn limits_are_clamped() {
        let mut f = RoomEventFilter::default();
        f.limit = Some(0u32.into());
        assert_eq!(f.limit_or(10, 100), 1);
        f.limit = Some(1_000_000u32.into());
        assert_eq!(f.limit_or(10, 100), 100);
        assert_eq!(RoomEventFilter::default().limit_or(10, 100), 10);
    }
}
