//! Room aliases (`/directory/room/{alias}`, `/rooms/{roomId}/aliases`) and the public
//! room directory (`/directory/list/room/{roomId}`, `/publicRooms`).
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use rooms::{RoomAccess, RoomService};
use ruma::{OwnedRoomAliasId, RoomId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{blocking, hide_unknown, parse_room_id, route, wake};
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query};
use crate::{AppState, AppStateRef};

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let r = route(
        r,
        "/directory/room/{room_alias}",
        get(get_alias).put(put_alias).delete(delete_alias),
    );
    let r = route(r, "/rooms/{room_id}/aliases", get(room_aliases));
    let r = route(
        r,
        "/directory/list/room/{room_id}",
        get(get_visibility).put(put_visibility),
    );
    route(
        r,
        "/publicRooms",
        get(public_rooms_get).post(public_rooms_post),
    )
}

fn parse_alias(raw: &str) -> ApiResult<OwnedRoomAliasId> {
    OwnedRoomAliasId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid room alias {raw:?}")))
}

async fn get_alias(state: AppStateRef, Path(alias): Path<String>) -> ApiResult<Json<Value>> {
    let alias = parse_alias(&alias)?;
    if alias.server_name() != state.config.server_name {
        // Another server's alias: only that server can answer (`/query/directory`).
        let Some(remote) = state.remote_membership.get().cloned() else {
            return Err(MatrixError::not_found(format!(
                "Room alias {alias} not found"
            )));
        };
        let (room, servers) = remote.resolve_alias(alias).await?;
        return Ok(Json(json!({ "room_id": room, "servers": servers })));
    }
    let lookup = alias.clone();
    let found = blocking(&state, move |rooms| rooms.resolve_alias(&lookup)).await?;
    match found {
        Some(room) => Ok(Json(
            json!({ "room_id": room, "servers": [state.config.server_name.as_str()] }),
        )),
        None => Err(MatrixError::not_found(format!(
            "Room alias {alias} not found"
        ))),
    }
}

#[derive(Deserialize)]
struct PutAlias {
    room_id: String,
}

async fn put_alias(
    auth: Auth,
    state: AppStateRef,
    Path(alias): Path<String>,
    JsonBody(body): JsonBody<PutAlias>,
) -> ApiResult<Json<Value>> {
    let alias = parse_alias(&alias)?;
    let room = parse_room_id(&body.room_id)?;
    let user = auth.user_id.clone();
    blocking(&state, move |rooms| rooms.set_alias(&user, &alias, &room)).await?;
    Ok(Json(json!({})))
}

async fn delete_alias(
    auth: Auth,
    state: AppStateRef,
    Path(alias): Path<String>,
) -> ApiResult<Json<Value>> {
    let alias = parse_alias(&alias)?;
    let user = auth.user_id.clone();
    if let Some((room, sent)) =
        blocking(&state, move |rooms| rooms.delete_alias(&user, &alias)).await?
    {
        wake(&state, &room, sent.pos, &[]).await;
    }
    Ok(Json(json!({})))
}

async fn room_aliases(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let (r, user) = (room.clone(), auth.user_id.clone());
    let access = blocking(&state, move |rooms| rooms.room_access(&r, &user))
        .await
        .map_err(hide_unknown)?;
    match access {
        RoomAccess::Joined | RoomAccess::WorldReadable => {}
        _ => {
            return Err(MatrixError::forbidden(format!(
                "You are not in room {room}"
            )));
        }
    }
    let aliases = blocking(&state, move |rooms| rooms.room_aliases(&room)).await?;
    Ok(Json(json!({ "aliases": aliases })))
}

async fn get_visibility(state: AppStateRef, Path(room_id): Path<String>) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let public = blocking(&state, move |rooms| rooms.room_is_public(&room)).await?;
    Ok(Json(
        json!({ "visibility": if public { "public" } else { "private" } }),
    ))
}

#[derive(Deserialize)]
struct PutVisibility {
    #[serde(default)]
    visibility: Option<String>,
}

async fn put_visibility(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<PutVisibility>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let public = match body.visibility.as_deref() {
        Some("public") => true,
        Some("private") | None => false,
        Some(v) => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown visibility {v:?}"
            )));
        }
    };
    let user = auth.user_id.clone();
    blocking(&state, move |rooms| {
        if !rooms.may_send_state(&room, &user, "m.room.canonical_alias")? {
            return Err(rooms::RoomError::Forbidden(
                "You may not change this room's directory visibility".into(),
            ));
        }
        rooms.set_room_public(&room, public)
    })
    .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
struct PublicRoomsQuery {
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    since: Option<String>,
}

#[derive(Deserialize, Default)]
struct PublicRoomsBody {
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    filter: Option<PublicRoomsFilter>,
}

#[derive(Deserialize, Default)]
struct PublicRoomsFilter {
    #[serde(default)]
    generic_search_term: Option<String>,
}

async fn public_rooms_get(
    state: AppStateRef,
    Query(q): Query<PublicRoomsQuery>,
) -> ApiResult<Json<Value>> {
    public_rooms(state.0, q.limit, q.since, None).await
}

async fn public_rooms_post(
    _auth: Auth,
    state: AppStateRef,
    JsonBody(body): JsonBody<PublicRoomsBody>,
) -> ApiResult<Json<Value>> {
    let term = body.filter.and_then(|f| f.generic_search_term);
    public_rooms(state.0, body.limit, body.since, term).await
}

/// One published room's directory entry.
pub(super) fn directory_entry(
    rooms: &RoomService,
    room: &RoomId,
) -> Result<Value, rooms::RoomError> {
    let get = |t: &str, field: &str| -> Result<Option<String>, rooms::RoomError> {
        Ok(rooms
            .current_state_event(room, t, "")?
            .and_then(|e| e.content_str(field).map(str::to_owned)))
    };
    let mut o = Map::new();
    o.insert("room_id".into(), Value::from(room.as_str()));
    o.insert(
        "num_joined_members".into(),
        Value::from(rooms.joined_members(room)?.len()),
    );
    let hv = get("m.room.history_visibility", "history_visibility")?;
    o.insert(
        "world_readable".into(),
        Value::Bool(hv.as_deref() == Some("world_readable")),
    );
    let guest = get("m.room.guest_access", "guest_access")?;
    o.insert(
        "guest_can_join".into(),
        Value::Bool(guest.as_deref() == Some("can_join")),
    );
    for (key, t, field) in [
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
        ("avatar_url", "m.room.avatar", "url"),
        ("join_rule", "m.room.join_rules", "join_rule"),
        ("room_type", "m.room.create", "type"),
    ] {
        if let Some(v) = get(t, field)? {
            o.insert(key.into(), Value::from(v));
        }
    }
    Ok(Value::Object(o))
}

fn matches_term(entry: &Value, term: &str) -> bool {
    let term = term.to_lowercase();
    ["name", "topic", "canonical_alias"]
        .iter()
        .filter_map(|k| entry.get(*k).and_then(|v| v.as_str()))
        .any(|v| v.to_lowercase().contains(&term))
}

async fn public_rooms(
    state: Arc<AppState>,
    limit: Option<u64>,
    since: Option<String>,
    term: Option<String>,
) -> ApiResult<Json<Value>> {
    let offset: usize = match since.as_deref() {
        None | Some("") => 0,
        Some(s) => s
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MatrixError::invalid_param("Invalid 'since' token"))?,
    };
    let limit = limit.map(|l| l.min(500) as usize);
    let body = blocking(&state, move |rooms| {
        let mut entries = Vec::new();
        for room in rooms.public_rooms()? {
            let e = directory_entry(rooms, &room)?;
            if term
                .as_deref()
                .is_none_or(|t| t.trim().is_empty() || matches_term(&e, t))
            {
                entries.push(e);
            }
        }
        // Biggest rooms first, as directories usually list them.
        entries.sort_by(|a, b| {
            b["num_joined_members"]
                .as_u64()
                .cmp(&a["num_joined_members"].as_u64())
        });
        let total = entries.len();
        let end = limit.map_or(total, |l| offset.saturating_add(l).min(total));
        let chunk: Vec<Value> = entries
            .into_iter()
            .skip(offset)
            .take(end.saturating_sub(offset))
            .collect();
        let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
        if end < total {
            body["next_batch"] = Value::from(format!("p{end}"));
        }
        if offset > 0 {
            let prev = offset.saturating_sub(limit.unwrap_or(offset));
            body["prev_batch"] = Value::from(format!("p{prev}"));
        }
        Ok(body)
    })
    .await?;
    Ok(Json(body))
}
