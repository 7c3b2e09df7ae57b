//! An invite withdrawn over federation: the inviter kicks our invited user from a room this
//! server has no state of (it was only invited), and the inviter's server pushes that leave to
//! us in `/send`. Without room state the leave cannot be authorised against the room, so it is
//! believed only as far as the invite was: the kick's sender must be the invite's sender (as
//! Synapse requires: another member of the room cannot withdraw someone else's invite), that
//! sender must be on the pushing server, and the event must carry that server's valid
//! signature. Then it is stored as an outlier and the membership becomes `leave`
//! (`rooms::record_remote_leave`), as when our user rejects the invite.
use std::sync::Arc;

use federation_membership::{KeyMemo, verify_pdu};
use rooms::Membership;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedUserId, RoomId, RoomVersionId,
    ServerName,
};
use serde_json::Value;

use crate::FederationState;

fn str_field<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn membership_of(pdu: &CanonicalJsonObject) -> Option<&str> {
    match pdu.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

/// The room version the invite's stripped state names (its `m.room.create`), "1" without one.
fn version_from_invite_state(stripped: &[Value]) -> Option<RoomVersionId> {
    let create = stripped.iter().find(|e| {
        e.get("type").and_then(Value::as_str) == Some("m.room.create")
            && e.get("state_key").and_then(Value::as_str) == Some("")
    });
    let v = create
        .and_then(|c| c.get("content"))
        .and_then(|c| c.get("room_version"))
        .and_then(Value::as_str)
        .unwrap_or("1");
    RoomVersionId::try_from(v).ok()
}

/// `None`: not a withdrawn invite of ours (the caller skips the PDU as for any unknown room).
pub(crate) async fn rescinded_invite(
    state: &Arc<FederationState>,
    origin: &ServerName,
    room: &RoomId,
    pdu: CanonicalJsonObject,
) -> Option<(OwnedEventId, Result<(), String>)> {
    if str_field(&pdu, "type") != Some("m.room.member") || membership_of(&pdu) != Some("leave") {
        return None;
    }
    let user = OwnedUserId::try_from(str_field(&pdu, "state_key")?).ok()?;
    if user.server_name() != state.keys.server_name() {
        return None;
    }
    let sender = str_field(&pdu, "sender")?.to_owned();
    let (rooms, r, u) = (state.rooms.clone(), room.to_owned(), user.clone());
    let found = tokio::task::spawn_blocking(move || {
        let rec = rooms.membership(&r, &u).ok()??;
        if rec.membership != Membership::Invite {
            return None;
        }
        let invite = rooms.event(&rec.event_id).ok()??;
        let stripped = rooms.invite_state(&r, &u).ok()?;
        Some((
            invite.sender().to_owned(),
            version_from_invite_state(&stripped)?,
        ))
    })
    .await
    .ok()??;
    let (inviter, version) = found;
    let rules = version.rules()?;
    let id = rooms::event_id_for(&version, &pdu).ok()?;
    if sender != inviter {
        return Some((
            id,
            Err(format!(
                "only the inviter {inviter} can withdraw the invite of {user}"
            )),
        ));
    }
    if OwnedUserId::try_from(inviter.as_str()).map_or(true, |u| u.server_name() != origin) {
        return Some((id, Err(format!("the inviter {inviter} is not on {origin}"))));
    }
    let mut memo = KeyMemo::new();
    let pdu = match verify_pdu(&*state.remote_keys, &rules, pdu, &mut memo).await {
        Ok((_, pdu)) => pdu,
        Err(e) => return Some((id, Err(e.to_string()))),
    };
    let (rooms, r, u) = (state.rooms.clone(), room.to_owned(), user.clone());
    let recorded =
        tokio::task::spawn_blocking(move || rooms.record_remote_leave(&r, &u, &version, pdu)).await;
    let sent = match recorded {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => return Some((id, Err(e.to_string()))),
        Err(e) => return Some((id, Err(format!("internal error: {e}")))),
    };
    if let Some(m) = state.membership.clone() {
        let (r, pos) = (room.to_owned(), sent.pos);
        let _ = tokio::task::spawn_blocking(move || {
            let user: &ruma::UserId = &user;
            (m.wake)(&r, pos, &[user])
        })
        .await;
    }
    Some((id, Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_stripped_create_event() {
        let stripped = vec![
            serde_json::json!({"type": "m.room.join_rules", "state_key": "", "content": {}}),
            serde_json::json!({"type": "m.room.create", "state_key": "",
                "content": {"room_version": "11"}}),
        ];
        assert_eq!(
            version_from_invite_state(&stripped),
            Some(RoomVersionId::V11)
        );
        assert_eq!(version_from_invite_state(&[]), Some(RoomVersionId::V1));
    }
}
