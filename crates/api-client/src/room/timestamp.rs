//! `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=` (MSC3030, spec
//! v1.6): the event closest to a point in time. Looked up locally first
//! ([`rooms::RoomService::event_at_timestamp`], within the caller's history visibility);
//! when nothing is found here, or what is found sits next to a gap in our copy of the
//! room (history from before this server joined), the room's other servers are asked
//! (`/_matrix/federation/v1/timestamp_to_event`) and their answer is used when it is
//! closer to the time.
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use rooms::{RoomAccess, TimeDirection};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{blocking, hide_unknown, parse_room_id};
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Path, Query};
use crate::{AppState, AppStateRef};

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    r.route(
        "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
        get(timestamp_to_event),
    )
    .route(
        "/_matrix/client/unstable/org.matrix.msc3030/rooms/{room_id}/timestamp_to_event",
        get(timestamp_to_event),
    )
}

#[derive(Deserialize, Default)]
struct TsQuery {
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    dir: Option<String>,
}

/// `ts` (milliseconds since the epoch) and `dir` (`f`/`b`), both required.
fn parse_query(q: &TsQuery) -> ApiResult<(u64, TimeDirection)> {
    let ts =
        q.ts.as_deref()
            .ok_or_else(|| MatrixError::missing_param("ts is required"))?;
    let ts: u64 = ts.parse().map_err(|_| {
        MatrixError::invalid_param(format!("ts must be a timestamp in ms, not {ts:?}"))
    })?;
    let dir = q
        .dir
        .as_deref()
        .ok_or_else(|| MatrixError::missing_param("dir is required"))?;
    let dir = TimeDirection::parse(dir).ok_or_else(|| {
        MatrixError::invalid_param(format!("dir must be 'f' or 'b', not {dir:?}"))
    })?;
    Ok((ts, dir))
}

/// Whether a remote answer at `remote_ts` is closer to the time than a local one at
/// `local_ts` in `dir` (a tie keeps ours).
fn remote_is_closer(dir: TimeDirection, local_ts: u64, remote_ts: u64) -> bool {
    match dir {
        TimeDirection::Forward => remote_ts < local_ts,
        TimeDirection::Backward => remote_ts > local_ts,
    }
}

async fn timestamp_to_event(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    Query(q): Query<TsQuery>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let (ts, dir) = parse_query(&q)?;
    let state = state.0;
    let user = auth.user_id.clone();
    let room2 = room.clone();
    let local = blocking(&state, move |rooms| {
        let run = || -> ApiResult<Option<(String, u64, bool)>> {
            let access = rooms.room_access(&room2, &user).map_err(hide_unknown)?;
            let cap = match access {
                RoomAccess::None => {
                    return Err(MatrixError::forbidden(format!(
                        "You are not allowed to read room {room2}"
                    )));
                }
                RoomAccess::Former { until_pos, .. } => until_pos,
                _ => u64::MAX,
            };
            let hit = rooms.event_at_timestamp(&room2, ts, dir, |ev| {
                Ok(ev.pos <= cap && rooms.visible_to(&user, ev)?)
            })?;
            Ok(hit.map(|h| {
                (
                    h.event.event_id.to_string(),
                    h.event.origin_server_ts(),
                    h.next_to_gap,
                )
            }))
        };
        Ok(run())
    })
    .await??;
    let ask_remote = local.as_ref().is_none_or(|(_, _, gap)| *gap);
    if ask_remote && let Some(remote) = state.remote_membership.get() {
        match remote.timestamp_to_event(room.clone(), ts, dir).await {
            Ok(Some((id, remote_ts)))
                if local
                    .as_ref()
                    .is_none_or(|(_, local_ts, _)| remote_is_closer(dir, *local_ts, remote_ts)) =>
            {
                return Ok(Json(
                    json!({ "event_id": id.as_str(), "origin_server_ts": remote_ts }),
                ));
            }
            Ok(_) => {}
            Err(e) => tracing::info!(%room, "timestamp_to_event over federation: {e:?}"),
        }
    }
    match local {
        Some((id, local_ts, _)) => Ok(Json(
            json!({ "event_id": id, "origin_server_ts": local_ts }),
        )),
        None => Err(MatrixError::not_found(format!(
            "No event found in room {room} {} {ts}",
            match dir {
                TimeDirection::Forward => "at or after",
                TimeDirection::Backward => "at or before",
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_needs_a_number_and_a_direction() {
        let q = |ts: Option<&str>, dir: Option<&str>| TsQuery {
            ts: ts.map(str::to_owned),
            dir: dir.map(str::to_owned),
        };
        assert_eq!(
            parse_query(&q(Some("12"), Some("f"))).ok(),
            Some((12, TimeDirection::Forward))
        );
        assert_eq!(
            parse_query(&q(Some("0"), Some("b"))).ok(),
            Some((0, TimeDirection::Backward))
        );
        for (ts, dir) in [
            (None, Some("f")),
            (Some("12"), None),
            (Some("-1"), Some("f")),
            (Some("1.5"), Some("b")),
            (Some("12"), Some("x")),
        ] {
            assert!(parse_query(&q(ts, dir)).is_err(), "{ts:?} {dir:?}");
        }
    }

    #[test]
    fn a_remote_answer_wins_only_when_closer() {
        assert!(remote_is_closer(TimeDirection::Forward, 100, 50));
        assert!(!remote_is_closer(TimeDirection::Forward, 100, 100));
        assert!(!remote_is_closer(TimeDirection::Forward, 100, 150));
        assert!(remote_is_closer(TimeDirection::Backward, 100, 150));
        assert!(!remote_is_closer(TimeDirection::Backward, 100, 100));
        assert!(!remote_is_closer(TimeDirection::Backward, 100, 50));
    }
}
