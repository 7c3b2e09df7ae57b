//! Everything that differs between room versions 1–12, in one place. The facts come from
//! ruma's [`RoomVersionRules`]; this module turns them into what the engine does:
//!
//! * event IDs: v1/v2 are server-generated `$random:server` IDs carried in the PDU's
//!   `event_id` field (and signed); v3 is `$` + the reference hash in standard unpadded
//!   base64; v4+ the same in URL-safe base64 (`ruma::signatures::reference_hash` picks the
//!   alphabet from `event_id_format`);
//! * `prev_events` / `auth_events`: v1/v2 list `[event_id, {"sha256": reference hash}]`
//!   pairs, v3+ plain event IDs;
//! * room IDs: v1–v11 `!random:server`; v12 `!` + the create event's reference hash, and
//!   the create event itself carries no `room_id`;
//! * `m.room.create` content: `creator` until v10, the sender from v11; v12's
//!   `additional_creators`;
//! * creators and power: read in one place, `power.rs` (ruma's `RoomCreateEvent::creators`
//!   and `RoomPowerLevels`) — until v11 the creator is 100 only while the room has no power
//!   levels; from v12 every creator has infinite power and may not be listed in
//!   `m.room.power_levels` `users`;
//! * redaction (`rules.redaction`) and authorization (`rules.authorization`) are passed to
//!   ruma as they are.
use rand::distr::{Alphanumeric, SampleString};
use ruma::room_version_rules::{
    EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomVersionId, ServerName, UserId,
};
use serde_json::{Map, Value};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::pdu::Pdu;
use crate::resolve::EventCache;
use crate::store::StoredEvent;
use crate::{Result, RoomError};

/// Room versions this server can create and join: every stable version, 1–12.
pub fn supported_room_versions() -> [RoomVersionId; 12] {
    use RoomVersionId::*;
    [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12]
}

/// The rules of a supported room version.
pub(crate) fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedRoomVersion(version.to_string()))
}

/// Parse a room version string a client or the create event gave; unsupported versions
/// are `M_UNSUPPORTED_ROOM_VERSION`.
pub fn parse_room_version(s: &str) -> Result<RoomVersionId> {
    let v =
        RoomVersionId::try_from(s).map_err(|_| RoomError::UnsupportedRoomVersion(s.to_owned()))?;
    if supported_room_versions().contains(&v) {
        Ok(v)
    } else {
        Err(RoomError::UnsupportedRoomVersion(s.to_owned()))
    }
}

/// Whether event IDs of this version are chosen by the sending server (v1, v2).
pub(crate) fn server_generated_event_ids(rules: &RoomVersionRules) -> bool {
    rules.event_id_format == EventIdFormatVersion::V1
}

/// Before hashing and signing a local PDU: v1/v2 PDUs carry a fresh `$random:server` ID
/// in `event_id` (part of the signed content); later versions have no `event_id` field.
pub(crate) fn assign_local_event_id(
    rules: &RoomVersionRules,
    obj: &mut CanonicalJsonObject,
    server: &ServerName,
) {
    if server_generated_event_ids(rules) {
        let local = Alphanumeric.sample_string(&mut rand::rng(), 18);
        obj.insert(
            "event_id".into(),
            CanonicalJsonValue::String(format!("${local}:{server}")),
        );
    } else {
        obj.remove("event_id");
    }
}

/// The ID of a signed PDU (local or remote): its `event_id` field in v1/v2, `$` + its
/// reference hash from v3.
pub(crate) fn event_id_of(
    rules: &RoomVersionRules,
    obj: &CanonicalJsonObject,
) -> Result<OwnedEventId> {
    if server_generated_event_ids(rules) {
        return match obj.get("event_id") {
            Some(CanonicalJsonValue::String(s)) => {
                let id = OwnedEventId::try_from(s.as_str())
                    .map_err(|e| RoomError::BadJson(format!("invalid event_id {s:?}: {e}")))?;
                if id.server_name().is_none() {
                    return Err(RoomError::BadJson(format!(
                        "event_id {s:?} has no server name (room versions 1 and 2)"
                    )));
                }
                Ok(id)
            }
            _ => Err(RoomError::BadJson(
                "PDU without event_id (room versions 1 and 2 require one)".into(),
            )),
        };
    }
    let hash = ruma::signatures::reference_hash(obj, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => RoomError::TooLarge("event too large".into()),
        e => RoomError::BadJson(format!("cannot hash PDU: {e}")),
    })?;
    OwnedEventId::try_from(format!("${hash}"))
        .map_err(|e| RoomError::Internal(format!("reference hash is not an event id: {e}")))
}

/// `prev_events` / `auth_events` in the version's format. v1/v2 pairs carry the referenced
/// event's reference hash, which `lookup` computes from the stored event.
pub(crate) fn event_refs(
    rules: &RoomVersionRules,
    ids: &[OwnedEventId],
    lookup: impl Fn(&EventId) -> Result<Option<StoredEvent>>,
) -> Result<CanonicalJsonValue> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let id_value = CanonicalJsonValue::String(id.to_string());
        match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => {
                let ev = lookup(id)?
                    .ok_or_else(|| RoomError::NotFound(format!("unknown event {id}")))?;
                let hash = ruma::signatures::reference_hash(&ev.pdu, rules)
                    .map_err(|e| RoomError::Internal(format!("reference hash of {id}: {e}")))?;
                let mut hashes = CanonicalJsonObject::new();
                hashes.insert("sha256".into(), CanonicalJsonValue::String(hash));
                out.push(CanonicalJsonValue::Array(vec![
                    id_value,
                    CanonicalJsonValue::Object(hashes),
                ]));
            }
            _ => out.push(id_value),
        }
    }
    Ok(CanonicalJsonValue::Array(out))
}

/// Whether the room ID is derived from the create event (v12): the create event then has
/// no `room_id` and is not listed in other events' `auth_events`.
pub(crate) fn room_id_from_create_event(rules: &RoomVersionRules) -> bool {
    rules.room_id_format == RoomIdFormatVersion::V2
}

/// The state an event's `auth_events` describe, as the authorization rules read it. In
/// v12 the create event is not listed but always counts (it is named by the room ID).
pub(crate) fn auth_events_state(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    cache: &EventCache<'_>,
) -> BTreeMap<(String, String), Arc<Pdu>> {
    let mut state = BTreeMap::new();
    for a in &pdu.auth_events {
        if let Some(ev) = cache.get(a)
            && let Some(pair) = ev.state_pair()
        {
            state.insert(pair, ev);
        }
    }
    if room_id_from_create_event(rules)
        && pdu.kind != ruma::events::TimelineEventType::RoomCreate
        && let Ok(create_id) = create_event_id_of_room(&pdu.room_id)
        && let Some(create) = cache.get(&create_id)
        && create.kind == ruma::events::TimelineEventType::RoomCreate
    {
        state.insert(("m.room.create".to_owned(), String::new()), create);
    }
    state
}

/// The create event a v12 room ID names: `$` + the room ID without its sigil.
pub(crate) fn create_event_id_of_room(room: &ruma::RoomId) -> Result<OwnedEventId> {
    OwnedEventId::try_from(format!("${}", room.as_str().trim_start_matches('!')))
        .map_err(|e| RoomError::BadJson(format!("room {room} names no create event: {e}")))
}

/// A fresh room ID for versions whose room IDs are not derived (`!random:server`).
pub(crate) fn random_room_id(server: &ServerName) -> OwnedRoomId {
    ruma::RoomId::new_v1(server)
}

/// The room ID a v12 create event defines: `!` + its reference hash.
pub(crate) fn room_id_of_create_event(create_event_id: &EventId) -> Result<OwnedRoomId> {
    let hash = create_event_id.as_str().trim_start_matches('$');
    OwnedRoomId::try_from(format!("!{hash}"))
        .map_err(|e| RoomError::Internal(format!("create event id is not a room id: {e}")))
}

/// The `m.room.create` content for a room made here: `room_version`; `creator` where the
/// version's auth rules read it (v1–v10), removed from v11; `additional_creators` (v12)
/// checked to be an array of user IDs, deduplicated, without the creator.
pub(crate) fn create_content(
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    creator: &UserId,
    mut content: Map<String, Value>,
    extra_creators: &[OwnedUserId],
) -> Result<Map<String, Value>> {
    content.insert("room_version".into(), Value::from(version.as_str()));
    if rules.authorization.use_room_create_sender {
        content.remove("creator");
    } else {
        content.insert("creator".into(), Value::from(creator.as_str()));
    }
    if rules.authorization.additional_room_creators {
        let mut creators: Vec<OwnedUserId> = Vec::new();
        match content.remove("additional_creators") {
            None => {}
            Some(Value::Array(list)) => {
                for v in list {
                    let u = v.as_str().and_then(|s| OwnedUserId::try_from(s).ok());
                    match u {
                        Some(u) => creators.push(u),
                        None => {
                            return Err(RoomError::BadJson(
                                "additional_creators must be a list of user IDs".into(),
                            ));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(RoomError::BadJson(
                    "additional_creators must be a list of user IDs".into(),
                ));
            }
        }
        creators.extend(extra_creators.iter().cloned());
        let mut seen = Vec::new();
        for u in creators {
            if *u != *creator && !seen.contains(&u) {
                seen.push(u);
            }
        }
        if !seen.is_empty() {
            content.insert(
                "additional_creators".into(),
                Value::Array(seen.iter().map(|u| Value::from(u.as_str())).collect()),
            );
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stable_version_has_rules() {
        for v in supported_room_versions() {
            let rules = rules_for(&v).expect("rules");
            assert_eq!(
                rules.disposition,
                ruma::room_version_rules::RoomVersionDisposition::Stable
            );
        }
        assert!(parse_room_version("13").is_err());
        assert!(parse_room_version("org.example.custom").is_err());
        assert_eq!(parse_room_version("1").expect("v1"), RoomVersionId::V1);
    }

    #[test]
    fn version_specific_formats() {
        let v1 = rules_for(&RoomVersionId::V1).expect("v1");
        let v3 = rules_for(&RoomVersionId::V3).expect("v3");
        let v12 = rules_for(&RoomVersionId::V12).expect("v12");
        assert!(server_generated_event_ids(&v1));
        assert!(!server_generated_event_ids(&v3));
        assert!(room_id_from_create_event(&v12));
        assert!(!room_id_from_create_event(&v3));

        let server: &ServerName = "example.org".try_into().expect("server");
        let mut obj = CanonicalJsonObject::new();
        assign_local_event_id(&v1, &mut obj, server);
        let id = event_id_of(&v1, &obj).expect("v1 id");
        assert_eq!(id.server_name().map(|s| s.as_str()), Some("example.org"));

        // v1 without event_id is malformed.
        assert!(event_id_of(&v1, &CanonicalJsonObject::new()).is_err());

        let create: OwnedEventId = "$abc-_def".try_into().expect("event id");
        assert_eq!(
            room_id_of_create_event(&create).expect("room").as_str(),
            "!abc-_def"
        );
    }

    #[test]
    fn create_content_per_version() {
        let alice: OwnedUserId = "@alice:example.org".try_into().expect("user");
        let bob: OwnedUserId = "@bob:example.org".try_into().expect("user");
        let v10 = rules_for(&RoomVersionId::V10).expect("v10");
        let c = create_content(&RoomVersionId::V10, &v10, &alice, Map::new(), &[]).expect("v10");
        assert_eq!(c["creator"], "@alice:example.org");
        assert!(!c.contains_key("additional_creators"));

        let v11 = rules_for(&RoomVersionId::V11).expect("v11");
        let mut given = Map::new();
        given.insert("creator".into(), Value::from("@mallory:example.org"));
        let c = create_content(&RoomVersionId::V11, &v11, &alice, given, &[]).expect("v11");
        assert!(!c.contains_key("creator"));

        let v12 = rules_for(&RoomVersionId::V12).expect("v12");
        let mut given = Map::new();
        given.insert(
            "additional_creators".into(),
            serde_json::json!(["@bob:example.org", "@alice:example.org"]),
        );
        let c = create_content(
            &RoomVersionId::V12,
            &v12,
            &alice,
            given,
            std::slice::from_ref(&bob),
        )
        .expect("v12");
        assert_eq!(
            c["additional_creators"],
            serde_json::json!(["@bob:example.org"])
        );
        let mut bad = Map::new();
        bad.insert(
            "additional_creators".into(),
            serde_json::json!(["not a user"]),
        );
        assert!(matches!(
            create_content(&RoomVersionId::V12, &v12, &alice, bad, &[]),
            Err(RoomError::BadJson(_))
        ));
    }
}
