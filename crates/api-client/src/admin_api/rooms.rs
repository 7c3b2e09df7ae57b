//! Rooms in the admin API: list (`GET /_synapse/admin/v1/rooms`, with Synapse's `from`,
//! `limit`, `order_by`, `dir` and `search_term`), one room's details, its members and its
//! current state — every room this server knows, whether or not the admin is in it.
use axum::Json;
use axum::extract::{Path, Query};
use rooms::inventory::RoomDetails;
use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminAuth, page};
use crate::AppStateRef;
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};

#[derive(Deserialize)]
pub(super) struct ListParams {
    from: Option<String>,
    limit: Option<u64>,
    order_by: Option<String>,
    dir: Option<String>,
    search_term: Option<String>,
}

fn room_json(d: &RoomDetails) -> Value {
    let mut v = json!(d);
    // Synapse's name for the room's version.
    v["version"] = json!(d.version);
    v
}

/// The sort orders Synapse offers that Pulse can answer (the rest are refused, not ignored).
fn sort(rooms: &mut [RoomDetails], order_by: &str) -> ApiResult<()> {
    match order_by {
        "name" => rooms.sort_by(|a, b| a.name.cmp(&b.name).then(a.room_id.cmp(&b.room_id))),
        "canonical_alias" => rooms.sort_by(|a, b| a.canonical_alias.cmp(&b.canonical_alias)),
        "joined_members" | "size" => rooms.sort_by_key(|r| std::cmp::Reverse(r.joined_members)),
        "joined_local_members" => rooms.sort_by_key(|r| std::cmp::Reverse(r.joined_local_members)),
        "version" => rooms.sort_by(|a, b| a.version.cmp(&b.version)),
        "creator" => rooms.sort_by(|a, b| a.creator.cmp(&b.creator)),
        "encryption" => rooms.sort_by(|a, b| a.encryption.cmp(&b.encryption)),
        "federatable" => rooms.sort_by_key(|r| std::cmp::Reverse(r.federatable)),
        "public" => rooms.sort_by_key(|r| std::cmp::Reverse(r.public)),
        "join_rules" => rooms.sort_by(|a, b| a.join_rules.cmp(&b.join_rules)),
        "guest_access" => rooms.sort_by(|a, b| a.guest_access.cmp(&b.guest_access)),
        "history_visibility" => {
            rooms.sort_by(|a, b| a.history_visibility.cmp(&b.history_visibility))
        }
        "state_events" => rooms.sort_by_key(|r| std::cmp::Reverse(r.state_events)),
        "room_id" | "alphabetical" => rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id)),
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown value for order_by: {other}"
            )));
        }
    }
    Ok(())
}

pub(super) async fn list(
    _admin: AdminAuth,
    state: AppStateRef,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let (from, limit) = page(p.from.as_deref(), p.limit)?;
    let backwards = match p.dir.as_deref() {
        None | Some("f") => false,
        Some("b") => true,
        Some(_) => return Err(MatrixError::invalid_param("dir must be f or b")),
    };
    let order_by = p.order_by.unwrap_or_else(|| "name".to_owned());
    let needle = p.search_term.map(|t| t.to_lowercase());
    let rooms = state.rooms.clone();
    let mut all = blocking(move || -> ApiResult<Vec<RoomDetails>> {
        let mut out = Vec::new();
        for id in rooms.all_rooms()? {
            let Some(d) = rooms.room_details(&id)? else {
                continue;
            };
            let matches = needle.as_ref().is_none_or(|n| {
                [
                    Some(d.room_id.as_str()),
                    d.name.as_deref(),
                    d.canonical_alias.as_deref(),
                ]
                .into_iter()
                .flatten()
                .any(|s| s.to_lowercase().contains(n.as_str()))
            });
            if matches {
                out.push(d);
            }
        }
        Ok(out)
    })
    .await??;
    sort(&mut all, &order_by)?;
    if backwards {
        all.reverse();
    }
    let total = all.len();
    let chunk: Vec<Value> = all.iter().skip(from).take(limit).map(room_json).collect();
    let mut out = json!({ "offset": from, "total_rooms": total });
    if from + chunk.len() < total {
        out["next_batch"] = json!(from + chunk.len());
    }
    if from > 0 {
        out["prev_batch"] = json!(from.saturating_sub(limit));
    }
    out["rooms"] = Value::Array(chunk);
    Ok(Json(out))
}

fn room_id(raw: &str) -> ApiResult<OwnedRoomId> {
    OwnedRoomId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid room ID {raw:?}")))
}

pub(super) async fn get_room(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = room_id(&raw)?;
    let rooms = state.rooms.clone();
    match blocking(move || rooms.room_details(&room)).await?? {
        Some(d) => Ok(Json(room_json(&d))),
        None => Err(MatrixError::not_found("Room not found")),
    }
}

pub(super) async fn members(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = room_id(&raw)?;
    let rooms = state.rooms.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        if !rooms.room_exists(&room)? {
            return Err(MatrixError::not_found("Room not found"));
        }
        let members = rooms.joined_members(&room)?;
        Ok(Json(json!({ "total": members.len(), "members": members })))
    })
    .await?
}

pub(super) async fn state(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = room_id(&raw)?;
    let rooms = state.rooms.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        if !rooms.room_exists(&room)? {
            return Err(MatrixError::not_found("Room not found"));
        }
        let now = storage::now_ms();
        let mut events = Vec::new();
        for id in rooms.current_state(&room)?.values() {
            if let Some(ev) = rooms.event(id)? {
                events.push(ev.to_client_event(None, now));
            }
        }
        Ok(Json(json!({ "state": events })))
    })
    .await?
}
