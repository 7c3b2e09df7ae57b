//! Room summaries: `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (spec v1.15,
//! MSC3266) and the `summary` section of a joined room in `/sync`.
//!
//! The endpoint answers for rooms this server holds: to members (joined, invited, knocking,
//! former members see it too, as the room's directory card) and to anybody when the room
//! can be found or read without an invite (join rule `public`, `knock`,
//! `knock_restricted`, history `world_readable`), or when the caller is joined to a room a
//! `restricted` rule allows. Every other room, including rooms held only on other servers
//! (asking them through `/hierarchy` is not done), is 404 `M_NOT_FOUND`: the same answer as
//! for a room that does not exist, so it leaks nothing. The fields are the public-directory
//! card (`directory_entry`, the one owner of that shape) plus `room_version`, `encryption`,
//! `allowed_room_ids` and the caller's `membership`.
//!
//! In `/sync`, `m.joined_member_count` and `m.invited_member_count` are sent whenever the room
//! is new to the client or its section carries a membership event, and `m.heroes` (up to five
//! other joined or invited members, by user ID) only while the room has neither a name nor a
//! canonical alias — the spec's rule for when clients need them. Otherwise the summary is `{}`
//! and clients keep what they had.
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::routing::get;
use rooms::{Membership, RoomError, RoomService};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::blocking;
use super::directory::directory_entry;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{MaybeAuth, Path};
use crate::{AppState, AppStateRef};

/// How many heroes a sync summary names at most (the spec's "up to 5").
const MAX_HEROES: usize = 5;

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    r.route("/_matrix/client/v1/room_summary/{room}", get(room_summary))
        .route(
            "/_matrix/client/unstable/im.nheko.summary/rooms/{room}/summary",
            get(room_summary),
        )
        .route(
            "/_matrix/client/unstable/im.nheko.summary/summary/{room}",
            get(room_summary),
        )
}

async fn room_summary(
    state: AppStateRef,
    MaybeAuth(auth): MaybeAuth,
    Path(room): Path<String>,
) -> ApiResult<Json<Value>> {
    let viewer = auth.map(|a| a.user_id);
    let st = state.0.clone();
    let found = blocking(&st, move |rooms| {
        let Some(room) = resolve(rooms, &room)? else {
            return Ok(None);
        };
        summary_for(rooms, &room, viewer.as_deref())
    })
    .await?;
    found
        .map(Json)
        .ok_or_else(|| MatrixError::not_found("Room not found or not visible to you"))
}

/// A room ID, or the room an alias of this server points at.
fn resolve(rooms: &RoomService, raw: &str) -> Result<Option<OwnedRoomId>, RoomError> {
    if raw.starts_with('#') {
        let Ok(alias) = ruma::OwnedRoomAliasId::try_from(raw) else {
            return Err(RoomError::InvalidParam(format!("Bad room alias {raw:?}")));
        };
        return rooms.resolve_alias(&alias);
    }
    OwnedRoomId::try_from(raw)
        .map(Some)
        .map_err(|_| RoomError::InvalidParam(format!("Bad room ID {raw:?}")))
}

fn state_str(
    rooms: &RoomService,
    room: &RoomId,
    kind: &str,
    field: &str,
) -> Result<Option<String>, RoomError> {
    Ok(rooms
        .current_state_event(room, kind, "")?
        .and_then(|e| e.content_str(field).map(str::to_owned)))
}

/// The rooms a `restricted`/`knock_restricted` join rule allows (`m.room_membership`).
fn allowed_room_ids(rooms: &RoomService, room: &RoomId) -> Result<Vec<String>, RoomError> {
    let Some(ev) = rooms.current_state_event(room, "m.room.join_rules", "")? else {
        return Ok(Vec::new());
    };
    let content = ev.content();
    Ok(content
        .get("allow")
        .and_then(Value::as_array)
        .map(|allow| {
            allow
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) == Some("m.room_membership"))
                .filter_map(|a| a.get("room_id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// The summary of `room` as `viewer` may see it; `None` when they may not (or the room is
/// not held here).
fn summary_for(
    rooms: &RoomService,
    room: &RoomId,
    viewer: Option<&UserId>,
) -> Result<Option<Value>, RoomError> {
    if !rooms.room_exists(room)? {
        return Ok(None);
    }
    let membership = match viewer {
        Some(v) => rooms.membership_state(room, v)?,
        None => None,
    };
    let join_rule = state_str(rooms, room, "m.room.join_rules", "join_rule")?
        .unwrap_or_else(|| "invite".to_owned());
    let world_readable = state_str(
        rooms,
        room,
        "m.room.history_visibility",
        "history_visibility",
    )?
    .as_deref()
        == Some("world_readable");
    let restricted = matches!(join_rule.as_str(), "restricted" | "knock_restricted");
    let allowed = if restricted {
        allowed_room_ids(rooms, room)?
    } else {
        Vec::new()
    };
    let visible = membership.is_some()
        || world_readable
        || matches!(join_rule.as_str(), "public" | "knock" | "knock_restricted")
        || match viewer {
            Some(v) if restricted => allowed
                .iter()
                .any(|r| RoomId::parse(r).is_ok_and(|r| rooms.is_joined(&r, v).unwrap_or(false))),
            _ => false,
        };
    if !visible {
        return Ok(None);
    }
    let mut card = match directory_entry(rooms, room)? {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    card.insert("join_rule".into(), Value::from(join_rule));
    if let Some(v) = rooms.room_version(room)? {
        card.insert("room_version".into(), Value::from(v.as_str()));
    }
    if let Some(alg) = state_str(rooms, room, "m.room.encryption", "algorithm")? {
        card.insert("encryption".into(), Value::from(alg));
    }
    if restricted {
        card.insert("allowed_room_ids".into(), json!(allowed));
    }
    let membership = membership.map_or("leave", |m| m.as_str());
    card.insert("membership".into(), Value::from(membership));
    Ok(Some(Value::Object(card)))
}

/// The `summary` of one joined room in `/sync` (see the module doc for when it is filled).
pub(crate) fn sync_summary(
    rooms: &RoomService,
    room: &RoomId,
    viewer: &UserId,
    section: &Value,
    newly_joined: bool,
) -> Result<Value, RoomError> {
    let has_member_event = ["timeline", "state"].iter().any(|k| {
        section[*k]["events"]
            .as_array()
            .is_some_and(|evs| evs.iter().any(|e| e["type"] == "m.room.member"))
    });
    if !newly_joined && !has_member_event {
        return Ok(json!({}));
    }
    let members = rooms.members(room)?;
    let joined = members
        .iter()
        .filter(|(_, m)| *m == Membership::Join)
        .count();
    let invited = members
        .iter()
        .filter(|(_, m)| *m == Membership::Invite)
        .count();
    let mut out = json!({
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    });
    let named = state_str(rooms, room, "m.room.name", "name")?.is_some_and(|n| !n.is_empty())
        || state_str(rooms, room, "m.room.canonical_alias", "alias")?.is_some();
    if !named {
        let mut heroes: Vec<&str> = members
            .iter()
            .filter(|(u, m)| {
                u.as_str() != viewer.as_str() && matches!(m, Membership::Join | Membership::Invite)
            })
            .map(|(u, _)| u.as_str())
            .collect();
        heroes.sort_unstable();
        heroes.truncate(MAX_HEROES);
        out["m.heroes"] = json!(heroes);
    }
    Ok(out)
}
