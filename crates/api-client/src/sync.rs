//! `GET /sync`: initial and incremental sync with long-polling.
//!
//! A sync token is `s<position>`: everything up to that stream position has been
//! delivered. An incremental sync returns what changed in `(since, now]` for the
//! caller — timeline events of their rooms, membership changes (invites, joins,
//! leaves), account data, typing and receipts (`ephemeral`, see `crate::ephemeral`) —
//! or, when nothing did, waits on the [`SyncNotifier`] until a writer wakes this user
//! or the timeout passes. The notifier subscription is taken
//! *before* the response is built, so a change that lands while building is never
//! missed. A token always advances or the request waits: no client tight loops.
//!
//! [`SyncNotifier`]: crate::notifier::SyncNotifier
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use accounts::filter::{
    EventFilterExt, Filter, RoomEventFilter, RoomEventFilterExt, RoomFilterExt,
};
use axum::routing::get;
use axum::{Json, Router};
use ruma::{OwnedEventId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Query};
use crate::{AppState, AppStateRef, now_ms};

/// Timeline events per room when the filter does not say.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Upper bound on a filter's timeline limit.
const MAX_TIMELINE_LIMIT: usize = 500;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_matrix/client/v3/sync", get(sync))
        .route("/_matrix/client/r0/sync", get(sync))
}

#[derive(Debug, Deserialize)]
struct SyncParams {
    since: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    filter: Option<String>,
    #[serde(default)]
    full_state: Option<bool>,
    set_presence: Option<String>,
}

/// Format a stream position as a sync token.
pub fn token(pos: u64) -> String {
    format!("s{pos}")
}

/// Parse a sync token (`s<pos>`); also accepts a bare number.
pub fn parse_token(t: &str) -> Option<u64> {
    t.strip_prefix('s').unwrap_or(t).parse().ok()
}

async fn sync(
    auth: Auth,
    state: AppStateRef,
    Query(params): Query<SyncParams>,
) -> ApiResult<Json<Value>> {
    let state = state.0;
    let set_presence = match params.set_presence.as_deref() {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<presence_core::PresenceState>()
                .ok()
                .and_then(|s| presence_core::DeviceState::try_from(s).ok())
                .ok_or_else(|| {
                    MatrixError::invalid_param(format!("Unknown set_presence value {p:?}"))
                })?,
        ),
    };
    let filter = load_filter(&state, &auth.user_id, params.filter.as_deref())?;
    let since = match params.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => Some(
            parse_token(t)
                .ok_or_else(|| MatrixError::invalid_param(format!("Invalid since token {t:?}")))?,
        ),
    };
    let full_state = params.full_state.unwrap_or(false);
    let timeout = Duration::from_millis(
        params
            .timeout
            .unwrap_or(0)
            .min(state.config.max_sync_timeout_ms),
    );
    let deadline = tokio::time::Instant::now() + timeout;

    // The device counts as connected for as long as this request runs, however it ends
    // (the guard's drop ends the sync, also when the client disconnects mid-poll).
    let _presence =
        state
            .presence
            .sync_started(&auth.user_id, auth.device_id.as_str(), set_presence);
    let mut wake = state
        .notifier
        .subscribe(&auth.user_id, || state.rooms.current_position());
    // A long-poll from a token that nothing concerning this user happened after (a client's
    // next request after a response, the usual case) waits first: building the response now
    // would only find it empty. It is built once woken, or at the deadline.
    if let Some(s) = since
        && !full_state
        && !timeout.is_zero()
        && crate::notifier::SyncNotifier::nothing_since(&wake, s)
    {
        let _ = tokio::time::timeout_at(deadline, wake.changed()).await;
    }
    let (filter, auth) = (Arc::new(filter), Arc::new(auth));
    loop {
        // The build reads storage throughout: on the blocking pool, unless it is a short
        // incremental one ([`builds_inline`]).
        let (st, f, a) = (state.clone(), filter.clone(), auth.clone());
        let build = move || -> ApiResult<(u64, SyncBody)> {
            // ---- push (crate::push): m.push_rules is stored before a first sync reads it
            // (and before `now`, so the write is not sent again by the next sync) ----
            if since.is_none() {
                crate::push::sync_ensure_rules(&st, &a.user_id)?;
            }
            // ---- end push ----
            let now = st.rooms.current_position();
            // A token from the future (e.g. a wiped database) is treated as "now".
            let since = since.map(|s| s.min(now));
            Ok((now, build_response(&st, &a, &f, since, now, full_state)?))
        };
        let (now, body) = if builds_inline(&state, &auth.user_id, since, full_state) {
            // A panic is a 500, as it is on the blocking pool.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(build))
                .map_err(|_| MatrixError::internal("the sync build panicked"))??
        } else {
            blocking(build).await??
        };
        let give_up = since.is_none() || full_state || tokio::time::Instant::now() >= deadline;
        if body.has_content || give_up {
            return Ok(Json(body.into_json(now)));
        }
        match tokio::time::timeout_at(deadline, wake.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the notifier went away at shutdown): return the empty response.
            _ => return Ok(Json(body.into_json(now))),
        }
    }
}

/// Incremental syncs over at most this many stream positions ...
const INLINE_MAX_WINDOW: u64 = 64;
/// ... of users in at most this many joined rooms build on the async worker.
const INLINE_MAX_ROOMS: usize = 32;

/// Whether this build runs inline on the async worker instead of the blocking pool. A short
/// incremental build of a user in few rooms reads a few dozen keys, from RocksDB's memtable
/// and block cache (the window is seconds old); handing it to the blocking pool and back
/// costs more than the reads — two thread wake-ups and context switches per build, which a
/// long-poll woken by every presence change of a room-mate pays each time. Initial syncs,
/// `full_state`, old tokens and users in many rooms still go to the pool.
fn builds_inline(state: &AppState, user: &UserId, since: Option<u64>, full_state: bool) -> bool {
    let Some(since) = since else {
        return false;
    };
    !full_state
        && state.rooms.current_position().saturating_sub(since) <= INLINE_MAX_WINDOW
        && state
            .presence
            .joined_room_count_up_to(user, INLINE_MAX_ROOMS + 1)
            <= INLINE_MAX_ROOMS
}

fn load_filter(state: &AppState, user: &UserId, param: Option<&str>) -> ApiResult<Filter> {
    let Some(param) = param.filter(|p| !p.is_empty()) else {
        return Ok(Filter::default());
    };
    if param.trim_start().starts_with('{') {
        return accounts::filter::parse_filter_str(param)
            .map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}")));
    }
    state
        .accounts
        .filter(user, param)
        .map_err(MatrixError::internal)?
        .ok_or_else(|| MatrixError::not_found(format!("Unknown filter {param:?}")))
}

struct SyncBody {
    has_content: bool,
    join: Map<String, Value>,
    invite: Map<String, Value>,
    leave: Map<String, Value>,
    knock: Map<String, Value>,
    account_data: Vec<Value>,
    presence: Vec<Value>,
    /// to_device, device_lists, key counts (`crate::sync_e2ee`).
    e2ee: crate::sync_e2ee::E2eeSync,
}

impl SyncBody {
    fn into_json(self, now: u64) -> Value {
        let mut body = json!({
            "next_batch": token(now),
            "rooms": { "join": self.join, "invite": self.invite, "leave": self.leave, "knock": self.knock },
            "account_data": { "events": self.account_data },
            "presence": { "events": self.presence },
        });
        self.e2ee.write_into(&mut body);
        body
    }
}

fn room_err(e: rooms::RoomError) -> MatrixError {
    e.into()
}

fn build_response(
    state: &AppState,
    auth: &Auth,
    filter: &Filter,
    since: Option<u64>,
    now: u64,
    full_state: bool,
) -> ApiResult<SyncBody> {
    let user = &auth.user_id;
    let now_ts = now_ms();
    let mut body = SyncBody {
        has_content: false,
        join: Map::new(),
        invite: Map::new(),
        leave: Map::new(),
        knock: Map::new(),
        account_data: Vec::new(),
        presence: Vec::new(),
        e2ee: Default::default(),
    };

    // Account data: global goes to the top level, per-room into each joined room.
    let changes = match since {
        None => state
            .accounts
            .all_account_data(user)
            .map_err(MatrixError::internal)?,
        Some(s) => state
            .accounts
            .account_data_since(user, s, now)
            .map_err(MatrixError::internal)?,
    };
    let mut room_account_data: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for c in changes {
        let ev = json!({ "type": c.event_type, "content": c.content });
        match c.room_id {
            None => {
                if filter.account_data.matches(&c.event_type, None) {
                    body.account_data.push(ev);
                }
            }
            Some(room) => room_account_data
                .entry(room.to_string())
                .or_default()
                .push(ev),
        }
    }

    // Users whose presence this viewer must be shown because they newly share a room:
    // every member of a room the viewer joined since `since`, and everyone whose join
    // appears in an incremental timeline.
    let mut newly_shared: HashSet<ruma::OwnedUserId> = HashSet::new();
    let room_filter = &filter.room;
    // `limit: 0` is honoured (no timeline events at all: clients use it to fetch state
    // only); absent means the default.
    let timeline_limit = room_filter
        .timeline
        .limit_u64()
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| {
            (l as usize).min(MAX_TIMELINE_LIMIT)
        });
    let my_rooms = state
        .rooms
        .rooms_for_user_with_forgotten(user)
        .map_err(room_err)?;
    // The rooms with new timeline events since the token (one range read): a joined room
    // outside it has no timeline section to build. `None` (an initial sync, `full_state`,
    // or a gap too long to read in one go) looks at every room.
    let changed_rooms = match since {
        Some(s) if !full_state => state
            .rooms
            .rooms_changed_between(s, now, max_stream_read(my_rooms.len()))
            .map_err(room_err)?,
        _ => None,
    };
    for ur in my_rooms {
        let room_id = &ur.room_id;
        if !room_filter.matches_room(room_id) {
            continue;
        }
        // A forgotten room is gone from the user's view, except that a leave which
        // happened after `since` is still reported once.
        if ur.forgotten && since.is_none_or(|s| ur.pos <= s) {
            continue;
        }
        let changed_since_token = since.is_none_or(|s| ur.pos > s);
        match ur.membership {
            rooms::Membership::Join => {
                let newly_joined = changed_since_token;
                if newly_joined && since.is_some() {
                    newly_shared.extend(state.rooms.joined_members(room_id).map_err(room_err)?);
                }
                let after = if newly_joined { None } else { since };
                let unchanged =
                    !newly_joined && changed_rooms.as_ref().is_some_and(|c| !c.contains(room_id));
                // Unchanged: no events in `(since, now]`, so `joined_room` would find an
                // empty, unlimited timeline and return `None`.
                let section = if unchanged {
                    None
                } else {
                    joined_room(
                        state,
                        auth,
                        room_id,
                        after,
                        now,
                        timeline_limit,
                        newly_joined || full_state,
                        &room_filter.timeline,
                        &room_filter.state,
                        now_ts,
                    )?
                };
                let account_data = room_account_data
                    .remove(room_id.as_str())
                    .unwrap_or_default();
                let account_data: Vec<Value> = account_data
                    .into_iter()
                    .filter(|e| room_filter.account_data.matches_json(room_id, e))
                    .collect();
                if since.is_some()
                    && let Some(section) = &section
                {
                    collect_joins(section, &mut newly_shared);
                }
                // Typing and receipts: for a room joined since the token, as on an initial sync.
                let ephemeral = crate::ephemeral::room_ephemeral(
                    state,
                    user,
                    room_id,
                    after,
                    now,
                    &room_filter.ephemeral,
                )?;
                if let Some(mut section) = section.or_else(|| {
                    (!account_data.is_empty() || !ephemeral.is_empty()).then(empty_joined_room)
                }) {
                    section["summary"] = crate::room::sync_summary(
                        &state.rooms,
                        room_id,
                        user,
                        &section,
                        newly_joined || full_state,
                    )
                    .map_err(room_err)?;
                    section["account_data"] = json!({ "events": account_data });
                    section["ephemeral"] = json!({ "events": ephemeral });
                    body.join.insert(room_id.to_string(), section);
                }
            }
            rooms::Membership::Invite => {
                // Invites from users this one ignores are not shown (spec: ignoring users).
                if changed_since_token && !invited_by_ignored(state, user, &ur.event_id)? {
                    let events = state.rooms.invite_state(room_id, user).map_err(room_err)?;
                    body.invite.insert(
                        room_id.to_string(),
                        json!({ "invite_state": { "events": events } }),
                    );
                }
            }
            rooms::Membership::Leave | rooms::Membership::Ban => {
                // A leave is reported once, on the first sync after it; an initial sync
                // shows left rooms only when the filter asks for them.
                let report = match since {
                    Some(s) => ur.pos > s,
                    None => room_filter.include_leave,
                };
                if report {
                    let section = if state.rooms.room_exists(room_id).map_err(room_err)? {
                        left_room(
                            state,
                            auth,
                            room_id,
                            since,
                            ur.pos,
                            timeline_limit,
                            room_filter,
                            now_ts,
                        )?
                    } else {
                        left_remote_room(state, auth, &ur.event_id, now_ts)?
                    };
                    body.leave.insert(room_id.to_string(), section);
                }
            }
            rooms::Membership::Knock => {
                if changed_since_token {
                    let events = state.rooms.knock_state(room_id, user).map_err(room_err)?;
                    body.knock.insert(
                        room_id.to_string(),
                        json!({ "knock_state": { "events": events } }),
                    );
                }
            }
        }
    }
    // ---- push (crate::push): unread notification counts of the joined rooms sent ----
    let by_thread = room_filter.timeline.unread_thread_notifications;
    crate::push::sync_unread_counts(state, user, by_thread, &mut body.join, now)?;
    // ---- end push ----
    body.presence = presence_events(state, user, filter, since, now, newly_shared)?;
    // ---- end-to-end encryption (to_device, device_lists, key counts): crate::sync_e2ee ----
    body.e2ee = crate::sync_e2ee::build(state, auth, since, now)?;
    // ---- end of the e2ee block ----
    body.has_content = body.e2ee.has_content()
        || !body.join.is_empty()
        || !body.invite.is_empty()
        || !body.leave.is_empty()
        || !body.knock.is_empty()
        || !body.account_data.is_empty()
        || !body.presence.is_empty();
    Ok(body)
}

/// Whether the invite `event_id` was sent by a user on `user`'s `m.ignored_user_list`.
fn invited_by_ignored(
    state: &AppState,
    user: &UserId,
    event_id: &ruma::EventId,
) -> ApiResult<bool> {
    let ignored = crate::ignored::Ignored::of(state, user)?;
    let sender = state.rooms.event(event_id).map_err(room_err)?;
    Ok(sender.is_some_and(|ev| ignored.contains(ev.sender())))
}

/// How many stream entries an incremental sync reads to find the rooms that changed
/// before it builds each room instead: enough for a busy few seconds of a large account,
/// bounded so a stale token does not read the whole stream.
fn max_stream_read(rooms: usize) -> usize {
    rooms.saturating_mul(4).clamp(256, 10_000)
}

/// Sync's event format is the client format without `room_id`.
fn sync_format(mut ev: Value) -> Value {
    if let Some(o) = ev.as_object_mut() {
        o.remove("room_id");
    }
    ev
}

/// Senders of `m.room.member` join events in a room section's timeline.
fn collect_joins(section: &Value, into: &mut HashSet<ruma::OwnedUserId>) {
    let events = section["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten();
    for e in events {
        if e["type"] == "m.room.member"
            && e["content"]["membership"] == "join"
            && let Some(u) = e["state_key"]
                .as_str()
                .and_then(|k| ruma::OwnedUserId::try_from(k).ok())
        {
            into.insert(u);
        }
    }
}

/// The `presence` section: at most one (the current) `m.presence` event per user.
fn presence_events(
    state: &AppState,
    viewer: &UserId,
    filter: &Filter,
    since: Option<u64>,
    now: u64,
    newly_shared: HashSet<ruma::OwnedUserId>,
) -> ApiResult<Vec<Value>> {
    if filter.presence.excludes_all() {
        return Ok(Vec::new());
    }
    let mut events = match since {
        None => state.presence.initial_events(viewer),
        Some(s) => state.presence.events_since(viewer, s, now)?,
    };
    let mut seen: HashSet<String> = events
        .iter()
        .filter_map(|e| e["sender"].as_str().map(str::to_owned))
        .collect();
    for user in newly_shared {
        if user != viewer
            && !seen.contains(user.as_str())
            && state.presence.pushes_to(viewer, &user)
        {
            seen.insert(user.to_string());
            events.push(state.presence.event_for_viewer(viewer, &user));
        }
    }
    events.retain(|e| {
        let sender = e["sender"]
            .as_str()
            .and_then(|s| <&UserId>::try_from(s).ok());
        filter.presence.matches("m.presence", sender)
    });
    if let Some(limit) = filter.presence.limit_u64() {
        events.truncate(limit as usize);
    }
    Ok(events)
}

fn empty_joined_room() -> Value {
    json!({
        "timeline": { "events": [], "limited": false },
        "state": { "events": [] },
        "ephemeral": { "events": [] },
        "account_data": { "events": [] },
        "unread_notifications": { "highlight_count": 0, "notification_count": 0 },
        "summary": {},
    })
}

/// One joined room's section, or `None` when nothing changed in it.
#[allow(clippy::too_many_arguments)]
fn joined_room(
    state: &AppState,
    auth: &Auth,
    room_id: &RoomId,
    after: Option<u64>,
    now: u64,
    limit: usize,
    include_full_state: bool,
    timeline_filter: &RoomEventFilter,
    state_filter: &RoomEventFilter,
    now_ts: u64,
) -> ApiResult<Option<Value>> {
    let (events, limited) = filtered_timeline(
        state,
        &auth.user_id,
        room_id,
        after,
        now,
        limit,
        timeline_filter,
    )?;
    // `limited` with no events: something happened in the range that the limit (`0`)
    // or filter left out; the section still carries the state that changed.
    if events.is_empty() && !limited && !include_full_state {
        return Ok(None);
    }
    let section = room_section(
        state,
        auth,
        room_id,
        after,
        now,
        &events,
        limited,
        include_full_state,
        state_filter,
        now_ts,
    )?;
    Ok(Some(section))
}

#[allow(clippy::too_many_arguments)]
fn left_room(
    state: &AppState,
    auth: &Auth,
    room_id: &RoomId,
    since: Option<u64>,
    leave_pos: u64,
    limit: usize,
    room_filter: &accounts::filter::RoomFilter,
    now_ts: u64,
) -> ApiResult<Value> {
    // The timeline stops at the leave event: nothing after it is visible.
    let (events, limited) = filtered_timeline(
        state,
        &auth.user_id,
        room_id,
        since,
        leave_pos,
        limit,
        &room_filter.timeline,
    )?;
    let mut section = room_section(
        state,
        auth,
        room_id,
        since,
        leave_pos,
        &events,
        limited,
        since.is_none(),
        &room_filter.state,
        now_ts,
    )?;
    if let Some(obj) = section.as_object_mut() {
        obj.remove("ephemeral");
        obj.remove("unread_notifications");
        obj.remove("summary");
    }
    Ok(section)
}

/// A left room this server has no state of (a rejected or rescinded remote invite): the
/// leave event, stored as an outlier, is the whole timeline.
fn left_remote_room(
    state: &AppState,
    auth: &Auth,
    leave: &ruma::EventId,
    now_ts: u64,
) -> ApiResult<Value> {
    let events: Vec<Value> = state
        .rooms
        .event(leave)
        .map_err(room_err)?
        .map(|ev| ev.to_client_event(Some((&auth.user_id, &auth.device_id)), now_ts))
        .into_iter()
        .collect();
    Ok(json!({
        "account_data": { "events": [] },
        "state": { "events": [] },
        "timeline": { "events": events, "limited": false },
    }))
}

/// Events scanned at most for one room's filtered timeline (a filter that matches almost
/// nothing must not walk a whole room's history in one sync).
const MAX_TIMELINE_SCAN: usize = 5_000;

/// The newest `limit` events of `room` in `(after, up_to]` that `viewer` may see (history
/// visibility), that are not ignored users' messages and that the timeline filter passes,
/// oldest first. All are applied *before* the
/// limit, so a timeline is only shorter than `limit` when the range holds fewer such
/// events. `limited` is true when the range holds events older than the oldest returned
/// one (with `limit` 0: when it holds any event).
fn filtered_timeline(
    state: &AppState,
    viewer: &UserId,
    room: &RoomId,
    after: Option<u64>,
    up_to: u64,
    limit: usize,
    filter: &RoomEventFilter,
) -> ApiResult<(Vec<rooms::StoredEvent>, bool)> {
    let mut kept: Vec<rooms::StoredEvent> = Vec::new(); // newest first
    // Applied with the filter, before the limit: ignored users' messages take no room.
    let ignored = crate::ignored::Ignored::of(state, viewer)?;
    let mut hi = up_to;
    let mut scanned = 0;
    loop {
        // First page: exactly what is wanted (the common, unfiltered case reads no more
        // than before); later pages grow, for filters that match few events.
        let want = limit - kept.len();
        let page = if scanned == 0 {
            want
        } else {
            want.saturating_mul(2).clamp(20, MAX_TIMELINE_SCAN)
        };
        let (events, more) = state
            .rooms
            .timeline(room, after, hi, if limit == 0 { 0 } else { page })
            .map_err(room_err)?;
        if limit == 0 {
            return Ok((Vec::new(), more));
        }
        scanned += events.len();
        let oldest = events.first().map(|e| e.pos);
        let n = events.len();
        let visible = state
            .rooms
            .filter_visible(viewer, events)
            .map_err(room_err)?;
        for ev in visible.into_iter().rev() {
            if kept.len() == limit {
                break;
            }
            if event_matches(filter, room, &ev) && !ignored.hides(&ev) {
                kept.push(ev);
            }
        }
        if kept.len() == limit {
            // Anything in the range older than the oldest kept event makes it limited.
            let oldest_kept = kept.last().map_or(0, |e| e.pos);
            let limited = more || oldest.is_some_and(|o| o < oldest_kept);
            kept.reverse();
            return Ok((kept, limited));
        }
        let Some(oldest) = oldest.filter(|_| more && n > 0) else {
            // The range is exhausted: still limited when it holds older events that the
            // filter or history visibility left out, so a client knows there is more before
            // the first event it got (Complement's "Newly joined room has correct timeline").
            let limited = match (kept.last(), oldest) {
                (Some(oldest_kept), Some(oldest)) => oldest < oldest_kept.pos,
                _ => false,
            };
            kept.reverse();
            return Ok((kept, limited));
        };
        if scanned >= MAX_TIMELINE_SCAN || oldest <= 1 {
            kept.reverse();
            return Ok((kept, true));
        }
        hi = oldest - 1;
    }
}

/// The timeline filter's verdict on a stored event (type, sender, `contains_url`, room).
fn event_matches(filter: &RoomEventFilter, room: &RoomId, ev: &rooms::StoredEvent) -> bool {
    let sender = <&UserId>::try_from(ev.sender()).ok();
    let contains_url =
        filter.url_filter.is_some() && ev.content().get("url").is_some_and(Value::is_string);
    filter.matches(room, ev.kind(), sender, contains_url)
}

/// Build `{timeline, state, ...}` for a room given its timeline slice.
#[allow(clippy::too_many_arguments)]
fn room_section(
    state: &AppState,
    auth: &Auth,
    room_id: &RoomId,
    after: Option<u64>,
    up_to: u64,
    events: &[rooms::StoredEvent],
    limited: bool,
    include_full_state: bool,
    state_filter: &RoomEventFilter,
    now_ts: u64,
) -> ApiResult<Value> {
    let user = &*auth.user_id;
    let device = Some(&*auth.device_id);
    // `events` already passed history visibility and the timeline filter.
    let mut timeline = Vec::with_capacity(events.len());
    for e in events {
        timeline.push(sync_format(
            state
                .rooms
                .client_event_for(e, user, device, now_ts)
                .map_err(room_err)?,
        ));
    }
    // Bundled aggregations (`unsigned.m.relations`: threads, edits, references).
    let refs: Vec<&rooms::StoredEvent> = events.iter().collect();
    crate::room::relations::bundle_events(state, &refs, user, &mut timeline)?;
    let timeline_ids: HashSet<&str> = timeline
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();

    // State before the first timeline event: in full when the client has none of it
    // (initial / newly joined / full_state), else only what changed in a gap that the
    // limited timeline skipped.
    let state_at_start = match events.first() {
        Some(first) => state
            .rooms
            .state_before(&first.event_id)
            .map_err(room_err)?,
        // No timeline: the state at the end of the slice (for a left room, at the leave,
        // never state from after it).
        None => state
            .rooms
            .state_at_position(room_id, up_to)
            .map_err(room_err)?,
    };
    let state_ids: Vec<OwnedEventId> = if include_full_state {
        state_at_start.values().cloned().collect()
    } else if limited {
        let before = match after {
            Some(pos) => state
                .rooms
                .state_at_position(room_id, pos)
                .map_err(room_err)?,
            None => Default::default(),
        };
        state_at_start
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        Vec::new()
    };
    let lazy = state_filter.lazy_load_members();
    let senders: HashSet<&str> = timeline
        .iter()
        .filter_map(|e| e["sender"].as_str())
        .collect();
    let mut state_events = Vec::new();
    for id in state_ids {
        if timeline_ids.contains(id.as_str()) {
            continue;
        }
        let Some(stored) = state.rooms.event(&id).map_err(room_err)? else {
            continue;
        };
        let mut ev = sync_format(
            state
                .rooms
                .client_event_for(&stored, user, device, now_ts)
                .map_err(room_err)?,
        );
        if lazy && ev["type"] == "m.room.member" {
            let key = ev["state_key"].as_str().unwrap_or_default();
            if key != user.as_str() && !senders.contains(key) {
                continue;
            }
        }
        if state_filter.matches_json(room_id, &ev) {
            // State events get their aggregations too (a thread on a topic change); the
            // index was caught up for the timeline above.
            crate::room::relations::bundle(state, &stored, user, &mut ev)?;
            state_events.push(ev);
        }
    }
    let prev_batch = match events.first() {
        // A stream token just before the timeline's first event: `/messages` pages back
        // through the events that arrived before it, in the room's DAG order (as
        // Synapse's stream tokens do: after a fork, a late event that is first in the
        // timeline must not hide the events sent before it that sit above it in the DAG).
        Some(first) => token(first.pos.saturating_sub(1)),
        None => token(after.unwrap_or(0)),
    };
    Ok(json!({
        "timeline": { "events": timeline, "limited": limited, "prev_batch": prev_batch },
        "state": { "events": state_events },
        "ephemeral": { "events": [] },
        "account_data": { "events": [] },
        "unread_notifications": { "highlight_count": 0, "notification_count": 0 },
        "summary": {},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(parse_token(&token(42)), Some(42));
        assert_eq!(parse_token("17"), Some(17));
        assert_eq!(parse_token("sx"), None);
    }
}
