//! Queries about this server's users and rooms: `/query/profile`, `/query/directory`,
//! `/publicRooms` (GET and POST).
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use http::StatusCode;
use ruma::{OwnedRoomAliasId, OwnedUserId, RoomId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::FederationState;
use crate::reads::ReadError;

type QueryResult = Result<Json<Value>, ReadError>;

/// Rooms one `/publicRooms` page returns at most.
const MAX_PUBLIC_ROOMS: usize = 100;

fn err(status: StatusCode, code: &'static str, m: impl Into<String>) -> ReadError {
    ReadError(status, code, m.into())
}

fn internal(e: impl std::fmt::Display) -> ReadError {
    tracing::error!("federation query failed: {e}");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        "internal error",
    )
}

async fn blocking(
    state: &Arc<FederationState>,
    f: impl FnOnce(&FederationState) -> QueryResult + Send + 'static,
) -> QueryResult {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .unwrap_or_else(|e| Err(internal(e)))
}

#[derive(Deserialize)]
pub(crate) struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

/// `GET /v1/query/profile?user_id=&field=`: a local user's display name and avatar.
pub(crate) async fn profile(
    State(state): State<Arc<FederationState>>,
    Query(q): Query<ProfileQuery>,
) -> QueryResult {
    let user = OwnedUserId::try_from(q.user_id.as_str()).map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "invalid user_id",
        )
    })?;
    if user.server_name() != state.keys.server_name() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "user_id is not a user of this server",
        ));
    }
    let field = q.field;
    if let Some(f) = &field
        && f != "displayname"
        && f != "avatar_url"
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "unknown profile field",
        ));
    }
    blocking(&state, move |state| {
        let p = state
            .accounts
            .profile(&user)
            .map_err(internal)?
            .ok_or_else(|| err(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user"))?;
        let mut out = Map::new();
        if field.as_deref() != Some("avatar_url")
            && let Some(d) = p.displayname
        {
            out.insert("displayname".into(), d.into());
        }
        if field.as_deref() != Some("displayname")
            && let Some(a) = p.avatar_url
        {
            out.insert("avatar_url".into(), a.into());
        }
        Ok(Json(Value::Object(out)))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct DirectoryQuery {
    room_alias: String,
}

/// `GET /v1/query/directory?room_alias=`: one of our aliases → the room and servers in it.
pub(crate) async fn directory(
    State(state): State<Arc<FederationState>>,
    Query(q): Query<DirectoryQuery>,
) -> QueryResult {
    let alias = OwnedRoomAliasId::try_from(q.room_alias.as_str()).map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "invalid room_alias",
        )
    })?;
    blocking(&state, move |state| {
        let room = state
            .rooms
            .resolve_alias(&alias)
            .map_err(internal)?
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "M_NOT_FOUND",
                    format!("room alias {alias} not found"),
                )
            })?;
        // Us first (we answered), then every other server with a joined user.
        let mut servers = vec![state.keys.server_name().to_string()];
        for u in state.rooms.joined_members(&room).map_err(internal)? {
            let s = u.server_name().to_string();
            if !servers.contains(&s) {
                servers.push(s);
            }
        }
        Ok(Json(json!({ "room_id": room, "servers": servers })))
    })
    .await
}

#[derive(Deserialize, Default)]
pub(crate) struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
}

#[derive(Deserialize, Default)]
struct PublicRoomsBody {
    limit: Option<usize>,
    since: Option<String>,
    filter: Option<PublicRoomsFilter>,
}

#[derive(Deserialize, Default)]
struct PublicRoomsFilter {
    generic_search_term: Option<String>,
}

pub(crate) async fn public_rooms_get(
    State(state): State<Arc<FederationState>>,
    Query(q): Query<PublicRoomsQuery>,
) -> QueryResult {
    public_rooms(state, q.limit, q.since, None).await
}

pub(crate) async fn public_rooms_post(
    State(state): State<Arc<FederationState>>,
    body: Bytes,
) -> QueryResult {
    let body: PublicRoomsBody = if body.is_empty() {
        PublicRoomsBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                format!("publicRooms: {e}"),
            )
        })?
    };
    let term = body.filter.and_then(|f| f.generic_search_term);
    public_rooms(state, body.limit, body.since, term).await
}

/// Our published rooms; `since` is an offset token (`o<N>`).
async fn public_rooms(
    state: Arc<FederationState>,
    limit: Option<usize>,
    since: Option<String>,
    term: Option<String>,
) -> QueryResult {
    let offset = match since.as_deref() {
        None | Some("") => 0,
        Some(s) => s
            .strip_prefix('o')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "M_INVALID_PARAM",
                    "bad since token",
                )
            })?,
    };
    let limit = limit.unwrap_or(MAX_PUBLIC_ROOMS).clamp(1, MAX_PUBLIC_ROOMS);
    let term = term.map(|t| t.to_lowercase()).filter(|t| !t.is_empty());
    blocking(&state, move |state| {
        let mut entries = Vec::new();
        for room in state.rooms.public_rooms().map_err(internal)? {
            let e = entry(state, &room).map_err(internal)?;
            let matches = term.as_ref().is_none_or(|t| {
                ["name", "topic", "canonical_alias"].iter().any(|k| {
                    e.get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.to_lowercase().contains(t.as_str()))
                })
            });
            if matches {
                entries.push(e);
            }
        }
        let total = entries.len();
        let page: Vec<Value> = entries.into_iter().skip(offset).take(limit).collect();
        let mut out = json!({ "chunk": page, "total_room_count_estimate": total });
        if offset + limit < total {
            out["next_batch"] = json!(format!("o{}", offset + limit));
        }
        if offset > 0 {
            out["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
        }
        Ok(Json(out))
    })
    .await
}

fn entry(state: &FederationState, room: &RoomId) -> Result<Value, rooms::RoomError> {
    let rooms = &state.rooms;
    let get = |t: &str, field: &str| -> Result<Option<String>, rooms::RoomError> {
        Ok(rooms
            .current_state_event(room, t, "")?
            .and_then(|e| e.content_str(field).map(str::to_owned)))
    };
    let mut o = Map::new();
    o.insert("room_id".into(), room.as_str().into());
    o.insert(
        "num_joined_members".into(),
        rooms.joined_members(room)?.len().into(),
    );
    let hv = get("m.room.history_visibility", "history_visibility")?;
    o.insert(
        "world_readable".into(),
        (hv.as_deref() == Some("world_readable")).into(),
    );
    let guest = get("m.room.guest_access", "guest_access")?;
    o.insert(
        "guest_can_join".into(),
        (guest.as_deref() == Some("can_join")).into(),
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
            o.insert(key.into(), v.into());
        }
    }
    Ok(Value::Object(o))
}
