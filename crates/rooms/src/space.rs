//! Spaces as the room hierarchy sees them, shared by the client `/hierarchy` walk and the
//! federation `/hierarchy` answer: a space's `m.space.child` links (a link counts when its
//! content has a non-empty `via`; ordered by `order`, then the link's `origin_server_ts`,
//! then the room ID, the spec's ordering), the summary of one room, and who may see a room
//! in a hierarchy — a local user (joined or invited, a public or knockable join rule,
//! `world_readable` history, or a restricted join rule whose allowed room they are joined
//! to) or another server (the same rules with "one of its users is joined or invited" in
//! place of the user's membership, as Synapse decides it).
//!
//! Children are parsed from their stripped events ([`SpaceChild::from_stripped`]), so a
//! remote server's `children_state` and our own state go through the same checks.
use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId};
use serde_json::{Map, Value};

use crate::{Membership, Result, RoomService};

/// One valid `m.space.child` link of a space.
#[derive(Debug, Clone)]
pub struct SpaceChild {
    pub room_id: OwnedRoomId,
    /// The link's `via` servers, in order (the first few that parse).
    pub via: Vec<OwnedServerName>,
    pub suggested: bool,
    order: Option<String>,
    ts: u64,
    /// The stripped event with its `origin_server_ts` (a `children_state` entry).
    pub stripped: Value,
}

/// `via` servers kept per link: enough to find a resident, not a list to hammer.
const MAX_VIA: usize = 10;

impl SpaceChild {
    /// A link from a stripped `m.space.child` event, or `None` when it is not one that
    /// counts (wrong type, a state key that is no room ID, no `via`).
    pub fn from_stripped(ev: &Value) -> Option<SpaceChild> {
        if ev.get("type").and_then(Value::as_str) != Some("m.space.child") {
            return None;
        }
        let room_id = ev
            .get("state_key")
            .and_then(Value::as_str)
            .and_then(|s| OwnedRoomId::try_from(s).ok())?;
        let content = ev.get("content")?;
        let via_raw = content.get("via").and_then(Value::as_array)?;
        if via_raw.is_empty() {
            return None;
        }
        let via = via_raw
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| OwnedServerName::try_from(s).ok())
            .take(MAX_VIA)
            .collect();
        // The spec's `order`: printable ASCII, at most 50 characters.
        let order = content
            .get("order")
            .and_then(Value::as_str)
            .filter(|o| o.len() <= 50 && o.chars().all(|c| (' '..='~').contains(&c)))
            .map(str::to_owned);
        Some(SpaceChild {
            room_id,
            via,
            suggested: content.get("suggested") == Some(&Value::Bool(true)),
            order,
            ts: ev
                .get("origin_server_ts")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            stripped: ev.clone(),
        })
    }
}

/// The links among `events` (stripped `m.space.child` events) that count, `suggested`
/// ones only when asked, in the spec's order; one link per child room.
pub fn space_children_of(events: &[Value], suggested_only: bool) -> Vec<SpaceChild> {
    let mut out: Vec<SpaceChild> = events
        .iter()
        .filter_map(SpaceChild::from_stripped)
        .filter(|c| !suggested_only || c.suggested)
        .collect();
    out.sort_by(|a, b| {
        // Children with an `order` come first, by it.
        let ka = (a.order.is_none(), &a.order, a.ts, &a.room_id);
        let kb = (b.order.is_none(), &b.order, b.ts, &b.room_id);
        ka.cmp(&kb)
    });
    out.dedup_by(|a, b| a.room_id == b.room_id);
    out
}

/// Whether a summary (ours or another server's) lets anyone see the room: a public or
/// knockable join rule, or `world_readable` history.
pub fn summary_open_to_all(summary: &Value) -> bool {
    matches!(
        summary.get("join_rule").and_then(Value::as_str),
        Some("public" | "knock" | "knock_restricted")
    ) || summary.get("world_readable") == Some(&Value::Bool(true))
}

/// The room IDs of a restricted join rule's `m.room_membership` allow conditions.
fn allowed_rooms(join_rules: &Value) -> Vec<OwnedRoomId> {
    if !matches!(
        join_rules.get("join_rule").and_then(Value::as_str),
        Some("restricted" | "knock_restricted")
    ) {
        return Vec::new();
    }
    join_rules
        .get("allow")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("m.room_membership"))
        .filter_map(|c| c.get("room_id").and_then(Value::as_str))
        .filter_map(|r| OwnedRoomId::try_from(r).ok())
        .collect()
}

impl RoomService {
    fn state_str(&self, room: &RoomId, kind: &str, field: &str) -> Result<Option<String>> {
        Ok(self
            .current_state_event(room, kind, "")?
            .and_then(|ev| ev.content_str(field).map(str::to_owned)))
    }

    /// Whether this server takes part in `room`: it has its state and a joined local user.
    /// A room we only were in once is asked of a resident server instead.
    pub fn space_resident(&self, room: &RoomId) -> Result<bool> {
        if !self.room_exists(room)? {
            return Ok(false);
        }
        let own = self.server_name();
        Ok(self
            .joined_members(room)?
            .iter()
            .any(|u| u.server_name() == own))
    }

    /// The valid `m.space.child` links of `room` (our current state), in the spec's order.
    pub fn space_children(&self, room: &RoomId, suggested_only: bool) -> Result<Vec<SpaceChild>> {
        let mut stripped = Vec::new();
        for (_, event_id) in self.current_state_of_type(room, "m.space.child")? {
            let Some(ev) = self.event(&event_id)? else {
                continue;
            };
            let mut s = ev.to_stripped_state();
            s["origin_server_ts"] = Value::from(ev.origin_server_ts());
            stripped.push(s);
        }
        Ok(space_children_of(&stripped, suggested_only))
    }

    /// Whether local `user` may see `room` in a hierarchy (see the module docs).
    pub fn space_visible_to_user(&self, user: &UserId, room: &RoomId) -> Result<bool> {
        if matches!(
            self.membership_state(room, user)?,
            Some(Membership::Join | Membership::Invite)
        ) {
            return Ok(true);
        }
        let Some(rules) = self.current_state_event(room, "m.room.join_rules", "")? else {
            return self.world_readable(room);
        };
        let rules = rules.content();
        let open = matches!(
            rules.get("join_rule").and_then(Value::as_str),
            Some("public" | "knock" | "knock_restricted")
        );
        if open || self.world_readable(room)? {
            return Ok(true);
        }
        self.joined_any(user, &allowed_rooms(&rules))
    }

    /// Whether local `user` may see a room another server summarised: open to all, or a
    /// restricted room whose `allowed_room_ids` holds a room the user is joined to, or a
    /// room the user is joined to or invited to as far as we know.
    pub fn remote_space_visible_to_user(
        &self,
        user: &UserId,
        room: &RoomId,
        summary: &Value,
    ) -> Result<bool> {
        if summary_open_to_all(summary) {
            return Ok(true);
        }
        let allowed: Vec<OwnedRoomId> = summary
            .get("allowed_room_ids")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|r| OwnedRoomId::try_from(r).ok())
            .collect();
        if self.joined_any(user, &allowed)? {
            return Ok(true);
        }
        Ok(self.room_exists(room)?
            && matches!(
                self.membership_state(room, user)?,
                Some(Membership::Join | Membership::Invite)
            ))
    }

    /// Whether `server` may see `room` in a federation `/hierarchy` answer: open to all,
    /// one of its users joined or invited, or a restricted room with an allowed room one of
    /// its users is joined to.
    pub fn space_visible_to_server(&self, server: &ServerName, room: &RoomId) -> Result<bool> {
        let rules = self
            .current_state_event(room, "m.room.join_rules", "")?
            .map(|e| e.content())
            .unwrap_or(Value::Null);
        let open = matches!(
            rules.get("join_rule").and_then(Value::as_str),
            Some("public" | "knock" | "knock_restricted")
        );
        if open || self.world_readable(room)? {
            return Ok(true);
        }
        let in_room = |r: &RoomId, invite_counts: bool| -> Result<bool> {
            Ok(self.members(r)?.iter().any(|(u, m)| {
                u.server_name() == server
                    && (*m == Membership::Join || (invite_counts && *m == Membership::Invite))
            }))
        };
        if in_room(room, true)? {
            return Ok(true);
        }
        for allowed in allowed_rooms(&rules) {
            if self.room_exists(&allowed)? && in_room(&allowed, false)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn world_readable(&self, room: &RoomId) -> Result<bool> {
        Ok(self
            .state_str(room, "m.room.history_visibility", "history_visibility")?
            .as_deref()
            == Some("world_readable"))
    }

    fn joined_any(&self, user: &UserId, rooms: &[OwnedRoomId]) -> Result<bool> {
        for r in rooms {
            if self.room_exists(r)? && self.is_joined(r, user)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The summary of `room` as a hierarchy lists it (`children_state` left to the caller).
    /// `for_federation` adds `allowed_room_ids` (a restricted room's allowed rooms), so the
    /// asking server can decide for its own users.
    pub fn space_summary(&self, room: &RoomId, for_federation: bool) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        out.insert("room_id".into(), Value::from(room.as_str()));
        for (kind, field, key) in [
            ("m.room.name", "name", "name"),
            ("m.room.topic", "topic", "topic"),
            ("m.room.canonical_alias", "alias", "canonical_alias"),
            ("m.room.avatar", "url", "avatar_url"),
            ("m.room.join_rules", "join_rule", "join_rule"),
            ("m.room.create", "type", "room_type"),
            ("m.room.encryption", "algorithm", "encryption"),
        ] {
            if let Some(v) = self.state_str(room, kind, field)? {
                out.insert(key.into(), Value::from(v));
            }
        }
        if let Some(v) = self.room_version(room)? {
            out.insert("room_version".into(), Value::from(v.as_str()));
        }
        out.insert(
            "num_joined_members".into(),
            Value::from(self.joined_members(room)?.len()),
        );
        out.insert(
            "world_readable".into(),
            Value::Bool(self.world_readable(room)?),
        );
        out.insert(
            "guest_can_join".into(),
            Value::Bool(
                self.state_str(room, "m.room.guest_access", "guest_access")?
                    .as_deref()
                    == Some("can_join"),
            ),
        );
        if for_federation
            && let Some(rules) = self.current_state_event(room, "m.room.join_rules", "")?
        {
            let allowed = allowed_rooms(&rules.content());
            if !allowed.is_empty() {
                out.insert(
                    "allowed_room_ids".into(),
                    Value::Array(allowed.iter().map(|r| Value::from(r.as_str())).collect()),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(room: &str, via: Value, order: Option<&str>, ts: u64) -> Value {
        let mut content = json!({ "via": via });
        if let Some(o) = order {
            content["order"] = Value::from(o);
        }
        json!({"type": "m.space.child", "state_key": room, "content": content,
               "sender": "@a:x", "origin_server_ts": ts})
    }

    #[test]
    fn children_are_ordered_and_checked() {
        let evs = vec![
            link("!c:x", json!(["x"]), None, 5),
            link("!b:x", json!(["x"]), Some("b"), 9),
            link("!a:x", json!(["x"]), None, 1),
            link("!d:x", json!([]), None, 0),
            link("not-a-room", json!(["x"]), None, 0),
            link("!e:x", json!(["x"]), Some("\u{7f}bad"), 0),
            json!({"type": "m.room.name", "state_key": "!f:x", "content": {"via": ["x"]}}),
        ];
        let got: Vec<String> = space_children_of(&evs, false)
            .into_iter()
            .map(|c| c.room_id.to_string())
            .collect();
        // `order` first; an invalid order counts as none (ts 0 sorts first then).
        assert_eq!(got, ["!b:x", "!e:x", "!a:x", "!c:x"]);
        assert!(space_children_of(&evs, true).is_empty());
    }

    #[test]
    fn open_summaries() {
        assert!(summary_open_to_all(&json!({"join_rule": "public"})));
        assert!(summary_open_to_all(
            &json!({"join_rule": "invite", "world_readable": true})
        ));
        assert!(!summary_open_to_all(&json!({"join_rule": "restricted"})));
    }
}
