//! `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`: a depth-first walk from the root
//! over `m.space.child` links (a link counts when its content has a non-empty `via`),
//! children ordered by `order`, then the link's `origin_server_ts`, then the room ID (the
//! spec's ordering; `rooms::space`). Only spaces (`type: m.space`) are walked into. A room
//! appears only if the requester may see it: joined or invited, a public or knockable join
//! rule, `world_readable` history, or a restricted join rule whose allowed room the
//! requester is joined to; the root must be a room we hold and visible (else 403).
//! `max_depth`, `suggested_only`, `limit` and `from` (an offset into the walk, checked
//! against the query it was made for) are honoured.
//!
//! Rooms this server takes no part in (no joined local user) are asked of the `via`
//! servers of the link that leads to them (`GET /_matrix/federation/v1/hierarchy`, through
//! the [`RemoteMembership`](crate::remote_membership::RemoteMembership) hook): that gives
//! the room's summary and `children_state`, which the walk goes on from, plus summaries of
//! the children that server holds (used as they are for rooms that are not walked into, as
//! Synapse does) and the children it says we may not see (skipped). A restricted room of
//! another server is shown when its `allowed_room_ids` holds a room the requester is
//! joined to here. Every page walks again from the root, so a `from` token stays valid as
//! long as the hierarchy does not change (there is no session to expire); one walk asks at
//! most [`MAX_REMOTE_FETCHES`] times. A room no `via` server answers for is left out,
//! unless we hold old state of it.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::Query;
use axum::routing::get;
use rooms::{RoomService, SpaceChild, space_children_of};
use ruma::{OwnedRoomId, OwnedServerName, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::parse_room_id;
use crate::AppState;
use crate::AppStateRef;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Path};

/// Default and largest page size.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// Most rooms one walk visits (a bound on the work of one request).
const MAX_WALK: usize = 1000;
/// Most federation `/hierarchy` requests one walk makes.
const MAX_REMOTE_FETCHES: usize = 50;
/// The summary fields a client gets, of ours or another server's summary.
const SUMMARY_FIELDS: [&str; 12] = [
    "room_id",
    "name",
    "topic",
    "canonical_alias",
    "avatar_url",
    "join_rule",
    "room_type",
    "room_version",
    "encryption",
    "num_joined_members",
    "world_readable",
    "guest_can_join",
];

pub(super) fn routes(r: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    // A v1 endpoint (and MSC2946's unstable prefix, which clients still call).
    r.route(
        "/_matrix/client/v1/rooms/{room_id}/hierarchy",
        get(hierarchy),
    )
    .route(
        "/_matrix/client/unstable/org.matrix.msc2946/rooms/{room_id}/hierarchy",
        get(hierarchy),
    )
}

#[derive(Deserialize)]
struct HierarchyQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    max_depth: Option<String>,
    #[serde(default)]
    suggested_only: Option<String>,
}

fn parse_count(raw: Option<&str>, what: &str) -> ApiResult<Option<usize>> {
    match raw {
        None => Ok(None),
        Some(s) => s.parse::<usize>().map(Some).map_err(|_| {
            MatrixError::invalid_param(format!("{what} must be a non-negative integer"))
        }),
    }
}

async fn hierarchy(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> ApiResult<Json<Value>> {
    let root = parse_room_id(&room_id)?;
    let limit = parse_count(q.limit.as_deref(), "limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let max_depth = parse_count(q.max_depth.as_deref(), "max_depth")?;
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "suggested_only must be true or false",
            ));
        }
    };
    // `from`: "<offset>_<max_depth>_<suggested_only>", so a token is only used with the
    // query it was made for.
    let shape = format!(
        "{}_{}",
        max_depth.map_or("-".to_owned(), |d| d.to_string()),
        suggested_only
    );
    let offset = match q.from.as_deref() {
        None => 0,
        Some(t) => match t.split_once('_') {
            Some((n, rest)) if rest == shape => n
                .parse::<usize>()
                .map_err(|_| MatrixError::invalid_param("invalid from token"))?,
            _ => return Err(MatrixError::invalid_param("from does not match this query")),
        },
    };
    let walked = walk(&state, &auth.user_id, &root, max_depth, suggested_only).await?;
    let page: Vec<Value> = walked.iter().skip(offset).take(limit).cloned().collect();
    let mut body = json!({ "rooms": page });
    if offset + limit < walked.len() {
        body["next_batch"] = Value::from(format!("{}_{shape}", offset + limit));
    }
    Ok(Json(body))
}

/// What we know of one room of the walk.
struct Node {
    summary: Map<String, Value>,
    /// Its child links (only filled for spaces).
    children: Vec<SpaceChild>,
}

/// A room we hold: `Ok(None)` when we do not hold it or `user` may not see it.
fn local_node(
    rooms: &RoomService,
    user: &UserId,
    room: &RoomId,
    suggested_only: bool,
) -> rooms::Result<Option<Node>> {
    if !rooms.room_exists(room)? || !rooms.space_visible_to_user(user, room)? {
        return Ok(None);
    }
    let summary = rooms.space_summary(room, false)?;
    let children = if is_space(&summary) {
        rooms.space_children(room, suggested_only)?
    } else {
        Vec::new()
    };
    Ok(Some(Node { summary, children }))
}

fn is_space(summary: &Map<String, Value>) -> bool {
    summary.get("room_type").and_then(Value::as_str) == Some("m.space")
}

/// Another server's summary of `room`, cut to the fields a client gets; `None` when it is
/// not an object about `room`.
fn remote_summary(room: &RoomId, raw: &Value) -> Option<Map<String, Value>> {
    let obj = raw.as_object()?;
    if obj.get("room_id").and_then(Value::as_str) != Some(room.as_str()) {
        return None;
    }
    let mut out: Map<String, Value> = SUMMARY_FIELDS
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    // Kept for the visibility check only; removed before the client sees it.
    if let Some(a) = obj.get("allowed_room_ids") {
        out.insert("allowed_room_ids".into(), a.clone());
    }
    Some(out)
}

/// The walk's state: what other servers told us so far.
struct Walker<'a> {
    state: &'a AppState,
    user: &'a UserId,
    suggested_only: bool,
    fetches: usize,
    /// Summaries of rooms other servers gave as `children`.
    hints: HashMap<OwnedRoomId, Map<String, Value>>,
    /// Rooms other servers said the requester's server may not see.
    inaccessible: HashSet<OwnedRoomId>,
}

impl Walker<'_> {
    async fn local(&self, room: &RoomId) -> ApiResult<Option<Node>> {
        let rooms = self.state.rooms.clone();
        let (user, room, suggested_only) =
            (self.user.to_owned(), room.to_owned(), self.suggested_only);
        Ok(
            crate::blocking::blocking(move || local_node(&rooms, &user, &room, suggested_only))
                .await??,
        )
    }

    async fn resident(&self, room: &RoomId) -> ApiResult<bool> {
        let rooms = self.state.rooms.clone();
        let room = room.to_owned();
        Ok(crate::blocking::blocking(move || rooms.space_resident(&room)).await??)
    }

    async fn visible(&self, room: &RoomId, summary: &Map<String, Value>) -> ApiResult<bool> {
        let rooms = self.state.rooms.clone();
        let (user, room) = (self.user.to_owned(), room.to_owned());
        let summary = Value::Object(summary.clone());
        Ok(crate::blocking::blocking(move || {
            rooms.remote_space_visible_to_user(&user, &room, &summary)
        })
        .await??)
    }

    /// A room we take no part in, from a `children` summary when it will not be walked
    /// into, else from its `via` servers; `None` when unknown or not visible.
    async fn remote(
        &mut self,
        room: &RoomId,
        via: &[OwnedServerName],
        walk_in_allowed: bool,
    ) -> ApiResult<Option<Node>> {
        if let Some(hint) = self.hints.get(room)
            && (!is_space(hint) || !walk_in_allowed)
        {
            let hint = hint.clone();
            return Ok(self.visible(room, &hint).await?.then_some(Node {
                summary: hint,
                children: Vec::new(),
            }));
        }
        let Some(hook) = self.state.remote_membership.get().cloned() else {
            return Ok(None);
        };
        if via.is_empty() || self.fetches >= MAX_REMOTE_FETCHES {
            return Ok(None);
        }
        self.fetches += 1;
        let Some(answer) = hook
            .hierarchy(room.to_owned(), via.to_vec(), self.suggested_only)
            .await
        else {
            return Ok(None);
        };
        let Some(summary) = answer.get("room").and_then(|r| remote_summary(room, r)) else {
            return Ok(None);
        };
        for child in answer
            .get("children")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(id) = child
                .get("room_id")
                .and_then(Value::as_str)
                .and_then(|r| OwnedRoomId::try_from(r).ok())
                && let Some(s) = remote_summary(&id, child)
            {
                self.hints.insert(id, s);
            }
        }
        for id in answer
            .get("inaccessible_children")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|r| OwnedRoomId::try_from(r).ok())
        {
            self.inaccessible.insert(id);
        }
        if !self.visible(room, &summary).await? {
            return Ok(None);
        }
        let children = if is_space(&summary) {
            let state: Vec<Value> = answer
                .pointer("/room/children_state")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            space_children_of(&state, self.suggested_only)
        } else {
            Vec::new()
        };
        Ok(Some(Node { summary, children }))
    }
}

/// The whole walk from `root` (at most [`MAX_WALK`] rooms), in page order.
async fn walk(
    state: &AppState,
    user: &UserId,
    root: &RoomId,
    max_depth: Option<usize>,
    suggested_only: bool,
) -> ApiResult<Vec<Value>> {
    let mut walker = Walker {
        state,
        user,
        suggested_only,
        fetches: 0,
        hints: HashMap::new(),
        inaccessible: HashSet::new(),
    };
    if walker.local(root).await?.is_none() {
        return Err(MatrixError::forbidden(format!(
            "You may not see the hierarchy of {root}"
        )));
    }
    let mut stack: Vec<(OwnedRoomId, usize, Vec<OwnedServerName>)> =
        vec![(root.to_owned(), 0, Vec::new())];
    let mut seen: HashSet<OwnedRoomId> = HashSet::new();
    let mut out = Vec::new();
    while let Some((room, depth, via)) = stack.pop() {
        if out.len() >= MAX_WALK {
            break;
        }
        if !seen.insert(room.clone()) {
            continue;
        }
        let walk_in_allowed = max_depth.is_none_or(|m| depth < m);
        // Ours when we take part in it (the root always: it has no `via`); else the
        // `via` servers', falling back to old state we may still hold.
        let node = if *room == *root || walker.resident(&room).await? {
            walker.local(&room).await?
        } else if walker.inaccessible.contains(&room) {
            None
        } else {
            match walker.remote(&room, &via, walk_in_allowed).await? {
                Some(n) => Some(n),
                None => walker.local(&room).await?,
            }
        };
        let Some(Node {
            mut summary,
            children,
        }) = node
        else {
            continue;
        };
        summary.remove("allowed_room_ids");
        let walk_in = is_space(&summary) && walk_in_allowed;
        let next: Vec<(OwnedRoomId, Vec<OwnedServerName>)> = children
            .iter()
            .map(|c| (c.room_id.clone(), c.via.clone()))
            .collect();
        summary.insert(
            "children_state".into(),
            Value::Array(children.into_iter().map(|c| c.stripped).collect()),
        );
        out.push(Value::Object(summary));
        if walk_in {
            for (t, via) in next.into_iter().rev() {
                if !seen.contains(&t) {
                    stack.push((t, depth + 1, via));
                }
            }
        }
    }
    Ok(out)
}
