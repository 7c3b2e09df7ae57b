//! Glue: the client API's [`RemoteMembership`] hook over `federation-membership`, with
//! its errors turned into Matrix errors for the client.
use std::sync::Arc;

use api_client::MatrixError;
use api_client::remote_membership::{RemoteDone, RemoteMembership};
use axum::http::StatusCode;
use federation_membership::{MembershipError, MembershipService};
use futures::future::BoxFuture;
use ruma::{OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId};
use serde_json::{Map, Value};

pub struct Remote(
    pub Arc<MembershipService>,
    pub Arc<rooms::RoomService>,
    pub federation_client::FederationClient,
);

/// Largest display name / avatar URL taken from a remote profile answer.
const MAX_PROFILE_FIELD_BYTES: usize = 1024;

/// Servers asked in turn for a space's `/hierarchy` before giving up.
const MAX_HIERARCHY_SERVERS: usize = 3;

/// Servers asked in turn for `/timestamp_to_event` before giving up.
const MAX_TIMESTAMP_SERVERS: usize = 5;

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

    fn knock(
        &self,
        user: OwnedUserId,
        room_or_alias: String,
        via: Vec<OwnedServerName>,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>> {
        Box::pin(async move {
            let done = self
                .0
                .knock(&user, &room_or_alias, &via, reason.as_deref())
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

    fn push_invite(
        &self,
        room: OwnedRoomId,
        invite: OwnedEventId,
    ) -> BoxFuture<'_, Result<(), MatrixError>> {
        Box::pin(async move {
            let rooms = self.1.clone();
            let r = room.clone();
            let (version, event, stripped) = tokio::task::spawn_blocking(move || {
                let version = rooms.room_version(&r)?;
                let event = rooms.event(&invite)?;
                Ok::<_, rooms::RoomError>((version, event, rooms.invite_room_state_pdus(&r)?))
            })
            .await
            .map_err(|_| {
                MatrixError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "M_UNKNOWN",
                    "invite task failed",
                )
            })??;
            let (Some(version), Some(event)) = (version, event) else {
                return Err(MatrixError::not_found("no such invite"));
            };
            let invitee = match event.pdu.get("state_key") {
                Some(ruma::CanonicalJsonValue::String(s)) => OwnedUserId::try_from(s.as_str())
                    .map_err(|_| MatrixError::not_found("the invite has no invitee"))?,
                _ => return Err(MatrixError::not_found("the invite has no invitee")),
            };
            let body = serde_json::json!({
                "room_version": version.as_str(),
                "event": Value::from(ruma::CanonicalJsonValue::Object(event.pdu)),
                "invite_room_state": stripped
                    .into_iter()
                    .map(|o| Value::from(ruma::CanonicalJsonValue::Object(o)))
                    .collect::<Vec<_>>(),
            });
            let path = format!(
                "/_matrix/federation/v2/invite/{}/{}",
                federation_client::percent_encode_segment(room.as_str()),
                federation_client::percent_encode_segment(event.event_id.as_str())
            );
            let server = invitee.server_name().as_str().to_owned();
            let resp = self
                .2
                .request(axum::http::Method::PUT, &server, &path, Some(&body))
                .await
                .map_err(|e| {
                    MatrixError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", e.to_string())
                })?;
            if resp.status != 200 {
                return Err(MatrixError::new(
                    StatusCode::BAD_GATEWAY,
                    "M_UNKNOWN",
                    format!("{server} answered {} to the invite", resp.status),
                ));
            }
            Ok(())
        })
    }

    fn resolve_alias(
        &self,
        alias: OwnedRoomAliasId,
    ) -> BoxFuture<'_, Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError>> {
        Box::pin(async move { self.0.resolve_remote_alias(&alias).await.map_err(to_matrix) })
    }

    fn profile(
        &self,
        user: OwnedUserId,
        field: Option<&'static str>,
    ) -> BoxFuture<'_, Result<Map<String, Value>, MatrixError>> {
        Box::pin(async move {
            let server = user.server_name().as_str().to_owned();
            let mut path = format!(
                "/_matrix/federation/v1/query/profile?user_id={}",
                federation_client::percent_encode_segment(user.as_str())
            );
            if let Some(f) = field {
                path.push_str("&field=");
                path.push_str(f);
            }
            let resp = self
                .2
                .request(axum::http::Method::GET, &server, &path, None)
                .await
                .map_err(|e| {
                    MatrixError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", e.to_string())
                })?;
            if resp.status == 404 {
                return Err(MatrixError::not_found("Profile not found"));
            }
            if resp.status != 200 {
                return Err(MatrixError::new(
                    StatusCode::BAD_GATEWAY,
                    "M_UNKNOWN",
                    format!("{server} answered {} to a profile query", resp.status),
                ));
            }
            // Only the profile fields, as strings of sane size: the answer is the remote's.
            let mut out = Map::new();
            for name in ["displayname", "avatar_url"] {
                if field.is_some_and(|f| f != name) {
                    continue;
                }
                if let Some(Value::String(v)) = resp.body.get(name)
                    && !v.is_empty()
                    && v.len() <= MAX_PROFILE_FIELD_BYTES
                {
                    out.insert(name.to_owned(), Value::String(v.clone()));
                }
            }
            Ok(out)
        })
    }

    fn timestamp_to_event(
        &self,
        room: OwnedRoomId,
        ts_ms: u64,
        dir: rooms::TimeDirection,
    ) -> BoxFuture<'_, Result<Option<(OwnedEventId, u64)>, MatrixError>> {
        Box::pin(async move {
            // The other servers with a joined member, a few at most, in a stable order.
            let rooms = self.1.clone();
            let room2 = room.clone();
            let members = tokio::task::spawn_blocking(move || rooms.joined_members(&room2))
                .await
                .map_err(|e| MatrixError::internal(e.to_string()))?
                .map_err(MatrixError::from)?;
            let own = self.1.server_name().to_owned();
            let mut servers: Vec<OwnedServerName> = members
                .iter()
                .map(|u| u.server_name().to_owned())
                .filter(|s| *s != own)
                .collect();
            servers.sort();
            servers.dedup();
            let dir = match dir {
                rooms::TimeDirection::Forward => "f",
                rooms::TimeDirection::Backward => "b",
            };
            let path = format!(
                "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts_ms}&dir={dir}",
                federation_client::percent_encode_segment(room.as_str())
            );
            for server in servers.iter().take(MAX_TIMESTAMP_SERVERS) {
                let resp = match self
                    .2
                    .request(axum::http::Method::GET, server.as_str(), &path, None)
                    .await
                {
                    Ok(r) if r.status == 200 => r,
                    Ok(r) => {
                        tracing::debug!(%server, status = r.status, "timestamp_to_event refused");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(%server, "timestamp_to_event failed: {e}");
                        continue;
                    }
                };
                let id = resp
                    .body
                    .get("event_id")
                    .and_then(Value::as_str)
                    .and_then(|s| OwnedEventId::try_from(s).ok());
                let ts = resp.body.get("origin_server_ts").and_then(Value::as_u64);
                if let (Some(id), Some(ts)) = (id, ts) {
                    return Ok(Some((id, ts)));
                }
            }
            Ok(None)
        })
    }

    fn hierarchy(
        &self,
        room: OwnedRoomId,
        via: Vec<OwnedServerName>,
        suggested_only: bool,
    ) -> BoxFuture<'_, Option<Value>> {
        Box::pin(async move {
            let own = self.1.server_name().to_owned();
            let path = format!(
                "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
                federation_client::percent_encode_segment(room.as_str())
            );
            for server in via
                .iter()
                .filter(|s| **s != own)
                .take(MAX_HIERARCHY_SERVERS)
            {
                match self
                    .2
                    .request(axum::http::Method::GET, server.as_str(), &path, None)
                    .await
                {
                    // Only an answer about the room we asked for counts.
                    Ok(r)
                        if r.status == 200
                            && r.body.pointer("/room/room_id").and_then(Value::as_str)
                                == Some(room.as_str()) =>
                    {
                        return Some(r.body);
                    }
                    Ok(r) => {
                        tracing::debug!(%server, %room, status = r.status, "hierarchy refused");
                    }
                    Err(e) => tracing::debug!(%server, %room, "hierarchy failed: {e}"),
                }
            }
            None
        })
    }
}
