//! `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` for spaces whose rooms this server
//! has the state of: a depth-first walk from the root over `m.space.child` links (a link
//! counts when its content has a non-empty `via`), children ordered by `order`, then the
//! link's `origin_server_ts`, then the room ID (the spec's ordering). Only spaces
//! (`type: m.space`) are walked into. A room appears only if the requester may see it:
//! joined or invited, a public or knockable join rule, `world_readable` history, or a
//! restricted join rule whose allowed room the requester is joined to; the root must be
//! visible (else 403). `max_depth`, `suggested_only`, `limit` and `from` (an offset into the
//! walk, checked against the query it was made for) are honoured.
//!
//! Not yet: rooms only another server has (the federation `/hierarchy` request).
use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::Query;
use axum::routing::get;
use rooms::{Membership, RoomService};
use ruma::{OwnedRoomId, RoomId, UserId};
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
    let rooms = state.rooms.clone();
    let user = auth.user_id.clone();
    let walked =
        crate::blocking::blocking(move || walk(&rooms, &user, &root, max_depth, suggested_only))
            .await
            .map_err(|_| MatrixError::internal("hierarchy task failed"))??;
    let page: Vec<Value> = walked.iter().skip(offset).take(limit).cloned().collect();
    let mut body = json!({ "rooms": page });
    if offset + limit < walked.len() {
        body["next_batch"] = Value::from(format!("{}_{shape}", offset + limit));
    }
    Ok(Json(body))
}

/// A child link of a space: the target and the stripped event.
struct Child {
    room: OwnedRoomId,
    order: Option<String>,
    ts: u64,
    stripped: Value,
}

/// The valid `m.space.child` links of `room`, in the spec's order.
fn children(rooms: &RoomService, room: &RoomId, suggested_only: bool) -> rooms::Result<Vec<Child>> {
    let mut out = Vec::new();
    for (state_key, event_id) in rooms.current_state_of_type(room, "m.space.child")? {
        let Ok(target) = OwnedRoomId::try_from(state_key.as_str()) else {
            continue;
        };
        let Some(ev) = rooms.event(&event_id)? else {
            continue;
        };
        let content = ev.content();
        if content
            .get("via")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            continue;
        }
        if suggested_only && content.get("suggested") != Some(&Value::Bool(true)) {
            continue;
        }
        // The spec's `order`: printable ASCII, at most 50 characters.
        let order = content
            .get("order")
            .and_then(Value::as_str)
            .filter(|o| o.len() <= 50 && o.chars().all(|c| (' '..='~').contains(&c)))
            .map(str::to_owned);
        let mut stripped = ev.to_stripped_state();
        stripped["origin_server_ts"] = Value::from(ev.origin_server_ts());
        out.push(Child {
            room: target,
            order,
            ts: ev.origin_server_ts(),
            stripped,
        });
    }
    out.sort_by(|a, b| {
        // Children with an `order` come first, by it.
        let ka = (a.order.is_none(), a.order.clone(), a.ts, a.room.clone());
        let kb = (b.order.is_none(), b.order.clone(), b.ts, b.room.clone());
        ka.cmp(&kb)
    });
    Ok(out)
}

fn state_str(rooms: &RoomService, room: &RoomId, kind: &str, field: &str) -> Option<String> {
    let ev = rooms.current_state_event(room, kind, "").ok().flatten()?;
    ev.content().get(field)?.as_str().map(str::to_owned)
}

/// Whether `user` may see `room` in a hierarchy (see the module docs).
fn accessible(rooms: &RoomService, user: &UserId, room: &RoomId) -> rooms::Result<bool> {
    if matches!(
        rooms.membership_state(room, user)?,
        Some(Membership::Join | Membership::Invite)
    ) {
        return Ok(true);
    }
    if state_str(
        rooms,
        room,
        "m.room.history_visibility",
        "history_visibility",
    )
    .as_deref()
        == Some("world_readable")
    {
        return Ok(true);
    }
    let Some(rules) = rooms.current_state_event(room, "m.room.join_rules", "")? else {
        return Ok(false);
    };
    let content = rules.content();
    match content.get("join_rule").and_then(Value::as_str) {
        Some("public" | "knock") => Ok(true),
        Some("restricted" | "knock_restricted") => {
            for cond in content
                .get("allow")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(r) = cond
                    .get("room_id")
                    .and_then(Value::as_str)
                    .and_then(|r| RoomId::parse(r).ok())
                    && rooms.room_exists(&r)?
                    && rooms.is_joined(&r, user)?
                {
                    return Ok(true);
                }
            }
            Ok(content.get("join_rule").and_then(Value::as_str) == Some("knock_restricted"))
        }
        _ => Ok(false),
    }
}

/// The summary of one room, as the hierarchy lists it.
fn summary(rooms: &RoomService, room: &RoomId, children_state: Vec<Value>) -> rooms::Result<Value> {
    let mut out = Map::new();
    out.insert("room_id".into(), Value::from(room.as_str()));
    for (kind, field, key) in [
        ("m.room.name", "name", "name"),
        ("m.room.topic", "topic", "topic"),
        ("m.room.canonical_alias", "alias", "canonical_alias"),
        ("m.room.avatar", "url", "avatar_url"),
        ("m.room.join_rules", "join_rule", "join_rule"),
    ] {
        if let Some(v) = state_str(rooms, room, kind, field) {
            out.insert(key.into(), Value::from(v));
        }
    }
    if let Some(t) = state_str(rooms, room, "m.room.create", "type") {
        out.insert("room_type".into(), Value::from(t));
    }
    if let Some(v) = rooms.room_version(room)? {
        out.insert("room_version".into(), Value::from(v.as_str()));
    }
    if let Some(e) = state_str(rooms, room, "m.room.encryption", "algorithm") {
        out.insert("encryption".into(), Value::from(e));
    }
    out.insert(
        "num_joined_members".into(),
        Value::from(rooms.joined_members(room)?.len()),
    );
    out.insert(
        "world_readable".into(),
        Value::Bool(
            state_str(
                rooms,
                room,
                "m.room.history_visibility",
                "history_visibility",
            )
            .as_deref()
                == Some("world_readable"),
        ),
    );
    out.insert(
        "guest_can_join".into(),
        Value::Bool(
            state_str(rooms, room, "m.room.guest_access", "guest_access").as_deref()
                == Some("can_join"),
        ),
    );
    out.insert("children_state".into(), Value::Array(children_state));
    Ok(Value::Object(out))
}

/// The whole walk from `root` (at most [`MAX_WALK`] rooms), in page order.
fn walk(
    rooms: &RoomService,
    user: &UserId,
    root: &RoomId,
    max_depth: Option<usize>,
    suggested_only: bool,
) -> ApiResult<Vec<Value>> {
    if !rooms.room_exists(root)? || !accessible(rooms, user, root)? {
        return Err(MatrixError::forbidden(format!(
            "You may not see the hierarchy of {root}"
        )));
    }
    let mut stack: Vec<(OwnedRoomId, usize)> = vec![(root.to_owned(), 0)];
    let mut seen: HashSet<OwnedRoomId> = HashSet::new();
    let mut out = Vec::new();
    while let Some((room, depth)) = stack.pop() {
        if out.len() >= MAX_WALK {
            break;
        }
        if !seen.insert(room.clone()) || !rooms.room_exists(&room)? {
            continue;
        }
        if *room != *root && !accessible(rooms, user, &room)? {
            continue;
        }
        let is_space =
            state_str(rooms, &room, "m.room.create", "type").as_deref() == Some("m.space");
        let links = if is_space {
            children(rooms, &room, suggested_only)?
        } else {
            Vec::new()
        };
        let walk_in = is_space && max_depth.is_none_or(|m| depth < m);
        let targets: Vec<OwnedRoomId> = links.iter().map(|c| c.room.clone()).collect();
        out.push(summary(
            rooms,
            &room,
            links.into_iter().map(|c| c.stripped).collect(),
        )?);
        if walk_in {
            for t in targets.into_iter().rev() {
                if !seen.contains(&t) {
                    stack.push((t, depth + 1));
                }
            }
        }
    }
    Ok(out)
}
