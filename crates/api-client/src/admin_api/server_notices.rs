//! Server notices (Synapse's `POST /_synapse/admin/v1/send_server_notice` and
//! `PUT …/send_server_notice/{txnId}`): an admin sends a message to a local user from the
//! server's system user, in a room kept for that purpose.
//!
//! The room is the one the system user created with the user in it (found by that, so
//! nothing else needs storing): made on the first notice (private, named by the config,
//! tagged `m.server_notice` for the user), and the user is invited again when a later
//! notice finds them gone. An invite to it cannot be rejected (403
//! `M_CANNOT_LEAVE_SERVER_NOTICE_ROOM`, as Synapse) — a user who joined may leave.
//! The system user is made at start without a password, so nobody can log in as it or
//! register its name first ([`ensure_system_user`]).
use axum::Json;
use axum::extract::Path;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminAuth;
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{JsonBody, parse_user_id};
use crate::{AppState, AppStateRef};

/// `[server_notices]`: who sends them and what the room is called.
#[derive(Debug, Clone)]
pub struct ServerNoticesConfig {
    /// The system user's localpart (Synapse's `system_mxid_localpart`).
    pub localpart: String,
    pub display_name: Option<String>,
    pub room_name: String,
}

/// The system user's ID, when server notices are on.
pub fn system_user(state: &AppState) -> Option<OwnedUserId> {
    let c = state.config.server_notices.as_ref()?;
    OwnedUserId::try_from(format!("@{}:{}", c.localpart, state.config.server_name)).ok()
}

/// Make the system user at start (no password: no one can log in as it). An existing
/// account with a password was registered by someone: refuse to send notices as it.
pub fn ensure_system_user(state: &AppState) -> Result<(), String> {
    let (Some(c), Some(user)) = (state.config.server_notices.as_ref(), system_user(state)) else {
        return Ok(());
    };
    match state
        .accounts
        .user_summary(&user)
        .map_err(|e| e.to_string())?
    {
        Some(s) if s.has_password => {
            return Err(format!(
                "{user} is a user account with a password: pick another server_notices.system_mxid_localpart"
            ));
        }
        Some(_) => {}
        None => {
            state
                .accounts
                .register(
                    &c.localpart,
                    None,
                    accounts::NewDevice::default(),
                    false,
                    false,
                )
                .map_err(|e| format!("cannot make the server notices user {user}: {e}"))?;
        }
    }
    if let Some(name) = &c.display_name {
        crate::profile::set_profile_field(state, &user, true, Some(name.clone()))
            .map_err(|e| e.message.to_string())?;
    }
    Ok(())
}

/// Whether `room` is a server notices room (made by the system user).
pub(crate) fn is_notices_room(state: &AppState, room: &RoomId) -> bool {
    let Some(system) = system_user(state) else {
        return false;
    };
    state
        .rooms
        .room_creators(room)
        .is_ok_and(|c| c.contains(&system))
}

#[derive(Deserialize)]
pub(super) struct NoticeBody {
    user_id: String,
    content: Map<String, Value>,
    #[serde(rename = "type", default = "message_type")]
    kind: String,
}

fn message_type() -> String {
    "m.room.message".into()
}

pub(super) async fn send(
    admin: AdminAuth,
    state: AppStateRef,
    JsonBody(body): JsonBody<NoticeBody>,
) -> ApiResult<Json<Value>> {
    deliver(admin, state, body, None).await
}

pub(super) async fn send_txn(
    admin: AdminAuth,
    state: AppStateRef,
    Path(txn): Path<String>,
    JsonBody(body): JsonBody<NoticeBody>,
) -> ApiResult<Json<Value>> {
    deliver(admin, state, body, Some(txn)).await
}

async fn deliver(
    admin: AdminAuth,
    state: AppStateRef,
    body: NoticeBody,
    txn: Option<String>,
) -> ApiResult<Json<Value>> {
    let Some(system) = system_user(&state) else {
        return Err(MatrixError::invalid_param(
            "Server notices are not enabled on this server",
        ));
    };
    let target = parse_user_id(&body.user_id)?;
    if target.server_name() != state.config.server_name || target == system {
        return Err(MatrixError::invalid_param(
            "Server notices can only be sent to local users",
        ));
    }
    if txn
        .as_ref()
        .is_some_and(|t| t.len() > rooms::MAX_TXN_ID_BYTES)
    {
        return Err(MatrixError::invalid_param("The transaction ID is too long"));
    }
    let st = state.0.clone();
    let admin_id = admin.0.user_id.clone();
    let woken = target.clone();
    let (room, sent) = blocking(move || -> ApiResult<(OwnedRoomId, rooms::SentEvent)> {
        if !st.accounts.user_exists(&target)? || st.accounts.is_deactivated(&target)? {
            return Err(MatrixError::not_found("User not found"));
        }
        let room = notices_room(&st, &system, &target)?;
        // Idempotent per admin and transaction ID: the system user's "device" for it is
        // the admin's ID, so two admins' transaction IDs never collide.
        let device: ruma::OwnedDeviceId = format!("notices:{admin_id}").into();
        let txn = txn.as_deref().map(|t| (&*device, t));
        let content = Value::Object(body.content);
        let sent = st
            .rooms
            .send_message_event(&system, &room, &body.kind, content, txn)?;
        Ok((room, sent))
    })
    .await??;
    crate::room::wake(&state, &room, sent.pos, &[&woken]).await;
    tracing::info!(admin = %admin.0.user_id, user = %body.user_id, %room, "server notice sent");
    Ok(Json(json!({ "event_id": sent.event_id })))
}

/// The user's notices room, made (or the user invited again) as needed. Blocking.
fn notices_room(state: &AppState, system: &UserId, target: &UserId) -> ApiResult<OwnedRoomId> {
    let existing = state
        .rooms
        .rooms_for_user_with_forgotten(target)?
        .into_iter()
        .find(|r| {
            state
                .rooms
                .room_creators(&r.room_id)
                .is_ok_and(|c| c.iter().any(|u| u == system))
        });
    let Some(found) = existing else {
        let name = state
            .config
            .server_notices
            .as_ref()
            .map(|c| c.room_name.clone());
        let room = state.rooms.create_room(
            system,
            rooms::CreateRoomRequest {
                preset: Some(rooms::Preset::PrivateChat),
                name,
                invite: vec![target.to_string()],
                ..Default::default()
            },
        )?;
        state.accounts.set_account_data(
            target,
            Some(&room),
            "m.tag",
            &json!({ "tags": { "m.server_notice": { "order": 0.5 } } }),
        )?;
        return Ok(room);
    };
    if !matches!(
        found.membership,
        rooms::Membership::Join | rooms::Membership::Invite
    ) {
        state.rooms.invite(system, &found.room_id, target, None)?;
    }
    Ok(found.room_id)
}
