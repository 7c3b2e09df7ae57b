//! Serving the room DAG to other servers: `/event`, `/state`, `/state_ids`, `/backfill`,
//! `/get_missing_events`, `/event_auth`.
//!
//! Every room-scoped request passes the room's server ACL, and the asking server must be in
//! the room (one of its users joined) unless the room is `world_readable`. Events from
//! `/event`, `/backfill` and `/get_missing_events` the server may not see by history
//! visibility (no user of it who is or was in the room may see it,
//! [`rooms::RoomService::visible_to`], and not `world_readable`) are served **redacted**, as
//! Synapse does: the DAG stays walkable, the content stays private. State and auth chains
//! (`/state`, `/state_ids`, `/event_auth`) are served whole to a server in the room: it needs
//! them to authorise events. Rejected events are never served; soft-failed ones are.
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use federation_client::keys::now_ms;
use http::StatusCode;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, ServerName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::verify::id_list;
use crate::{FederationState, Origin, acl, error};

/// Events `/backfill` returns at most (Synapse: 100).
pub const MAX_BACKFILL: usize = 100;
/// Events `/get_missing_events` returns at most (Synapse: 20).
pub const MAX_MISSING_EVENTS: usize = 20;
/// Auth chains longer than this are cut (a real room's chain is far shorter).
const MAX_AUTH_CHAIN: usize = 10_000;

pub(crate) struct ReadError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        error(self.0, self.1, &self.2)
    }
}

fn forbidden(m: impl Into<String>) -> ReadError {
    ReadError(StatusCode::FORBIDDEN, "M_FORBIDDEN", m.into())
}

fn not_found(m: impl Into<String>) -> ReadError {
    ReadError(StatusCode::NOT_FOUND, "M_NOT_FOUND", m.into())
}

fn bad(m: impl Into<String>) -> ReadError {
    ReadError(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m.into())
}

fn internal(e: impl std::fmt::Display) -> ReadError {
    tracing::error!("federation read failed: {e}");
    ReadError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        "internal error".into(),
    )
}

type ReadResult = Result<Json<Value>, ReadError>;

async fn blocking(
    state: &Arc<FederationState>,
    f: impl FnOnce(&FederationState) -> ReadResult + Send + 'static,
) -> ReadResult {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .unwrap_or_else(|e| Err(internal(e)))
}

fn parse_room(s: &str) -> Result<OwnedRoomId, ReadError> {
    OwnedRoomId::try_from(s).map_err(|_| bad(format!("invalid room ID {s:?}")))
}

fn parse_event(s: &str) -> Result<OwnedEventId, ReadError> {
    OwnedEventId::try_from(s).map_err(|_| bad(format!("invalid event ID {s:?}")))
}

/// What a server may see of one room.
pub(crate) struct ServerView<'a> {
    state: &'a FederationState,
    room: OwnedRoomId,
    rules: ruma::room_version_rules::RoomVersionRules,
    /// The server's users who ever had a membership in the room.
    users: Vec<OwnedUserId>,
}

impl ServerView<'_> {
    fn may_see(&self, ev: &rooms::StoredEvent) -> Result<bool, ReadError> {
        if ev.room_id() != self.room.as_str() {
            return Ok(false);
        }
        let rooms = &self.state.rooms;
        if rooms
            .history_visibility_at(&self.room, ev.pos)
            .map_err(internal)?
            == "world_readable"
        {
            return Ok(true);
        }
        for u in &self.users {
            if rooms.visible_to(u, ev).map_err(internal)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A stored, not rejected event of this room.
    fn event(&self, id: &OwnedEventId) -> Result<Option<rooms::StoredEvent>, ReadError> {
        match self.state.rooms.pdu_for_federation(id).map_err(internal)? {
            Some(ev) if ev.room_id() == self.room.as_str() => Ok(Some(ev)),
            _ => Ok(None),
        }
    }

    /// The PDU as this server may have it: whole, or redacted when history visibility
    /// hides it.
    fn serve(&self, ev: &rooms::StoredEvent) -> Result<Value, ReadError> {
        if self.may_see(ev)? {
            return Ok(pdu_json(ev));
        }
        let redacted = ruma::canonical_json::redact(ev.pdu.clone(), &self.rules.redaction, None)
            .map_err(internal)?;
        Ok(serde_json::to_value(redacted).unwrap_or(Value::Null))
    }
}

/// ACL, then: the origin must be in the room (a joined user) or the room world-readable.
pub(crate) fn view<'a>(
    state: &'a FederationState,
    room: &RoomId,
    origin: &ServerName,
) -> Result<ServerView<'a>, ReadError> {
    if !state.rooms.room_exists(room).map_err(internal)? {
        return Err(not_found(format!("unknown room {room}")));
    }
    acl::check(state, room, origin).map_err(forbidden)?;
    let members = state.rooms.members(room).map_err(internal)?;
    let joined = members
        .iter()
        .any(|(u, m)| u.server_name() == origin && *m == rooms::Membership::Join);
    let world_readable = state
        .rooms
        .current_state_event(room, "m.room.history_visibility", "")
        .map_err(internal)?
        .and_then(|e| {
            e.content_str("history_visibility")
                .map(|v| v == "world_readable")
        })
        .unwrap_or(false);
    if !joined && !world_readable {
        return Err(forbidden(format!("{origin} is not in room {room}")));
    }
    let rules = state
        .rooms
        .room_version(room)
        .map_err(internal)?
        .and_then(|v| v.rules())
        .ok_or_else(|| internal(format!("room {room} has no supported version")))?;
    Ok(ServerView {
        state,
        room: room.to_owned(),
        rules,
        users: members
            .into_iter()
            .filter(|(u, _)| u.server_name() == origin)
            .map(|(u, _)| u)
            .collect(),
    })
}

fn pdu_json(ev: &rooms::StoredEvent) -> Value {
    serde_json::to_value(&ev.pdu).unwrap_or(Value::Null)
}

fn envelope(state: &FederationState, pdus: Vec<Value>) -> Value {
    json!({
        "origin": state.keys.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    })
}

/// `GET /v1/event/{eventId}`.
pub(crate) async fn get_event(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(event_id): Path<String>,
) -> ReadResult {
    let id = parse_event(&event_id)?;
    blocking(&state, move |state| {
        let ev = state
            .rooms
            .pdu_for_federation(&id)
            .map_err(internal)?
            .ok_or_else(|| not_found(format!("unknown event {id}")))?;
        let room = parse_room(&ev.room_id())?;
        let view = view(state, &room, &origin)?;
        Ok(Json(envelope(state, vec![view.serve(&ev)?])))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct AtEvent {
    event_id: String,
}

/// The state before `event_id` and its auth chain, as event IDs.
fn state_and_chain(
    view: &ServerView<'_>,
    event_id: &str,
) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>), ReadError> {
    let id = parse_event(event_id)?;
    let ev = view
        .event(&id)?
        .ok_or_else(|| not_found(format!("unknown event {id}")))?;
    let state = view
        .state
        .rooms
        .state_before(&ev.event_id)
        .map_err(internal)?;
    let ids: Vec<OwnedEventId> = state.into_values().collect();
    let chain = auth_chain(view.state, &ids)?;
    Ok((ids, chain))
}

/// Every event reachable through `auth_events` from `start` (excluded), bounded; rooms
/// reads every version's reference format and adds v12's implicit create event.
fn auth_chain(
    state: &FederationState,
    start: &[OwnedEventId],
) -> Result<Vec<OwnedEventId>, ReadError> {
    Ok(state.rooms.auth_chain_for_federation(start, MAX_AUTH_CHAIN))
}

fn load_all(state: &FederationState, ids: &[OwnedEventId]) -> Result<Vec<Value>, ReadError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(ev) = state.rooms.pdu_for_federation(id).map_err(internal)? {
            out.push(pdu_json(&ev));
        }
    }
    Ok(out)
}

/// `GET /v1/state/{roomId}?event_id=`.
pub(crate) async fn get_state(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room): Path<String>,
    Query(q): Query<AtEvent>,
) -> ReadResult {
    let room = parse_room(&room)?;
    blocking(&state, move |state| {
        let view = view(state, &room, &origin)?;
        let (ids, chain) = state_and_chain(&view, &q.event_id)?;
        Ok(Json(json!({
            "pdus": load_all(state, &ids)?,
            "auth_chain": load_all(state, &chain)?,
        })))
    })
    .await
}

/// `GET /v1/state_ids/{roomId}?event_id=`.
pub(crate) async fn get_state_ids(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room): Path<String>,
    Query(q): Query<AtEvent>,
) -> ReadResult {
    let room = parse_room(&room)?;
    blocking(&state, move |state| {
        let view = view(state, &room, &origin)?;
        let (ids, chain) = state_and_chain(&view, &q.event_id)?;
        Ok(Json(json!({ "pdu_ids": ids, "auth_chain_ids": chain })))
    })
    .await
}

/// `GET /v1/event_auth/{roomId}/{eventId}`.
pub(crate) async fn get_event_auth(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path((room, event_id)): Path<(String, String)>,
) -> ReadResult {
    let room = parse_room(&room)?;
    let id = parse_event(&event_id)?;
    blocking(&state, move |state| {
        let view = view(state, &room, &origin)?;
        view.event(&id)?
            .ok_or_else(|| not_found(format!("unknown event {id}")))?;
        let chain = auth_chain(state, std::slice::from_ref(&id))?;
        Ok(Json(json!({ "auth_chain": load_all(state, &chain)? })))
    })
    .await
}

/// `GET /v1/backfill/{roomId}?v=…&limit=`: the given events and their ancestors, newest
/// first by depth, at most `limit` (≤ [`MAX_BACKFILL`]).
pub(crate) async fn backfill(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> ReadResult {
    let room = parse_room(&room)?;
    let mut from = Vec::new();
    let mut limit = 10usize;
    for (k, v) in form_pairs(query.as_deref().unwrap_or("")) {
        match k.as_str() {
            "v" => from.push(parse_event(&v)?),
            "limit" => limit = v.parse().map_err(|_| bad("limit is not a number"))?,
            _ => {}
        }
    }
    if from.is_empty() {
        return Err(bad("backfill needs at least one v"));
    }
    from.truncate(MAX_BACKFILL);
    let limit = limit.clamp(1, MAX_BACKFILL);
    blocking(&state, move |state| {
        let view = view(state, &room, &origin)?;
        let events = walk_back(&view, from, &BTreeSet::new(), limit, 0, true)?;
        let pdus = events
            .iter()
            .map(|e| view.serve(e))
            .collect::<Result<_, _>>()?;
        Ok(Json(envelope(state, pdus)))
    })
    .await
}

/// Breadth-first over `prev_events` from `start` (included when `include_start`), skipping
/// `stop` and events under `min_depth`; newest first.
fn walk_back(
    view: &ServerView<'_>,
    start: Vec<OwnedEventId>,
    stop: &BTreeSet<OwnedEventId>,
    limit: usize,
    min_depth: u64,
    include_start: bool,
) -> Result<Vec<rooms::StoredEvent>, ReadError> {
    let mut seen: HashSet<OwnedEventId> = stop.iter().cloned().collect();
    let mut out = Vec::new();
    let mut queue: VecDeque<(OwnedEventId, bool)> =
        start.into_iter().map(|id| (id, include_start)).collect();
    // Looking at far more events than we may return would let one request walk a whole room.
    let mut budget = limit.saturating_mul(10).max(100);
    while let Some((id, include)) = queue.pop_front() {
        if out.len() >= limit || budget == 0 {
            break;
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        budget -= 1;
        let Some(ev) = view.event(&id)? else {
            continue;
        };
        if ev.depth() < min_depth {
            continue;
        }
        for p in id_list(&ev.pdu, "prev_events") {
            if let Ok(p) = OwnedEventId::try_from(p) {
                queue.push_back((p, true));
            }
        }
        if include {
            out.push(ev);
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.depth()));
    Ok(out)
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
struct MissingEventsBody {
    #[serde(default)]
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    min_depth: Option<u64>,
}

/// `POST /v1/get_missing_events/{roomId}`: ancestors of `latest_events` (excluded) not
/// reachable past `earliest_events`, oldest first, at most `limit` (≤ [`MAX_MISSING_EVENTS`]).
pub(crate) async fn get_missing_events(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room): Path<String>,
    body: Bytes,
) -> ReadResult {
    let room = parse_room(&room)?;
    let body: MissingEventsBody = serde_json::from_slice(&body).map_err(|e| {
        ReadError(
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            format!("get_missing_events: {e}"),
        )
    })?;
    if body.latest_events.len() > MAX_MISSING_EVENTS || body.earliest_events.len() > 1_000 {
        return Err(bad("too many latest_events or earliest_events"));
    }
    let latest = body
        .latest_events
        .iter()
        .map(|s| parse_event(s))
        .collect::<Result<Vec<_>, _>>()?;
    let stop: BTreeSet<OwnedEventId> = body
        .earliest_events
        .iter()
        .filter_map(|s| OwnedEventId::try_from(s.as_str()).ok())
        .collect();
    let limit = body.limit.unwrap_or(10).clamp(1, MAX_MISSING_EVENTS);
    let min_depth = body.min_depth.unwrap_or(0);
    blocking(&state, move |state| {
        let view = view(state, &room, &origin)?;
        let mut events = walk_back(&view, latest, &stop, limit, min_depth, false)?;
        events.reverse();
        let events: Vec<Value> = events
            .iter()
            .map(|e| view.serve(e))
            .collect::<Result<_, _>>()?;
        Ok(Json(json!({ "events": events })))
    })
    .await
}

#[derive(Deserialize, Default)]
pub(crate) struct TimestampQuery {
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    dir: Option<String>,
}

/// `GET /v1/timestamp_to_event/{roomId}?ts=&dir=`: our timeline event closest to `ts`
/// (ms) in `dir` (`f`/`b`), for a server in the room: `{event_id, origin_server_ts}`, or
/// 404 `M_NOT_FOUND`. Only an event id and a timestamp leave: the asking server fetches
/// the event itself through `/event`, which applies history visibility (as Synapse).
pub(crate) async fn timestamp_to_event(
    State(state): State<Arc<FederationState>>,
    Extension(Origin(origin)): Extension<Origin>,
    Path(room): Path<String>,
    Query(q): Query<TimestampQuery>,
) -> ReadResult {
    let room = parse_room(&room)?;
    let ts: u64 =
        q.ts.as_deref()
            .ok_or_else(|| bad("ts is required"))?
            .parse()
            .map_err(|_| bad("ts must be a timestamp in milliseconds"))?;
    let dir = q
        .dir
        .as_deref()
        .and_then(rooms::TimeDirection::parse)
        .ok_or_else(|| bad("dir must be 'f' or 'b'"))?;
    blocking(&state, move |state| {
        view(state, &room, &origin)?;
        let hit = state
            .rooms
            .event_at_timestamp(&room, ts, dir, |_| Ok(true))
            .map_err(internal)?
            .ok_or_else(|| not_found(format!("no event of {room} found on that side of {ts}")))?;
        Ok(Json(json!({
            "event_id": hit.event.event_id,
            "origin_server_ts": hit.event.origin_server_ts(),
        })))
    })
    .await
}
