//! Profiles: `GET /profile/{userId}`, `GET/PUT /profile/{userId}/displayname`,
//! `GET/PUT /profile/{userId}/avatar_url`.
//!
//! Reads need no access token (the spec makes profiles public). Writes only for one's
//! own profile (403 `M_FORBIDDEN`); an empty string or `null` removes the field. A change
//! is propagated as a new `m.room.member` event in every joined room, and the members of
//! those rooms are woken. Unknown local users are 404 `M_NOT_FOUND`; for an existing user,
//! a field that is not set is simply absent (`200 {}`), as Synapse answers and ruma-based
//! clients expect. Another server's user is looked up there (`/query/profile`, through the
//! federation hook), or 404 when this server does not federate.
use std::sync::Arc;

use accounts::Profile;
use axum::routing::get;
use axum::{Json, Router};
use ruma::{OwnedRoomId, UserId};
use serde_json::{Map, Value, json};

use crate::client_route;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, parse_user_id};
use crate::{AppState, AppStateRef};

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = client_route(r, "/profile/{user_id}", get(get_profile));
    let r = client_route(
        r,
        "/profile/{user_id}/displayname",
        get(get_displayname).put(put_displayname),
    );
    client_route(
        r,
        "/profile/{user_id}/avatar_url",
        get(get_avatar_url).put(put_avatar_url),
    )
}

/// Wake `user` and the joined members of each room at its position (after writes to
/// those rooms made on the user's behalf).
pub(crate) fn wake_rooms(state: &AppState, user: &UserId, rooms: &[(OwnedRoomId, u64)]) {
    let mut max_pos = 0;
    for (room, pos) in rooms {
        max_pos = max_pos.max(*pos);
        match state.rooms.joined_members(room) {
            Ok(members) => state.notifier.wake(members.iter().map(|m| &**m), *pos),
            Err(e) => tracing::warn!(%room, error = %e, "could not list members to wake"),
        }
    }
    if max_pos > 0 {
        state.notifier.wake([user], max_pos);
    }
}

fn load(state: &AppState, raw: &str) -> ApiResult<Profile> {
    let user = parse_user_id(raw)?;
    state
        .accounts
        .profile(&user)?
        .ok_or_else(|| MatrixError::not_found("Profile not found"))
}

/// A remote user's profile (`field` only, when given), or `None` for a local user.
async fn remote_profile(
    state: &AppState,
    raw: &str,
    field: Option<&'static str>,
) -> ApiResult<Option<Value>> {
    let user = parse_user_id(raw)?;
    if user.server_name() == state.config.server_name {
        return Ok(None);
    }
    let Some(remote) = state.remote_membership.get().cloned() else {
        return Err(MatrixError::not_found("Profile not found"));
    };
    Ok(Some(Value::Object(remote.profile(user, field).await?)))
}

async fn get_profile(state: AppStateRef, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    if let Some(v) = remote_profile(&state, &user_id, None).await? {
        return Ok(Json(v));
    }
    Ok(Json(json!(load(&state, &user_id)?)))
}

async fn get_displayname(
    state: AppStateRef,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    if let Some(v) = remote_profile(&state, &user_id, Some("displayname")).await? {
        return Ok(Json(v));
    }
    let profile = load(&state, &user_id)?;
    Ok(Json(json!(Profile {
        displayname: profile.displayname,
        avatar_url: None
    })))
}

async fn get_avatar_url(state: AppStateRef, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    if let Some(v) = remote_profile(&state, &user_id, Some("avatar_url")).await? {
        return Ok(Json(v));
    }
    let profile = load(&state, &user_id)?;
    Ok(Json(json!(Profile {
        displayname: None,
        avatar_url: profile.avatar_url
    })))
}

/// The field from a `PUT` body: a string, or `null`/absent/empty for "remove".
fn field(body: &Map<String, Value>, name: &str) -> ApiResult<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(MatrixError::bad_json(format!("{name} must be a string"))),
    }
}

async fn put_field(
    state: &Arc<AppState>,
    auth: &Auth,
    user_id: &str,
    name: &str,
    body: Map<String, Value>,
) -> ApiResult<Json<Value>> {
    if auth.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden(
            "Cannot change another user's profile",
        ));
    }
    let value = field(&body, name)?;
    let is_displayname = name == "displayname";
    let (state, user) = (state.clone(), auth.user_id.clone());
    // A storage write, then one member event per joined room and member scans to wake:
    // all on the blocking pool, not a tokio worker.
    crate::blocking::blocking(move || set_profile_field(&state, &user, is_displayname, value))
        .await??;
    Ok(Json(json!({})))
}

/// Set a user's display name (`is_displayname`) or avatar URL and carry it into their
/// member events (the client API's profile endpoints and the admin API). Blocking.
pub(crate) fn set_profile_field(
    state: &AppState,
    user: &UserId,
    is_displayname: bool,
    value: Option<String>,
) -> ApiResult<()> {
    let profile = if is_displayname {
        state.accounts.set_displayname(user, value)?
    } else {
        state.accounts.set_avatar_url(user, value)?
    };
    // The profile is saved; propagation to rooms is best effort.
    let member = rooms::MemberProfile {
        displayname: profile.displayname,
        avatar_url: profile.avatar_url,
    };
    match state.rooms.update_member_profile(user, &member) {
        Ok(rooms) => wake_rooms(state, user, &rooms),
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "profile change not propagated to rooms")
        }
    }
    Ok(())
}

async fn put_displayname(
    state: AppStateRef,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    put_field(&state, &auth, &user_id, "displayname", body).await
}

async fn put_avatar_url(
    state: AppStateRef,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    put_field(&state, &auth, &user_id, "avatar_url", body).await
}
