//! Users in the admin API: list (`GET /_synapse/admin/v2/users`), query and create-or-modify
//! one (`GET`/`PUT /_synapse/admin/v2/users/{userId}`), their devices
//! (`/v2/users/{userId}/devices`) and sessions (`/v1/whois/{userId}`), answered with the
//! fields of Synapse's answers that admin tools read (Pulse has no guests, 3PIDs, external
//! IDs, shadow bans or locks: those fields are always empty or false).
use accounts::NewDevice;
use accounts::admin::{UserFilter, UserSummary};
use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminAuth, page};
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{JsonBody, parse_user_id};
use crate::{AppState, AppStateRef};

#[derive(Deserialize)]
pub(super) struct ListParams {
    from: Option<String>,
    limit: Option<u64>,
    /// Synapse's `name` (ID or display name) and its older `user_id`.
    name: Option<String>,
    user_id: Option<String>,
    deactivated: Option<bool>,
    admins: Option<bool>,
}

fn summary_json(s: &UserSummary) -> Value {
    json!({
        "name": s.name,
        "displayname": s.displayname,
        "avatar_url": s.avatar_url,
        "admin": s.admin,
        "deactivated": s.deactivated,
        "creation_ts": s.creation_ts,
        "is_guest": false,
        "user_type": null,
        "shadow_banned": false,
        "locked": false,
        "erased": false,
        "approved": true,
    })
}

pub(super) async fn list(
    _admin: AdminAuth,
    state: AppStateRef,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let (from, limit) = page(p.from.as_deref(), p.limit)?;
    let filter = UserFilter {
        name: p.name.or(p.user_id).filter(|n| !n.is_empty()),
        deactivated: p.deactivated.unwrap_or(false),
        admins: p.admins,
    };
    let accounts = state.accounts.clone();
    let (users, total) = blocking(move || accounts.list_users(&filter, from, limit)).await??;
    let mut out = json!({
        "users": users.iter().map(summary_json).collect::<Vec<_>>(),
        "total": total,
    });
    if from + users.len() < total {
        out["next_token"] = json!((from + users.len()).to_string());
    }
    Ok(Json(out))
}

/// A local user ID from the path; another server's users are not ours to administer.
fn local_user(state: &AppState, raw: &str) -> ApiResult<OwnedUserId> {
    let user = parse_user_id(raw)?;
    if user.server_name() != state.config.server_name {
        return Err(MatrixError::invalid_param(
            "Only local users can be administered here",
        ));
    }
    Ok(user)
}

fn details(state: &AppState, user: &UserId) -> ApiResult<Value> {
    let Some(s) = state.accounts.user_summary(user)? else {
        return Err(MatrixError::not_found("User not found"));
    };
    let mut v = summary_json(&s);
    v["threepids"] = json!([]);
    v["external_ids"] = json!([]);
    v["appservice_id"] = Value::Null;
    v["consent_server_notice_sent"] = Value::Null;
    v["consent_version"] = Value::Null;
    v["consent_ts"] = Value::Null;
    let last_seen = state
        .accounts
        .devices(user)?
        .iter()
        .filter_map(|d| d.last_seen_ts)
        .max();
    v["last_seen_ts"] = json!(last_seen);
    Ok(v)
}

pub(super) async fn get_user(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = local_user(&state, &user_id)?;
    let st = state.0.clone();
    Ok(Json(blocking(move || details(&st, &user)).await??))
}

/// The body of `PUT /_synapse/admin/v2/users/{userId}` (fields left out stay as they are).
#[derive(Deserialize)]
pub(super) struct PutUser {
    password: Option<String>,
    /// With a new password: log out every device (Synapse's default, true).
    #[serde(default = "yes")]
    logout_devices: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
}

fn yes() -> bool {
    true
}

/// Create the user (201) or apply the changes (200); both answer with the user's details.
pub(super) async fn put_user(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<PutUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = local_user(&state, &user_id)?;
    let st = state.0.clone();
    blocking(move || -> ApiResult<(StatusCode, Json<Value>)> {
        let created = !st.accounts.user_exists(&user)?;
        if created {
            st.accounts.register(
                user.localpart(),
                body.password.as_deref(),
                NewDevice::default(),
                body.admin.unwrap_or(false),
                false,
            )?;
            if body.deactivated == Some(true) {
                st.accounts.deactivate(&user)?;
            }
        } else {
            apply_changes(&st, &user, &body)?;
        }
        if body.displayname.is_some() {
            crate::profile::set_profile_field(&st, &user, true, body.displayname.clone())?;
        }
        if body.avatar_url.is_some() {
            crate::profile::set_profile_field(&st, &user, false, body.avatar_url.clone())?;
        }
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(details(&st, &user)?)))
    })
    .await?
}

/// Changes to an existing account, in the order that keeps each step valid: reactivate
/// (which needs the new password) before anything else, deactivate last.
fn apply_changes(state: &AppState, user: &UserId, body: &PutUser) -> ApiResult<()> {
    let deactivated = state.accounts.is_deactivated(user)?;
    let mut password_used = false;
    if deactivated && body.deactivated == Some(false) {
        let Some(pw) = body.password.as_deref() else {
            return Err(MatrixError::invalid_param(
                "Reactivating an account needs a password",
            ));
        };
        state.accounts.reactivate(user, pw)?;
        password_used = true;
    }
    if let Some(pw) = body.password.as_deref()
        && !password_used
        && body.deactivated != Some(true)
    {
        state
            .accounts
            .change_password(user, pw, body.logout_devices, None)?;
    }
    if let Some(admin) = body.admin
        && body.deactivated != Some(true)
    {
        state.accounts.set_admin(user, admin)?;
    }
    if body.deactivated == Some(true) && !deactivated {
        state.accounts.deactivate(user)?;
        crate::account::leave_all_rooms(state, user);
    }
    Ok(())
}

pub(super) async fn devices(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = local_user(&state, &user_id)?;
    let st = state.0.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        if !st.accounts.user_exists(&user)? {
            return Err(MatrixError::not_found("User not found"));
        }
        let devices: Vec<Value> = st
            .accounts
            .devices(&user)?
            .into_iter()
            .map(|d| {
                json!({
                    "device_id": d.device_id,
                    "display_name": d.display_name,
                    "last_seen_ip": d.last_seen_ip,
                    "last_seen_ts": d.last_seen_ts,
                    "last_seen_user_agent": null,
                    "user_id": user,
                })
            })
            .collect();
        Ok(Json(json!({ "total": devices.len(), "devices": devices })))
    })
    .await?
}

/// `GET /_synapse/admin/v1/whois/{userId}`: each device's last connection (Pulse keeps the
/// last address and time per device, not a history of connections).
pub(super) async fn whois(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = local_user(&state, &user_id)?;
    let st = state.0.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        if !st.accounts.user_exists(&user)? {
            return Err(MatrixError::not_found("User not found"));
        }
        let mut devices = serde_json::Map::new();
        for d in st.accounts.devices(&user)? {
            let connections: Vec<Value> = d
                .last_seen_ts
                .map(|ts| json!({ "ip": d.last_seen_ip, "last_seen": ts, "user_agent": null }))
                .into_iter()
                .collect();
            devices.insert(
                d.device_id.to_string(),
                json!({ "sessions": [{ "connections": connections }] }),
            );
        }
        Ok(Json(json!({ "user_id": user, "devices": devices })))
    })
    .await?
}
