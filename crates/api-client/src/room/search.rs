//! `POST /search`: full-text search of the room events a user may see (`room_events`),
//! over the tantivy index of the `search` crate.
//!
//! Searched rooms are the user's joined rooms narrowed by `filter.rooms`/`not_rooms`;
//! every word of `search_term` must occur in one of `keys` (`content.body`,
//! `content.name`, `content.topic`; all three by default). Each hit is checked against
//! the history visibility rules ([`rooms::RoomService::visible_to`]) and the rest of the
//! filter (senders, types) before it is returned. `order_by` `rank` (BM25) pages by
//! offset (`next_batch` = `r<offset>`), `recent` by stream position (`p<pos>`: hits below
//! it). `event_context`, `include_state` and bundled aggregations as the spec has them;
//! `groupings` are not computed (the spec lets a server omit them).
use crate::ignored::Ignored;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ::search::fulltext::{KEYS, Order2, Query2};
use accounts::{RoomEventFilter, RoomEventFilterExt};
use axum::routing::post;
use axum::{Json, Router};
use rooms::{RoomService, StoredEvent, TopoPos};
use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::route;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Query};
use crate::{AppState, AppStateRef, now_ms};

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    route(r, "/search", post(search))
}

#[derive(Deserialize)]
struct SearchBody {
    search_categories: Categories,
}

#[derive(Deserialize)]
struct Categories {
    #[serde(default)]
    room_events: Option<RoomEvents>,
}

#[derive(Deserialize)]
struct RoomEvents {
    search_term: String,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    event_context: Option<EventContext>,
    #[serde(default)]
    include_state: bool,
}

#[derive(Deserialize)]
struct EventContext {
    #[serde(default = "five")]
    before_limit: u64,
    #[serde(default = "five")]
    after_limit: u64,
    #[serde(default = "yes")]
    include_profile: bool,
}

fn five() -> u64 {
    5
}
fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
struct SearchQuery {
    #[serde(default)]
    next_batch: Option<String>,
}

/// Where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Offset(usize),
    Below(u64),
}

fn parse_page(t: &str) -> Option<Page> {
    if let Some(n) = t.strip_prefix('r') {
        return n.parse().ok().map(Page::Offset);
    }
    t.strip_prefix('p')?.parse().ok().map(Page::Below)
}

fn page_token(p: Page) -> String {
    match p {
        Page::Offset(n) => format!("r{n}"),
        Page::Below(pos) => format!("p{pos}"),
    }
}

async fn search(
    auth: Auth,
    state: AppStateRef,
    Query(q): Query<SearchQuery>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let body: SearchBody = serde_json::from_value(body)
        .map_err(|e| MatrixError::bad_json(format!("Invalid search request: {e}")))?;
    let Some(req) = body.search_categories.room_events else {
        return Ok(Json(json!({"search_categories": {}})));
    };
    let order = match req.order_by.as_deref() {
        None | Some("rank") => Order2::Rank,
        Some("recent") => Order2::Recent,
        Some(o) => {
            return Err(MatrixError::invalid_param(format!(
                "order_by must be 'rank' or 'recent', not {o:?}"
            )));
        }
    };
    let keys = match req.keys.clone() {
        None => KEYS.iter().map(|k| (*k).to_owned()).collect(),
        Some(keys) => {
            if let Some(bad) = keys.iter().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(MatrixError::invalid_param(format!(
                    "Unknown search key {bad:?}"
                )));
            }
            keys
        }
    };
    let filter: RoomEventFilter = match &req.filter {
        None => RoomEventFilter::default(),
        Some(f) => accounts::filter::parse_room_event_filter_str(&f.to_string())
            .map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}")))?,
    };
    let page = match q.next_batch.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            parse_page(t).ok_or_else(|| MatrixError::invalid_param("Invalid next_batch token"))?,
        ),
    };
    let state = state.0;
    let out =
        crate::blocking::blocking(move || run(&state, &auth, &req, order, &keys, &filter, page))
            .await??;
    Ok(Json(json!({"search_categories": {"room_events": out}})))
}

fn run(
    state: &AppState,
    auth: &Auth,
    req: &RoomEvents,
    order: Order2,
    keys: &[String],
    filter: &RoomEventFilter,
    page: Option<Page>,
) -> ApiResult<Value> {
    let rooms = &*state.rooms;
    let ix = &state.indexes;
    ix.fulltext.catch_up(rooms).map_err(MatrixError::internal)?;
    ix.relations
        .catch_up(rooms)
        .map_err(MatrixError::internal)?;
    let user = &auth.user_id;
    let ignored = Ignored::of(state, user)?;
    let searched: Vec<String> = rooms
        .joined_rooms(user)?
        .into_iter()
        .filter(|r| filter.matches_room(r))
        .map(|r| r.to_string())
        .collect();
    let limit = filter.limit_or(10, 100);
    let (mut offset, mut below) = match page {
        Some(Page::Offset(n)) => (n, None),
        Some(Page::Below(p)) => (0, Some(p)),
        None => (0, None),
    };
    let mut count = 0;
    let mut results: Vec<(f32, StoredEvent)> = Vec::new();
    let mut more = false;
    // Hits the user may not see (or the filter drops) are skipped: fetch pages until
    // `limit` results or the end (bounded, so a pathological query ends).
    for _round in 0..20 {
        let query = Query2 {
            term: &req.search_term,
            keys,
            rooms: &searched,
            order,
            offset,
            below_pos: below,
            limit,
        };
        let (total, hits) = ix.fulltext.search(&query).map_err(MatrixError::internal)?;
        count = total;
        let fetched = hits.len();
        for hit in hits {
            offset += 1;
            below = Some(hit.pos);
            let Ok(id) = OwnedEventId::try_from(hit.event_id.as_str()) else {
                continue;
            };
            let Some(ev) = rooms.event(&id)? else {
                continue;
            };
            let Ok(room) = OwnedRoomId::try_from(hit.room_id.as_str()) else {
                continue;
            };
            let sender = UserId::parse(ev.sender()).ok();
            let url = ev.content_str("url").is_some();
            if filter.matches(&room, ev.kind(), sender.as_deref(), url)
                && !ignored.hides(&ev)
                && rooms.visible_to(user, &ev)?
            {
                results.push((hit.score, ev));
                if results.len() >= limit {
                    break;
                }
            }
        }
        if results.len() >= limit {
            // A full page gets a `next_batch` even when nothing follows (as Synapse: the
            // next page is then empty and has none; Complement's back-pagination test
            // expects exactly that).
            more = true;
            break;
        }
        if fetched < limit {
            break;
        }
    }
    let now = now_ms();
    let mut out_results = Vec::with_capacity(results.len());
    let mut result_rooms = BTreeSet::new();
    for (score, ev) in &results {
        let mut event = rooms.client_event_for(ev, user, Some(&auth.device_id), now)?;
        super::relations::bundle(state, ev, user, &mut event)?;
        let mut r = json!({"rank": score, "result": event});
        if let Some(ctx) = &req.event_context {
            r["context"] = context(rooms, ev, auth, ctx, now)?;
        }
        result_rooms.insert(ev.room_id().into_owned());
        out_results.push(r);
    }
    let mut out = json!({
        "count": count,
        "results": out_results,
        "highlights": ::search::directory::words(&req.search_term),
    });
    if more {
        let next = match order {
            Order2::Rank => Page::Offset(offset),
            Order2::Recent => Page::Below(below.unwrap_or(0)),
        };
        out["next_batch"] = Value::from(page_token(next));
    }
    if req.include_state {
        let mut states = Map::new();
        for room in result_rooms {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            states.insert(
                room,
                Value::Array(current_state(rooms, &room_id, auth, now)?),
            );
        }
        out["state"] = Value::Object(states);
    }
    Ok(out)
}

/// The events around a hit (those the user may see), and the senders' profiles.
fn context(
    rooms: &RoomService,
    ev: &StoredEvent,
    auth: &Auth,
    ctx: &EventContext,
    now: u64,
) -> ApiResult<Value> {
    let room = RoomId::parse(ev.room_id().as_ref())
        .map_err(|_| MatrixError::internal("event without a room"))?;
    let side = |from: TopoPos, backwards: bool, n: u64| -> ApiResult<Vec<StoredEvent>> {
        let n = n.min(100) as usize;
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        for e in rooms.paginate_topo(&room, from, None, backwards, n * 3)? {
            if rooms.visible_to(&auth.user_id, &e)? {
                out.push(e);
                if out.len() >= n {
                    break;
                }
            }
        }
        Ok(out)
    };
    let before = side(TopoPos::before(ev), true, ctx.before_limit)?;
    let after = side(TopoPos::after(ev), false, ctx.after_limit)?;
    let fmt = |events: &[StoredEvent]| -> ApiResult<Vec<Value>> {
        events
            .iter()
            .map(|e| {
                rooms
                    .client_event_for(e, &auth.user_id, Some(&auth.device_id), now)
                    .map_err(MatrixError::from)
            })
            .collect()
    };
    let mut out = json!({
        "events_before": fmt(&before)?,
        "events_after": fmt(&after)?,
        "start": TopoPos::before(before.last().unwrap_or(ev)).to_token(),
        "end": TopoPos::after(after.last().unwrap_or(ev)).to_token(),
    });
    if ctx.include_profile {
        let mut profiles = BTreeMap::new();
        for e in before.iter().chain(after.iter()).chain(std::iter::once(ev)) {
            let sender = e.sender().to_owned();
            if profiles.contains_key(&sender) {
                continue;
            }
            let member = rooms.current_state_event(&room, "m.room.member", &sender)?;
            let mut p = Map::new();
            if let Some(m) = &member {
                for field in ["displayname", "avatar_url"] {
                    if let Some(v) = m.content_str(field) {
                        p.insert(field.into(), Value::from(v));
                    }
                }
            }
            profiles.insert(sender, Value::Object(p));
        }
        out["profile_info"] = json!(profiles);
    }
    Ok(out)
}

fn current_state(
    rooms: &RoomService,
    room: &RoomId,
    auth: &Auth,
    now: u64,
) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for id in rooms.current_state(room)?.values() {
        if let Some(e) = rooms.event(id)? {
            out.push(e.to_client_event(Some((&auth.user_id, &auth.device_id)), now));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_junk() {
        for p in [Page::Offset(0), Page::Offset(30), Page::Below(12345)] {
            assert_eq!(parse_page(&page_token(p)), Some(p));
        }
        for junk in ["", "x1", "r", "p-1", "r1.5", "s12"] {
            assert_eq!(parse_page(junk), None, "{junk:?}");
        }
    }
}
