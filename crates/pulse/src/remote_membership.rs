//! Glue: the client API's [`RemoteMembership`] hook over `federation-membership`, with
//! its errors turned into Matrix errors for the client.
use std::sync::Arc;

use api_client::MatrixError;
use api_client::remote_membership::{RemoteDone, RemoteMembership};
use axum::http::StatusCode;
use federation_membership::{MembershipError, MembershipService};
use futures::future::BoxFuture;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId};
use serde_json::{Map, Value};

pub struct Remote(pub Arc<MembershipService>, pub Arc<rooms::RoomService>);

/// Remote errcodes a client may see as they are; anything else is `M_UNKNOWN`.
fn known_errcode(code: &str) -> &'static str {
    match code {
        "M_FORBIDDEN" => "M_FORBIDDEN",
        "M_NOT_FOUND" => "M_NOT_FOUND",
        "M_INCOMPATIBLE_ROOM_VERSION" => "M_INCOMPATIBLE_ROOM_VERSION",
        "M_UNABLE_TO_AUTHORISE_JOIN" => "M_UNABLE_TO_AUTHORISE_JOIN",
        "M_UNABLE_TO_GRANT_JOIN" => "M_UNABLE_TO_GRANT_JOIN",
        "M_LIMIT_EXCEEDED" => "M_LIMIT_EXCEEDED",
        "M_INVALID_PARAM" => "M_INVALID_PARAM",
        "M_BAD_JSON" => "M_BAD_JSON",
        _ => "M_UNKNOWN",
    }
}

fn to_matrix(e: MembershipError) -> MatrixError {
    match e {
        MembershipError::Room(e) => e.into(),
        MembershipError::Refused {
            server,
            status,
            errcode,
            message,
        } => {
            let status = match status {
                403 => StatusCode::FORBIDDEN,
                404 => StatusCode::NOT_FOUND,
                400 => StatusCode::BAD_REQUEST,
                429 => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::BAD_GATEWAY,
            };
            MatrixError::new(
                status,
                known_errcode(&errcode),
                format!("{server} refused: {message}"),
            )
        }
        MembershipError::NotFound(m) => MatrixError::not_found(m),
        MembershipError::IncompatibleVersion(v) => MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("Room version {v} is not supported by this server"),
        )
        .with("room_version", Value::from(v)),
        MembershipError::Unreachable(m) | MembershipError::BadResponse(m) => {
            MatrixError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", m)
        }
    }
}

impl RemoteMembership for Remote {
    fn join_needs_federation(&self, room_or_alias: &str) -> Result<bool, MatrixError> {
        self.0
            .join_needs_federation(room_or_alias)
            .map_err(to_matrix)
    }

    fn leave_needs_federation(
        &self,
        _user: &OwnedUserId,
        room: &OwnedRoomId,
    ) -> Result<bool, MatrixError> {
        Ok(!self.1.room_exists(room)?)
    }

    fn join(
        &self,
        user: OwnedUserId,
        room_or_alias: String,
        via: Vec<OwnedServerName>,
        content: Option<Map<String, Value>>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>> {
        Box::pin(async move {
            let done = self
                .0
                .join(&user, &room_or_alias, &via, content)
                .await
                .map_err(to_matrix)?;
            Ok(RemoteDone {
                room_id: done.room_id,
                pos: done.pos,
            })
        })
    }

    fn leave(
        &self,
        user: OwnedUserId,
        room: OwnedRoomId,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>> {
        Box::pin(async move {
            let done = self
                .0
                .leave(&user, &room, reason.as_deref())
                .await
                .map_err(to_matrix)?;
            Ok(RemoteDone {
                room_id: done.room_id,
                pos: done.pos,
            })
        })
    }

    fn invite(
        &self,
        sender: OwnedUserId,
        room: OwnedRoomId,
        target: OwnedUserId,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>> {
        Box::pin(async move {
            let done = self
                .0
                .invite(&sender, &room, &target, reason.as_deref())
                .await
                .map_err(to_matrix)?;
            Ok(RemoteDone {
                room_id: done.room_id,
                pos: done.pos,
            })
        })
    }
}
