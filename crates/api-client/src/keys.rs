//! End-to-end encryption keys: `/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/changes`, `/keys/device_signing/upload` (behind UIA when it replaces keys) and
//! `/keys/signatures/upload`. The data lives in the `e2ee` crate; this module checks the
//! requester, asks other servers for their users' keys (through [`crate::remote_keys`]),
//! and wakes the `/sync`s that must see a device-list change.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use e2ee::E2eeError;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::account::{AuthData, ReplyResult, require_password};
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Query};
use crate::remote_keys::DeviceChange;
use crate::{AppState, AppStateRef, client_route};

/// Users in one `/keys/query` or `/keys/claim`.
pub const MAX_USERS_PER_REQUEST: usize = 5_000;

pub fn routes() -> Router<Arc<AppState>> {
    let mut r = Router::new();
    r = client_route(r, "/keys/upload", post(upload));
    r = client_route(r, "/keys/upload/{device_id}", post(upload));
    r = client_route(r, "/keys/query", post(query));
    r = client_route(r, "/keys/claim", post(claim));
    r = client_route(r, "/keys/changes", get(changes));
    r = client_route(
        r,
        "/keys/device_signing/upload",
        post(device_signing_upload),
    );
    r = client_route(r, "/keys/signatures/upload", post(signatures_upload));
    r.route(
        "/_matrix/client/unstable/keys/device_signing/upload",
        post(device_signing_upload),
    )
    .route(
        "/_matrix/client/unstable/keys/signatures/upload",
        post(signatures_upload),
    )
}

impl From<E2eeError> for MatrixError {
    fn from(e: E2eeError) -> Self {
        match e {
            E2eeError::Storage(e) => MatrixError::internal(e),
            E2eeError::Internal(e) => MatrixError::internal(e),
            E2eeError::BadJson(m) => MatrixError::bad_json(m),
            E2eeError::InvalidParam(m) | E2eeError::TooMany(m) => MatrixError::invalid_param(m),
            E2eeError::NotFound(m) => MatrixError::not_found(m),
            E2eeError::InvalidSignature(m) => {
                MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", m)
            }
            E2eeError::Forbidden(m) => MatrixError::forbidden(m),
            E2eeError::WrongBackupVersion { current } => MatrixError::new(
                StatusCode::FORBIDDEN,
                "M_WRONG_ROOM_KEYS_VERSION",
                "Wrong backup version",
            )
            .with("current_version", current.map_or(Value::Null, Value::from)),
        }
    }
}

/// Wake `user` and everyone sharing a room with them: their device list changed at `pos`
/// (a local change, or a remote server's `m.device_list_update`). Reads storage: call it
/// from the blocking pool.
pub fn wake_device_list(state: &AppState, user: &UserId, pos: u64) {
    match crate::device_lists::shared_users(state, user) {
        Ok(users) => state
            .notifier
            .wake(users.iter().map(|u| &**u).chain([user]), pos),
        Err(e) => {
            tracing::warn!(%user, error = ?e.message, "could not list users to wake");
            state.notifier.wake([user], pos);
        }
    }
}

/// Tell the servers sharing a room with local `user` about a change of their devices.
/// Does storage I/O: call it from the blocking pool.
fn announce(state: &AppState, user: &UserId, change: DeviceChange) {
    if is_local(state, user)
        && let Some(remote) = state.remote_keys.get()
    {
        remote.device_list_changed(user, change);
    }
}

/// A device was deleted (logout, `DELETE /devices`): drop its keys and inbox, and tell
/// whoever tracks this user's devices. Failures are logged: the device is gone either way.
pub(crate) async fn device_deleted(state: &Arc<AppState>, user: &UserId, device: &ruma::DeviceId) {
    let (st, user, device) = (state.clone(), user.to_owned(), device.to_owned());
    let done = blocking(move || match st.e2ee.delete_device(&user, &device) {
        Ok(Some(pos)) => {
            wake_device_list(&st, &user, pos);
            announce(
                &st,
                &user,
                DeviceChange::Device {
                    device_id: device.clone(),
                    deleted: true,
                },
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(%user, %device, "could not drop a deleted device's keys: {e}"),
    })
    .await;
    if let Err(e) = done {
        tracing::warn!("dropping a deleted device's keys failed: {:?}", e.message);
    }
}

/// A device's display name changed: for a device with keys that is a device-list change
/// (room-mates show the name next to the keys). Failures are logged.
pub(crate) async fn device_renamed(state: &Arc<AppState>, user: &UserId, device: &ruma::DeviceId) {
    let (st, user, device) = (state.clone(), user.to_owned(), device.to_owned());
    let done = blocking(move || {
        let changed = st
            .e2ee
            .device_keys(&user, &device)
            .map(|k| k.is_some())
            .and_then(|has| {
                has.then(|| st.e2ee.mark_device_list_changed(&user))
                    .transpose()
            });
        match changed {
            Ok(Some(pos)) => {
                wake_device_list(&st, &user, pos);
                announce(
                    &st,
                    &user,
                    DeviceChange::Device {
                        device_id: device,
                        deleted: false,
                    },
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%user, "could not record a device rename: {e}"),
        }
    })
    .await;
    if let Err(e) = done {
        tracing::warn!("recording a device rename failed: {:?}", e.message);
    }
}

fn is_local(state: &AppState, user: &UserId) -> bool {
    user.server_name() == state.config.server_name
}

// ----- upload ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct UploadBody {
    device_keys: Option<Value>,
    one_time_keys: Option<Map<String, Value>>,
    fallback_keys: Option<Map<String, Value>>,
    /// The name fallback keys had before they were in the spec (MSC2732).
    #[serde(rename = "org.matrix.msc2732.fallback_keys")]
    unstable_fallback_keys: Option<Map<String, Value>>,
}

async fn upload(
    State(state): AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<UploadBody>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        let fallback = body
            .fallback_keys
            .or(body.unstable_fallback_keys)
            .unwrap_or_default();
        let out = st.e2ee.upload_keys(
            &auth.user_id,
            &auth.device_id,
            body.device_keys.as_ref().filter(|v| !v.is_null()),
            &body.one_time_keys.unwrap_or_default(),
            &fallback,
        )?;
        if let Some(pos) = out.device_list_pos {
            wake_device_list(&st, &auth.user_id, pos);
            let change = DeviceChange::Device {
                device_id: auth.device_id.clone(),
                deleted: false,
            };
            announce(&st, &auth.user_id, change);
        }
        Ok(Json(
            json!({ "one_time_key_counts": out.one_time_key_counts }),
        ))
    })
    .await?
}

// ----- query ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
    timeout: Option<u64>,
}

/// The local part of a key query (see [`e2ee::E2eeService::query_local`]).
fn local_key_query(
    state: &AppState,
    requester: &UserId,
    users: &BTreeMap<OwnedUserId, Vec<String>>,
) -> ApiResult<Map<String, Value>> {
    Ok(state
        .e2ee
        .query_local(Some(requester), users, |u| device_names(&state.accounts, u))?)
}

/// A user's devices and their display names, as the e2ee crate's queries take them.
pub fn device_names(
    accounts: &accounts::AccountService,
    user: &UserId,
) -> Result<e2ee::query::DeviceNames, String> {
    Ok(accounts
        .devices(user)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|d| (d.device_id.to_string(), d.display_name))
        .collect())
}

/// A request's users split: local ones, and remote ones per server.
type SplitUsers<T> = (
    BTreeMap<OwnedUserId, T>,
    BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>,
);

/// Split a request's users into local ones and, per remote server, remote ones.
fn split_users<T>(state: &AppState, users: BTreeMap<String, T>) -> ApiResult<SplitUsers<T>> {
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_USERS_PER_REQUEST} users per request"
        )));
    }
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
    for (u, v) in users {
        let user = crate::extract::parse_user_id(&u)?;
        if is_local(state, &user) {
            local.insert(user, v);
        } else {
            remote
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user, v);
        }
    }
    Ok((local, remote))
}

/// Default and upper bound of the time a query or claim waits for other servers.
const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 10_000;

async fn query(
    State(state): AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<QueryBody>,
) -> ApiResult<Json<Value>> {
    let (local, remote) = split_users(&state, body.device_keys)?;
    let st = state.clone();
    let requester = auth.user_id.clone();
    let mut out = blocking(move || local_key_query(&st, &requester, &local)).await??;
    let timeout = std::time::Duration::from_millis(
        body.timeout
            .unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS)
            .min(DEFAULT_REMOTE_TIMEOUT_MS),
    );
    let failures =
        crate::remote_keys::query_remote(&state, &auth.user_id, remote, timeout, &mut out).await;
    out.insert("failures".into(), Value::Object(failures));
    Ok(Json(Value::Object(out)))
}

// ----- claim ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    timeout: Option<u64>,
}

async fn claim(
    State(state): AppStateRef,
    _auth: Auth,
    JsonBody(body): JsonBody<ClaimBody>,
) -> ApiResult<Json<Value>> {
    let (local, remote) = split_users(&state, body.one_time_keys)?;
    let st = state.clone();
    let mut keys = blocking(move || st.e2ee.claim_local(&local)).await??;
    let timeout = std::time::Duration::from_millis(
        body.timeout
            .unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS)
            .min(DEFAULT_REMOTE_TIMEOUT_MS),
    );
    let failures = crate::remote_keys::claim_remote(&state, remote, timeout, &mut keys).await;
    Ok(Json(json!({ "one_time_keys": keys, "failures": failures })))
}

// ----- changes --------------------------------------------------------------------------

#[derive(Deserialize)]
struct ChangesParams {
    from: String,
    to: String,
}

async fn changes(
    State(state): AppStateRef,
    auth: Auth,
    Query(p): Query<ChangesParams>,
) -> ApiResult<Json<Value>> {
    let parse = |t: &str| {
        crate::sync::parse_token(t)
            .ok_or_else(|| MatrixError::invalid_param(format!("Invalid token {t:?}")))
    };
    let (from, to) = (parse(&p.from)?, parse(&p.to)?);
    let st = state.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        let to = to.min(st.rooms.current_position());
        let (changed, left) = crate::device_lists::device_list_delta(&st, &auth.user_id, from, to)?;
        Ok(Json(json!({ "changed": changed, "left": left })))
    })
    .await?
}

// ----- cross-signing --------------------------------------------------------------------

#[derive(Deserialize)]
struct SigningBody {
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
    user_signing_key: Option<Value>,
    auth: Option<AuthData>,
}

async fn device_signing_upload(
    State(state): AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<SigningBody>,
) -> ReplyResult<Json<Value>> {
    let mut uploads: Vec<(&'static str, Value)> = Vec::new();
    for (kind, key) in [
        (e2ee::cross_signing::MASTER, body.master_key),
        (e2ee::cross_signing::SELF_SIGNING, body.self_signing_key),
        (e2ee::cross_signing::USER_SIGNING, body.user_signing_key),
    ] {
        if let Some(k) = key.filter(|k| !k.is_null()) {
            uploads.push((kind, k));
        }
    }
    let (st, user) = (state.clone(), auth.user_id.clone());
    let check = uploads.clone();
    let needs_auth = blocking(move || {
        let refs: Vec<(&str, &Value)> = check.iter().map(|(k, v)| (*k, v)).collect();
        st.e2ee.signing_upload_needs_auth(&user, &refs)
    })
    .await?
    .map_err(MatrixError::from)?;
    if needs_auth {
        require_password(&state, &auth.user_id, body.auth).await?;
    }
    if uploads.is_empty() {
        return Ok(Json(json!({})));
    }
    let st = state.clone();
    blocking(move || -> ApiResult<()> {
        let refs: Vec<(&str, &Value)> = uploads.iter().map(|(k, v)| (*k, v)).collect();
        let pos = st.e2ee.upload_signing_keys(&auth.user_id, &refs)?;
        wake_device_list(&st, &auth.user_id, pos);
        announce(&st, &auth.user_id, DeviceChange::CrossSigning);
        Ok(())
    })
    .await??;
    Ok(Json(json!({})))
}

async fn signatures_upload(
    State(state): AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    if body.len() > MAX_USERS_PER_REQUEST {
        return Err(MatrixError::invalid_param("Too many users"));
    }
    let st = state.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        let (pos, changed, failed) = st.e2ee.add_signatures(&auth.user_id, &body)?;
        if let Some(pos) = pos {
            let changed: BTreeSet<OwnedUserId> = changed
                .iter()
                .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
                .collect();
            for u in &changed {
                wake_device_list(&st, u, pos);
                announce(&st, u, DeviceChange::CrossSigning);
            }
            // Signatures on the signer's own devices change those devices' keys: servers
            // caching this user's device list get each one as an m.device_list_update.
            if changed.contains(&auth.user_id) {
                let failed_here = |d: &str| {
                    failed
                        .iter()
                        .any(|(u, k, _, _)| u == auth.user_id.as_str() && k == d)
                };
                for device in body
                    .get(auth.user_id.as_str())
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|o| o.keys())
                {
                    let id = ruma::OwnedDeviceId::from(device.as_str());
                    if !failed_here(device) && st.e2ee.device_keys(&auth.user_id, &id)?.is_some() {
                        let change = DeviceChange::Device {
                            device_id: id,
                            deleted: false,
                        };
                        announce(&st, &auth.user_id, change);
                    }
                }
            }
        }
        let mut failures: Map<String, Value> = Map::new();
        for (user, key, errcode, error) in failed {
            let entry = failures.entry(user).or_insert_with(|| json!({}));
            entry[key.as_str()] = json!({ "errcode": errcode, "error": error });
        }
        Ok(Json(json!({ "failures": failures })))
    })
    .await?
}
