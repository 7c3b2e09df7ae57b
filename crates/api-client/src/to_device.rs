//! `PUT /sendToDevice/{eventType}/{txnId}`: to-device messages, idempotent per
//! (device, txn ID). Local targets go to their inboxes (the e2ee crate) and their
//! `/sync`s are woken; `*` means every device of the user. Remote targets go, once per
//! transaction, to their servers as `m.direct_to_device` EDUs through
//! [`crate::remote_keys::RemoteKeys`].
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::{AppState, AppStateRef, client_route};

pub fn routes() -> Router<Arc<AppState>> {
    client_route(
        Router::new(),
        "/sendToDevice/{event_type}/{txn_id}",
        put(send_to_device),
    )
}

#[derive(Deserialize)]
struct SendBody {
    messages: BTreeMap<String, BTreeMap<String, Value>>,
}

async fn send_to_device(
    State(state): AppStateRef,
    auth: Auth,
    Path((event_type, txn_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<SendBody>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    blocking(move || -> ApiResult<()> {
        let mut local: Vec<(OwnedUserId, OwnedDeviceId, Value)> = Vec::new();
        let mut remote: BTreeMap<OwnedServerName, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in body.messages {
            let user = crate::extract::parse_user_id(&user)?;
            if user.server_name() != st.config.server_name {
                let per_user: Map<String, Value> = devices.into_iter().collect();
                remote
                    .entry(user.server_name().to_owned())
                    .or_default()
                    .insert(user.to_string(), Value::Object(per_user));
                continue;
            }
            let existing: Vec<OwnedDeviceId> = st
                .accounts
                .devices(&user)?
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            for (device, content) in devices {
                if !content.is_object() {
                    return Err(MatrixError::bad_json("Message content must be an object"));
                }
                if device == "*" {
                    for d in &existing {
                        local.push((user.clone(), d.clone(), content.clone()));
                    }
                } else if existing.iter().any(|d| d.as_str() == device) {
                    local.push((user.clone(), OwnedDeviceId::from(device), content));
                }
            }
        }
        let written = st.e2ee.send_to_device(
            &auth.user_id,
            auth.device_id.as_str(),
            Some(&txn_id),
            &event_type,
            &local,
        )?;
        let Some(pos) = written else {
            // A repeated transaction: already delivered (or queued) the first time.
            return Ok(());
        };
        st.notifier.wake(local.iter().map(|(u, _, _)| &**u), pos);
        if !remote.is_empty() {
            match st.remote_keys.get() {
                Some(hook) => {
                    let message_id = format!("{}/{}", auth.device_id, txn_id);
                    hook.send_to_device(&auth.user_id, &event_type, &message_id, remote);
                }
                None => tracing::debug!("federation is off: remote to-device messages dropped"),
            }
        }
        Ok(())
    })
    .await??;
    Ok(Json(json!({})))
}
