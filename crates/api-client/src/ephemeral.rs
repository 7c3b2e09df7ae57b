//! Ephemeral room data: typing notifications, read receipts and the fully-read marker.
//!
//! * `PUT /rooms/{roomId}/typing/{userId}`: only for yourself (403), only in a room you are
//!   joined to (403). The timeout is capped at [`MAX_TYPING_TIMEOUT_MS`] (default the same).
//!   Typing state lives in memory ([`TypingState`]): per room the typing users with their
//!   expiry, and the stream position of the last change of the room's *set* of typing users.
//!   A change of the set (someone starts, stops, or expires) allocates a position on the
//!   single stream with an empty [`storage::Db::write_with_position`] batch, so sync tokens
//!   stay `s<pos>`; a refresh of someone already typing changes no set and writes nothing.
//!   Expiry is one tokio task sleeping until the earliest deadline (re-armed through a
//!   `Notify`), never a task per user. Typing does not survive a restart.
//! * `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}` with `m.read`,
//!   `m.read.private` (only ever shown to its owner) or `m.fully_read` (stored as the room
//!   account data `m.fully_read` `{event_id}`), optional `thread_id` (`main` or an event ID).
//!   Receipts are persisted, the latest per (room, user, type, thread), each with a stream
//!   position; a receipt for an event earlier in the stream than the current one of the
//!   same kind is accepted and ignored (receipts only move forwards).
//! * `POST /rooms/{roomId}/read_markers` sets any of `m.fully_read`, `m.read`,
//!   `m.read.private` in one call.
//!
//! `/sync` asks [`room_ephemeral`] for each joined room's `ephemeral.events`. Typing and
//! receipts count as presence activity.
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use accounts::filter::{RoomEventFilter, RoomEventFilterExt};
use axum::routing::{post, put};
use axum::{Json, Router};
use rooms::StoredEvent;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use storage::{Cf, Db, Key, KeyReader, StorageError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::room::{parse_room_id, parse_user_id, route, wake_room};
use crate::{AppState, AppStateRef, now_ms};

/// Upper bound (and default) of a typing notification's `timeout`, in milliseconds.
pub const MAX_TYPING_TIMEOUT_MS: u64 = 30_000;
/// Receipts per room in one sync response (the most recent ones).
pub const MAX_RECEIPTS_PER_ROOM: usize = 1_000;

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

// ---------------------------------------------------------------------------------------
// Typing

/// Who is typing where (in memory), plus the single expiry timer.
#[derive(Default)]
pub struct TypingState {
    inner: Mutex<TypingInner>,
    /// Re-arms the expiry task when an earlier deadline may have been added.
    kick: Arc<Notify>,
    timer_started: AtomicBool,
}

#[derive(Default)]
struct TypingInner {
    rooms: HashMap<OwnedRoomId, RoomTyping>,
    /// Every typing user's expiry, earliest first.
    deadlines: BTreeSet<(Instant, OwnedRoomId, OwnedUserId)>,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Stream position of the last change of the set of typing users (0: none since start).
    changed_at: u64,
}

/// Why a positioned write (typing change, receipt) was abandoned.
enum Skip {
    /// Nothing changed after all (a concurrent request got there first).
    Unchanged,
    Storage(StorageError),
}

impl From<StorageError> for Skip {
    fn from(e: StorageError) -> Self {
        Skip::Storage(e)
    }
}

impl TypingInner {
    fn is_typing(&self, room: &RoomId, user: &UserId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.users.contains_key(user))
    }

    /// Set (or with `None` clear) the user's expiry; `pos` becomes the room's change position.
    fn set(&mut self, room: &RoomId, user: &UserId, until: Option<Instant>, pos: Option<u64>) {
        if until.is_none() && !self.rooms.contains_key(room) {
            return;
        }
        let entry = self.rooms.entry(room.to_owned()).or_default();
        let old = match until {
            Some(t) => entry.users.insert(user.to_owned(), t),
            None => entry.users.remove(user),
        };
        if let Some(pos) = pos {
            entry.changed_at = pos;
        }
        if let Some(old) = old {
            self.deadlines
                .remove(&(old, room.to_owned(), user.to_owned()));
        }
        if let Some(t) = until {
            self.deadlines.insert((t, room.to_owned(), user.to_owned()));
        }
    }

    /// Remove the users of `room` whose deadline is at or before `now`; true if any were.
    fn expire_room(&mut self, room: &RoomId, now: Instant, pos: u64) -> bool {
        let due: Vec<(Instant, OwnedRoomId, OwnedUserId)> = self
            .deadlines
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .filter(|(_, r, _)| r == room)
            .cloned()
            .collect();
        let mut changed = false;
        for key in due {
            self.deadlines.remove(&key);
            let (t, _, user) = key;
            if let Some(entry) = self.rooms.get_mut(room)
                && entry.users.get(&user) == Some(&t)
            {
                entry.users.remove(&user);
                entry.changed_at = pos;
                changed = true;
            }
        }
        changed
    }

    /// Rooms with at least one expiry at or before `now`.
    fn rooms_due(&self, now: Instant) -> BTreeSet<OwnedRoomId> {
        self.deadlines
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .map(|(_, r, _)| r.clone())
            .collect()
    }

    /// The `m.typing` event of a room if it is due in a sync covering `(since, now]`
    /// (initial sync: when anyone types).
    fn event(&self, room: &RoomId, since: Option<u64>, now: u64) -> Option<Value> {
        let r = self.rooms.get(room)?;
        let due = match since {
            None => !r.users.is_empty(),
            Some(s) => r.changed_at > s && r.changed_at <= now,
        };
        if !due {
            return None;
        }
        let mut users: Vec<&str> = r.users.keys().map(|u| u.as_str()).collect();
        users.sort_unstable();
        Some(json!({ "type": "m.typing", "content": { "user_ids": users } }))
    }
}

impl TypingState {
    fn lock(&self) -> MutexGuard<'_, TypingInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start (`until` = expiry) or stop (`None`) typing. Returns the stream position when
    /// the room's set of typing users changed (wake its members with it).
    fn update(
        &self,
        db: &Db,
        room: &RoomId,
        user: &UserId,
        until: Option<Instant>,
    ) -> Result<Option<u64>, StorageError> {
        {
            // A refresh of someone already typing, or a stop of someone who is not, changes
            // no set: no stream position, no wake-up.
            let mut inner = self.lock();
            if inner.is_typing(room, user) == until.is_some() {
                inner.set(room, user, until, None);
                drop(inner);
                if until.is_some() {
                    self.kick.notify_one();
                }
                return Ok(None);
            }
        }
        // Lock order: the database's writer lock, then `inner`. The in-memory change is made
        // inside the positioned write, so once the position is visible the change is too.
        let written = db.write_with_position(|pos, _batch| {
            let mut inner = self.lock();
            if inner.is_typing(room, user) == until.is_some() {
                inner.set(room, user, until, None);
                return Err(Skip::Unchanged);
            }
            inner.set(room, user, until, Some(pos));
            Ok(())
        });
        if until.is_some() {
            self.kick.notify_one();
        }
        match written {
            Ok((pos, ())) => Ok(Some(pos)),
            Err(Skip::Unchanged) => Ok(None),
            Err(Skip::Storage(e)) => Err(e),
        }
    }

    /// Remove every expired typing user; returns (room, position) for each room changed.
    fn expire(&self, db: &Db, now: Instant) -> Result<Vec<(OwnedRoomId, u64)>, StorageError> {
        let rooms = self.lock().rooms_due(now);
        let mut changed = Vec::new();
        for room in rooms {
            let written = db.write_with_position(|pos, _batch| {
                if self.lock().expire_room(&room, now, pos) {
                    Ok(())
                } else {
                    Err(Skip::Unchanged)
                }
            });
            match written {
                Ok((pos, ())) => changed.push((room, pos)),
                Err(Skip::Unchanged) => {}
                Err(Skip::Storage(e)) => return Err(e),
            }
        }
        Ok(changed)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock().deadlines.first().map(|(t, _, _)| *t)
    }

    /// The room's `m.typing` event for a sync covering `(since, now]`, if due.
    pub fn event(&self, room: &RoomId, since: Option<u64>, now: u64) -> Option<Value> {
        self.lock().event(room, since, now)
    }

    /// Start the expiry task once (on first use, so it runs inside the server's runtime).
    fn ensure_timer(state: &Arc<AppState>) {
        if state.typing.timer_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<AppState> = Arc::downgrade(state);
        let kick = state.typing.kick.clone();
        tokio::spawn(async move {
            loop {
                let next = match weak.upgrade() {
                    Some(state) => state.typing.next_deadline(),
                    None => return,
                };
                match next {
                    Some(deadline) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => {}
                            _ = kick.notified() => continue,
                        }
                    }
                    None => {
                        kick.notified().await;
                        continue;
                    }
                }
                let Some(state) = weak.upgrade() else { return };
                match state.typing.expire(&state.db, Instant::now()) {
                    Ok(changed) => {
                        for (room, pos) in changed {
                            wake_room(&state, &room, pos, &[]);
                        }
                    }
                    Err(e) => {
                        tracing::error!("expiring typing notifications failed: {e}");
                        drop(state);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
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
    require_joined(&state, &room, &user)?;
    let until = body.typing.then(|| {
        let max = MAX_TYPING_TIMEOUT_MS as f64;
        // `as` saturates: NaN and negatives become 0.
        let ms = body.timeout.unwrap_or(max).clamp(0.0, max) as u64;
        Instant::now() + Duration::from_millis(ms)
    });
    TypingState::ensure_timer(&state);
    if let Some(pos) = state.typing.update(&state.db, &room, &user, until)? {
        wake_room(&state, &room, pos, &[]);
    }
    if body.typing {
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

// ---------------------------------------------------------------------------------------
// Receipts and read markers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiptType {
    Read,
    ReadPrivate,
    FullyRead,
}

impl ReceiptType {
    fn parse(s: &str) -> ApiResult<ReceiptType> {
        match s {
            "m.read" => Ok(ReceiptType::Read),
            "m.read.private" => Ok(ReceiptType::ReadPrivate),
            "m.fully_read" => Ok(ReceiptType::FullyRead),
            _ => Err(MatrixError::invalid_param(format!(
                "Unknown receipt type {s:?}"
            ))),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            ReceiptType::Read => "m.read",
            ReceiptType::ReadPrivate => "m.read.private",
            ReceiptType::FullyRead => "m.fully_read",
        }
    }
}

/// `Cf::Receipts` value: the latest receipt of one (room, user, type, thread).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptRecord {
    event_id: OwnedEventId,
    /// Stream position of the receipted event: receipts only move forwards.
    event_pos: u64,
    ts: u64,
    /// Stream position of this receipt (its `Cf::ReceiptStream` entry).
    pos: u64,
}

/// `Cf::ReceiptStream` value: the receipt written at that position.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptEntry {
    user_id: OwnedUserId,
    receipt_type: String,
    event_id: OwnedEventId,
    ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread_id: Option<String>,
}

fn receipt_key(room: &RoomId, user: &UserId, kind: ReceiptType, thread: Option<&str>) -> Key {
    Key::new()
        .str(room.as_str())
        .str(user.as_str())
        .str(kind.as_str())
        .str(thread.unwrap_or(""))
}

fn stream_key(room: &RoomId, pos: u64) -> Key {
    Key::new().str(room.as_str()).u64(pos)
}

fn corrupt(cf: Cf, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        cf: cf.name(),
        reason: e.to_string(),
    }
}

/// Store a receipt unless the current one of the same kind is for this event or a later
/// one. Returns the new stream position when something was written.
fn store_receipt(
    db: &Db,
    room: &RoomId,
    user: &UserId,
    kind: ReceiptType,
    thread: Option<&str>,
    event: &StoredEvent,
) -> Result<Option<u64>, StorageError> {
    let key = receipt_key(room, user, kind, thread);
    let superseded = |db: &Db| -> Result<Option<ReceiptRecord>, StorageError> {
        db.get_json::<ReceiptRecord>(Cf::Receipts, &key)
    };
    if superseded(db)?.is_some_and(|r| r.event_pos >= event.pos) {
        return Ok(None);
    }
    let written = db.write_with_position(|pos, batch| {
        // Checked again under the writer lock: a concurrent receipt may have moved it on.
        let prev = superseded(db)?;
        if let Some(prev) = &prev {
            if prev.event_pos >= event.pos {
                return Err(Skip::Unchanged);
            }
            batch.delete(Cf::ReceiptStream, stream_key(room, prev.pos));
        }
        let ts = now_ms();
        batch.put_json(
            Cf::Receipts,
            &key,
            &ReceiptRecord {
                event_id: event.event_id.clone(),
                event_pos: event.pos,
                ts,
                pos,
            },
        );
        batch.put_json(
            Cf::ReceiptStream,
            stream_key(room, pos),
            &ReceiptEntry {
                user_id: user.to_owned(),
                receipt_type: kind.as_str().to_owned(),
                event_id: event.event_id.clone(),
                ts,
                thread_id: thread.map(str::to_owned),
            },
        );
        Ok(())
    });
    match written {
        Ok((pos, ())) => Ok(Some(pos)),
        Err(Skip::Unchanged) => Ok(None),
        Err(Skip::Storage(e)) => Err(e),
    }
}

/// The `m.receipt` event of a room for `viewer`: receipts written in `(since, now]`, or all
/// current ones on an initial sync; the most recent [`MAX_RECEIPTS_PER_ROOM`] at most.
/// Private receipts are only ever shown to their owner.
fn receipt_event(
    db: &Db,
    viewer: &UserId,
    room: &RoomId,
    since: Option<u64>,
    now: u64,
) -> Result<Option<Value>, StorageError> {
    const PAGE: usize = 256;
    let lo = stream_key(room, since.map_or(0, |s| s.saturating_add(1)));
    let mut hi = stream_key(room, now.saturating_add(1));
    let mut content: Map<String, Value> = Map::new();
    let mut count = 0;
    'pages: loop {
        let rows = db.scan_range(Cf::ReceiptStream, &lo, &hi, true, PAGE)?;
        let full_page = rows.len() == PAGE;
        for (_, v) in &rows {
            let entry: ReceiptEntry =
                serde_json::from_slice(v).map_err(|e| corrupt(Cf::ReceiptStream, e))?;
            if entry.receipt_type == ReceiptType::ReadPrivate.as_str() && entry.user_id != viewer {
                continue;
            }
            let by_type = content
                .entry(entry.event_id.to_string())
                .or_insert_with(|| json!({}));
            let users = by_type.as_object_mut().map(|o| {
                o.entry(entry.receipt_type.clone())
                    .or_insert_with(|| json!({}))
            });
            let Some(users) = users.and_then(Value::as_object_mut) else {
                continue;
            };
            // Newest first: an older receipt of the same user, type and event (another
            // thread) cannot be shown next to it, the newer one wins.
            if users.contains_key(entry.user_id.as_str()) {
                continue;
            }
            let mut receipt = json!({ "ts": entry.ts });
            if let Some(t) = entry.thread_id {
                receipt["thread_id"] = Value::from(t);
            }
            users.insert(entry.user_id.to_string(), receipt);
            count += 1;
            if count >= MAX_RECEIPTS_PER_ROOM {
                break 'pages;
            }
        }
        match rows.last() {
            Some((k, _)) if full_page => hi = Key::new().str(room.as_str()).u64(key_pos(k)),
            _ => break,
        }
    }
    if content.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({ "type": "m.receipt", "content": content })))
}

/// The stream position at the end of a `Cf::ReceiptStream` key.
fn key_pos(key: &[u8]) -> u64 {
    let mut r = KeyReader::new(key);
    r.str();
    r.u64().unwrap_or(0)
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

/// Apply one receipt (or the fully-read marker) and wake whoever sees it.
fn apply_receipt(
    state: &AppState,
    user: &UserId,
    room: &RoomId,
    kind: ReceiptType,
    thread: Option<&str>,
    event: &StoredEvent,
) -> ApiResult<()> {
    match kind {
        ReceiptType::FullyRead => {
            let pos = state.accounts.set_account_data(
                user,
                Some(room),
                "m.fully_read",
                &json!({ "event_id": event.event_id }),
            )?;
            state.notifier.wake([user], pos);
        }
        ReceiptType::Read => {
            if let Some(pos) = store_receipt(&state.db, room, user, kind, thread, event)? {
                wake_room(state, room, pos, &[]);
            }
        }
        ReceiptType::ReadPrivate => {
            if let Some(pos) = store_receipt(&state.db, room, user, kind, thread, event)? {
                state.notifier.wake([user], pos);
            }
        }
    }
    Ok(())
}

/// `thread_id` of a receipt body: absent/null, `main`, or a thread root's event ID.
fn thread_id(body: &Map<String, Value>, kind: ReceiptType) -> ApiResult<Option<String>> {
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
    if kind == ReceiptType::FullyRead {
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
    let room = parse_room_id(&room_id)?;
    let kind = ReceiptType::parse(&receipt_type)?;
    let thread = thread_id(&body, kind)?;
    require_joined(&state, &room, &auth.user_id)?;
    let event = room_event(&state, &room, &event_id)?;
    apply_receipt(
        &state,
        &auth.user_id,
        &room,
        kind,
        thread.as_deref(),
        &event,
    )?;
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
    let room = parse_room_id(&room_id)?;
    require_joined(&state, &room, &auth.user_id)?;
    // Every event is checked before anything is written.
    let mut marks = Vec::new();
    for (kind, id) in [
        (ReceiptType::FullyRead, &body.fully_read),
        (ReceiptType::Read, &body.read),
        (ReceiptType::ReadPrivate, &body.read_private),
    ] {
        if let Some(id) = id {
            marks.push((kind, room_event(&state, &room, id)?));
        }
    }
    for (kind, event) in &marks {
        apply_receipt(&state, &auth.user_id, &room, *kind, None, event)?;
    }
    if !marks.is_empty() {
        state
            .presence
            .activity(&auth.user_id, auth.device_id.as_str());
    }
    Ok(Json(json!({})))
}

// ---------------------------------------------------------------------------------------
// Sync

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
        && let Some(mut ev) = state.typing.event(room, since, now)
    {
        // Someone who left while typing stays in the set until their timeout; never show
        // a non-member typing.
        if let Some(ids) = ev["content"]["user_ids"].as_array_mut() {
            let mut kept = Vec::with_capacity(ids.len());
            for id in ids.drain(..) {
                let joined = match id.as_str().map(UserId::parse) {
                    Some(Ok(u)) => state.rooms.is_joined(room, &u)?,
                    _ => false,
                };
                if joined {
                    kept.push(id);
                }
            }
            *ids = kept;
        }
        events.push(ev);
    }
    if filter.matches(room, "m.receipt", None, false)
        && let Some(ev) = receipt_event(&state.db, viewer, room, since, now)?
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

    fn room() -> OwnedRoomId {
        "!r:x".try_into().expect("room")
    }
    fn user(s: &str) -> OwnedUserId {
        s.try_into().expect("user")
    }

    #[test]
    fn typing_set_changes_and_expiry() {
        let mut t = TypingInner::default();
        let (r, a, b) = (room(), user("@a:x"), user("@b:x"));
        let now = Instant::now();
        t.set(&r, &a, Some(now + Duration::from_secs(5)), Some(3));
        t.set(&r, &b, Some(now + Duration::from_secs(10)), Some(4));
        assert!(t.is_typing(&r, &a));
        let ev = t.event(&r, Some(2), 4).expect("changed");
        assert_eq!(ev["content"]["user_ids"], json!(["@a:x", "@b:x"]));
        assert!(t.event(&r, Some(4), 9).is_none(), "nothing new after 4");
        assert!(t.event(&r, None, 9).is_some(), "initial sync shows typers");
        // A refresh moves the deadline without a second entry.
        t.set(&r, &a, Some(now + Duration::from_secs(20)), None);
        assert_eq!(t.deadlines.len(), 2);
        assert_eq!(t.rooms_due(now + Duration::from_secs(11)).len(), 1);
        assert!(t.expire_room(&r, now + Duration::from_secs(11), 7));
        assert!(!t.is_typing(&r, &b));
        assert!(t.is_typing(&r, &a));
        assert_eq!(t.deadlines.len(), 1);
        t.set(&r, &a, None, Some(8));
        assert!(t.deadlines.is_empty());
        let ev = t.event(&r, Some(7), 8).expect("stop is a change");
        assert_eq!(ev["content"]["user_ids"], json!([]));
        assert!(t.event(&r, None, 8).is_none(), "nobody types");
    }

    #[test]
    fn receipt_types_parse() {
        assert_eq!(
            ReceiptType::parse("m.read.private").expect("ok"),
            ReceiptType::ReadPrivate
        );
        assert!(ReceiptType::parse("m.unknown").is_err());
        let body: Map<String, Value> =
            serde_json::from_value(json!({"thread_id": ""})).expect("map");
        assert!(thread_id(&body, ReceiptType::Read).is_err());
        let body: Map<String, Value> =
            serde_json::from_value(json!({"thread_id": "main"})).expect("map");
        assert_eq!(
            thread_id(&body, ReceiptType::Read).expect("ok").as_deref(),
            Some("main")
        );
        assert!(thread_id(&body, ReceiptType::FullyRead).is_err());
    }
}
