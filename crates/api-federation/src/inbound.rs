//! One pushed PDU, from a transaction into the room engine (docs/federation.md, "Life of an
//! inbound PDU"): ACL and sender checks, the keys it needs, [`rooms::RoomService::receive_pdu`],
//! and what the engine asks for when it knows too little — `get_missing_events` for the
//! `prev_events`, `/event` for missing auth events, and `/state_ids` at the event when the
//! gap cannot be closed.
use std::collections::HashSet;
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
/// Most events fetched one by one (`/event`) for one pushed PDU: the auth events it and
/// the events before it lack, and the state at a gap (which `/state_ids` names; a real
/// room's state runs to thousands of events, MSC4297's Complement test to 250).
const MAX_FETCHED_EVENTS: usize = 5_000;
/// `/event` requests in flight at once.
const FETCH_CONCURRENCY: usize = 8;
/// Rounds of auth-event fetching (each fetches the auth events the previous round's
/// events lack): bounds an origin that feeds a chain one event at a time.
const MAX_AUTH_ROUNDS: usize = 20;

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
///
/// Unknown auth events are fetched (`/event`, with their own missing auth events, see
/// [`fetch_events`]); unknown `prev_events` through `/get_missing_events`, whose events
/// may themselves close a gap with the state from `/state_ids` ([`pull_missing_events`]).
/// A pushed PDU whose prev events are still unknown after that is dropped (logged, no
/// per-PDU error, as Synapse): the state at a gap is only ever taken for events the
/// origin handed over when asked.
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
    let (prev_events, auth_events, event_id) =
        match receive(state, origin, version, pdu.clone(), None).await? {
            rooms::Received::NeedsMissingEvents {
                prev_events,
                auth_events,
                event_id,
            } => (prev_events, auth_events, event_id),
            r => return outcome(r),
        };
    // Prev events first: the missing history usually brings the missing auth events with
    // it (a member's previous member event is both), and a gap's state is fetched in bulk;
    // walking an auth chain one `/event` round at a time first would take a round trip per
    // event (MSC4297's Complement rooms: a chain of 250, in a 10 s transaction).
    if !prev_events.is_empty() {
        pull_missing_events(state, origin, room, version, &event_id, &mut fetched).await;
    }
    let auth_events: Vec<OwnedEventId> = auth_events
        .into_iter()
        .filter(|a| !known(state, a))
        .collect();
    if !auth_events.is_empty() {
        fetch_events(state, origin, room, version, &auth_events, &mut fetched).await;
    }
    match receive(state, origin, version, pdu, None).await? {
        // Still unlinked: dropped without an error, as Synapse does nowadays (an error
        // would only make the origin retry what it cannot supply); a later event that
        // links to it brings it back through get_missing_events.
        rooms::Received::NeedsMissingEvents {
            prev_events,
            auth_events,
            event_id,
        } if !prev_events.is_empty() => {
            tracing::info!(%origin, %event_id, prev = %join_ids(&prev_events), auth = %join_ids(&auth_events), "pushed event dropped: its prev events could not be had");
            Ok(())
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

/// `POST /get_missing_events/{room}` to the origin (`earliest_events`: our forward
/// extremities, where it stops walking back), and the events it answers into the engine,
/// oldest first. They may be other servers' events: each carries its own signatures. An
/// event of the answer that is not valid JSON for the room (e.g. a float in room v6+) or
/// of another room is left out; the others are used. The oldest of them usually cites
/// prev events we do not have: that gap is closed with the state the origin reports
/// there ([`state_at_gap`]). Failures are logged: the pushed event is then refused.
async fn pull_missing_events(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    latest: &OwnedEventId,
    fetched: &mut usize,
) {
    let earliest = match state.rooms.forward_extremities(room) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(%room, "cannot list the forward extremities: {e}");
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
    let mut events = usable_events(&resp, room, MISSING_EVENTS_LIMIT);
    events.sort_by_key(depth);
    for ev in events {
        let result = match receive(state, origin, version, ev.clone(), None).await {
            Ok(rooms::Received::NeedsMissingEvents {
                prev_events,
                auth_events,
                event_id,
            }) => {
                if prev_events.is_empty() {
                    fetch_events(state, origin, room, version, &auth_events, fetched).await;
                    receive(state, origin, version, ev, None).await
                } else {
                    // The event's own unknown auth events are fetched with the gap's state
                    // and auth chain, in one bulk pass (they are usually part of it).
                    match state_at_gap(
                        state,
                        origin,
                        room,
                        version,
                        &event_id,
                        &prev_events,
                        &auth_events,
                        fetched,
                    )
                    .await
                    {
                        Ok(ids) => {
                            match receive(state, origin, version, ev.clone(), Some(ids.clone()))
                                .await
                            {
                                // Auth events outside the reported auth chain: by id.
                                Ok(rooms::Received::NeedsMissingEvents { auth_events, .. })
                                    if !auth_events.is_empty() =>
                                {
                                    fetch_events(
                                        state,
                                        origin,
                                        room,
                                        version,
                                        &auth_events,
                                        fetched,
                                    )
                                    .await;
                                    receive(state, origin, version, ev, Some(ids)).await
                                }
                                r => r,
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
            }
            r => r,
        };
        match result {
            Ok(rooms::Received::Accepted { .. } | rooms::Received::SoftFailed { .. }) => {}
            Ok(other) => {
                tracing::info!(%origin, event_id = %other.event_id(), "missing event not accepted: {other:?}")
            }
            Err(e) => tracing::info!(%origin, "missing event not accepted: {e}"),
        }
    }
}

/// The PDUs of an answer's `events` (or `pdus`) array that parse as canonical JSON (no
/// floats, integers in range) and belong to `room`, at most `limit`. One bad event does
/// not spoil the others.
fn usable_events(resp: &Value, room: &RoomId, limit: usize) -> Vec<CanonicalJsonObject> {
    let Some(list) = resp
        .get("events")
        .or_else(|| resp.get("pdus"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in list.iter().take(limit) {
        match serde_json::from_value::<CanonicalJsonObject>(e.clone()) {
            Ok(pdu) if in_room(&pdu, room) => out.push(pdu),
            Ok(_) => tracing::info!(%room, "left out an event of another room"),
            Err(err) => {
                tracing::info!(%room, "left out an event that is not canonical JSON: {err}")
            }
        }
    }
    out
}

fn known(state: &FederationState, id: &OwnedEventId) -> bool {
    state.rooms.has_event(id).unwrap_or(false)
}

/// `GET /event/{id}` from `origin`: the PDU, if it is one of `room`'s.
async fn fetch_one(
    state: &FederationState,
    origin: &ServerName,
    room: &RoomId,
    id: OwnedEventId,
) -> Option<CanonicalJsonObject> {
    let path = format!("/_matrix/federation/v1/event/{}", seg(id.as_str()));
    match federation_get(state, origin, &path, None).await {
        Ok(body) => {
            let pdu = usable_events(&body, room, 1).pop();
            if pdu.is_none() {
                tracing::info!(%origin, "/event/{id} gave no PDU of {room}");
            }
            pdu
        }
        Err(e) => {
            tracing::info!(%origin, "cannot fetch {id}: {e}");
            None
        }
    }
}

/// Fetch the unknown events of `ids` with `/event/{id}` ([`FETCH_CONCURRENCY`] at a
/// time) and store them as outliers, by depth (auth events before what they authorise).
/// An event whose own auth events are unknown has them fetched in the next round, then is
/// stored (at most [`MAX_AUTH_ROUNDS`] rounds). At most [`MAX_FETCHED_EVENTS`] requests
/// per pushed PDU over all calls (`fetched` counts them). An event the origin cannot
/// supply stays unknown, and so do the events it authorises.
async fn fetch_events(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    ids: &[OwnedEventId],
    fetched: &mut usize,
) {
    use futures::StreamExt;
    let mut asked: HashSet<OwnedEventId> = HashSet::new();
    let mut want: Vec<OwnedEventId> = ids.to_vec();
    let mut pending: Vec<CanonicalJsonObject> = Vec::new();
    for _ in 0..MAX_AUTH_ROUNDS {
        want.retain(|id| !known(state, id) && asked.insert(id.clone()));
        let room_left = MAX_FETCHED_EVENTS.saturating_sub(*fetched);
        if want.len() > room_left {
            tracing::info!(%origin, %room, wanted = want.len(), "fetch budget spent; fetching {room_left}");
            want.truncate(room_left);
        }
        *fetched += want.len();
        let got: Vec<Option<CanonicalJsonObject>> = futures::stream::iter(
            std::mem::take(&mut want)
                .into_iter()
                .map(|id| fetch_one(state, origin, room, id)),
        )
        .buffer_unordered(FETCH_CONCURRENCY)
        .collect()
        .await;
        pending.extend(got.into_iter().flatten());
        pending.sort_by_key(depth);
        let mut waiting = Vec::new();
        for ev in std::mem::take(&mut pending) {
            match outlier(state, version, ev.clone()).await {
                Ok(rooms::Received::NeedsMissingEvents { auth_events, .. }) => {
                    // Fetched this round, or stored earlier in this pass: retried next round.
                    want.extend(auth_events.into_iter().filter(|a| !asked.contains(a)));
                    waiting.push(ev);
                }
                Ok(rooms::Received::Rejected { event_id, reason }) => {
                    tracing::info!(%origin, %event_id, "fetched event rejected: {reason}")
                }
                Ok(_) => {}
                Err(e) => tracing::info!(%origin, "fetched event not stored: {e}"),
            }
        }
        pending = waiting;
        if pending.is_empty() {
            return;
        }
        if want.is_empty() {
            // Nothing new to ask for: one more pass may store what waited on an event
            // stored later in the same pass; beyond that the chain is broken.
            let mut progress = true;
            while progress && !pending.is_empty() {
                progress = false;
                let mut still = Vec::new();
                for ev in std::mem::take(&mut pending) {
                    match outlier(state, version, ev.clone()).await {
                        Ok(rooms::Received::NeedsMissingEvents { .. }) => still.push(ev),
                        _ => progress = true,
                    }
                }
                pending = still;
            }
            if !pending.is_empty() {
                tracing::info!(%origin, %room, events = pending.len(), "fetched events not stored: their auth events are unavailable");
            }
            return;
        }
    }
}

/// The state just before `event_id` (an event `/get_missing_events` gave us whose
/// `missing_prevs` we do not have), as event ids for
/// [`rooms::RoomService::receive_pdu_after_gap`]. With one missing prev event `P` (the
/// usual case): `GET /state_ids?event_id=P` (the state before `P`) plus `P` itself — the
/// state after it, as Synapse computes it; with several, `/state_ids` at the event itself
/// (the origin's resolution of them). The unknown state and auth-chain events, and the
/// event's own `missing_auth`, are fetched
/// ([`fetch_events`]: by id, only what we do not hold, in parallel, within the budget).
#[allow(clippy::too_many_arguments)] // the pass's context, as its siblings take it
async fn state_at_gap(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    version: &RoomVersionId,
    event_id: &OwnedEventId,
    missing_prevs: &[OwnedEventId],
    missing_auth: &[OwnedEventId],
    fetched: &mut usize,
) -> Result<Vec<OwnedEventId>, String> {
    let single = match missing_prevs {
        [p] => Some(p.clone()),
        _ => None,
    };
    let at = single.as_ref().unwrap_or(event_id);
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        seg(room.as_str()),
        seg(at.as_str())
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
    let mut pdu_ids = list("pdu_ids");
    let auth_ids = list("auth_chain_ids");
    let mut unknown: Vec<OwnedEventId> = auth_ids
        .iter()
        .chain(pdu_ids.iter())
        .chain(single.iter())
        .chain(missing_auth.iter())
        .filter(|id| !known(state, id))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    if unknown.len() + *fetched > MAX_FETCHED_EVENTS {
        return Err(format!(
            "prev_events are unknown and the state at the gap needs {} more events (limit {MAX_FETCHED_EVENTS})",
            unknown.len()
        ));
    }
    fetch_events(state, origin, room, version, &unknown, fetched).await;
    if let Some(p) = single {
        // The state after P: P in its own place if it is a state event.
        let prev = state
            .rooms
            .pdu_for_federation(&p)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the missing prev event {p} could not be fetched"))?;
        if prev.state_key().is_some() {
            pdu_ids.push(p);
        }
    }
    Ok(pdu_ids)
}

/// The `state_key` user of an `m.room.member` PDU.
fn member_target(pdu: &CanonicalJsonObject) -> Option<OwnedUserId> {
    if str_field(pdu, "type") != Some("m.room.member") {
        return None;
    }
    str_field(pdu, "state_key").and_then(|k| OwnedUserId::try_from(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event with a float (not canonical JSON) or of another room does not spoil an
    /// answer: the others are used (TestOutboundFederationIgnoresMissingEventWithBadJSON…).
    #[test]
    fn usable_events_keep_the_good_ones() {
        let room: ruma::OwnedRoomId = "!r:a.test".try_into().unwrap();
        let ev = |room: &str, extra: Value| {
            let mut v = json!({
                "room_id": room, "type": "m.room.message", "sender": "@c:a.test",
                "depth": 3, "content": {"body": "x"},
            });
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                for (k, x) in e {
                    o.insert(k.clone(), x.clone());
                }
            }
            v
        };
        let answer = json!({ "events": [
            ev("!r:a.test", json!({"content": {"body": "bad", "bad_val": 1.1}})),
            ev("!r:a.test", json!({"depth": 4})),
            ev("!other:a.test", json!({})),
            ev("!r:a.test", json!({"depth": 5})),
        ]});
        let got = usable_events(&answer, &room, 10);
        assert_eq!(got.iter().map(depth).collect::<Vec<_>>(), vec![4, 5]);
        // The limit counts the answer's entries, good or bad.
        assert_eq!(usable_events(&answer, &room, 2).len(), 1);
        // `/event` answers say `pdus`.
        let one = json!({ "pdus": [ev("!r:a.test", json!({}))] });
        assert_eq!(usable_events(&one, &room, 1).len(), 1);
        assert!(usable_events(&json!({}), &room, 10).is_empty());
    }
}
