//! Relations and threads: `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
//! (`/{relType}`, `/{relType}/{eventType}`), `GET /_matrix/client/v1/rooms/{roomId}/threads`,
//! and the bundled aggregations (`unsigned.m.relations`) of the events they return
//! (and of `/search` results).
//!
//! Pagination tokens are stream positions: `r<pos>` (ours), or any stream or
//! topological token the other endpoints hand out (`s…` from `/sync`, `t…` from
//! `/messages`). A token stands for the gap just after position `pos`: backwards pages
//! return relations at or below it (newest first), forwards pages those above it (oldest
//! first); `to` stops a page at the other side of its gap.
use crate::ignored::Ignored;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use rooms::{RoomAccess, RoomService, StoredEvent};
use ruma::{OwnedEventId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_room_id, parse_token};
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Path, Query};
use crate::{AppState, AppStateRef, now_ms};

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let mut r = r;
    for base in ["/_matrix/client/v1", "/_matrix/client/unstable"] {
        r = r
            .route(
                &format!("{base}/rooms/{{room_id}}/relations/{{event_id}}"),
                get(relations_all),
            )
            .route(
                &format!("{base}/rooms/{{room_id}}/relations/{{event_id}}/{{rel_type}}"),
                get(relations_type),
            )
            .route(
                &format!(
                    "{base}/rooms/{{room_id}}/relations/{{event_id}}/{{rel_type}}/{{event_type}}"
                ),
                get(relations_type_event),
            )
            .route(&format!("{base}/rooms/{{room_id}}/threads"), get(threads));
    }
    r
}

/// Add `unsigned.m.relations` to `json` (the client form of `ev`) when `ev` has any.
/// The relations index must be caught up by the caller.
pub(crate) fn bundle(
    state: &AppState,
    ev: &StoredEvent,
    viewer: &UserId,
    json: &mut Value,
) -> ApiResult<()> {
    let agg = state
        .indexes
        .relations
        .aggregations(&state.rooms, ev, viewer, now_ms())
        .map_err(MatrixError::internal)?;
    if let Some(agg) = agg
        && let Some(unsigned) = json.get_mut("unsigned").and_then(Value::as_object_mut)
    {
        unsigned.insert("m.relations".into(), agg);
    }
    Ok(())
}

/// [`bundle`] for each of `events` (whose client forms are `values`, in the same order),
/// after catching the relations index up. For `/messages`, `/context` and `/event`.
pub(crate) fn bundle_events(
    state: &AppState,
    events: &[&StoredEvent],
    viewer: &UserId,
    values: &mut [Value],
) -> ApiResult<()> {
    state
        .indexes
        .relations
        .catch_up(&state.rooms)
        .map_err(MatrixError::internal)?;
    for (ev, v) in events.iter().zip(values.iter_mut()) {
        bundle(state, ev, viewer, v)?;
    }
    Ok(())
}

/// MSC3874 relation filters of a `RoomEventFilter` (`/messages`, `/context`):
/// `org.matrix.msc3874.rel_types` keeps only events with one of these relation types,
/// `org.matrix.msc3874.not_rel_types` drops events with one of these.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RelFilter {
    rel_types: Option<Vec<String>>,
    not_rel_types: Vec<String>,
}

impl RelFilter {
    /// From the raw filter JSON (already validated as a `RoomEventFilter` by the caller).
    pub(crate) fn parse(raw: Option<&str>) -> ApiResult<RelFilter> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(RelFilter::default());
        };
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| MatrixError::bad_json(format!("Invalid filter: {e}")))?;
        let list = |key: &str| -> ApiResult<Option<Vec<String>>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(l) => serde_json::from_value(l.clone())
                    .map(Some)
                    .map_err(|_| MatrixError::bad_json(format!("{key} must be a list of strings"))),
            }
        };
        Ok(RelFilter {
            rel_types: list("org.matrix.msc3874.rel_types")?,
            not_rel_types: list("org.matrix.msc3874.not_rel_types")?.unwrap_or_default(),
        })
    }

    pub(crate) fn passes(&self, ev: &StoredEvent) -> bool {
        if self.rel_types.is_none() && self.not_rel_types.is_empty() {
            return true;
        }
        let rel = ::search::relations::relation_of(ev).map(|(r, _)| r);
        if let Some(r) = &rel
            && self.not_rel_types.contains(r)
        {
            return false;
        }
        match &self.rel_types {
            None => true,
            Some(types) => rel.is_some_and(|r| types.contains(&r)),
        }
    }
}

#[derive(Deserialize, Default)]
struct RelationsQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    recurse: Option<String>,
    #[serde(default, rename = "org.matrix.msc3981.recurse")]
    recurse_unstable: Option<String>,
}

/// A pagination token: the stream position of the gap it stands for.
fn gap(t: &Option<String>, name: &str) -> ApiResult<Option<u64>> {
    match t.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .strip_prefix('r')
            .and_then(|n| n.parse().ok())
            .or_else(|| parse_token(s))
            .map(Some)
            .ok_or_else(|| MatrixError::invalid_param(format!("Invalid '{name}' token"))),
    }
}

/// `/messages`' limit rule, but at least 1 (a page of nothing would never advance).
fn limit(raw: Option<&str>, default: usize) -> ApiResult<usize> {
    super::events::parse_limit(raw, default).map(|n| n.max(1))
}

fn flag(raw: Option<&str>) -> ApiResult<bool> {
    match raw {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(MatrixError::invalid_param(format!(
            "recurse must be true or false, not {v:?}"
        ))),
    }
}

/// An event of `room` the user may see, else 404 (also for rooms they cannot read).
pub(super) fn visible_event(
    rooms: &RoomService,
    room: &RoomId,
    user: &UserId,
    event_id: &str,
) -> ApiResult<StoredEvent> {
    let not_found = || MatrixError::not_found("Event not found");
    let cap = match rooms.room_access(room, user) {
        Ok(RoomAccess::None) | Err(rooms::RoomError::UnknownRoom(_)) => return Err(not_found()),
        Ok(RoomAccess::Former { until_pos, .. }) => until_pos,
        Ok(_) => u64::MAX,
        Err(e) => return Err(e.into()),
    };
    let id = OwnedEventId::try_from(event_id).map_err(|_| not_found())?;
    let ev = rooms.event(&id)?.ok_or_else(not_found)?;
    if ev.room_id() != room.as_str() || ev.pos > cap || !rooms.visible_to(user, &ev)? {
        return Err(not_found());
    }
    Ok(ev)
}

async fn relations_all(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<RelationsQuery>,
) -> ApiResult<Json<Value>> {
    relations(auth, state.0, room_id, event_id, None, None, q).await
}

async fn relations_type(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id, rel_type)): Path<(String, String, String)>,
    Query(q): Query<RelationsQuery>,
) -> ApiResult<Json<Value>> {
    relations(auth, state.0, room_id, event_id, Some(rel_type), None, q).await
}

async fn relations_type_event(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id, rel_type, event_type)): Path<(String, String, String, String)>,
    Query(q): Query<RelationsQuery>,
) -> ApiResult<Json<Value>> {
    relations(
        auth,
        state.0,
        room_id,
        event_id,
        Some(rel_type),
        Some(event_type),
        q,
    )
    .await
}

async fn relations(
    auth: Auth,
    state: Arc<AppState>,
    room_id: String,
    event_id: String,
    rel_type: Option<String>,
    event_type: Option<String>,
    q: RelationsQuery,
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
    let from = gap(&q.from, "from")?;
    let to = gap(&q.to, "to")?;
    let limit = limit(q.limit.as_deref(), 5)?;
    let recurse = flag(q.recurse.as_deref())? || flag(q.recurse_unstable.as_deref())?;
    let body = crate::blocking::blocking(move || -> ApiResult<Value> {
        let rooms = &*state.rooms;
        let parent = visible_event(rooms, &room, &auth.user_id, &event_id)?;
        let ignored = Ignored::of(&state, &auth.user_id)?;
        if ignored.hides(&parent) {
            return Err(MatrixError::not_found("Event not found"));
        }
        let ix = &state.indexes.relations;
        ix.catch_up(rooms).map_err(MatrixError::internal)?;
        let mut related = ix
            .related(
                rooms.db(),
                parent.event_id.as_str(),
                rel_type.as_deref(),
                event_type.as_deref(),
                recurse,
            )
            .map_err(MatrixError::internal)?;
        related.retain(|c| c.room_id == room.as_str());
        if backwards {
            related.reverse();
        }
        let in_range = |pos: u64| {
            if backwards {
                from.is_none_or(|f| pos <= f) && to.is_none_or(|t| pos > t)
            } else {
                from.is_none_or(|f| pos > f) && to.is_none_or(|t| pos <= t)
            }
        };
        let now = now_ms();
        let mut chunk = Vec::new();
        let mut last = None;
        let mut more = false;
        for c in related.iter().filter(|c| in_range(c.pos)) {
            if chunk.len() >= limit {
                more = true;
                break;
            }
            last = Some(c.pos);
            let Ok(id) = OwnedEventId::try_from(c.event_id.as_str()) else {
                continue;
            };
            let Some(ev) = rooms.event(&id)? else {
                continue;
            };
            if ignored.hides(&ev) || !rooms.visible_to(&auth.user_id, &ev)? {
                continue;
            }
            let mut v = rooms.client_event_for(&ev, &auth.user_id, Some(&auth.device_id), now)?;
            bundle(&state, &ev, &auth.user_id, &mut v)?;
            chunk.push(v);
        }
        let mut body = json!({ "chunk": chunk });
        if more && let Some(p) = last {
            let next = if backwards { p.saturating_sub(1) } else { p };
            body["next_batch"] = Value::from(format!("r{next}"));
        }
        if let Some(f) = &q.from {
            body["prev_batch"] = Value::from(f.as_str());
        }
        if recurse {
            body["recursion_depth"] = Value::from(3);
        }
        Ok(body)
    })
    .await??;
    Ok(Json(body))
}

#[derive(Deserialize, Default)]
struct ThreadsQuery {
    #[serde(default)]
    include: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

async fn threads(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    Query(q): Query<ThreadsQuery>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let participated = match q.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(i) => {
            return Err(MatrixError::invalid_param(format!(
                "include must be 'all' or 'participated', not {i:?}"
            )));
        }
    };
    let limit = limit(q.limit.as_deref(), 5)?;
    let below = match q.from.as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            t.strip_prefix('r')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| MatrixError::invalid_param("Invalid 'from' token"))?,
        ),
    };
    let state = state.0;
    let body = crate::blocking::blocking(move || -> ApiResult<Value> {
        let rooms = &*state.rooms;
        match rooms.room_access(&room, &auth.user_id) {
            Ok(RoomAccess::None) | Err(rooms::RoomError::UnknownRoom(_)) => {
                return Err(MatrixError::forbidden(format!(
                    "You are not allowed to read room {room}"
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let ignored = Ignored::of(&state, &auth.user_id)?;
        let ix = &state.indexes.relations;
        ix.catch_up(rooms).map_err(MatrixError::internal)?;
        let db = rooms.db();
        let now = now_ms();
        let mut chunk = Vec::new();
        let mut cursor = below;
        let mut next = None;
        'pages: loop {
            let page = ix
                .threads(db, room.as_str(), cursor, limit + 1)
                .map_err(MatrixError::internal)?;
            let done = page.len() <= limit;
            for (root, latest_pos) in page {
                if chunk.len() >= limit {
                    next = cursor;
                    break 'pages;
                }
                cursor = Some(latest_pos);
                let Ok(id) = OwnedEventId::try_from(root.as_str()) else {
                    continue;
                };
                let Some(ev) = rooms.event(&id)? else {
                    continue;
                };
                if ignored.hides(&ev) || !rooms.visible_to(&auth.user_id, &ev)? {
                    continue;
                }
                if participated {
                    let s = ix
                        .thread_summary(db, &ev, auth.user_id.as_str())
                        .map_err(MatrixError::internal)?;
                    if !s.is_some_and(|s| s.participated) {
                        continue;
                    }
                }
                let mut v =
                    rooms.client_event_for(&ev, &auth.user_id, Some(&auth.device_id), now)?;
                bundle(&state, &ev, &auth.user_id, &mut v)?;
                chunk.push(v);
            }
            if done {
                break;
            }
        }
        let mut body = json!({ "chunk": chunk });
        if let Some(n) = next {
            body["next_batch"] = Value::from(format!("r{n}"));
        }
        Ok(body)
    })
    .await??;
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stream_gaps() {
        assert_eq!(gap(&Some("r12".into()), "from").ok(), Some(Some(12)));
        assert_eq!(gap(&Some("s40_3".into()), "from").ok(), Some(Some(40)));
        assert_eq!(gap(&None, "from").ok(), Some(None));
        assert!(gap(&Some("nonsense".into()), "from").is_err());
        assert!(flag(Some("yes")).is_err());
        assert!(flag(Some("true")).expect("flag"));
        assert_eq!(limit(Some("0"), 5).ok(), Some(1));
        assert!(limit(Some("-1"), 5).is_err());
    }
}
