//! `POST /rooms/{roomId}/report/{eventId}` and `POST /rooms/{roomId}/report`: content
//! reports, stored for the server's admins (`search::reports`).
//!
//! An event report needs an event the reporter may see (else 404, as Synapse: the
//! event's existence is not revealed); `score`, when given, must be in -100..=0. A room
//! report needs a known room (else 404). Server admins list them with Synapse's
//! `GET /_synapse/admin/v1/event_reports` (`from`, `limit`, `dir`; room reports included,
//! without `event_id`).
use std::sync::Arc;

use ::search::reports::Report;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_room_id, route};
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query};
use crate::{AppState, AppStateRef, now_ms};

pub(super) fn routes(r: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let r = route(r, "/rooms/{room_id}/report/{event_id}", post(report_event));
    let r = route(r, "/rooms/{room_id}/report", post(report_room));
    r.route("/_synapse/admin/v1/event_reports", get(list_reports))
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    dir: Option<String>,
}

async fn list_reports(
    auth: Auth,
    state: AppStateRef,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let num = |raw: &Option<String>, default: usize, name: &str| -> ApiResult<usize> {
        match raw.as_deref() {
            None | Some("") => Ok(default),
            Some(s) => s.parse::<usize>().map_err(|_| {
                MatrixError::invalid_param(format!("{name} must be a non-negative integer"))
            }),
        }
    };
    let from = num(&q.from, 0, "from")?;
    let limit = num(&q.limit, 100, "limit")?.min(1000);
    let newest_first = match q.dir.as_deref() {
        None | Some("b") => true,
        Some("f") => false,
        Some(d) => {
            return Err(MatrixError::invalid_param(format!(
                "dir must be 'b' or 'f', not {d:?}"
            )));
        }
    };
    let state = state.0;
    let body = crate::blocking::blocking(move || -> ApiResult<Value> {
        if !state
            .accounts
            .is_admin(&auth.user_id)
            .map_err(MatrixError::internal)?
        {
            return Err(MatrixError::forbidden("Server admins only"));
        }
        let mut all = ::search::reports::list(state.rooms.db()).map_err(MatrixError::internal)?;
        if newest_first {
            all.reverse();
        }
        let total = all.len();
        let page: Vec<Value> = all
            .into_iter()
            .skip(from)
            .take(limit)
            .map(|r| {
                json!({
                    "id": r.id,
                    "received_ts": r.received_ts,
                    "room_id": r.room_id,
                    "event_id": r.event_id,
                    "user_id": r.reporter,
                    "reason": r.reason,
                    "score": r.score,
                })
            })
            .collect();
        let mut body = json!({"event_reports": page, "total": total});
        if from + limit < total {
            body["next_token"] = Value::from(from + limit);
        }
        Ok(body)
    })
    .await??;
    Ok(Json(body))
}

#[derive(Deserialize, Default)]
struct ReportBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    score: Option<i64>,
}

fn parse_body(v: Value) -> ApiResult<ReportBody> {
    let body: ReportBody = serde_json::from_value(v)
        .map_err(|e| MatrixError::bad_json(format!("Invalid report: {e}")))?;
    if let Some(s) = body.score
        && !(-100..=0).contains(&s)
    {
        return Err(MatrixError::invalid_param(
            "score must be an integer between -100 and 0",
        ));
    }
    Ok(body)
}

async fn report_event(
    auth: Auth,
    state: AppStateRef,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let body = parse_body(body)?;
    let state = state.0;
    crate::blocking::blocking(move || -> ApiResult<()> {
        let ev = super::relations::visible_event(&state.rooms, &room, &auth.user_id, &event_id)?;
        ::search::reports::store(
            state.rooms.db(),
            Report {
                id: String::new(),
                received_ts: now_ms(),
                reporter: auth.user_id.to_string(),
                room_id: room.to_string(),
                event_id: Some(ev.event_id.to_string()),
                reason: body.reason,
                score: body.score,
            },
        )
        .map_err(MatrixError::internal)?;
        Ok(())
    })
    .await??;
    Ok(Json(json!({})))
}

async fn report_room(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let body = parse_body(body)?;
    let state = state.0;
    crate::blocking::blocking(move || -> ApiResult<()> {
        if !state.rooms.room_exists(&room)? {
            return Err(MatrixError::not_found(format!("Unknown room {room}")));
        }
        ::search::reports::store(
            state.rooms.db(),
            Report {
                id: String::new(),
                received_ts: now_ms(),
                reporter: auth.user_id.to_string(),
                room_id: room.to_string(),
                event_id: None,
                reason: body.reason,
                score: None,
            },
        )
        .map_err(MatrixError::internal)?;
        Ok(())
    })
    .await??;
    Ok(Json(json!({})))
}
