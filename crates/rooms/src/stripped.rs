//! Stripped state: the few state events a user sees of a room they are invited to or
//! knocked on (`invite_state`, `knock_state`), built here for rooms this server has and
//! cleaned here when another server sent them.
//!
//! Each event is `{type, state_key, content, sender}` — except the create event, which is
//! given in full (event ID, `origin_server_ts`, room ID), as MSC4311 asks: with room
//! version 12 the room ID is the create event's hash, and a client can only check that
//! (and see the room's real creator) with the whole event. A remote server's create event
//! is kept whole only when it proves itself — its reference hash is the room ID (v12 and
//! later); otherwise it is stripped like the rest, since nothing here can check it.
use ruma::{CanonicalJsonObject, RoomId};
use serde_json::{Value, json};

use crate::store::StoredEvent;
use crate::{MAX_INVITE_STATE, Result, RoomService, STRIPPED_STATE_TYPES};

/// One local event as stripped state (the create event whole).
fn local_entry(ev: &StoredEvent) -> Value {
    if ev.kind() == "m.room.create" {
        let mut full = ev.to_client_event(None, storage::now_ms());
        if let Some(o) = full.as_object_mut() {
            // Nothing a client needs at this point, and `unsigned.age` would tell the time.
            o.remove("unsigned");
        }
        full
    } else {
        ev.to_stripped_state()
    }
}

impl RoomService {
    /// The current state events of the stripped-state types, as stripped state.
    pub(crate) fn local_stripped_state(&self, room: &RoomId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for t in STRIPPED_STATE_TYPES {
            if let Some(ev) = self.current_state_event(room, t, "")? {
                out.push(local_entry(&ev));
            }
        }
        Ok(out)
    }
}

/// Keep the well-formed entries of a stripped-state list another server sent for `room`
/// (`type` and `state_key` strings, `content` an object), at most [`MAX_INVITE_STATE`]: as
/// `{type, state_key, content, sender}`, or in full for a create event that is `room`'s own
/// (see the module docs).
pub(crate) fn sanitize_remote(room: &RoomId, events: Vec<Value>) -> Vec<Value> {
    events
        .into_iter()
        .filter(|e| {
            e.get("type").is_some_and(Value::is_string)
                && e.get("state_key").is_some_and(Value::is_string)
                && e.get("content").is_some_and(Value::is_object)
        })
        .take(MAX_INVITE_STATE)
        .map(|e| match verified_create(room, &e) {
            Some(full) => full,
            None => json!({
                "type": e["type"], "state_key": e["state_key"], "content": e["content"],
                "sender": e.get("sender").cloned().unwrap_or(Value::Null),
            }),
        })
        .collect()
}

/// A remote create event in client format, if it is a whole PDU whose reference hash is
/// `room`'s ID (room versions whose room IDs come from the create event).
fn verified_create(room: &RoomId, e: &Value) -> Option<Value> {
    if e.get("type")?.as_str()? != "m.room.create" || !e.get("state_key")?.as_str()?.is_empty() {
        return None;
    }
    let pdu: CanonicalJsonObject = serde_json::from_value(e.clone()).ok()?;
    let version = crate::parse_room_version(
        e["content"]
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1"),
    )
    .ok()?;
    let rules = crate::version::rules_for(&version).ok()?;
    if !crate::version::room_id_from_create_event(&rules) {
        return None;
    }
    let event_id = crate::remote::event_id_for(&version, &pdu).ok()?;
    if room.as_str().get(1..)? != event_id.as_str().get(1..)? {
        return None;
    }
    let mut full = json!({
        "type": "m.room.create",
        "state_key": "",
        "content": e["content"],
        "sender": e.get("sender")?.as_str()?,
        "origin_server_ts": e.get("origin_server_ts")?.as_u64()?,
        "event_id": event_id.as_str(),
        "room_id": room.as_str(),
    });
    if let Some(o) = full.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    Some(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{setup, user};
    use crate::{CreateRoomRequest, Preset};

    #[test]
    fn stripped_state_from_a_resident_is_sanitised() {
        let room: ruma::OwnedRoomId = "!r:x".try_into().expect("room id");
        let out = sanitize_remote(
            &room,
            vec![
                json!({"type": "m.room.name", "state_key": "", "content": {"name": "x"},
                    "sender": "@a:x", "signatures": {}}),
                json!({"type": 5, "state_key": "", "content": {}}),
                json!({"type": "m.room.topic", "state_key": "", "content": "no"}),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["content"]["name"], "x");
        assert!(out[0].get("signatures").is_none());
        let many = vec![json!({"type": "t", "state_key": "", "content": {}}); 500];
        assert_eq!(sanitize_remote(&room, many).len(), MAX_INVITE_STATE);
    }

    #[test]
    fn the_create_event_is_whole_locally_and_from_a_server_that_proves_it() {
        let (_d, svc) = setup();
        let alice = user("alice");
        let room = svc
            .create_room(
                &alice,
                CreateRoomRequest {
                    preset: Some(Preset::PublicChat),
                    room_version: Some("12".into()),
                    ..Default::default()
                },
            )
            .expect("create");
        let local = svc.local_stripped_state(&room).expect("state");
        let create = local
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .expect("create event");
        assert!(create["origin_server_ts"].is_u64(), "{create}");
        assert!(create["event_id"].is_string(), "{create}");
        // The PDU a resident sends (knock_room_state, invite_room_state): kept whole for
        // its own room, stripped for any other (it cannot be that room's create event).
        let pdus = svc.knock_room_state(&room).expect("state");
        let pdu = pdus
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .expect("create pdu")
            .clone();
        let kept = sanitize_remote(&room, vec![pdu.clone()]);
        assert_eq!(
            kept[0]["origin_server_ts"], pdu["origin_server_ts"],
            "{kept:?}"
        );
        assert_eq!(kept[0]["room_id"], room.as_str());
        assert!(kept[0].get("signatures").is_none() && kept[0].get("hashes").is_none());
        let other: ruma::OwnedRoomId = "!someotherroom".try_into().expect("room id");
        let stripped = sanitize_remote(&other, vec![pdu.clone()]);
        assert!(
            stripped[0].get("origin_server_ts").is_none(),
            "{stripped:?}"
        );
        // A forged create event (content changed) no longer hashes to the room ID.
        let mut forged = pdu;
        forged["content"]["m.federate"] = json!(false);
        let stripped = sanitize_remote(&room, vec![forged]);
        assert!(
            stripped[0].get("origin_server_ts").is_none(),
            "{stripped:?}"
        );
    }
}
