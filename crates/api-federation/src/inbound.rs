//! One pushed PDU, from a transaction into the room engine (docs/federation.md, "Life of an
//! inbound PDU"): ACL and sender checks, the keys it needs, [`rooms::RoomService::receive_pdu`],
//! and what the engine asks for when it knows too little — `get_missing_events` for the
//! `prev_events`, `/event` for missing auth events, and `/state_ids` at the event when the
//! gap cannot be closed.
use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedUserId, RoomId, RoomVersionId,
    ServerName,
};
use serde_json::{Value, json};

use crate::verify::prefetch_keys;
use crate::{FederationState, acl};

/// Events asked for with `get_missing_events` (Synapse asks for 10 as well).
const MISSING_EVENTS_LIMIT: usize = 10;
/// Events fetched one by one (`/event`) to fill in auth events or the state at a gap.
const MAX_FETCHED_EVENTS: usize = 100;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
}

fn str_field<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// A user's own join, leave or knock (`state_key` = `sender`): what a resident server
/// forwards for another server after `send_join` / `send_leave` / `send_knock`.
fn is_forwarded_membership(pdu: &CanonicalJsonObject, sender: &OwnedUserId) -> bool {
    let membership = match pdu.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => m.as_str(),
            _ => return false,
        },
        _ => return false,
    };
    str_field(pdu, "type") == Some("m.room.member")
        && str_field(pdu, "state_key") == Some(sender.as_str())
        && matches!(membership, "join" | "leave" | "knock")
}

/// A PDU pushed by `origin` in a transaction. `Ok` = accepted (or soft-failed, which the
/// sender need not know), `Err` = the reason, for the per-PDU result.
pub(crate) async fn pushed_pdu(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    pdu: CanonicalJsonObject,
) -> Result<(), String> {
    acl::check(state, room, origin)?;
    let sender = str_field(&pdu, "sender")
        .and_then(|s| OwnedUserId::try_from(s).ok())
        .ok_or("PDU without a valid sender")?;
    // Relayed history (another server's events) arrives through get_missing_events, where
    // each event is checked against its own server's signature; a push speaks for the
    // origin's users only, except for the one relay the protocol has: a resident server
    // forwards the joins, leaves and knocks it accepted through send_join / send_leave /
    // send_knock to the room's other servers. Such an event still needs its sender's
    // server's valid signature (required by every room version, checked below).
    if sender.server_name() != origin && !is_forwarded_membership(&pdu, &sender) {
        return Err(format!(
            "sender {sender} does not belong to the sending server {origin}"
        ));
    }
    acl::check(state, room, sender.server_name())?;
    let mut fetched = 0usize;
    match receive(state, origin, version, pdu.clone(), None).await? {
        rooms::Received::NeedsMissingEvents {
            prev_events,
            auth_events,
            event_id,
        } => {
            if !auth_events.is_empty() {
                fetch_outliers(state, origin, room, version, &auth_events, &mut fetched).await;
            }
            if !prev_events.is_empty() {
                get_missing_events(state, origin, room, version, &event_id).await;
            }
            match receive(state, origin, version, pdu.clone(), None).await? {
                rooms::Received::NeedsMissingEvents { prev_events, .. }
                    if !prev_events.is_empty() =>
                {
                    let ids =
                        state_ids_at(state, origin, room, version, &event_id, &mut fetched).await?;
                    outcome(receive(state, origin, version, pdu, Some(ids)).await?)
                }
                r => outcome(r),
            }
        }
        r => outcome(r),
    }
}

fn outcome(r: rooms::Received) -> Result<(), String> {
    match r {
        rooms::Received::Accepted { .. } => Ok(()),
        rooms::Received::SoftFailed { event_id, reason } => {
            tracing::info!(%event_id, "soft-failed: {reason}");
            Ok(())
        }
        rooms::Received::Rejected { reason, .. } => Err(format!("rejected: {reason}")),
        rooms::Received::NeedsMissingEvents {
            prev_events,
            auth_events,
            ..
        } => Err(format!(
            "events it refers to are unknown and the origin did not supply them (prev_events: {}; auth_events: {})",
            join_ids(&prev_events),
            join_ids(&auth_events)
        )),
    }
}

fn join_ids(ids: &[OwnedEventId]) -> String {
    let v: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Keys first (async), then the engine (blocking).
async fn receive(
    state: &Arc<FederationState>,
    origin: &ServerName,
    version: &RoomVersionId,
    pdu: CanonicalJsonObject,
    gap_state: Option<Vec<OwnedEventId>>,
) -> Result<rooms::Received, String> {
    let keys = prefetch_keys(
        state.remote_keys.as_ref(),
        state.keys.server_name(),
        version,
        &pdu,
    )
    .await?;
    let rooms = state.rooms.clone();
    let origin = origin.to_owned();
    let room = pdu.get("room_id").and_then(|r| match r {
        ruma::CanonicalJsonValue::String(r) => ruma::OwnedRoomId::try_from(r.as_str()).ok(),
        _ => None,
    });
    let wake = state.membership.as_ref().map(|m| m.wake.clone());
    // A member event's target wakes too: an invitee is not a joined member yet, and a
    // join or rejection waiting for the invite's PDU (api-client) waits on that wake.
    let target = member_target(&pdu);
    blocking(move || {
        let received = match gap_state {
            None => rooms.receive_pdu(&origin, pdu, &keys),
            Some(ids) => rooms.receive_pdu_after_gap(&origin, pdu, &ids, &keys),
        }
        .map_err(|e| e.to_string())?;
        // A new timeline event: local long-polls of the room's members wake for it.
        if let (rooms::Received::Accepted { pos, .. }, Some(room), Some(wake)) =
            (&received, &room, &wake)
        {
            match &target {
                Some(t) => wake(room, *pos, &[&**t]),
                None => wake(room, *pos, &[]),
            }
        }
        Ok(received)
    })
    .await
}

async fn outlier(
    state: &Arc<FederationState>,
    version: &RoomVersionId,
    pdu: CanonicalJsonObject,
) -> Result<rooms::Received, String> {
    let keys = prefetch_keys(
        state.remote_keys.as_ref(),
        state.keys.server_name(),
        version,
        &pdu,
    )
    .await?;
    let rooms = state.rooms.clone();
    let version = version.clone();
    blocking(move || {
        rooms
            .receive_outlier(&version, pdu, &keys)
            .map_err(|e| e.to_string())
    })
    .await
}

fn known(state: &FederationState, id: &OwnedEventId) -> bool {
    state.rooms.pdu_for_federation(id).ok().flatten().is_some()
}

async fn federation_get(
    state: &FederationState,
    origin: &ServerName,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let method = if body.is_some() {
        http::Method::POST
    } else {
        http::Method::GET
    };
    match state
        .client
        .request(method, origin.as_str(), path, body)
        .await
    {
        Ok(r) if r.status == 200 => Ok(r.body),
        Ok(r) => Err(format!("{path} answered {}", r.status)),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn seg(s: &str) -> String {
    federation_client::percent_encode_segment(s)
}

/// Whether `pdu` is in `room` (a v12 create event has no `room_id`: its hash names the room).
fn in_room(pdu: &CanonicalJsonObject, room: &RoomId) -> bool {
    rooms::RoomService::pdu_room_id(pdu).as_deref() == Some(room)
}

fn depth(pdu: &CanonicalJsonObject) -> i64 {
    match pdu.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => i64::from(*d),
        _ => i64::MAX,
    }
}

/// `POST /get_missing_events/{room}` to the origin; the events come back oldest first into
/// the engine (they may be other servers' events: each carries its own signatures). Failures
/// are logged: the caller then tries a gap, or refuses the pushed event.
async fn get_missing_events(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    latest: &OwnedEventId,
) {
    let earliest = match recent_event_ids(state, room) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(%room, "cannot list recent events: {e}");
            return;
        }
    };
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [latest],
        "limit": MISSING_EVENTS_LIMIT,
        "min_depth": 0,
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        seg(room.as_str())
    );
    let resp = match federation_get(state, origin, &path, Some(&body)).await {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(%origin, %room, "get_missing_events failed: {e}");
            return;
        }
    };
    let mut events: Vec<CanonicalJsonObject> = resp
        .get("events")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .take(MISSING_EVENTS_LIMIT)
                .filter_map(|e| serde_json::from_value(e.clone()).ok())
                .filter(|e| in_room(e, room))
                .collect()
        })
        .unwrap_or_default();
    events.sort_by_key(depth);
    for ev in events {
        match receive(state, origin, version, ev, None).await {
            Ok(rooms::Received::Accepted { .. } | rooms::Received::SoftFailed { .. }) => {}
            Ok(other) => {
                tracing::info!(%origin, event_id = %other.event_id(), "missing event not accepted: {other:?}")
            }
            Err(e) => tracing::info!(%origin, "missing event not accepted: {e}"),
        }
    }
}

/// The newest events we have of the room (what `earliest_events` means: the origin stops
/// walking back when it reaches one of them).
fn recent_event_ids(state: &FederationState, room: &RoomId) -> Result<Vec<String>, String> {
    let last = state.rooms.room_last_pos(room).map_err(|e| e.to_string())?;
    let (events, _) = state
        .rooms
        .timeline(room, None, last, 10)
        .map_err(|e| e.to_string())?;
    Ok(events.into_iter().map(|e| e.event_id.to_string()).collect())
}

/// Fetches unknown events with `/event/{id}` and stores them as outliers, oldest first
/// (each one's auth events must be stored before it). At most [`MAX_FETCHED_EVENTS`] per
/// pushed PDU over all calls.
async fn fetch_outliers(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    ids: &[OwnedEventId],
    fetched: &mut usize,
) {
    let mut events = Vec::new();
    for id in ids {
        if known(state, id) {
            continue;
        }
        if *fetched >= MAX_FETCHED_EVENTS {
            tracing::info!(%origin, %room, "fetch budget spent; not fetching {id}");
            break;
        }
        *fetched += 1;
        let path = format!("/_matrix/federation/v1/event/{}", seg(id.as_str()));
        match federation_get(state, origin, &path, None).await {
            Ok(body) => {
                let pdu = body
                    .get("pdus")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(|p| serde_json::from_value::<CanonicalJsonObject>(p.clone()).ok());
                match pdu {
                    Some(p) if in_room(&p, room) => events.push(p),
                    _ => tracing::info!(%origin, "/event/{id} gave no PDU of {room}"),
                }
            }
            Err(e) => tracing::info!(%origin, "cannot fetch {id}: {e}"),
        }
    }
    events.sort_by_key(depth);
    for ev in events {
        if let Err(e) = outlier(state, version, ev).await {
            tracing::info!(%origin, "fetched event not stored: {e}");
        }
    }
}

/// `GET /state_ids/{room}?event_id=` at the pushed event: the state before it, with the
/// unknown state and auth-chain events fetched as outliers. Returns the state's event ids.
async fn state_ids_at(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    event_id: &OwnedEventId,
    fetched: &mut usize,
) -> Result<Vec<OwnedEventId>, String> {
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        seg(room.as_str()),
        seg(event_id.as_str())
    );
    let body = federation_get(state, origin, &path, None)
        .await
        .map_err(|e| {
            format!("prev_events are unknown and the state at the gap could not be had: {e}")
        })?;
    let list = |name: &str| -> Vec<OwnedEventId> {
        body.get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|s| OwnedEventId::try_from(s).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pdu_ids = list("pdu_ids");
    let auth_ids = list("auth_chain_ids");
    let unknown: Vec<OwnedEventId> = auth_ids
        .iter()
        .chain(pdu_ids.iter())
        .filter(|id| !known(state, id))
        .cloned()
        .collect();
    if unknown.len() + *fetched > MAX_FETCHED_EVENTS {
        return Err(format!(
            "prev_events are unknown and the state at the gap needs {} more events (limit {MAX_FETCHED_EVENTS})",
            unknown.len()
        ));
    }
    // Fetched together and stored by depth, so auth events precede what they authorise.
    fetch_outliers(state, origin, room, version, &unknown, fetched).await;
    Ok(pdu_ids)
}

/// The `state_key` user of an `m.room.member` PDU.
fn member_target(pdu: &CanonicalJsonObject) -> Option<OwnedUserId> {
    if str_field(pdu, "type") != Some("m.room.member") {
        return None;
    }
    str_field(pdu, "state_key").and_then(|k| OwnedUserId::try_from(k).ok())
}
