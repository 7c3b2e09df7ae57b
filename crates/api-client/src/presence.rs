//! Presence endpoints: `GET/PUT /presence/{userId}/status` (spec) and the MSC4043 override
//! `GET/PUT /_matrix/client/v1/presence/{userId}/override` (plus its unstable prefix).
//!
//! Visibility: `GET .../status` of a user the caller may not see (no shared room, or — with
//! MSC4325 — a sharing config that excludes them) answers exactly like a user that does not
//! exist: 403 `M_FORBIDDEN` "You are not allowed to see their presence", so the answer reveals
//! nothing about whether the account exists or has a config.
//!
//! Audience preview (Pulse-specific, unstable prefix `org.pulse.presence`):
//! `GET /_matrix/client/unstable/org.pulse.presence/audience?limit=N` lists who can currently
//! see the caller's presence; `POST` to the same path with a candidate sharing config as the
//! body answers "who could, if I applied this" without storing anything (400 `M_BAD_JSON`
//! naming the entry for an invalid one). See docs/presence.md.
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use presence_core::{DeviceState, PresenceOverride, PresenceState, StatusMsg};
use presence_service::sharing::{PREVIEW_DEFAULT_LIMIT, validate_sharing_config};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query, parse_user_id};
use crate::{AppState, AppStateRef};

/// Path of the audience preview.
pub const AUDIENCE_PATH: &str = "/_matrix/client/unstable/org.pulse.presence/audience";

pub fn routes() -> Router<Arc<AppState>> {
    let mut r = Router::new();
    for v in ["v3", "r0"] {
        r = r.route(
            &format!("/_matrix/client/{v}/presence/{{user_id}}/status"),
            get(get_status).put(put_status),
        );
    }
    for prefix in ["v1", "unstable/support.feline.msc4043.v1"] {
        r = r.route(
            &format!("/_matrix/client/{prefix}/presence/{{user_id}}/override"),
            get(get_override).put(put_override),
        );
    }
    r.route(AUDIENCE_PATH, get(get_audience).post(preview_audience))
}

fn own_only(auth: &Auth, user: &OwnedUserId, what: &str) -> ApiResult<()> {
    if &auth.user_id != user {
        return Err(MatrixError::forbidden(format!(
            "You cannot {what} of another user"
        )));
    }
    Ok(())
}

fn parse_status_msg(msg: Option<String>) -> ApiResult<Option<StatusMsg>> {
    StatusMsg::parse(msg).map_err(|e| MatrixError::invalid_param(e.to_string()))
}

async fn get_status(
    auth: Auth,
    state: AppStateRef,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = parse_user_id(&user)?;
    if !state.presence.may_see(&auth.user_id, &user) {
        return Err(MatrixError::forbidden(
            "You are not allowed to see their presence",
        ));
    }
    Ok(Json(state.presence.event_for(&user)["content"].clone()))
}

#[derive(Deserialize)]
struct PutStatus {
    presence: String,
    #[serde(default)]
    status_msg: Option<String>,
}

async fn put_status(
    auth: Auth,
    state: AppStateRef,
    Path(user): Path<String>,
    JsonBody(body): JsonBody<PutStatus>,
) -> ApiResult<Json<Value>> {
    let user = parse_user_id(&user)?;
    own_only(&auth, &user, "set the presence")?;
    let device_state: DeviceState = body
        .presence
        .parse::<PresenceState>()
        .ok()
        .and_then(|s| DeviceState::try_from(s).ok())
        .ok_or_else(|| {
            MatrixError::invalid_param(format!("Invalid presence state {:?}", body.presence))
        })?;
    let msg = parse_status_msg(body.status_msg)?;
    state
        .presence
        .set_status(&user, auth.device_id.as_str(), device_state, msg)
        .map_err(|e| match e {
            presence_service::SetStatusError::RateLimited(l) => MatrixError::limit_exceeded(l.0),
            presence_service::SetStatusError::Storage(e) => e.into(),
        })?;
    Ok(Json(json!({})))
}

async fn get_override(
    auth: Auth,
    state: AppStateRef,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = parse_user_id(&user)?;
    own_only(&auth, &user, "read the presence override")?;
    Ok(Json(match state.presence.get_override(&user) {
        None => json!({ "presence_override": "" }),
        Some(o) => {
            let mut v = json!({ "presence_override": o.state });
            if let Some(m) = &o.status_msg {
                v["status_msg"] = json!(m.as_str());
            }
            v
        }
    }))
}

#[derive(Deserialize)]
struct PutOverride {
    presence_override: String,
    #[serde(default)]
    status_msg: Option<String>,
}

async fn put_override(
    auth: Auth,
    state: AppStateRef,
    Path(user): Path<String>,
    JsonBody(body): JsonBody<PutOverride>,
) -> ApiResult<Json<Value>> {
    let user = parse_user_id(&user)?;
    own_only(&auth, &user, "set the presence override")?;
    let value = if body.presence_override.is_empty() {
        None
    } else {
        let state = body
            .presence_override
            .parse::<PresenceState>()
            .map_err(|_| {
                MatrixError::invalid_param(format!(
                    "Invalid presence state {:?}",
                    body.presence_override
                ))
            })?;
        Some(PresenceOverride {
            state,
            status_msg: parse_status_msg(body.status_msg)?,
        })
    };
    state.presence.set_override(&user, value)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct AudienceParams {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET .../audience`: who can see the caller's presence now.
async fn get_audience(
    auth: Auth,
    state: AppStateRef,
    Query(params): Query<AudienceParams>,
) -> ApiResult<Json<Value>> {
    let limit = params.limit.unwrap_or(PREVIEW_DEFAULT_LIMIT);
    let preview = state.presence.audience_preview(&auth.user_id, None, limit);
    Ok(Json(json!(preview)))
}

/// `POST .../audience` with a candidate config: who could see it, were it applied.
async fn preview_audience(
    auth: Auth,
    state: AppStateRef,
    Query(params): Query<AudienceParams>,
    JsonBody(candidate): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let config = validate_sharing_config(&candidate)
        .map_err(|e| MatrixError::bad_json(format!("Invalid m.presence_sharing_config: {e}")))?;
    let limit = params.limit.unwrap_or(PREVIEW_DEFAULT_LIMIT);
    // Compiling a large candidate can take a while: off the async workers.
    let presence = state.presence.clone();
    let preview = crate::blocking::blocking(move || {
        presence.audience_preview(&auth.user_id, Some(&config), limit)
    })
    .await?;
    Ok(Json(json!(preview)))
}
