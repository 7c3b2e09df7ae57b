//! Room endpoints: creation, membership, sending, state, history, directory.
//!
//! Handlers validate the path and body, run the room engine ([`rooms::RoomService`]) on
//! the blocking pool (it takes a write lock and does RocksDB I/O), map [`RoomError`] to
//! Matrix errors, and wake the `/sync` of every joined member (plus the target of a
//! membership change) at the new stream position.
//!
//! Pagination tokens are `t<pos>`: "after every event with stream position ≤ pos".
//! Backwards pagination from `t<pos>` returns events with position ≤ pos; forwards,
//! events with position > pos. Sync's `s<pos>` tokens have the same meaning and are
//! accepted everywhere a `t` token is.
//!
//! History visibility (`/messages`, `/event`, `/context`) follows the spec rules via
//! [`rooms::RoomService::visible_to`]: `world_readable` to anyone, `shared` to current
//! members, `invited`/`joined` from the viewer's invite/join on; users who left see
//! history up to their leave. Reads by users who were never in a non-world-readable
//! room (or forgot it) are 403.
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use rooms::{RoomError, RoomService};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::AppState;
use crate::error::MatrixError;
use crate::notifier::SyncNotifier;

mod directory;
mod events;
mod membership;
mod summary;

pub(crate) use summary::sync_summary;

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = membership::routes(r);
    let r = events::routes(r);
    let r = summary::routes(r);
    directory::routes(r)
}

pub(crate) use crate::client_route as route;

impl From<RoomError> for MatrixError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Storage(e) => MatrixError::internal(e),
            RoomError::Forbidden(m) => MatrixError::forbidden(m),
            RoomError::UnknownRoom(r) => MatrixError::not_found(format!("Unknown room {r}")),
            RoomError::NotFound(m) => MatrixError::not_found(m),
            RoomError::UnsupportedRoomVersion(v) => MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                format!("Room version {v} is not supported"),
            ),
            RoomError::TooLarge(m) => MatrixError::too_large(m),
            RoomError::AliasInUse(a) => MatrixError::new(
                StatusCode::CONFLICT,
                "M_UNKNOWN",
                format!("Room alias {a} already exists"),
            ),
            RoomError::InvalidParam(m) => MatrixError::invalid_param(m),
            RoomError::BadJson(m) => MatrixError::bad_json(m),
            RoomError::BadAlias(m) => MatrixError::new(StatusCode::BAD_REQUEST, "M_BAD_ALIAS", m),
            RoomError::BadState(m) => MatrixError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", m),
            RoomError::Internal(m) => MatrixError::internal(m),
        }
    }
}

/// Unknown rooms look like rooms the user is not in (403), where the spec hides existence.
pub(crate) fn hide_unknown(e: RoomError) -> MatrixError {
    match e {
        RoomError::UnknownRoom(r) => MatrixError::forbidden(format!("You are not in room {r}")),
        e => e.into(),
    }
}

/// Run room-engine work on the blocking pool (through the crate's one
/// [`crate::blocking::blocking`]), keeping the engine's error type.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&RoomService) -> Result<T, RoomError> + Send + 'static,
) -> Result<T, RoomError> {
    let rooms = state.rooms.clone();
    crate::blocking::blocking(move || f(&rooms))
        .await
        .map_err(|_| RoomError::Internal("room task failed".to_owned()))?
}

pub(crate) fn parse_room_id(raw: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid room ID {raw:?}")))
}

pub(crate) use crate::extract::parse_user_id;

/// A stream position from a token: a stream token `t<pos>` (older pagination tokens),
/// `s<pos>…` (sync's) or a bare number; for a topological token `t<depth>-<pos>` (see
/// [`rooms::TopoPos`]), the position just before the event it points at.
pub(crate) fn parse_token(t: &str) -> Option<u64> {
    if let Some(p) = rooms::TopoPos::parse_token(t) {
        return Some(p.pos.saturating_sub(1));
    }
    if t.starts_with('t') && t.contains('-') {
        return None; // a malformed topological token
    }
    let rest = t
        .strip_prefix('t')
        .or_else(|| t.strip_prefix('s'))
        .unwrap_or(t);
    let digits: &str = &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    if digits.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// A pagination token (`from`/`to` of `/messages`, `prev_batch`): topological (what
/// `/messages` and `/context` hand out) or a stream position (older tokens, sync tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageToken {
    Topo(rooms::TopoPos),
    Stream(u64),
}

impl PageToken {
    pub fn parse(t: &str) -> Option<PageToken> {
        match rooms::TopoPos::parse_token(t) {
            Some(p) => Some(PageToken::Topo(p)),
            None => parse_token(t).map(PageToken::Stream),
        }
    }

    /// The point in the room's topological order the token stands for.
    pub fn resolve(self, rooms: &RoomService, room: &RoomId) -> rooms::Result<rooms::TopoPos> {
        match self {
            PageToken::Topo(p) => Ok(p),
            PageToken::Stream(pos) => rooms.topo_at_stream(room, pos),
        }
    }
}

/// Wake the joined members of `room` and any `extra` users (a membership target, a
/// user who just left) at stream position `pos`.
/// [`wake_room`] on the blocking pool: its member scan reads storage.
pub(crate) async fn wake(state: &Arc<AppState>, room: &RoomId, pos: u64, extra: &[&UserId]) {
    let (rooms, notifier) = (state.rooms.clone(), state.notifier.clone());
    let room = room.to_owned();
    let extra: Vec<OwnedUserId> = extra.iter().map(|u| (*u).to_owned()).collect();
    let woken = crate::blocking::blocking(move || {
        let extra: Vec<&UserId> = extra.iter().map(|u| &**u).collect();
        wake_room(&rooms, &notifier, &room, pos, &extra);
    })
    .await;
    if woken.is_err() {
        tracing::warn!("waking room members failed");
    }
}

/// Reads storage: call it from the blocking pool.
pub(crate) fn wake_room(
    rooms: &RoomService,
    notifier: &SyncNotifier,
    room: &RoomId,
    pos: u64,
    extra: &[&UserId],
) {
    match rooms.joined_members(room) {
        Ok(members) => notifier.wake(
            members.iter().map(|u| &**u).chain(extra.iter().copied()),
            pos,
        ),
        Err(e) => {
            tracing::warn!(%room, error = %e, "could not list members to wake");
            notifier.wake(extra.iter().copied(), pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_both_formats() {
        assert_eq!(parse_token("t12"), Some(12));
        assert_eq!(parse_token("s12"), Some(12));
        assert_eq!(parse_token("s12_4"), Some(12));
        assert_eq!(parse_token("12"), Some(12));
        assert_eq!(parse_token("tx"), None);
        assert_eq!(parse_token(""), None);
        assert_eq!(parse_token("t3-12"), Some(11));
    }

    #[test]
    fn page_tokens() {
        let topo = rooms::TopoPos { depth: 3, pos: 12 };
        assert_eq!(PageToken::parse("t3-12"), Some(PageToken::Topo(topo)));
        assert_eq!(PageToken::parse("t12"), Some(PageToken::Stream(12)));
        assert_eq!(PageToken::parse("s12_4"), Some(PageToken::Stream(12)));
        assert_eq!(PageToken::parse("t3-x"), None);
        assert_eq!(PageToken::parse(""), None);
    }
}
