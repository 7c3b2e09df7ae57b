//! The hook through which the membership handlers reach other servers: joining a room that
//! lives elsewhere (by ID with `server_name`/`via`, or by a remote alias), knocking on one,
//! leaving or
//! rejecting an invite to a room this server has no state of, and inviting a remote user;
//! and the lookups the client API forwards to another server (a remote alias through
//! `/query/directory`, a remote user's profile through `/query/profile`).
//! The server binary installs an implementation (over `federation-membership`); without
//! one, these requests fail as they would for an unknown room.
use futures::future::BoxFuture;
use ruma::{OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId};
use serde_json::{Map, Value};

use crate::error::MatrixError;

/// A membership change done through federation: the room and the stored event's position.
#[derive(Debug, Clone)]
pub struct RemoteDone {
    pub room_id: OwnedRoomId,
    pub pos: u64,
}

pub trait RemoteMembership: Send + Sync {
    /// Whether joining `room_or_alias` must go through another server (a remote alias, or
    /// a room with no local state or no local member). Reads storage.
    fn join_needs_federation(&self, room_or_alias: &str) -> Result<bool, MatrixError>;
    /// Whether `user` leaving `room` must go through another server (no local state).
    fn leave_needs_federation(
        &self,
        user: &OwnedUserId,
        room: &OwnedRoomId,
    ) -> Result<bool, MatrixError>;
    fn join(
        &self,
        user: OwnedUserId,
        room_or_alias: String,
        via: Vec<OwnedServerName>,
        content: Option<Map<String, Value>>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>>;
    /// Knock on `room_or_alias` through other servers (`make_knock` / `send_knock`).
    /// Whether a knock needs federation is [`RemoteMembership::join_needs_federation`]'s
    /// answer.
    fn knock(
        &self,
        user: OwnedUserId,
        room_or_alias: String,
        via: Vec<OwnedServerName>,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>>;
    fn leave(
        &self,
        user: OwnedUserId,
        room: OwnedRoomId,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>>;
    fn invite(
        &self,
        sender: OwnedUserId,
        room: OwnedRoomId,
        target: OwnedUserId,
        reason: Option<String>,
    ) -> BoxFuture<'_, Result<RemoteDone, MatrixError>>;
    /// Tells a remote invitee's server of an invite already stored here (`createRoom`'s
    /// `invite` list): `PUT /v2/invite` with the stored event and the room's stripped state.
    fn push_invite(
        &self,
        room: OwnedRoomId,
        invite: OwnedEventId,
    ) -> BoxFuture<'_, Result<(), MatrixError>>;
    /// The room and servers of an alias of another server (`/query/directory` there).
    fn resolve_alias(
        &self,
        alias: OwnedRoomAliasId,
    ) -> BoxFuture<'_, Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError>>;
    /// A remote user's profile (`/query/profile` at their server): `displayname` and/or
    /// `avatar_url`, only `field` when given.
    fn profile(
        &self,
        user: OwnedUserId,
        field: Option<&'static str>,
    ) -> BoxFuture<'_, Result<Map<String, Value>, MatrixError>>;
    /// The event of `room` closest to `ts_ms` in `dir` as another server in the room knows
    /// it (`/_matrix/federation/v1/timestamp_to_event`): its id and `origin_server_ts`;
    /// `None` when no server had one. Without federation: `None`.
    fn timestamp_to_event(
        &self,
        room: OwnedRoomId,
        ts_ms: u64,
        dir: rooms::TimeDirection,
    ) -> BoxFuture<'_, Result<Option<(OwnedEventId, u64)>, MatrixError>> {
        let _ = (room, ts_ms, dir);
        Box::pin(async { Ok(None) })
    }
    /// One level of a space we do not hold, from the first of `via` that answers
    /// `GET /_matrix/federation/v1/hierarchy/{roomId}` (the answer's `room`, `children`
    /// and `inaccessible_children`, as that server sent them); `None` when none did.
    /// Without federation: `None`.
    fn hierarchy(
        &self,
        room: OwnedRoomId,
        via: Vec<OwnedServerName>,
        suggested_only: bool,
    ) -> BoxFuture<'_, Option<Value>> {
        let _ = (room, via, suggested_only);
        Box::pin(async { None })
    }
}

/// `server_name` and `via` query parameters (repeated), in order, without duplicates.
pub(crate) fn via_from_query(query: Option<&str>) -> Vec<OwnedServerName> {
    let mut out: Vec<OwnedServerName> = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        if k != "server_name" && k != "via" {
            continue;
        }
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        if let Ok(s) = OwnedServerName::try_from(v.as_ref())
            && !out.contains(&s)
            && out.len() < 20
        {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_and_server_name_are_collected() {
        let v = via_from_query(Some(
            "server_name=a.test&via=b.test%3A8448&via=a.test&x=c.test&via=bad%20name",
        ));
        let names: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["a.test", "b.test:8448"]);
        assert!(via_from_query(None).is_empty());
    }
}
