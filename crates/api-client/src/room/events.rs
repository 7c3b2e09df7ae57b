//! Sending (`send`, `state`, `redact`) and reading (`state`, `members`,
//! `joined_members`, `messages`, `event`, `context`).
use crate::ignored::Ignored;
use std::collections::BTreeSet;
use std::sync::Arc;

use accounts::{RoomEventFilter, RoomEventFilterExt};
use axum::routing::{get, put};
use axum::{Json, Router};
use rooms::{RoomAccess, RoomService, StoredEvent};
use ruma::{OwnedEventId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{PageToken, blocking, hide_unknown, parse_room_id, parse_token, route, wake};
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query};
use crate::{AppState, AppStateRef, now_ms};
use rooms::TopoPos;

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let r = route(r, "/rooms/{room_id}/send/{event_type}/{txn_id}", put(send));
    let r = route(
        r,
        "/rooms/{room_id}/state/{event_type}/{state_key}",
        get(get_state_event).put(put_state),
    );
    let r = route(
        r,
        "/rooms/{room_id}/state/{event_type}",
        get(get_state_event_empty).put(put_state_empty),
    );
    let r = route(r, "/rooms/{room_id}/state", get(get_state));
    let r = route(
        r,
        "/rooms/{room_id}/redact/{event_id}/{txn_id}",
        put(redact),
    );
    let r = route(r, "/rooms/{room_id}/members", get(members));
    let r = route(r, "/rooms/{room_id}/joined_members", get(joined_members));
    let r = route(r, "/rooms/{room_id}/messages", get(messages));
    let r = route(r, "/rooms/{room_id}/event/{event_id}", get(get_event));
    route(r, "/rooms/{room_id}/context/{event_id}", get(context))
}

// ---------------------------------------------------------------------------------------
// Writes

async fn send(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let (user, device, r) = (auth.user_id.clone(), auth.device_id.clone(), room.clone());
    let sent = blocking(&state, move |rooms| {
        rooms.send_message_event(
            &user,
            &r,
            &event_type,
            Value::Object(content),
            Some((&device, &txn_id)),
        )
    })
    .await
    .map_err(hide_unknown)?;
    wake(&state, &room, sent.pos, &[]).await;
    // Sending a message is activity: it keeps the sender online and `currently_active`.
    state
        .presence
        .activity(&auth.user_id, auth.device_id.as_str());
    Ok(Json(json!({ "event_id": sent.event_id })))
}

async fn do_put_state(
    state: Arc<AppState>,
    auth: Auth,
    room_id: String,
    event_type: String,
    state_key: String,
    content: Map<String, Value>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let (user, r) = (auth.user_id.clone(), room.clone());
    let target = if event_type == "m.room.member" {
        UserId::parse(&state_key).ok()
    } else {
        None
    };
    let sent = blocking(&state, move |rooms| {
        rooms.send_state_event(&user, &r, &event_type, &state_key, Value::Object(content))
    })
    .await
    .map_err(hide_unknown)?;
    let extra: Vec<&UserId> = target.iter().map(|u| &**u).collect();
    wake(&state, &room, sent.pos, &extra).await;
    Ok(Json(json!({ "event_id": sent.event_id })))
}

async fn put_state(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    do_put_state(state.0, auth, room_id, event_type, state_key, content).await
}

async fn put_state_empty(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_type)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    do_put_state(state.0, auth, room_id, event_type, String::new(), content).await
}

#[derive(Deserialize)]
struct RedactBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn redact(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let target = OwnedEventId::try_from(event_id.as_str())
        .map_err(|_| MatrixError::invalid_param(format!("Invalid event ID {event_id:?}")))?;
    let (user, device, r) = (auth.user_id.clone(), auth.device_id.clone(), room.clone());
    let sent = blocking(&state, move |rooms| {
        rooms.redact(
            &user,
            &r,
            &target,
            body.reason.as_deref(),
            Some((&device, &txn_id)),
        )
    })
    .await
    .map_err(hide_unknown)?;
    wake(&state, &room, sent.pos, &[]).await;
    Ok(Json(json!({ "event_id": sent.event_id })))
}

// ---------------------------------------------------------------------------------------
// Reads

/// Who may read what: 403 for users without access (and for unknown rooms).
fn access(rooms: &RoomService, room: &RoomId, user: &UserId) -> ApiResult<RoomAccess> {
    match rooms.room_access(room, user).map_err(hide_unknown)? {
        RoomAccess::None => Err(MatrixError::forbidden(format!(
            "You are not allowed to read room {room}"
        ))),
        a => Ok(a),
    }
}

/// The newest stream position the user may read up to.
fn read_cap(access: &RoomAccess) -> u64 {
    match access {
        RoomAccess::Former { until_pos, .. } => *until_pos,
        _ => u64::MAX,
    }
}

/// The room state the user may see (current, or as of when they left), optionally as
/// of an earlier position.
fn visible_state(
    rooms: &RoomService,
    room: &RoomId,
    access: &RoomAccess,
    at: Option<u64>,
) -> ApiResult<rooms::StateMap> {
    let cap = read_cap(access);
    Ok(match at {
        Some(p) => rooms.state_at_position(room, p.min(cap))?,
        None if cap == u64::MAX => rooms.current_state(room)?,
        None => rooms.state_at_position(room, cap)?,
    })
}

#[derive(Deserialize, Default)]
struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn get_state_event(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    Query(q): Query<FormatQuery>,
) -> ApiResult<Json<Value>> {
    let state = state.0.clone();
    crate::blocking::blocking(move || {
        state_event(
            &state,
            &auth,
            &room_id,
            &event_type,
            &state_key,
            q.format.as_deref(),
        )
    })
    .await?
}

async fn get_state_event_empty(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_type)): Path<(String, String)>,
    Query(q): Query<FormatQuery>,
) -> ApiResult<Json<Value>> {
    let state = state.0.clone();
    crate::blocking::blocking(move || {
        state_event(
            &state,
            &auth,
            &room_id,
            &event_type,
            "",
            q.format.as_deref(),
        )
    })
    .await?
}

fn state_event(
    state: &AppState,
    auth: &Auth,
    room_id: &str,
    event_type: &str,
    state_key: &str,
    format: Option<&str>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(room_id)?;
    let rooms = &state.rooms;
    let access = access(rooms, &room, &auth.user_id)?;
    let map = visible_state(rooms, &room, &access, None)?;
    let id = map
        .get(&(event_type.to_owned(), state_key.to_owned()))
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    let ev = rooms
        .event(id)?
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    if format == Some("event") {
        return Ok(Json(ev.to_client_event(
            Some((&auth.user_id, &auth.device_id)),
            now_ms(),
        )));
    }
    Ok(Json(ev.content()))
}

fn state_events(rooms: &RoomService, map: &rooms::StateMap, auth: &Auth) -> ApiResult<Vec<Value>> {
    let now = now_ms();
    let mut out = Vec::with_capacity(map.len());
    for id in map.values() {
        if let Some(ev) = rooms.event(id)? {
            out.push(ev.to_client_event(Some((&auth.user_id, &auth.device_id)), now));
        }
    }
    Ok(out)
}

async fn get_state(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let state = state.0;
    let events = blocking(&state, move |rooms| {
        let run = || -> ApiResult<Vec<Value>> {
            let access = access(rooms, &room, &auth.user_id)?;
            let map = visible_state(rooms, &room, &access, None)?;
            state_events(rooms, &map, &auth)
        };
        Ok(run())
    })
    .await??;
    Ok(Json(Value::Array(events)))
}

#[derive(Deserialize, Default)]
struct MembersQuery {
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    membership: Option<String>,
    #[serde(default)]
    not_membership: Option<String>,
}

async fn members(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let at = match &q.at {
        Some(t) => {
            Some(parse_token(t).ok_or_else(|| MatrixError::invalid_param("Invalid 'at' token"))?)
        }
        None => None,
    };
    for m in [&q.membership, &q.not_membership].into_iter().flatten() {
        if rooms::Membership::parse(m).is_none() {
            return Err(MatrixError::invalid_param(format!(
                "Unknown membership {m:?}"
            )));
        }
    }
    let state = state.0;
    let chunk = blocking(&state, move |rooms| {
        Ok(member_chunk(rooms, &room, &auth, at, &q))
    })
    .await??;
    Ok(Json(json!({ "chunk": chunk })))
}

/// The member events of `/members`: current (or as of the user's leave), or at the `at`
/// position. As Synapse does, a past member list is only shown when the user may see the
/// room's last event at that position (history visibility), else 403: a new member of a
/// `joined`-visibility room cannot read who was there before them.
fn member_chunk(
    rooms: &RoomService,
    room: &RoomId,
    auth: &Auth,
    at: Option<u64>,
    q: &MembersQuery,
) -> ApiResult<Vec<Value>> {
    let access = access(rooms, room, &auth.user_id)?;
    let mut map = visible_state(rooms, room, &access, at)?;
    if let Some(at) = at {
        let at = at.min(read_cap(&access));
        let last = match rooms.timeline(room, None, at, 1)?.0.pop() {
            Some(ev) => Some(ev),
            // A token from before anyone joined (e.g. the `prev_batch` of a timeline that
            // starts at `m.room.create`): answer with the room's first membership, the
            // creator's join, rather than an empty list.
            None => rooms.paginate(room, 0, None, false, 2)?.into_iter().nth(1),
        };
        if let Some(last) = last {
            if !rooms.visible_to(&auth.user_id, &last)? {
                return Err(MatrixError::forbidden(format!(
                    "You may not see the members of room {room} at that point"
                )));
            }
            if !map.keys().any(|(t, _)| t == "m.room.member") {
                map = rooms.state_after(&last)?;
            }
        }
    }
    let now = now_ms();
    let mut chunk = Vec::new();
    for ((t, _), id) in &map {
        if t != "m.room.member" {
            continue;
        }
        let Some(ev) = rooms.event(id)? else { continue };
        let m = ev.membership().map(|m| m.as_str()).unwrap_or_default();
        if q.membership.as_deref().is_some_and(|want| want != m)
            || q.not_membership.as_deref() == Some(m)
        {
            continue;
        }
        chunk.push(ev.to_client_event(Some((&auth.user_id, &auth.device_id)), now));
    }
    Ok(chunk)
}

async fn joined_members(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let state = state.0;
    let joined = blocking(&state, move |rooms| Ok(joined_map(rooms, &room, &auth))).await??;
    Ok(Json(json!({ "joined": joined })))
}

fn joined_map(rooms: &RoomService, room: &RoomId, auth: &Auth) -> ApiResult<Map<String, Value>> {
    if access(rooms, room, &auth.user_id)? != RoomAccess::Joined {
        return Err(MatrixError::forbidden(format!(
            "You are not in room {room}"
        )));
    }
    let mut joined = Map::new();
    for (user_key, id) in rooms.current_state_of_type(room, "m.room.member")? {
        let Some(ev) = rooms.event(&id)? else {
            continue;
        };
        if ev.membership() != Some(rooms::Membership::Join) {
            continue;
        }
        let c = ev.content();
        joined.insert(
            user_key,
            json!({
                "display_name": c.get("displayname").cloned().unwrap_or(Value::Null),
                "avatar_url": c.get("avatar_url").cloned().unwrap_or(Value::Null),
            }),
        );
    }
    Ok(joined)
}

fn parse_filter(raw: Option<&str>) -> ApiResult<RoomEventFilter> {
    match raw {
        None | Some("") => Ok(RoomEventFilter::default()),
        Some(s) => accounts::filter::parse_room_event_filter_str(s)
            .map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}"))),
    }
}

fn passes(filter: &RoomEventFilter, room: &RoomId, ev: &StoredEvent) -> bool {
    let sender = UserId::parse(ev.sender()).ok();
    let url = ev.content_str("url").is_some();
    filter.matches(room, ev.kind(), sender.as_deref(), url)
}

/// Walk the room in topological order from `from` (see [`RoomService::paginate_topo`]),
/// keeping events that pass the filter, that the user may see and that are not past
/// `cap` (the stream position a former member's view ends at), up to `limit`. Returns
/// the events and the point to continue from, or `None` when nothing is left in range.
#[allow(clippy::too_many_arguments)]
fn walk(
    rooms: &RoomService,
    room: &RoomId,
    user: &UserId,
    filter: &RoomEventFilter,
    rel: &super::relations::RelFilter,
    ignored: &Ignored,
    from: TopoPos,
    to: Option<TopoPos>,
    cap: u64,
    backwards: bool,
    limit: usize,
) -> ApiResult<(Vec<StoredEvent>, Option<TopoPos>)> {
    const BATCH: usize = 100;
    const MAX_SCAN: usize = 5_000;
    let mut out = Vec::new();
    let mut cursor = from;
    let mut scanned = 0;
    if limit == 0 {
        return Ok((out, Some(cursor)));
    }
    loop {
        let batch = rooms.paginate_topo(room, cursor, to, backwards, BATCH)?;
        if batch.is_empty() {
            return Ok((out, None));
        }
        for ev in batch {
            cursor = if backwards {
                TopoPos::before(&ev)
            } else {
                TopoPos::after(&ev)
            };
            scanned += 1;
            if ev.pos <= cap
                && passes(filter, room, &ev)
                && rel.passes(&ev)
                && !ignored.hides(&ev)
                && rooms.visible_to(user, &ev)?
            {
                out.push(ev);
                if out.len() >= limit {
                    return Ok((out, Some(cursor)));
                }
            }
        }
        if scanned >= MAX_SCAN {
            return Ok((out, Some(cursor)));
        }
    }
}

/// With `lazy_load_members`: the member events of the senders of `events`.
fn lazy_members(
    rooms: &RoomService,
    room: &RoomId,
    events: &[&StoredEvent],
    auth: &Auth,
) -> ApiResult<Vec<Value>> {
    let senders: BTreeSet<&str> = events.iter().map(|e| e.sender()).collect();
    let now = now_ms();
    let mut out = Vec::new();
    for s in senders {
        if let Some(ev) = rooms.current_state_event(room, "m.room.member", s)? {
            out.push(ev.to_client_event(Some((&auth.user_id, &auth.device_id)), now));
        }
    }
    Ok(out)
}

fn client_events(
    rooms: &RoomService,
    events: &[StoredEvent],
    auth: &Auth,
) -> ApiResult<Vec<Value>> {
    let now = now_ms();
    events
        .iter()
        .map(|e| {
            rooms
                .client_event_for(e, &auth.user_id, Some(&auth.device_id), now)
                .map_err(MatrixError::from)
        })
        .collect()
}

#[derive(Deserialize, Default)]
struct MessagesQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    filter: Option<String>,
}

pub(super) fn parse_limit(raw: Option<&str>, default: usize) -> ApiResult<usize> {
    match raw {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<u64>()
            .map(|n| n.min(1000) as usize)
            .map_err(|_| MatrixError::invalid_param("limit must be a non-negative integer")),
    }
}

async fn messages(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let backwards = match q.dir.as_deref() {
        None | Some("b") => true,
        Some("f") => false,
        Some(d) => {
            return Err(MatrixError::invalid_param(format!(
                "dir must be 'b' or 'f', not {d:?}"
            )));
        }
    };
    let tok = |t: &Option<String>, name: &str| -> ApiResult<Option<PageToken>> {
        match t.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => PageToken::parse(s)
                .map(Some)
                .ok_or_else(|| MatrixError::invalid_param(format!("Invalid '{name}' token"))),
        }
    };
    let from = tok(&q.from, "from")?;
    let to = tok(&q.to, "to")?;
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let filter = parse_filter(q.filter.as_deref())?;
    let rel = super::relations::RelFilter::parse(q.filter.as_deref())?;
    let state = state.0;
    let auth2 = auth.clone();
    let st = state.clone();
    let body = blocking(&state, move |rooms| {
        let run = || -> ApiResult<Value> {
            let access = access(rooms, &room, &auth2.user_id)?;
            let mut cap = read_cap(&access);
            let start = match (&q.from, from) {
                (Some(given), Some(_)) => given.clone(),
                _ => String::new(),
            };
            let from = match from {
                // Backwards from a stream token (sync's `prev_batch`): the events that
                // arrived at or before it, newest in DAG order first (Synapse's
                // semantics); the `end` token of the page is topological again.
                Some(PageToken::Stream(pos)) if backwards => {
                    cap = cap.min(pos);
                    TopoPos::MAX
                }
                Some(t) => t.resolve(rooms, &room)?,
                None if backwards => rooms.topo_at_stream(&room, rooms.current_position())?,
                None => TopoPos::MIN,
            };
            let to = match to {
                Some(t) => Some(t.resolve(rooms, &room)?),
                None => None,
            };
            let ignored = Ignored::load(&st.accounts, &auth2.user_id)?;
            let (events, next) = walk(
                rooms,
                &room,
                &auth2.user_id,
                &filter,
                &rel,
                &ignored,
                from,
                to,
                cap,
                backwards,
                limit,
            )?;
            let mut chunk = client_events(rooms, &events, &auth2)?;
            let refs: Vec<&StoredEvent> = events.iter().collect();
            super::relations::bundle_events(&st, &refs, &auth2.user_id, &mut chunk)?;
            let mut body = json!({
                "chunk": chunk,
                "start": if start.is_empty() { from.to_token() } else { start },
            });
            if let Some(n) = next {
                body["end"] = Value::from(n.to_token());
            }
            if filter.lazy_load_members() {
                let refs: Vec<&StoredEvent> = events.iter().collect();
                body["state"] = Value::Array(lazy_members(rooms, &room, &refs, &auth2)?);
            }
            Ok(body)
        };
        Ok(run())
    })
    .await??;
    Ok(Json(body))
}

async fn get_event(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let state = state.0;
    let st = state.clone();
    let body = blocking(&state, move |rooms| {
        let run = || -> ApiResult<Value> {
            let ev = visible_event(rooms, &room, &auth.user_id, &event_id)?;
            if Ignored::load(&st.accounts, &auth.user_id)?.hides(&ev) {
                return Err(MatrixError::not_found("Event not found"));
            }
            let mut v =
                [rooms.client_event_for(&ev, &auth.user_id, Some(&auth.device_id), now_ms())?];
            super::relations::bundle_events(&st, &[&ev], &auth.user_id, &mut v)?;
            let [v] = v;
            Ok(v)
        };
        Ok(run())
    })
    .await??;
    Ok(Json(body))
}

/// An event of `room` the user may see, else 404 (also in rooms the user cannot read, as
/// Synapse does, so the event's existence is not revealed).
fn visible_event(
    rooms: &RoomService,
    room: &RoomId,
    user: &UserId,
    event_id: &str,
) -> ApiResult<StoredEvent> {
    let not_found = || MatrixError::not_found("Event not found");
    let access = match rooms.room_access(room, user) {
        Ok(RoomAccess::None) | Err(rooms::RoomError::UnknownRoom(_)) => return Err(not_found()),
        Ok(a) => a,
        Err(e) => return Err(e.into()),
    };
    let id = OwnedEventId::try_from(event_id).map_err(|_| not_found())?;
    let ev = rooms.event(&id)?.ok_or_else(not_found)?;
    if ev.room_id() != room.as_str()
        || ev.pos > read_cap(&access)
        || !rooms.visible_to(user, &ev)?
    {
        return Err(not_found());
    }
    Ok(ev)
}

#[derive(Deserialize, Default)]
struct ContextQuery {
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    filter: Option<String>,
}

async fn context(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let filter = parse_filter(q.filter.as_deref())?;
    let rel = super::relations::RelFilter::parse(q.filter.as_deref())?;
    let state = state.0;
    let st = state.clone();
    let body = blocking(&state, move |rooms| {
        let run = || -> ApiResult<Value> {
            let ignored = Ignored::load(&st.accounts, &auth.user_id)?;
            let ev = visible_event(rooms, &room, &auth.user_id, &event_id)?;
            if ignored.hides(&ev) {
                return Err(MatrixError::not_found("Event not found"));
            }
            let cap = read_cap(&access(rooms, &room, &auth.user_id)?);
            let before_limit = limit / 2;
            let after_limit = limit - before_limit;
            let (before, _) = walk(
                rooms,
                &room,
                &auth.user_id,
                &filter,
                &rel,
                &ignored,
                TopoPos::before(&ev),
                None,
                cap,
                true,
                before_limit,
            )?;
            let (after, _) = walk(
                rooms,
                &room,
                &auth.user_id,
                &filter,
                &rel,
                &ignored,
                TopoPos::after(&ev),
                None,
                cap,
                false,
                after_limit,
            )?;
            let start = TopoPos::before(before.last().unwrap_or(&ev));
            let end = TopoPos::after(after.last().unwrap_or(&ev));
            let last = after.last().unwrap_or(&ev);
            let state_map = rooms.state_after(last)?;
            let state_events = if filter.lazy_load_members() {
                let mut all: Vec<&StoredEvent> = before.iter().chain(after.iter()).collect();
                all.push(&ev);
                lazy_members(rooms, &room, &all, &auth)?
            } else {
                state_events(rooms, &state_map, &auth)?
            };
            let now = now_ms();
            let mut event =
                [rooms.client_event_for(&ev, &auth.user_id, Some(&auth.device_id), now)?];
            super::relations::bundle_events(&st, &[&ev], &auth.user_id, &mut event)?;
            let [event] = event;
            let mut events_before = client_events(rooms, &before, &auth)?;
            let refs: Vec<&StoredEvent> = before.iter().collect();
            super::relations::bundle_events(&st, &refs, &auth.user_id, &mut events_before)?;
            let mut events_after = client_events(rooms, &after, &auth)?;
            let refs: Vec<&StoredEvent> = after.iter().collect();
            super::relations::bundle_events(&st, &refs, &auth.user_id, &mut events_after)?;
            Ok(json!({
                "event": event,
                "events_before": events_before,
                "events_after": events_after,
                "start": start.to_token(),
                "end": end.to_token(),
                "state": state_events,
            }))
        };
        Ok(run())
    })
    .await??;
    Ok(Json(body))
}
