//! Who a viewer is told about in `device_lists.changed/left` (`/sync`) and `/keys/changes`.
//!
//! The e2ee crate knows *whose* devices changed in `(since, now]`; this module adds rooms:
//!
//! * `changed`: users whose device list changed and who share a joined room with the
//!   viewer now (the viewer included: their other devices care), plus everyone who
//!   *started* sharing a room with the viewer in the range (the viewer joined a room —
//!   then the viewer too —, or someone joined one of the viewer's rooms): the viewer has
//!   never tracked their devices;
//! * `left`: users who shared a room with the viewer and share none now (the viewer left,
//!   or they did).
//!
//! Membership changes in the range come from the viewer's own membership positions and,
//! for rooms with activity in the range, the member events of the range (or, past
//! [`MEMBER_SCAN`] events, a diff of the member state at `since` and now). The set of users
//! sharing a room with the viewer is only read when a change needs filtering.
use std::collections::BTreeSet;

use ruma::{OwnedUserId, UserId};

use crate::AppState;
use crate::error::{ApiResult, MatrixError};

fn room_err(e: rooms::RoomError) -> MatrixError {
    e.into()
}

/// Events of a room read to find membership changes since the token; past that, the
/// member state at the token and now is compared instead.
const MEMBER_SCAN: usize = 100;

/// Users sharing a joined room with `user` now (not including `user`).
pub(crate) fn shared_users(state: &AppState, user: &UserId) -> ApiResult<BTreeSet<OwnedUserId>> {
    let mut out = BTreeSet::new();
    for room in state.rooms.joined_rooms(user).map_err(room_err)? {
        out.extend(state.rooms.joined_members(&room).map_err(room_err)?);
    }
    out.remove(user);
    Ok(out)
}

/// `(changed, left)` for `viewer` over `(since, now]`.
pub(crate) fn device_list_delta(
    state: &AppState,
    viewer: &UserId,
    since: u64,
    now: u64,
) -> ApiResult<(BTreeSet<OwnedUserId>, BTreeSet<OwnedUserId>)> {
    let mut changed = BTreeSet::new();
    let mut maybe_left = BTreeSet::new();
    if now <= since {
        return Ok((changed, maybe_left));
    }
    // Users the viewer started sharing a room with. When the viewer joined a room this
    // includes the viewer, as Synapse does (Complement's TestDeviceListsUpdateOverFederation
    // expects it): their other devices learn that new users may now track them.
    let mut started = BTreeSet::new();
    let device_changes = state.e2ee.device_list_changes(since, now)?;
    for ur in state
        .rooms
        .rooms_for_user_with_forgotten(viewer)
        .map_err(room_err)?
    {
        let room = &ur.room_id;
        if ur.pos > since && ur.pos <= now {
            // The viewer's own membership changed in the range.
            match ur.membership {
                rooms::Membership::Join => {
                    started.extend(state.rooms.joined_members(room).map_err(room_err)?);
                }
                rooms::Membership::Leave | rooms::Membership::Ban => {
                    let before = state
                        .rooms
                        .state_at_position(room, since)
                        .map_err(room_err)?;
                    for ((kind, key), _) in before {
                        if kind == "m.room.member"
                            && let Ok(u) = OwnedUserId::try_from(key)
                        {
                            maybe_left.insert(u);
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        if ur.membership != rooms::Membership::Join
            || state.rooms.room_last_pos(room).map_err(room_err)? <= since
        {
            continue;
        }
        // Someone else's membership may have changed in a room the viewer stayed in. The
        // common case (a few events since the token) reads them; only a long gap diffs the
        // room's member state.
        let (events, more) = state
            .rooms
            .timeline(room, Some(since), now, MEMBER_SCAN)
            .map_err(room_err)?;
        if !more {
            for ev in events.iter().filter(|e| e.kind() == "m.room.member") {
                let Some(u) = ev.state_key().and_then(|k| OwnedUserId::try_from(k).ok()) else {
                    continue;
                };
                match state.rooms.membership_state(room, &u).map_err(room_err)? {
                    Some(rooms::Membership::Join) => started.insert(u),
                    _ => maybe_left.insert(u),
                };
            }
            continue;
        }
        let before = state
            .rooms
            .state_at_position(room, since)
            .map_err(room_err)?;
        let after = state.rooms.current_state(room).map_err(room_err)?;
        for ((kind, key), id) in &after {
            if kind != "m.room.member" || before.get(&(kind.clone(), key.clone())) == Some(id) {
                continue;
            }
            let Ok(u) = OwnedUserId::try_from(key.as_str()) else {
                continue;
            };
            match state.rooms.membership_state(room, &u).map_err(room_err)? {
                Some(rooms::Membership::Join) => {
                    started.insert(u);
                }
                _ => {
                    maybe_left.insert(u);
                }
            }
        }
    }
    // Who shares a room with the viewer now: read only when something needs the answer.
    if device_changes.is_empty() && maybe_left.is_empty() && started.is_empty() {
        return Ok((changed, maybe_left));
    }
    let shared = shared_users(state, viewer)?;
    for u in device_changes {
        if u == viewer || shared.contains(&u) {
            changed.insert(u);
        }
    }
    changed.extend(started);
    let left: BTreeSet<OwnedUserId> = maybe_left
        .into_iter()
        .filter(|u| u != viewer && !shared.contains(u))
        .collect();
    changed.retain(|u| !left.contains(u));
    Ok((changed, left))
}
