//! Accounts: `POST /register` (+ `GET /register/available`), `GET/POST /login`,
//! `POST /logout[/all]`, `GET /account/whoami`, `POST /account/password`,
//! `POST /account/deactivate`, and device management (`/devices`, `/delete_devices`).
//!
//! User-interactive authentication (UIA): registration offers one flow, `m.login.dummy`,
//! which succeeds on the first request that carries it (with or without a `session`).
//! Sensitive operations on an existing account (deleting devices, changing the password,
//! deactivating) offer `m.login.password`. Every flow here has a single stage, so a UIA
//! `session` only round-trips: it is issued in each 401 and accepted but not required.
//! The first 401 body is `{flows, params, session}` without `errcode`; a failed attempt
//! adds `errcode`/`error` (e.g. `M_FORBIDDEN` for a wrong password), as the spec shows.
use std::net::SocketAddr;
use std::sync::Arc;

use accounts::{AccountError, NewDevice};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{OwnedDeviceId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query};
use crate::{AppState, AppStateRef, client_route};

pub fn routes() -> Router<Arc<AppState>> {
    let mut r = Router::new();
    r = client_route(r, "/register", post(register));
    r = client_route(r, "/register/available", get(register_available));
    r = client_route(r, "/login", get(login_flows).post(login));
    r = client_route(r, "/logout", post(logout));
    r = client_route(r, "/refresh", post(refresh));
    r = r.route("/_matrix/client/v1/refresh", post(refresh));
    r = client_route(r, "/logout/all", post(logout_all));
    r = client_route(r, "/account/whoami", get(whoami));
    r = client_route(r, "/account/password", post(change_password));
    r = client_route(r, "/account/deactivate", post(deactivate));
    r = client_route(r, "/devices", get(list_devices));
    r = client_route(
        r,
        "/devices/{device_id}",
        get(get_device).put(put_device).delete(delete_device),
    );
    r = client_route(r, "/delete_devices", post(delete_devices));
    r
}

/// Errors of the accounts crate as Matrix errors (usable with `?` anywhere in this crate).
impl From<AccountError> for MatrixError {
    fn from(e: AccountError) -> Self {
        let msg = e.to_string();
        match e {
            AccountError::InvalidUsername(_) => {
                MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", msg)
            }
            AccountError::UserInUse => {
                MatrixError::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", msg)
            }
            AccountError::Forbidden => MatrixError::forbidden(msg),
            AccountError::UserDeactivated => {
                MatrixError::new(StatusCode::FORBIDDEN, "M_USER_DEACTIVATED", msg)
            }
            AccountError::UnknownUser | AccountError::UnknownDevice => MatrixError::not_found(msg),
            AccountError::UnknownToken => MatrixError::unknown_token(),
            AccountError::BadJson(_) => MatrixError::bad_json(msg),
            AccountError::InvalidParam(_) => MatrixError::invalid_param(msg),
            AccountError::HashingBusy => MatrixError::limit_exceeded(1000),
            AccountError::QuotaExceeded(_) => MatrixError::forbidden(msg),
            AccountError::Hashing(_) | AccountError::Storage(_) => MatrixError::internal(msg),
        }
    }
}

/// The client's IP address, when known.
pub(crate) struct ClientIp(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The address the rate limiter resolved (trusted proxies honoured), else the peer.
        Ok(ClientIp(
            parts
                .extensions
                .get::<crate::ClientAddr>()
                .map(|a| a.0.to_string())
                .or_else(|| {
                    parts
                        .extensions
                        .get::<ConnectInfo<SocketAddr>>()
                        .map(|c| c.0.ip().to_string())
                }),
        ))
    }
}

// ----- user-interactive authentication ---------------------------------------------------

/// A handler's failure: a plain Matrix error, or a UIA 401 challenge.
pub(crate) enum Reply {
    Error(MatrixError),
    Uia(Value),
}

impl From<MatrixError> for Reply {
    fn from(e: MatrixError) -> Self {
        Reply::Error(e)
    }
}

impl From<AccountError> for Reply {
    fn from(e: AccountError) -> Self {
        Reply::Error(e.into())
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Error(e) => e.into_response(),
            Reply::Uia(body) => (StatusCode::UNAUTHORIZED, Json(body)).into_response(),
        }
    }
}

pub(crate) type ReplyResult<T> = Result<T, Reply>;

/// The `auth` object of a UIA request.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuthData {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub session: Option<String>,
    pub password: Option<String>,
    pub identifier: Option<Identifier>,
    /// Deprecated top-level user (pre-`identifier` clients).
    pub user: Option<String>,
}

/// A login identifier (`m.id.user` is the only one supported).
#[derive(Debug, Deserialize)]
pub(crate) struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: Option<String>,
}

fn new_session_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// A 401 UIA body offering a single-stage flow; with `error`, the failed attempt's code.
fn challenge(stage: &str, session: Option<&str>, error: Option<(&str, &str)>) -> Reply {
    let mut body = json!({
        "flows": [{ "stages": [stage] }],
        "params": {},
        "session": session.map(str::to_owned).unwrap_or_else(new_session_id),
        "completed": [],
    });
    if let Some((errcode, message)) = error {
        body["errcode"] = json!(errcode);
        body["error"] = json!(message);
    }
    Reply::Uia(body)
}

/// Require an `m.login.password` UIA stage proving the requester is `user`.
pub(crate) async fn require_password(
    state: &AppState,
    user: &UserId,
    auth: Option<AuthData>,
) -> ReplyResult<()> {
    const STAGE: &str = "m.login.password";
    let Some(auth) = auth else {
        return Err(challenge(STAGE, None, None));
    };
    let session = auth.session.as_deref();
    match auth.kind.as_deref() {
        None => return Err(challenge(STAGE, session, None)),
        Some(STAGE) => {}
        Some(_) => {
            return Err(challenge(
                STAGE,
                session,
                Some(("M_UNRECOGNIZED", "Unsupported authentication type")),
            ));
        }
    }
    let who = match (&auth.identifier, &auth.user) {
        (Some(id), _) if id.kind != "m.id.user" => {
            return Err(challenge(
                STAGE,
                session,
                Some(("M_UNKNOWN", "Unsupported identifier type")),
            ));
        }
        (Some(id), _) => id.user.clone(),
        (None, legacy) => legacy.clone(),
    };
    if let Some(who) = who {
        match state
            .accounts
            .resolve_user(&who)
            .map_err(MatrixError::from)?
        {
            Some(u) if u == user => {}
            Some(_) => {
                return Err(MatrixError::forbidden(
                    "The authenticated user does not match the requester",
                )
                .into());
            }
            None => {
                return Err(challenge(
                    STAGE,
                    session,
                    Some(("M_FORBIDDEN", "Invalid username or password")),
                ));
            }
        }
    }
    let Some(password) = auth.password else {
        return Err(challenge(
            STAGE,
            session,
            Some(("M_MISSING_PARAM", "Missing password")),
        ));
    };
    state
        .limiter
        .login_allowed(user.as_str())
        .map_err(MatrixError::limit_exceeded)?;
    let accounts = state.accounts.clone();
    let owned = user.to_owned();
    match blocking(move || accounts.check_password(&owned, &password)).await? {
        Ok(()) => Ok(()),
        Err(AccountError::Forbidden) => Err({
            state.limiter.login_failed(user.as_str());
            challenge(STAGE, session, Some(("M_FORBIDDEN", "Invalid password")))
        }),
        Err(e) => Err(e.into()),
    }
}

// ----- registration ----------------------------------------------------------------------

#[derive(Deserialize)]
struct RegisterQuery {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RegisterBody {
    auth: Option<AuthData>,
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    inhibit_login: Option<bool>,
    /// The client supports refresh tokens (spec v1.3).
    #[serde(default)]
    refresh_token: bool,
}

async fn register(
    state: AppStateRef,
    Query(q): Query<RegisterQuery>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<RegisterBody>,
) -> ReplyResult<Json<Value>> {
    match q.kind.as_deref() {
        None | Some("user") => {}
        Some("guest") => {
            return Err(MatrixError::new(
                StatusCode::FORBIDDEN,
                "M_GUEST_ACCESS_FORBIDDEN",
                "Guest access is not supported",
            )
            .into());
        }
        Some(other) => {
            return Err(
                MatrixError::invalid_param(format!("Unknown registration kind {other:?}")).into(),
            );
        }
    }
    if !state.config.registration_enabled {
        return Err(MatrixError::forbidden("Registration is disabled").into());
    }
    // Tell the client early that the name is unusable, before any auth round trip.
    if let Some(u) = &body.username {
        state.accounts.check_username_available(u)?;
    }
    const STAGE: &str = "m.login.dummy";
    let auth = body.auth.unwrap_or_default();
    match auth.kind.as_deref() {
        Some(STAGE) => {}
        None => return Err(challenge(STAGE, auth.session.as_deref(), None)),
        Some(_) => {
            return Err(challenge(
                STAGE,
                auth.session.as_deref(),
                Some(("M_UNRECOGNIZED", "Unsupported authentication type")),
            ));
        }
    }
    let accounts = state.accounts.clone();
    let login = !body.inhibit_login.unwrap_or(false);
    let device = NewDevice {
        device_id: body.device_id,
        display_name: body.initial_device_display_name,
        refresh_token: body.refresh_token,
    };
    let (username, password) = (body.username, body.password);
    // Name generation, hashing and the writes: all on the blocking pool.
    let registered = blocking(move || -> ApiResult<accounts::Registered> {
        let localpart = match username {
            Some(u) => u,
            None => accounts.generate_localpart()?,
        };
        let registered =
            accounts.register(&localpart, password.as_deref(), device, false, login)?;
        if let Some(d) = &registered.device_id {
            accounts.touch_device(&registered.user_id, d, ip.as_deref())?;
        }
        Ok(registered)
    })
    .await??;
    let mut resp = json!({
        "user_id": registered.user_id,
        "home_server": state.config.server_name,
    });
    if let (Some(device_id), Some(token)) = (registered.device_id, registered.access_token) {
        resp["device_id"] = json!(device_id);
        resp["access_token"] = json!(token);
        if let Some((refresh, lifetime)) = registered.refresh {
            resp["refresh_token"] = json!(refresh);
            resp["expires_in_ms"] = json!(lifetime);
        }
    }
    Ok(Json(resp))
}

#[derive(Deserialize)]
struct AvailableQuery {
    username: Option<String>,
}

async fn register_available(
    state: AppStateRef,
    Query(q): Query<AvailableQuery>,
) -> ApiResult<Json<Value>> {
    if !state.config.registration_enabled {
        return Err(MatrixError::forbidden("Registration is disabled"));
    }
    let Some(username) = q.username else {
        return Err(MatrixError::missing_param("Missing username"));
    };
    state.accounts.check_username_available(&username)?;
    Ok(Json(json!({ "available": true })))
}

// ----- login / logout ----------------------------------------------------------------------

async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [{ "type": "m.login.password" }] }))
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    identifier: Option<Identifier>,
    /// Deprecated top-level user.
    user: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    /// The client supports refresh tokens (spec v1.3).
    #[serde(default)]
    refresh_token: bool,
}

async fn login(
    state: AppStateRef,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Json<Value>> {
    match body.kind.as_deref() {
        None => return Err(MatrixError::missing_param("Missing login type")),
        Some("m.login.password") => {}
        Some(other) => {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("Unsupported login type {other:?}"),
            ));
        }
    }
    let user = match (body.identifier, body.user) {
        (Some(id), _) if id.kind != "m.id.user" => {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("Unsupported identifier type {:?}", id.kind),
            ));
        }
        (Some(id), _) => id.user,
        (None, legacy) => legacy,
    };
    let Some(user) = user else {
        return Err(MatrixError::missing_param("Missing user identifier"));
    };
    let Some(password) = body.password else {
        return Err(MatrixError::missing_param("Missing password"));
    };
    let device = NewDevice {
        device_id: body.device_id,
        display_name: body.initial_device_display_name,
        refresh_token: body.refresh_token,
    };
    // Per-account failed-login budget: checked before the (costly) hash, charged on a
    // wrong password, so guessing one account's password is slow whatever the source.
    let accounts = state.accounts.clone();
    let who = user.clone();
    let target = match blocking(move || accounts.resolve_user(&who)).await?? {
        Some(user_id) => user_id.to_string(),
        // Not an account: limited under the name as typed, so a 429 says nothing about
        // whether an account exists.
        None => user.clone(),
    };
    let addr = ip.as_deref().and_then(|a| a.parse().ok());
    state
        .limiter
        .login_allowed_from(&target, addr)
        .map_err(MatrixError::limit_exceeded)?;
    let accounts = state.accounts.clone();
    let result =
        blocking(move || accounts.login_password(&user, &password, device, ip.as_deref())).await?;
    let session = match result {
        Err(AccountError::Forbidden) => {
            state.limiter.login_failed_from(&target, addr);
            return Err(AccountError::Forbidden.into());
        }
        other => other?,
    };
    let mut resp = json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.config.server_name,
        "well_known": { "m.homeserver": { "base_url": state.config.public_baseurl } },
    });
    if let Some((refresh, lifetime)) = session.refresh {
        resp["refresh_token"] = json!(refresh);
        resp["expires_in_ms"] = json!(lifetime);
    }
    Ok(Json(resp))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

/// `POST /refresh`: a new access token and refresh token for the same device.
async fn refresh(
    state: AppStateRef,
    JsonBody(body): JsonBody<RefreshBody>,
) -> ApiResult<Json<Value>> {
    let accounts = state.accounts.clone();
    let issued = blocking(move || accounts.refresh(&body.refresh_token)).await??;
    let mut resp = json!({ "access_token": issued.access_token });
    if let Some((refresh, lifetime)) = issued.refresh {
        resp["refresh_token"] = json!(refresh);
        resp["expires_in_ms"] = json!(lifetime);
    }
    Ok(Json(resp))
}

async fn logout(state: AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    state.accounts.logout(&auth.access_token)?;
    state
        .presence
        .device_removed(&auth.user_id, auth.device_id.as_str());
    crate::keys::device_deleted(&state, &auth.user_id, &auth.device_id).await;
    Ok(Json(json!({})))
}

async fn logout_all(state: AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    let devices = state.accounts.devices(&auth.user_id)?;
    state.accounts.logout_all(&auth.user_id)?;
    for d in devices {
        state
            .presence
            .device_removed(&auth.user_id, d.device_id.as_str());
        crate::keys::device_deleted(&state, &auth.user_id, &d.device_id).await;
    }
    Ok(Json(json!({})))
}

async fn whoami(auth: Auth) -> Json<Value> {
    Json(json!({ "user_id": auth.user_id, "device_id": auth.device_id, "is_guest": false }))
}

// ----- password, deactivation ------------------------------------------------------------

#[derive(Deserialize)]
struct PasswordBody {
    auth: Option<AuthData>,
    new_password: Option<String>,
    logout_devices: Option<bool>,
}

async fn change_password(
    state: AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<PasswordBody>,
) -> ReplyResult<Json<Value>> {
    require_password(&state, &auth.user_id, body.auth).await?;
    let Some(new_password) = body.new_password else {
        return Err(MatrixError::missing_param("Missing new_password").into());
    };
    let logout_devices = body.logout_devices.unwrap_or(true);
    let accounts = state.accounts.clone();
    let (user, token) = (auth.user_id.clone(), auth.access_token.clone());
    blocking(move || accounts.change_password(&user, &new_password, logout_devices, Some(&token)))
        .await??;
    // The other devices' pushers go with their sessions (the spec's password change).
    if logout_devices {
        let push = state.push.clone();
        blocking(move || push.remove_pushers_except_device(&auth.user_id, auth.device_id.as_str()))
            .await?
            .map_err(MatrixError::from)?;
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeactivateBody {
    auth: Option<AuthData>,
}

async fn deactivate(
    state: AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> ReplyResult<Json<Value>> {
    require_password(&state, &auth.user_id, body.auth).await?;
    let (state, user) = (state.0.clone(), auth.user_id.clone());
    // The account write and one leave per room (each a room-engine write): blocking pool.
    blocking(move || -> ApiResult<()> {
        state.accounts.deactivate(&user)?;
        leave_all_rooms(&state, &user);
        Ok(())
    })
    .await??;
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

/// Leave every joined, invited or knocked room, so a deactivated account disappears
/// from member lists (best effort: failures are logged). Blocking.
pub(crate) fn leave_all_rooms(state: &AppState, user: &UserId) {
    match state.rooms.rooms_for_user(user) {
        Ok(rooms) => {
            let mut left = Vec::new();
            let current = rooms.into_iter().filter(|r| {
                matches!(
                    r.membership,
                    rooms::Membership::Join | rooms::Membership::Invite | rooms::Membership::Knock
                )
            });
            for r in current {
                match state.rooms.leave(user, &r.room_id, None) {
                    Ok(sent) => left.push((r.room_id, sent.pos)),
                    Err(e) => {
                        tracing::debug!(room = %r.room_id, error = %e, "deactivation: could not leave room")
                    }
                }
            }
            crate::profile::wake_rooms(state, user, &left);
        }
        Err(e) => tracing::warn!(%user, error = %e, "deactivation: could not list rooms"),
    }
}

// ----- devices -----------------------------------------------------------------------------

async fn list_devices(state: AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    let devices = state.accounts.devices(&auth.user_id)?;
    Ok(Json(json!({ "devices": devices })))
}

async fn get_device(
    state: AppStateRef,
    auth: Auth,
    Path(device_id): Path<String>,
) -> ApiResult<Json<Value>> {
    match state
        .accounts
        .device(&auth.user_id, device_id.as_str().into())?
    {
        Some(d) => Ok(Json(json!(d))),
        None => Err(MatrixError::not_found("Unknown device")),
    }
}

#[derive(Deserialize)]
struct PutDeviceBody {
    display_name: Option<String>,
}

async fn put_device(
    state: AppStateRef,
    auth: Auth,
    Path(device_id): Path<String>,
    JsonBody(body): JsonBody<PutDeviceBody>,
) -> ApiResult<Json<Value>> {
    state
        .accounts
        .update_device(&auth.user_id, device_id.as_str().into(), body.display_name)?;
    crate::keys::device_renamed(&state, &auth.user_id, device_id.as_str().into()).await;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteDeviceBody {
    auth: Option<AuthData>,
}

async fn delete_device(
    state: AppStateRef,
    auth: Auth,
    Path(device_id): Path<String>,
    JsonBody(body): JsonBody<DeleteDeviceBody>,
) -> ReplyResult<Json<Value>> {
    require_password(&state, &auth.user_id, body.auth).await?;
    state
        .accounts
        .delete_device(&auth.user_id, device_id.as_str().into())?;
    state.presence.device_removed(&auth.user_id, &device_id);
    crate::keys::device_deleted(&state, &auth.user_id, device_id.as_str().into()).await;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteDevicesBody {
    auth: Option<AuthData>,
    devices: Option<Vec<String>>,
}

async fn delete_devices(
    state: AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<DeleteDevicesBody>,
) -> ReplyResult<Json<Value>> {
    let Some(devices) = body.devices else {
        return Err(MatrixError::missing_param("Missing devices").into());
    };
    require_password(&state, &auth.user_id, body.auth).await?;
    let ids: Vec<OwnedDeviceId> = devices.into_iter().map(OwnedDeviceId::from).collect();
    state.accounts.delete_devices(&auth.user_id, &ids)?;
    for id in &ids {
        state.presence.device_removed(&auth.user_id, id.as_str());
        crate::keys::device_deleted(&state, &auth.user_id, id).await;
    }
    Ok(Json(json!({})))
}
