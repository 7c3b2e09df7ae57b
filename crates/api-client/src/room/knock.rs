//! `POST /_matrix/client/v3/knock/{roomIdOrAlias}` (room versions 7+): a knock on a room
//! this server takes part in is an ordinary member event; a room that lives elsewhere (a
//! remote alias, or no local member) goes through `make_knock` / `send_knock` at the
//! `server_name` / `via` servers. Rescinding a knock is `/leave`; accepting one is an
//! invite by a member.
use std::sync::Arc;

use axum::Json;
use axum::extract::RawQuery;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{blocking, parse_room_id, route, wake};
use crate::AppState;
use crate::AppStateRef;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::remote_membership::via_from_query;

/// Longest knock reason accepted (the event must stay well under the PDU size limit).
const MAX_REASON_BYTES: usize = 4096;

pub(super) fn routes(r: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    route(r, "/knock/{room_id_or_alias}", post(knock))
}

#[derive(Deserialize)]
struct KnockBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn knock(
    auth: Auth,
    state: AppStateRef,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<KnockBody>,
) -> ApiResult<Json<Value>> {
    let state = state.0;
    if !target.starts_with('#') {
        parse_room_id(&target)?;
    }
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_BYTES)
    {
        return Err(MatrixError::invalid_param(format!(
            "The reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    if let Some(remote) = state.remote_membership.get().cloned() {
        let (r, t) = (remote.clone(), target.clone());
        let needs = crate::blocking::blocking(move || r.join_needs_federation(&t)).await??;
        if needs {
            let via = via_from_query(query.as_deref());
            let done = remote
                .knock(auth.user_id.clone(), target, via, body.reason)
                .await?;
            wake(&state, &done.room_id, done.pos, &[&auth.user_id]).await;
            return Ok(Json(json!({ "room_id": done.room_id })));
        }
    }
    let accounts::Profile {
        displayname,
        avatar_url,
    } = state.accounts.profile(&auth.user_id)?.unwrap_or_default();
    let profile = rooms::MemberProfile {
        displayname,
        avatar_url,
    };
    let user = auth.user_id.clone();
    let (room, sent) = blocking(&state, move |rooms| {
        let room = rooms.resolve_room_or_alias(&target)?;
        let sent = rooms.knock(&user, &room, body.reason.as_deref(), &profile)?;
        Ok((room, sent))
    })
    .await
    .map_err(|e| match e {
        // A room we do not know and cannot ask another server about.
        rooms::RoomError::UnknownRoom(r) => {
            MatrixError::not_found(format!("Unknown room {r}: give a server_name to knock via"))
        }
        e => e.into(),
    })?;
    wake(&state, &room, sent.pos, &[&auth.user_id]).await;
    Ok(Json(json!({ "room_id": room })))
}
