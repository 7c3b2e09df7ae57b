//! `GET /_matrix/federation/v1/hierarchy/{roomId}`: one level of a space for another
//! server walking it (its user asked for the hierarchy of a space whose rooms we hold).
//!
//! The room must be one we hold and the asking server may see ([`rooms::RoomService::
//! space_visible_to_server`]: open join rule or `world_readable`, one of its users joined
//! or invited, or a restricted room whose allowed room holds one of its users); anything
//! else is 404 `M_NOT_FOUND`, so an answer does not tell a room's existence to a server
//! that may not see it (Synapse does the same). The answer is the room's summary with its
//! `children_state` (`suggested_only` honoured), the summaries of the children we hold that
//! the server may see (`children`; only a space's children, as the client walk only walks
//! into spaces), and the IDs of the children we hold that it may not
//! (`inaccessible_children`). Children we do not hold are left out: the asking server asks
//! their `via` servers. Restricted rooms carry `allowed_room_ids`, so the asking server can
//! decide for each of its users.
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use http::StatusCode;
use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::reads::ReadError;
use crate::{FederationState, Origin, acl};

/// Children summarised in one answer at most (a bound on the work of one request).
const MAX_CHILDREN: usize = 500;

#[derive(Deserialize)]
pub(crate) struct HierarchyQuery {
    #[serde(default)]
    suggested_only: Option<String>,
}

fn internal(e: impl std::fmt::Display) -> ReadError {
    tracing::error!("federation hierarchy failed: {e}");
    ReadError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        "internal error".into(),
    )
}

fn not_found(room: &OwnedRoomId) -> ReadError {
    ReadError(
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        format!("unknown room {room}"),
    )
}

pub(crate) async fn hierarchy(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> Result<Json<Value>, ReadError> {
    let room = OwnedRoomId::try_from(room.as_str()).map_err(|_| {
        ReadError(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!("invalid room ID {room:?}"),
        )
    })?;
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ReadError(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                "suggested_only must be true or false".into(),
            ));
        }
    };
    let state = state.clone();
    tokio::task::spawn_blocking(move || answer(&state, &origin, &room, suggested_only))
        .await
        .unwrap_or_else(|e| Err(internal(e)))
}

fn answer(
    state: &FederationState,
    origin: &ruma::ServerName,
    room: &OwnedRoomId,
    suggested_only: bool,
) -> Result<Json<Value>, ReadError> {
    let rooms = &state.rooms;
    if !rooms.room_exists(room).map_err(internal)? {
        return Err(not_found(room));
    }
    acl::check(state, room, origin)
        .map_err(|m| ReadError(StatusCode::FORBIDDEN, "M_FORBIDDEN", m))?;
    if !rooms
        .space_visible_to_server(origin, room)
        .map_err(internal)?
    {
        return Err(not_found(room));
    }
    let mut summary = rooms.space_summary(room, true).map_err(internal)?;
    let is_space = summary.get("room_type").and_then(Value::as_str) == Some("m.space");
    let links = if is_space {
        rooms
            .space_children(room, suggested_only)
            .map_err(internal)?
    } else {
        Vec::new()
    };
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for link in links.iter().take(MAX_CHILDREN) {
        let child = &link.room_id;
        // Only rooms we hold ourselves; the others are for their `via` servers to tell.
        if !rooms.space_resident(child).map_err(internal)?
            || acl::check(state, child, origin).is_err()
        {
            continue;
        }
        if rooms
            .space_visible_to_server(origin, child)
            .map_err(internal)?
        {
            let mut s = rooms.space_summary(child, true).map_err(internal)?;
            s.insert("children_state".into(), Value::Array(Vec::new()));
            children.push(Value::Object(s));
        } else {
            inaccessible.push(Value::from(child.as_str()));
        }
    }
    summary.insert(
        "children_state".into(),
        Value::Array(links.into_iter().map(|c| c.stripped).collect()),
    );
    Ok(Json(json!({
        "room": summary,
        "children": children,
        "inaccessible_children": inaccessible,
    })))
}
