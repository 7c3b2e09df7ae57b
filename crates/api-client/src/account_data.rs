//! Client config: `GET/PUT /user/{userId}/account_data/{type}` and
//! `GET/PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.
//!
//! Only the owner may read or write (403 `M_FORBIDDEN`). Types the server manages
//! (`m.fully_read`, `m.push_rules`) cannot be set here: 405 `M_BAD_JSON`, as the spec says
//! (since v1.10, for both global and room data). Reading a type never set is 404
//! `M_NOT_FOUND`. Writes get a stream position and wake the user's `/sync`.
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

use crate::account::client_route;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::{AppState, AppStateRef};

/// Account data types only the server may write.
pub const SERVER_MANAGED_TYPES: &[&str] = &["m.fully_read", "m.push_rules"];

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = client_route(
        r,
        "/user/{user_id}/account_data/{event_type}",
        get(get_global).put(put_global),
    );
    client_route(
        r,
        "/user/{user_id}/rooms/{room_id}/account_data/{event_type}",
        get(get_room).put(put_room),
    )
}

/// The path's user must be the caller.
pub(crate) fn own_user(auth: &Auth, user_id: &str, what: &str) -> ApiResult<()> {
    if auth.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden(format!(
            "Cannot {what} for other users"
        )));
    }
    Ok(())
}

fn parse_room(room_id: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(room_id)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid room ID {room_id:?}")))
}

async fn read(
    state: &AppState,
    auth: &Auth,
    user_id: &str,
    room: Option<&RoomId>,
    event_type: &str,
) -> ApiResult<Json<Value>> {
    own_user(auth, user_id, "read account data")?;
    match state
        .accounts
        .account_data(&auth.user_id, room, event_type)?
    {
        Some(content) => Ok(Json(content)),
        None => Err(MatrixError::not_found("Account data not found")),
    }
}

async fn write(
    state: &AppState,
    auth: &Auth,
    user_id: &str,
    room: Option<&RoomId>,
    event_type: &str,
    content: Value,
) -> ApiResult<Json<Value>> {
    own_user(auth, user_id, "add account data")?;
    if SERVER_MANAGED_TYPES.contains(&event_type) {
        return Err(MatrixError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {event_type} through this API"),
        ));
    }
    if !content.is_object() {
        return Err(MatrixError::bad_json(
            "Account data content must be a JSON object",
        ));
    }
    let pos = state
        .accounts
        .set_account_data(&auth.user_id, room, event_type, &content)?;
    state.notifier.wake([&*auth.user_id], pos);
    Ok(Json(json!({})))
}

async fn get_global(
    state: AppStateRef,
    auth: Auth,
    Path((user_id, event_type)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    read(&state, &auth, &user_id, None, &event_type).await
}

async fn put_global(
    state: AppStateRef,
    auth: Auth,
    Path((user_id, event_type)): Path<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    write(&state, &auth, &user_id, None, &event_type, content).await
}

async fn get_room(
    state: AppStateRef,
    auth: Auth,
    Path((user_id, room_id, event_type)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id, "read account data")?;
    let room = parse_room(&room_id)?;
    read(&state, &auth, &user_id, Some(&room), &event_type).await
}

async fn put_room(
    state: AppStateRef,
    auth: Auth,
    Path((user_id, room_id, event_type)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id, "add account data")?;
    let room = parse_room(&room_id)?;
    write(&state, &auth, &user_id, Some(&room), &event_type, content).await
}
