//! `createRoom`, joining, leaving, invites, kicks, bans, `forget`, `joined_rooms`.
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use rooms::{CreateRoomRequest, RoomError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{blocking, hide_unknown, parse_room_id, parse_user_id, route, wake};
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::remote_membership::{RemoteMembership, via_from_query};
use crate::{AppState, AppStateRef};
use axum::extract::RawQuery;

pub(super) fn routes(r: axum::Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let r = route(r, "/createRoom", post(create_room));
    let r = route(r, "/join/{room_id_or_alias}", post(join_by_id_or_alias));
    let r = route(r, "/rooms/{room_id}/join", post(join_room));
    let r = route(r, "/rooms/{room_id}/leave", post(leave));
    let r = route(r, "/rooms/{room_id}/forget", post(forget));
    let r = route(r, "/rooms/{room_id}/invite", post(invite));
    let r = route(r, "/rooms/{room_id}/kick", post(kick));
    let r = route(r, "/rooms/{room_id}/ban", post(ban));
    let r = route(r, "/rooms/{room_id}/unban", post(unban));
    route(r, "/joined_rooms", get(joined_rooms))
}

/// The user's profile (owned by `accounts`) as their member events carry it.
fn profile(state: &AppState, user: &ruma::UserId) -> ApiResult<rooms::MemberProfile> {
    let accounts::Profile {
        displayname,
        avatar_url,
    } = state.accounts.profile(user)?.unwrap_or_default();
    Ok(rooms::MemberProfile {
        displayname,
        avatar_url,
    })
}

/// Longest `invite`, `invite_3pid` or `initial_state` list accepted by `createRoom`.
pub const MAX_CREATE_ROOM_LIST: usize = 100;

async fn create_room(
    auth: Auth,
    state: AppStateRef,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    if !body.is_object() {
        return Err(MatrixError::bad_json("Request body must be a JSON object"));
    }
    let mut req: CreateRoomRequest = serde_json::from_value(body)
        .map_err(|e| MatrixError::bad_json(format!("Invalid createRoom request: {e}")))?;
    // Each entry is an event built and authorised in the creating batch: bound them.
    for (field, len) in [
        ("invite", req.invite.len()),
        ("invite_3pid", req.invite_3pid.len()),
        ("initial_state", req.initial_state.len()),
    ] {
        if len > MAX_CREATE_ROOM_LIST {
            return Err(MatrixError::invalid_param(format!(
                "createRoom {field} has {len} entries; at most {MAX_CREATE_ROOM_LIST} are allowed"
            )));
        }
    }
    req.creator_profile = profile(&state, &auth.user_id)?;
    let creator = auth.user_id.clone();
    let (room, pos, invited) = blocking(&state, move |rooms| {
        let room = rooms.create_room(&creator, req)?;
        let pos = rooms.room_last_pos(&room)?;
        let invited: Vec<ruma::OwnedUserId> = rooms
            .members(&room)?
            .into_iter()
            .filter(|(_, m)| *m == rooms::Membership::Invite)
            .map(|(u, _)| u)
            .collect();
        Ok((room, pos, invited))
    })
    .await
    .map_err(|e| match e {
        RoomError::AliasInUse(a) => MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_ROOM_IN_USE",
            format!("Room alias {a} is already in use"),
        ),
        e => e.into(),
    })?;
    let extra: Vec<&ruma::UserId> = invited.iter().map(|u| &**u).collect();
    wake(&state, &room, pos, &extra).await;
    push_remote_invites(&state, &room, &invited).await;
    // A room created by hand as another's successor (`predecessor`).
    super::upgrade::carry_over(&state, &auth.user_id, &room).await;
    Ok(Json(json!({ "room_id": room })))
}

/// The invites of `createRoom` are events of the new room, sent to nobody yet: each remote
/// invitee's server is told with `PUT /v2/invite`. A server that cannot be reached does not
/// undo the room (as with Synapse); its user can still be invited again.
async fn push_remote_invites(
    state: &Arc<AppState>,
    room: &ruma::RoomId,
    invited: &[ruma::OwnedUserId],
) {
    let Some(remote) = remote(state) else {
        return;
    };
    for user in invited {
        if user.server_name() == state.config.server_name {
            continue;
        }
        let (r, u) = (room.to_owned(), user.clone());
        let record = blocking(state, move |rooms| rooms.membership(&r, &u)).await;
        let Ok(Some(record)) = record else {
            continue;
        };
        if let Err(e) = remote.push_invite(room.to_owned(), record.event_id).await {
            tracing::warn!(%room, invitee = %user, error = %e.message, "createRoom invite not delivered");
        }
    }
}

/// The body of a join: extra member content (e.g. `reason`).
fn join_content(body: Value) -> ApiResult<Option<Map<String, Value>>> {
    match body {
        Value::Object(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        _ => Err(MatrixError::bad_json("Request body must be a JSON object")),
    }
}

/// The content a join through another server carries: the client's fields plus the
/// user's profile where the client gave none (as a local join's, `rooms::join`), so the
/// other servers see the joiner's name and avatar (their user directory lists them so).
fn remote_join_content(
    state: &AppState,
    user: &ruma::UserId,
    content: Option<Map<String, Value>>,
) -> ApiResult<Option<Map<String, Value>>> {
    let prof = profile(state, user)?;
    let mut c = content.unwrap_or_default();
    for (field, value) in [
        ("displayname", prof.displayname),
        ("avatar_url", prof.avatar_url),
    ] {
        if let Some(v) = value
            && !c.contains_key(field)
        {
            c.insert(field.into(), Value::from(v));
        }
    }
    Ok(Some(c))
}

/// The federation hook, when this server federates.
fn remote(state: &AppState) -> Option<Arc<dyn RemoteMembership>> {
    state.remote_membership.get().cloned()
}

async fn do_join(
    state: Arc<AppState>,
    auth: Auth,
    target: String,
    query: Option<String>,
    body: Value,
) -> ApiResult<Json<Value>> {
    if !target.starts_with('#') {
        parse_room_id(&target)?;
    }
    let content = join_content(body)?;
    if let Some(remote) = remote(&state) {
        let (r, t) = (remote.clone(), target.clone());
        let needs = crate::blocking::blocking(move || r.join_needs_federation(&t)).await??;
        if needs {
            let via = via_from_query(query.as_deref());
            let content = remote_join_content(&state, &auth.user_id, content)?;
            let done = remote
                .join(auth.user_id.clone(), target, via, content)
                .await?;
            wake(&state, &done.room_id, done.pos, &[&auth.user_id]).await;
            super::upgrade::carry_over(&state, &auth.user_id, &done.room_id).await;
            return Ok(Json(json!({ "room_id": done.room_id })));
        }
    }
    let prof = profile(&state, &auth.user_id)?;
    let user = auth.user_id.clone();
    let join = |prof: rooms::MemberProfile, content: Option<Map<String, Value>>| {
        let (user, target) = (user.clone(), target.clone());
        blocking(&state, move |rooms| {
            rooms.join(&user, &target, &prof, content)
        })
    };
    let (room, sent) = match join(prof.clone(), content.clone()).await {
        Err(RoomError::Forbidden(m)) if awaited_remote_invite(&state, &target, &user).await => {
            tracing::debug!(%user, room = %target, "join retried once the invite arrived: {m}");
            join(prof, content).await?
        }
        // A restricted room no local member can let us into: a resident elsewhere may.
        Err(RoomError::UnableToGrantJoin(m) | RoomError::UnableToAuthoriseJoin(m))
            if remote(&state).is_some() =>
        {
            tracing::debug!(%user, room = %target, "restricted join goes to another server: {m}");
            let remote = remote(&state).ok_or_else(|| MatrixError::internal("no federation"))?;
            let via = via_from_query(query.as_deref());
            let content = remote_join_content(&state, &user, content)?;
            let done = remote.join(user.clone(), target, via, content).await?;
            wake(&state, &done.room_id, done.pos, &[&auth.user_id]).await;
            super::upgrade::carry_over(&state, &auth.user_id, &done.room_id).await;
            return Ok(Json(json!({ "room_id": done.room_id })));
        }
        r => r?,
    };
    wake(&state, &room, sent.pos, &[&auth.user_id]).await;
    super::upgrade::carry_over(&state, &auth.user_id, &room).await;
    Ok(Json(json!({ "room_id": room })))
}

/// Longest wait for a remote invite's PDU after the invite itself (see
/// [`awaited_remote_invite`]).
const INVITE_PDU_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `user` holds an invite to `room` (a room we take part in) that the room's state
/// does not have yet, and it got there within [`INVITE_PDU_WAIT`] (woken by the PDU's
/// arrival through the sync notifier; no polling). A remote inviter's
/// server first sends the invite itself (`PUT /invite`: our user sees it at once), then the
/// same event as a PDU of the room (`/send`); a join or rejection made in between is
/// checked against a state without the invite. Waiting for the PDU, then trying again,
/// closes that window.
async fn awaited_remote_invite(state: &Arc<AppState>, room: &str, user: &ruma::UserId) -> bool {
    let Ok(room) = ruma::OwnedRoomId::try_from(room) else {
        return false;
    };
    let pending = || {
        let (room, user) = (room.clone(), user.to_owned());
        blocking(state, move |rooms| {
            let Some(rec) = rooms.membership(&room, &user)? else {
                return Ok(None);
            };
            if rec.membership != rooms::Membership::Invite {
                return Ok(None);
            }
            let in_state = rooms.current_state_event_id(&room, "m.room.member", user.as_str())?;
            Ok(Some(in_state.as_deref() == Some(&*rec.event_id)))
        })
    };
    // Subscribed before the first check: the PDU's arrival wakes the invitee (the inbound
    // `/send` wakes a member event's target), so no arrival between check and wait is lost.
    let mut woken = state
        .notifier
        .subscribe(user, || state.rooms.current_position());
    if !matches!(pending().await, Ok(Some(false))) {
        return false;
    }
    let deadline = tokio::time::Instant::now() + INVITE_PDU_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, woken.changed()).await {
            Ok(Ok(())) => {}
            // The deadline passed, or the notifier is gone (shutting down).
            _ => return false,
        }
        match pending().await {
            Ok(Some(true)) => return true,
            Ok(Some(false)) => {}
            _ => return false,
        }
    }
}

async fn join_by_id_or_alias(
    auth: Auth,
    state: AppStateRef,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    do_join(state.0, auth, target, query, body).await
}

async fn join_room(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    parse_room_id(&room_id)?;
    do_join(state.0, auth, room_id, query, body).await
}

#[derive(Deserialize)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// An invite to a server notices room cannot be rejected (Synapse's rule: the notices must
/// stay reachable); once joined, the user may leave.
async fn refuse_rejecting_server_notices(
    state: &Arc<AppState>,
    room: &ruma::RoomId,
    user: &ruma::UserId,
) -> ApiResult<()> {
    if state.config.server_notices.is_none() {
        return Ok(());
    }
    let (st, r, u) = (state.clone(), room.to_owned(), user.to_owned());
    let refused = crate::blocking::blocking(move || {
        st.rooms.membership_state(&r, &u).ok().flatten() == Some(rooms::Membership::Invite)
            && crate::admin_api::server_notices::is_notices_room(&st, &r)
    })
    .await?;
    if refused {
        return Err(MatrixError::new(
            axum::http::StatusCode::FORBIDDEN,
            "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
            "You cannot reject this invite: it is for server notices",
        ));
    }
    Ok(())
}

async fn leave(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let user = auth.user_id.clone();
    refuse_rejecting_server_notices(&state, &room, &user).await?;
    if let Some(remote) = remote(&state) {
        let (r, u, rm) = (remote.clone(), user.clone(), room.clone());
        let needs = crate::blocking::blocking(move || r.leave_needs_federation(&u, &rm)).await??;
        if needs {
            let done = remote.leave(user, room.clone(), body.reason).await?;
            wake(&state, &room, done.pos, &[&auth.user_id]).await;
            return Ok(Json(json!({})));
        }
    }
    let leave = || {
        let (user, r, reason) = (user.clone(), room.clone(), body.reason.clone());
        blocking(&state, move |rooms| {
            rooms.leave(&user, &r, reason.as_deref())
        })
    };
    let sent = match leave().await {
        Err(RoomError::Forbidden(_))
            if awaited_remote_invite(&state, room.as_str(), &user).await =>
        {
            leave().await?
        }
        r => r?,
    };
    wake(&state, &room, sent.pos, &[&auth.user_id]).await;
    Ok(Json(json!({})))
}

async fn forget(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let user = auth.user_id.clone();
    blocking(&state, move |rooms| rooms.forget(&user, &room)).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct TargetBody {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Clone, Copy)]
enum Action {
    Invite,
    Kick,
    Ban,
    Unban,
}

async fn act(
    state: Arc<AppState>,
    auth: Auth,
    room_id: String,
    body: TargetBody,
    action: Action,
) -> ApiResult<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let raw = body
        .user_id
        .ok_or_else(|| MatrixError::missing_param("Missing user_id"))?;
    let target = parse_user_id(&raw)?;
    let reason = body.reason;
    // Only the invitee's server can countersign an invite; kicks and bans are plain events.
    if matches!(action, Action::Invite)
        && target.server_name() != state.config.server_name
        && let Some(remote) = remote(&state)
    {
        let done = remote
            .invite(auth.user_id.clone(), room.clone(), target.clone(), reason)
            .await?;
        wake(&state, &room, done.pos, &[&target]).await;
        return Ok(Json(json!({})));
    }
    let (sender, r, t) = (auth.user_id.clone(), room.clone(), target.clone());
    let sent = blocking(&state, move |rooms| {
        let reason = reason.as_deref();
        match action {
            Action::Invite => rooms.invite(&sender, &r, &t, reason),
            Action::Kick => rooms.kick(&sender, &r, &t, reason),
            Action::Ban => rooms.ban(&sender, &r, &t, reason),
            Action::Unban => rooms.unban(&sender, &r, &t, reason),
        }
    })
    .await
    .map_err(hide_unknown)?;
    wake(&state, &room, sent.pos, &[&target]).await;
    Ok(Json(json!({})))
}

async fn invite(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<Json<Value>> {
    act(state.0, auth, room_id, body, Action::Invite).await
}

async fn kick(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<Json<Value>> {
    act(state.0, auth, room_id, body, Action::Kick).await
}

async fn ban(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<Json<Value>> {
    act(state.0, auth, room_id, body, Action::Ban).await
}

async fn unban(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<Json<Value>> {
    act(state.0, auth, room_id, body, Action::Unban).await
}

async fn joined_rooms(auth: Auth, state: AppStateRef) -> ApiResult<Json<Value>> {
    let rooms = blocking(&state, move |rooms| rooms.joined_rooms(&auth.user_id)).await?;
    Ok(Json(json!({ "joined_rooms": rooms })))
}
