//! Client config: `GET/PUT /user/{userId}/account_data/{type}` and
//! `GET/PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.
//!
//! Only the owner may read or write (403 `M_FORBIDDEN`). Types the server manages
//! (`m.fully_read`, `m.push_rules`) cannot be set here: 405 `M_BAD_JSON`, as the spec says
//! (since v1.10, for both global and room data). Reading a type never set is 404
//! `M_NOT_FOUND`. Writes get a stream position and wake the user's `/sync`.
//!
//! MSC4325: global account data of type `m.presence_sharing_config` or the unstable
//! `events.matrix-community.presence_sharing_config` is validated before it is stored (400
//! `M_BAD_JSON` naming the list, index and entry; nothing stored), and after storing, the
//! effective config — the stable type if stored, else the unstable one — is handed to the
//! presence service, which recompiles the policy and updates who sees the user. Room account
//! data of these types has no meaning and is stored unvalidated.
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use presence_service::sharing::{
    SHARING_CONFIG_TYPES, is_sharing_config_type, validate_sharing_config,
};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use crate::client_route;
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
    state: &Arc<AppState>,
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
    if room.is_none() && is_sharing_config_type(event_type) {
        validate_sharing_config(&content)
            .map_err(|e| MatrixError::bad_json(format!("Invalid {event_type}: {e}")))?;
        // Compiling a large config and working out whose view changes can take a while
        // (docs/benchmarks.md): keep it off the async workers. It also runs to the end if the
        // client goes away, so what is stored is always what is applied.
        let (state, user, event_type) =
            (state.clone(), auth.user_id.clone(), event_type.to_owned());
        crate::blocking::blocking(move || -> ApiResult<()> {
            // Store, read back the effective config and apply it as one step, so two racing
            // PUTs cannot leave the older config applied.
            let _serialised = state.presence.lock_sharing_updates();
            let pos = state
                .accounts
                .set_account_data(&user, None, &event_type, &content)?;
            let effective = effective_sharing_config(&state, &user)?;
            state.presence.set_sharing_config(&user, effective.as_ref())?;
            state.notifier.wake([&*user], pos);
            Ok(())
        })
        .await??;
        return Ok(Json(json!({})));
    }
    // A storage read-modify-write (and for room data a membership read): off the async workers.
    let (state, user, room, event_type) = (
        state.clone(),
        auth.user_id.clone(),
        room.map(ToOwned::to_owned),
        event_type.to_owned(),
    );
    crate::blocking::blocking(move || -> ApiResult<()> {
        // Storing and applying an ignore list is serialised like a sharing config change.
        let _serialised = (room.is_none()
            && event_type == presence_service::sharing::IGNORED_USER_LIST)
            .then(|| state.presence.lock_sharing_updates());
        if let Some(room) = &room
            && state.rooms.membership_state(room, &user)?.is_none()
        {
            // Bounds room account data to rooms the user has a membership in.
            return Err(MatrixError::forbidden(format!(
                "You are not a member of {room}"
            )));
        }
        let pos = state
            .accounts
            .set_account_data(&user, room.as_deref(), &event_type, &content)?;
        if room.is_none() && event_type == presence_service::sharing::IGNORED_USER_LIST {
            // Ignored users stop seeing this user's presence (MSC4325).
            state
                .presence
                .set_ignored_users(&user, Some(&content), pos)?;
        }
        state.notifier.wake([&*user], pos);
        Ok(())
    })
    .await??;
    Ok(Json(json!({})))
}

/// The user's sharing config in force: the stable type if stored, else the unstable one.
pub(crate) fn effective_sharing_config(
    state: &AppState,
    user: &UserId,
) -> ApiResult<Option<Value>> {
    for event_type in SHARING_CONFIG_TYPES {
        if let Some(content) = state.accounts.account_data(user, None, event_type)? {
            return Ok(Some(content));
        }
    }
    Ok(None)
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
