//! `PUT /_matrix/federation/v1/send/{txnId}`: inbound transactions.
//!
//! * Bounds: ≤ [`MAX_PDUS_PER_TXN`] PDUs and ≤ [`MAX_EDUS_PER_TXN`] EDUs, else `400` (the only
//!   non-2xx answer besides authentication: Synapse backs off for 10 minutes on any error, so
//!   everything per PDU goes in the `200` result map instead).
//! * Idempotent per (origin, txnId): the answer is recorded with
//!   [`rooms::RoomService::federation_txn`] once the transaction is processed, and a retry
//!   gets it back; transactions of one origin are processed one at a time.
//! * PDUs, in order: unknown rooms and unparsable PDUs are skipped without an entry (no event
//!   ID can be computed); the rest go through [`inbound::pushed_pdu`].
//! * EDUs: `m.presence` to the presence service; `m.typing` and `m.receipt` to the ephemeral
//!   service when the user belongs to the origin, is joined to the room and the room's ACL lets
//!   the origin in; anything else is dropped and logged.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, ServerName};
use serde_json::{Value, json};

use crate::{FederationState, Origin, acl, error, inbound};

pub const MAX_PDUS_PER_TXN: usize = 50;
pub const MAX_EDUS_PER_TXN: usize = 100;
/// Receipt entries read from one `m.receipt` EDU.
const MAX_RECEIPTS_PER_EDU: usize = 1_000;

#[derive(Default)]
pub(crate) struct TxnLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl TxnLocks {
    fn for_origin(&self, origin: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(origin.to_owned()).or_default().clone()
    }
}

pub(crate) async fn send_transaction(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(txn_id): Path<String>,
    body: Bytes,
) -> Response {
    let txn: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                "transaction is not an object",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                &format!("transaction is not JSON: {e}"),
            );
        }
    };
    let empty = Vec::new();
    let pdus = txn.get("pdus").and_then(Value::as_array).unwrap_or(&empty);
    let edus = txn.get("edus").and_then(Value::as_array).unwrap_or(&empty);
    if pdus.len() > MAX_PDUS_PER_TXN || edus.len() > MAX_EDUS_PER_TXN {
        tracing::info!(%origin, pdus = pdus.len(), edus = edus.len(), "refused an oversized transaction");
        return error(
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            &format!(
                "a transaction carries at most {MAX_PDUS_PER_TXN} PDUs and {MAX_EDUS_PER_TXN} EDUs (got {} and {})",
                pdus.len(),
                edus.len()
            ),
        );
    }
    let lock = state.txn_locks.for_origin(origin.as_str());
    let _guard = lock.lock().await;
    // The record lives in the room engine (`Cf::Txns`, pruned there). Its lock is
    // synchronous, so it is taken only for the read and for the write; the per-origin async
    // lock above keeps the two from interleaving with another delivery.
    match state
        .rooms
        .federation_txn(&origin, &txn_id)
        .map(|t| t.previous().cloned())
    {
        Ok(Some(answer)) => return Json(answer).into_response(),
        Ok(None) => {}
        Err(rooms::RoomError::InvalidParam(m)) => {
            return error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", &m);
        }
        Err(e) => {
            tracing::error!("cannot read transaction record: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "storage error",
            );
        }
    }
    state.stats.received(pdus.len(), edus.len());
    let mut results = serde_json::Map::new();
    for raw in pdus {
        if let Some((id, outcome)) = handle_pdu(&state, &origin, raw).await {
            let entry = match outcome {
                Ok(()) => json!({}),
                Err(e) => {
                    tracing::info!(%origin, event_id = %id, "refused PDU: {e}");
                    json!({ "error": e })
                }
            };
            results.insert(id.to_string(), entry);
        }
    }
    for edu in edus {
        handle_edu(&state, &origin, edu).await;
    }
    let answer = json!({ "pdus": results });
    if let Err(e) = state
        .rooms
        .federation_txn(&origin, &txn_id)
        .and_then(|t| t.record(&answer))
    {
        // The PDUs are stored; a retry would re-run them harmlessly (they are deduplicated).
        tracing::warn!("cannot record transaction {txn_id} of {origin}: {e}");
    }
    Json(answer).into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
}

/// `None` when no event ID can be given (not an object, unknown room, unsupported version).
async fn handle_pdu(
    state: &Arc<FederationState>,
    origin: &ServerName,
    raw: &Value,
) -> Option<(OwnedEventId, Result<(), String>)> {
    let pdu: CanonicalJsonObject = match serde_json::from_value(raw.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(%origin, "skipped a PDU that is not canonical JSON: {e}");
            return None;
        }
    };
    let room = match pdu.get("room_id") {
        Some(ruma::CanonicalJsonValue::String(r)) => OwnedRoomId::try_from(r.as_str()).ok()?,
        _ => {
            tracing::info!(%origin, "skipped a PDU without room_id");
            return None;
        }
    };
    let version = match state.rooms.room_version(&room) {
        Ok(Some(v)) => v,
        Ok(None) => {
            // The one PDU of a room we have no state of that concerns us: the inviter
            // withdrawing our user's invite.
            let found = crate::rescind::rescinded_invite(state, origin, &room, pdu).await;
            if found.is_none() {
                tracing::info!(%origin, %room, "skipped a PDU for a room we are not in");
            }
            return found;
        }
        Err(e) => {
            tracing::warn!(%origin, %room, "skipped a PDU: cannot read the room: {e}");
            return None;
        }
    };
    let id = rooms::event_id_for(&version, &pdu).ok()?;
    let outcome = inbound::pushed_pdu(state, origin, &room, &version, pdu).await;
    Some((id, outcome))
}

async fn handle_edu(state: &Arc<FederationState>, origin: &ServerName, edu: &Value) {
    let kind = edu.get("edu_type").and_then(Value::as_str).unwrap_or("");
    let content = edu.get("content").cloned().unwrap_or(Value::Null);
    match kind {
        "m.presence" => {
            let r = state.presence.receive_remote_presence(origin, &content);
            if r.dropped > 0 {
                tracing::info!(%origin, dropped = r.dropped, accepted = r.accepted, "presence entries dropped");
            }
        }
        "m.typing" => {
            if let Err(e) = typing(state, origin, content).await {
                tracing::info!(%origin, "typing EDU dropped: {e}");
            }
        }
        "m.receipt" => receipts(state, origin, content).await,
        "m.device_list_update" | "m.signing_key_update" | "m.direct_to_device" => {
            let (state, origin, kind) = (state.clone(), origin.to_owned(), kind.to_owned());
            let done = tokio::task::spawn_blocking(move || {
                if kind == "m.direct_to_device" {
                    crate::e2ee::to_device_edu(&state, &origin, &content)
                } else {
                    crate::e2ee::device_list_edu(&state, &origin, &content)
                }
            })
            .await;
            if let Err(e) = done {
                tracing::warn!("handling an e2ee EDU failed: {e}");
            }
        }
        other => tracing::debug!(%origin, edu_type = other, "EDU type not handled; dropped"),
    }
}

/// The user must be on the origin and joined to the room, and the room's ACL must let the
/// origin in.
fn may_speak_in_room(
    state: &FederationState,
    origin: &ServerName,
    room: &RoomId,
    user: &ruma::UserId,
) -> Result<(), String> {
    if user.server_name() != origin {
        return Err(format!("{user} does not belong to {origin}"));
    }
    acl::check(state, room, origin)?;
    if !state
        .rooms
        .is_joined(room, user)
        .map_err(|e| e.to_string())?
    {
        return Err(format!("{user} is not joined to {room}"));
    }
    Ok(())
}

async fn typing(
    state: &Arc<FederationState>,
    origin: &ServerName,
    content: Value,
) -> Result<(), String> {
    let room = content
        .get("room_id")
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok())
        .ok_or("no valid room_id")?;
    let user = content
        .get("user_id")
        .and_then(Value::as_str)
        .and_then(|u| OwnedUserId::try_from(u).ok())
        .ok_or("no valid user_id")?;
    let typing = content
        .get("typing")
        .and_then(Value::as_bool)
        .ok_or("no boolean typing")?;
    let state = state.clone();
    let origin = origin.to_owned();
    blocking(move || {
        may_speak_in_room(&state, &origin, &room, &user)?;
        state
            .ephemeral
            .set_typing(
                &room,
                &user,
                typing,
                Duration::from_millis(ephemeral::MAX_TYPING_TIMEOUT_MS),
                ephemeral::Origin::Remote(origin.clone()),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
}

/// `{room_id: {"m.read": {user_id: {event_ids: [...], data: {ts, thread_id?}}}}}`.
async fn receipts(state: &Arc<FederationState>, origin: &ServerName, content: Value) {
    let Value::Object(rooms) = content else {
        tracing::info!(%origin, "receipt EDU content is not an object; dropped");
        return;
    };
    let mut entries = Vec::new();
    for (room, by_type) in rooms {
        let Ok(room) = OwnedRoomId::try_from(room.as_str()) else {
            continue;
        };
        let Some(Value::Object(users)) = by_type.get("m.read") else {
            continue;
        };
        for (user, receipt) in users {
            let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            let data = receipt.get("data");
            let ts = data
                .and_then(|d| d.get("ts"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let thread = data
                .and_then(|d| d.get("thread_id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            for ev in receipt
                .get("event_ids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if let Ok(ev) = OwnedEventId::try_from(ev) {
                    entries.push((room.clone(), user.clone(), ev, ts, thread.clone()));
                }
            }
            if entries.len() >= MAX_RECEIPTS_PER_EDU {
                break;
            }
        }
    }
    let state = state.clone();
    let origin = origin.to_owned();
    let _ = blocking(move || {
        for (room, user, event_id, ts, thread_id) in entries.into_iter().take(MAX_RECEIPTS_PER_EDU)
        {
            let stored =
                may_speak_in_room(&state, &origin, &room, &user).and_then(|()| {
                    match state.rooms.event(&event_id).map_err(|e| e.to_string())? {
                        Some(ev) if ev.room_id() == room.as_str() => Ok(ev.pos),
                        _ => Err(format!("{event_id} is not an event of {room}")),
                    }
                });
            let pos = match stored {
                Ok(pos) => pos,
                Err(e) => {
                    tracing::info!(%origin, "receipt dropped: {e}");
                    continue;
                }
            };
            let receipt = ephemeral::Receipt {
                room_id: room,
                user_id: user,
                receipt_type: ephemeral::ReceiptType::Read,
                event_id,
                thread_id,
                ts,
            };
            if let Err(e) =
                state
                    .ephemeral
                    .put_receipt(receipt, pos, ephemeral::Origin::Remote(origin.clone()))
            {
                tracing::warn!("cannot store a remote receipt: {e}");
            }
        }
        Ok(())
    })
    .await;
}
