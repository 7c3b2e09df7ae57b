//! End-to-end encryption over federation, inbound: `POST /v1/user/keys/query`,
//! `POST /v1/user/keys/claim`, `GET /v1/user/devices/{userId}` (answered for this server's
//! users only), and the EDUs `m.device_list_update`, `m.signing_key_update` and
//! `m.direct_to_device` (accepted only for users of the origin server).
//!
//! Remote users' device lists are cached (`e2ee::remote`): an `m.device_list_update` is
//! applied to the cache when its `prev_id` chain is known; one with an unknown `prev_id`
//! drops the entry, so the next `/keys/query` resyncs through `/user/devices/{userId}`.
//! `m.signing_key_update` replaces the cached cross-signing keys. Either is recorded on the
//! device-list stream, so local room-mates see the user in `device_lists.changed`.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use http::StatusCode;
use ruma::{OwnedDeviceId, OwnedUserId, ServerName, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::FederationState;
use crate::reads::ReadError;

/// Wakes these local users' `/sync`s at a stream position.
pub type WakeUsers = Arc<dyn Fn(&[&UserId], u64) + Send + Sync>;
/// Wakes everyone sharing a room with this user, at a stream position.
pub type WakeDeviceList = Arc<dyn Fn(&UserId, u64) + Send + Sync>;
/// Starts fetching a remote user's whole device list again (in the background).
pub type ResyncDeviceList = Arc<dyn Fn(&UserId) + Send + Sync>;

/// The e2ee store and how to wake local `/sync`s (installed by the binary).
pub struct E2eeState {
    pub e2ee: Arc<e2ee::E2eeService>,
    /// Wake these local users' `/sync`s at a stream position (to-device messages).
    pub wake_users: WakeUsers,
    /// Wake everyone sharing a room with this user (their device list changed).
    pub wake_device_list: WakeDeviceList,
    /// Fetch a remote user's device list again: an update showed we missed one.
    pub resync_device_list: ResyncDeviceList,
}

type KeysResult = Result<Json<Value>, ReadError>;

fn err(status: StatusCode, code: &'static str, m: impl Into<String>) -> ReadError {
    ReadError(status, code, m.into())
}

fn internal(e: impl std::fmt::Display) -> ReadError {
    tracing::error!("federation key request failed: {e}");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        "internal error",
    )
}

fn e2ee_of(state: &FederationState) -> Result<Arc<E2eeState>, ReadError> {
    state.e2ee.clone().ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ReadError> {
    serde_json::from_slice(body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, "M_BAD_JSON", e.to_string()))
}

/// Users in one request, at most.
const MAX_USERS: usize = 5_000;

/// Keep the users of this server; a remote server asking about anyone else's gets nothing
/// for them.
fn local_users<T>(
    state: &FederationState,
    users: BTreeMap<String, T>,
) -> Result<BTreeMap<OwnedUserId, T>, ReadError> {
    if users.len() > MAX_USERS {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "too many users",
        ));
    }
    let own = state.rooms.server_name();
    Ok(users
        .into_iter()
        .filter_map(|(u, v)| OwnedUserId::try_from(u.as_str()).ok().map(|u| (u, v)))
        .filter(|(u, _)| u.server_name() == own)
        .collect())
}

fn names(state: &FederationState, user: &UserId) -> Result<e2ee::query::DeviceNames, String> {
    Ok(state
        .accounts
        .devices(user)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|d| (d.device_id.to_string(), d.display_name))
        .collect())
}

async fn blocking(
    state: &Arc<FederationState>,
    f: impl FnOnce(&FederationState) -> KeysResult + Send + 'static,
) -> KeysResult {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .unwrap_or_else(|e| Err(internal(e)))
}

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
}

pub(crate) async fn user_keys_query(
    State(state): State<Arc<FederationState>>,
    body: Bytes,
) -> KeysResult {
    let body: QueryBody = parse(&body)?;
    blocking(&state, move |state| {
        let e = e2ee_of(state)?;
        let users = local_users(state, body.device_keys)?;
        let out = e
            .e2ee
            .query_local(None, &users, |u| names(state, u))
            .map_err(internal)?;
        Ok(Json(Value::Object(out)))
    })
    .await
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
}

pub(crate) async fn user_keys_claim(
    State(state): State<Arc<FederationState>>,
    body: Bytes,
) -> KeysResult {
    let body: ClaimBody = parse(&body)?;
    blocking(&state, move |state| {
        let e = e2ee_of(state)?;
        let users = local_users(state, body.one_time_keys)?;
        let keys = e.e2ee.claim_local(&users).map_err(internal)?;
        Ok(Json(json!({ "one_time_keys": keys })))
    })
    .await
}

pub(crate) async fn user_devices(
    State(state): State<Arc<FederationState>>,
    Path(user): Path<String>,
) -> KeysResult {
    blocking(&state, move |state| {
        let e = e2ee_of(state)?;
        let user = OwnedUserId::try_from(user.as_str())
            .map_err(|_| err(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "invalid user ID"))?;
        if user.server_name() != state.rooms.server_name() {
            return Err(err(StatusCode::NOT_FOUND, "M_NOT_FOUND", "not a user of this server"));
        }
        let names = names(state, &user).map_err(internal)?;
        let keys = e.e2ee.devices_with_keys(&user, &[], &names, false).map_err(internal)?;
        // Every existing device, with its keys when it uploaded some.
        let devices: Vec<Value> = names
            .iter()
            .map(|(id, name)| {
                let mut d = json!({ "device_id": id, "keys": keys.get(id).cloned().unwrap_or_else(|| json!({})) });
                if let Some(n) = name {
                    d["device_display_name"] = json!(n);
                }
                d
            })
            .collect();
        let mut out = json!({
            "user_id": user,
            "stream_id": e.e2ee.device_list_snapshot_id(&user).map_err(internal)?,
            "devices": devices,
        });
        if let Some(k) = e.e2ee.master_key_for(&user, &user).map_err(internal)? {
            out["master_key"] = k;
        }
        if let Some(k) = e
            .e2ee
            .cross_signing_key(&user, e2ee::cross_signing::SELF_SIGNING)
            .map_err(internal)?
        {
            out["self_signing_key"] = k;
        }
        Ok(Json(out))
    })
    .await
}

/// The user an EDU speaks for, if it is a user of the origin.
fn origin_user(origin: &ServerName, raw: Option<&Value>) -> Option<OwnedUserId> {
    let user = OwnedUserId::try_from(raw?.as_str()?).ok()?;
    (user.server_name() == origin).then_some(user)
}

/// `m.device_list_update` / `m.signing_key_update`: record the change of a remote user's
/// devices. Runs on the blocking pool.
pub(crate) fn device_list_edu(state: &FederationState, origin: &ServerName, content: &Value) {
    let Some(e) = state.e2ee.clone() else { return };
    let Some(user) = origin_user(origin, content.get("user_id")) else {
        tracing::info!(%origin, "device list EDU for a user of another server; dropped");
        return;
    };
    // `m.device_list_update` names a device; `m.signing_key_update` does not.
    let result = if content.get("device_id").is_some() {
        e.e2ee
            .apply_remote_device_update(&user, content)
            .map(|(outcome, pos)| {
                tracing::debug!(%origin, %user, ?outcome, "device list update");
                if outcome == e2ee::remote::RemoteUpdate::Dropped {
                    (e.resync_device_list)(&user);
                }
                pos
            })
    } else {
        e.e2ee.apply_remote_signing_update(&user, content).map(Some)
    };
    match result {
        Ok(Some(pos)) => (e.wake_device_list)(&user, pos),
        Ok(None) => {}
        Err(err) => tracing::warn!(%origin, %user, "recording a device list change failed: {err}"),
    }
}

/// Target devices of one `m.direct_to_device` EDU, at most.
const MAX_TO_DEVICE_TARGETS: usize = 10_000;

/// `m.direct_to_device`: store the messages for local devices, once per (origin,
/// message_id). Runs on the blocking pool.
pub(crate) fn to_device_edu(state: &FederationState, origin: &ServerName, content: &Value) {
    let Some(e) = state.e2ee.clone() else { return };
    let Some(sender) = origin_user(origin, content.get("sender")) else {
        tracing::info!(%origin, "to-device EDU from a user of another server; dropped");
        return;
    };
    let (Some(kind), Some(message_id), Some(messages)) = (
        content.get("type").and_then(Value::as_str),
        content.get("message_id").and_then(Value::as_str),
        content.get("messages").and_then(Value::as_object),
    ) else {
        tracing::info!(%origin, "malformed to-device EDU; dropped");
        return;
    };
    let own = state.rooms.server_name();
    let mut local: Vec<(OwnedUserId, OwnedDeviceId, Value)> = Vec::new();
    for (user, devices) in messages {
        let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        let Some(devices) = devices.as_object() else {
            continue;
        };
        if user.server_name() != own {
            continue;
        }
        let existing: Vec<OwnedDeviceId> = match state.accounts.devices(&user) {
            Ok(d) => d.into_iter().map(|d| d.device_id).collect(),
            Err(err) => {
                tracing::warn!(%user, "listing devices failed: {err}");
                continue;
            }
        };
        for (device, msg) in devices {
            if device == "*" {
                local.extend(
                    existing
                        .iter()
                        .map(|d| (user.clone(), d.clone(), msg.clone())),
                );
            } else if existing.iter().any(|d| d.as_str() == device) {
                local.push((
                    user.clone(),
                    OwnedDeviceId::from(device.as_str()),
                    msg.clone(),
                ));
            }
        }
        if local.len() > MAX_TO_DEVICE_TARGETS {
            tracing::info!(%origin, "to-device EDU with too many targets; dropped");
            return;
        }
    }
    // The txn scope is the origin: message IDs are unique per sending server.
    let scope = format!("federation {origin}");
    match e
        .e2ee
        .send_to_device(&sender, &scope, Some(message_id), kind, &local)
    {
        Ok(Some(pos)) => {
            let users: Vec<&UserId> = local.iter().map(|(u, _, _)| &**u).collect();
            (e.wake_users)(&users, pos);
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(%origin, "storing to-device messages failed: {err}"),
    }
}
