//! Typing, receipts and the fully-read marker over HTTP: thin handlers over
//! [`::ephemeral::EphemeralService`] (which keeps the state, shared with inbound federation
//! EDUs) plus the sync assembly of a room's `ephemeral.events`.
//!
//! * `PUT /rooms/{roomId}/typing/{userId}`: only for yourself (403), only in a room you are
//!   joined to (403). The timeout is capped at [`MAX_TYPING_TIMEOUT_MS`] (default the same).
//! * `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}` with `m.read`,
//!   `m.read.private` (only ever shown to its owner) or `m.fully_read` (stored as the room
//!   account data `m.fully_read` `{event_id}`), optional `thread_id` (`main` or an event ID).
//! * `POST /rooms/{roomId}/read_markers` sets any of `m.fully_read`, `m.read`,
//!   `m.read.private` in one call.
//!
//! Wake-ups are not done here: [`SyncWakeObserver`] hears every change the service makes
//! (also expiries and remote EDUs) and wakes the syncs that see it. Typing and receipts
//! count as presence activity. Every handler does its storage work on the blocking pool.
use std::sync::Arc;
use std::time::Duration;

use ::ephemeral::{
    EphemeralChange, EphemeralObserver, MAX_TYPING_TIMEOUT_MS, Origin, Receipt, ReceiptType,
};
use accounts::filter::{RoomEventFilter, RoomEventFilterExt};
use axum::routing::{post, put};
use axum::{Json, Router};
use rooms::{RoomService, StoredEvent};
use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::notifier::SyncNotifier;
use crate::room::{parse_room_id, parse_user_id, route, wake_room};
use crate::{AppState, AppStateRef, now_ms};

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = route(r, "/rooms/{room_id}/typing/{user_id}", put(put_typing));
    let r = route(
        r,
        "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
        post(post_receipt),
    );
    route(r, "/rooms/{room_id}/read_markers", post(post_read_markers))
}

/// Wakes the syncs that see an ephemeral change: the room's joined members for typing and
/// public receipts, only the owner for a private receipt.
pub struct SyncWakeObserver {
    pub rooms: Arc<RoomService>,
    pub notifier: Arc<SyncNotifier>,
}

impl EphemeralObserver for SyncWakeObserver {
    fn changed(&self, change: &EphemeralChange) {
        match change {
            EphemeralChange::Typing { room, pos, .. } => {
                wake_room(&self.rooms, &self.notifier, room, *pos, &[]);
            }
            EphemeralChange::Receipt { receipt, pos, .. } => match receipt.receipt_type {
                ReceiptType::Read => {
                    wake_room(&self.rooms, &self.notifier, &receipt.room_id, *pos, &[])
                }
                ReceiptType::ReadPrivate => self.notifier.wake([&*receipt.user_id], *pos),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct TypingBody {
    typing: bool,
    /// Milliseconds; any JSON number is accepted (some clients send `30000.0`).
    #[serde(default)]
    timeout: Option<f64>,
}

async fn put_typing(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<TypingBody>,
) -> ApiResult<Json<Value>> {
    let state = state.0;
    let room = parse_room_id(&room_id)?;
    let user = parse_user_id(&user_id)?;
    if user != auth.user_id {
        return Err(MatrixError::forbidden(
            "Cannot set typing notifications for other users",
        ));
    }
    let max = MAX_TYPING_TIMEOUT_MS as f64;
    // `as` saturates: NaN and negatives become 0.
    let timeout = Duration::from_millis(body.timeout.unwrap_or(max).clamp(0.0, max) as u64);
    let typing = body.typing;
    let st = state.clone();
    blocking(move || -> ApiResult<()> {
        require_joined(&st, &room, &user)?;
        st.ephemeral
            .set_typing(&room, &user, typing, timeout, Origin::Local)?;
        Ok(())
    })
    .await??;
    if typing {
        state
            .presence
            .activity(&auth.user_id, auth.device_id.as_str());
    }
    Ok(Json(json!({})))
}

fn require_joined(state: &AppState, room: &RoomId, user: &UserId) -> ApiResult<()> {
    if state.rooms.is_joined(room, user)? {
        Ok(())
    } else {
        Err(MatrixError::forbidden(format!(
            "You are not joined to room {room}"
        )))
    }
}

/// A receipt type of the HTTP API: the stored kinds plus the fully-read marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Receipt(ReceiptType),
    FullyRead,
}

impl Marker {
    fn parse(s: &str) -> ApiResult<Marker> {
        match s {
            "m.fully_read" => Ok(Marker::FullyRead),
            _ => ReceiptType::parse(s)
                .map(Marker::Receipt)
                .ok_or_else(|| MatrixError::invalid_param(format!("Unknown receipt type {s:?}"))),
        }
    }
}

/// The event `event_id` of `room` (404 when unknown or in another room).
fn room_event(state: &AppState, room: &RoomId, event_id: &str) -> ApiResult<StoredEvent> {
    let id = OwnedEventId::try_from(event_id)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid event ID {event_id:?}")))?;
    match state.rooms.event(&id)? {
        Some(ev) if ev.room_id() == room.as_str() => Ok(ev),
        _ => Err(MatrixError::not_found(format!(
            "Unknown event {event_id} in room {room}"
        ))),
    }
}

/// Apply one receipt or the fully-read marker (the service wakes whoever sees a receipt).
fn apply_marker(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    kind: Marker,
    thread: Option<&str>,
    event: &StoredEvent,
) -> ApiResult<()> {
    match kind {
        Marker::FullyRead => {
            let pos = state.accounts.set_account_data(
                user,
                Some(room),
                "m.fully_read",
                &json!({ "event_id": event.event_id }),
            )?;
            state.notifier.wake([user], pos);
        }
        Marker::Receipt(receipt_type) => {
            let receipt = Receipt {
                room_id: room.to_owned(),
                user_id: user.to_owned(),
                receipt_type,
                event_id: event.event_id.clone(),
                thread_id: thread.map(str::to_owned),
                ts: now_ms(),
            };
            state
                .ephemeral
                .put_receipt(receipt, event.pos, Origin::Local)?;
        }
    }
    Ok(())
}

/// `thread_id` of a receipt body: absent/null, `main`, or a thread root's event ID.
fn thread_id(body: &Map<String, Value>, kind: Marker) -> ApiResult<Option<String>> {
    let thread = match body.get("thread_id") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "main" || OwnedEventId::try_from(s.as_str()).is_ok() => {
            s.clone()
        }
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "thread_id must be \"main\" or an event ID",
            ));
        }
    };
    if kind == Marker::FullyRead {
        return Err(MatrixError::invalid_param(
            "thread_id is not allowed for m.fully_read",
        ));
    }
    Ok(Some(thread))
}

async fn post_receipt(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, receipt_type, event_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let state = state.0;
    let room = parse_room_id(&room_id)?;
    let kind = Marker::parse(&receipt_type)?;
    let thread = thread_id(&body, kind)?;
    let (st, user) = (state.clone(), auth.user_id.clone());
    blocking(move || -> ApiResult<()> {
        require_joined(&st, &room, &user)?;
        let event = room_event(&st, &room, &event_id)?;
        apply_marker(&st, &user, &room, kind, thread.as_deref(), &event)
    })
    .await??;
    state
        .presence
        .activity(&auth.user_id, auth.device_id.as_str());
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
struct ReadMarkersBody {
    #[serde(rename = "m.fully_read", default)]
    fully_read: Option<String>,
    #[serde(rename = "m.read", default)]
    read: Option<String>,
    #[serde(rename = "m.read.private", default)]
    read_private: Option<String>,
}

async fn post_read_markers(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<ReadMarkersBody>,
) -> ApiResult<Json<Value>> {
    let state = state.0;
    let room = parse_room_id(&room_id)?;
    let (st, user) = (state.clone(), auth.user_id.clone());
    let marked = blocking(move || -> ApiResult<bool> {
        require_joined(&st, &room, &user)?;
        // Every event is checked before anything is written.
        let mut marks = Vec::new();
        for (kind, id) in [
            (Marker::FullyRead, &body.fully_read),
            (Marker::Receipt(ReceiptType::Read), &body.read),
            (
                Marker::Receipt(ReceiptType::ReadPrivate),
                &body.read_private,
            ),
        ] {
            if let Some(id) = id {
                marks.push((kind, room_event(&st, &room, id)?));
            }
        }
        for (kind, event) in &marks {
            apply_marker(&st, &user, &room, *kind, None, event)?;
        }
        Ok(!marks.is_empty())
    })
    .await??;
    if marked {
        state
            .presence
            .activity(&auth.user_id, auth.device_id.as_str());
    }
    Ok(Json(json!({})))
}

/// `rooms.join.{room}.ephemeral.events` for `viewer`: `m.typing` when the room's typing set
/// changed in `(since, now]` (initial sync, `since` = `None`: when anyone types) and
/// `m.receipt` with the receipts written in that range (initial: the current ones), through
/// the filter's `room.ephemeral` (types, not_types, rooms, not_rooms, limit).
pub(crate) fn room_ephemeral(
    state: &AppState,
    viewer: &UserId,
    room: &RoomId,
    since: Option<u64>,
    now: u64,
    filter: &RoomEventFilter,
) -> ApiResult<Vec<Value>> {
    if filter.excludes_all() || filter.limit_u64() == Some(0) {
        return Ok(Vec::new());
    }
    let mut events = Vec::new();
    if filter.matches(room, "m.typing", None, false)
        && let Some(users) = state.ephemeral.typing_since(room, since, now)
    {
        // Someone who left while typing stays in the set until their timeout; never show
        // a non-member typing.
        let mut kept: Vec<OwnedUserId> = Vec::with_capacity(users.len());
        for u in users {
            if state.rooms.is_joined(room, &u)? {
                kept.push(u);
            }
        }
        events.push(json!({ "type": "m.typing", "content": { "user_ids": kept } }));
    }
    if filter.matches(room, "m.receipt", None, false)
        && let Some(ev) = state.ephemeral.receipt_event(viewer, room, since, now)?
    {
        events.push(ev);
    }
    if let Some(limit) = filter.limit_u64() {
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_types_parse() {
        assert_eq!(
            Marker::parse("m.read.private").expect("ok"),
            Marker::Receipt(ReceiptType::ReadPrivate)
        );
        assert!(Marker::parse("m.unknown").is_err());
        let body: Map<String, Value> =
            serde_json::from_value(json!({"thread_id": ""})).expect("map");
        assert!(thread_id(&body, Marker::Receipt(ReceiptType::Read)).is_err());
        let body: Map<String, Value> =
            serde_json::from_value(json!({"thread_id": "main"})).expect("map");
        assert_eq!(
            thread_id(&body, Marker::Receipt(ReceiptType::Read))
                .expect("ok")
                .as_deref(),
            Some("main")
        );
        assert!(thread_id(&body, Marker::FullyRead).is_err());
    }
}
