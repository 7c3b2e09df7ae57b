//! Restricted joins for local users: only this server, as the resident server, may
//! vouch for a join with `join_authorised_via_users_server`, and only after checking
//! the join rule's allow conditions itself. A client never supplies the field.
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::persist::{NewEvent, rules_for};
use crate::{Membership, Result, RoomError, RoomService};

pub(crate) const AUTHORISED_VIA: &str = "join_authorised_via_users_server";

impl RoomService {
    /// Prepare a local member event: drop any client-supplied `join_authorised_via_users_server`
    /// and, for a local user's own join to a restricted room they are not yet joined to or
    /// invited to, check that they are joined to one of the allowed rooms and name a local
    /// member with invite power as the authoriser. Caller holds the write lock.
    pub(crate) fn prepare_local_member(
        &self,
        room: &RoomId,
        sender: &UserId,
        new: &mut NewEvent,
    ) -> Result<()> {
        if new.kind != "m.room.member" {
            return Ok(());
        }
        let Some(content) = new.content.as_object_mut() else {
            return Ok(());
        };
        content.remove(AUTHORISED_VIA);
        if content.get("membership").and_then(Value::as_str) != Some("join")
            || new.state_key.as_deref() != Some(sender.as_str())
        {
            return Ok(());
        }
        if matches!(
            self.membership_state(room, sender)?,
            Some(Membership::Join | Membership::Invite)
        ) {
            return Ok(());
        }
        let Some(rules_ev) = self.current_state_event(room, "m.room.join_rules", "")? else {
            return Ok(());
        };
        let join_rules = rules_ev.content();
        let summary = self.require_summary(room)?;
        let auth = rules_for(&summary.version)?.authorization;
        let restricted = match join_rules.get("join_rule").and_then(Value::as_str) {
            Some("restricted") => auth.restricted_join_rule,
            Some("knock_restricted") => auth.knock_restricted_join_rule,
            _ => false,
        };
        if !restricted {
            return Ok(());
        }
        let allowed = join_rules
            .get("allow")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // A condition counts only for a room this server takes part in (a local member is
        // joined): a stale copy of a room we left cannot tell who is in it now. A remote
        // user we cannot place may be in an allowed room we are not in: that is
        // M_UNABLE_TO_AUTHORISE_JOIN (another resident may know), as Synapse answers; a
        // local user's rooms are all known here, so theirs is a plain 403.
        let mut satisfied = false;
        let mut unknown_room = false;
        for cond in allowed {
            if cond.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Some(r) = cond
                .get("room_id")
                .and_then(Value::as_str)
                .and_then(|r| RoomId::parse(r).ok())
            else {
                continue;
            };
            if !self.room_exists(&r)?
                || !self
                    .joined_members(&r)?
                    .iter()
                    .any(|u| u.server_name() == self.server_name)
            {
                unknown_room = true;
                continue;
            }
            if self.is_joined(&r, sender)? {
                satisfied = true;
                break;
            }
        }
        if !satisfied {
            if unknown_room && sender.server_name() != self.server_name {
                return Err(RoomError::UnableToAuthoriseJoin(format!(
                    "this server is not in every room that {room}'s join rules allow"
                )));
            }
            return Err(RoomError::Forbidden(format!(
                "{sender} is not joined to any room that {room}'s join rules allow"
            )));
        }
        let pl = self.power_levels(room, &summary)?;
        let authoriser: Option<OwnedUserId> = self
            .members(room)?
            .into_iter()
            .filter(|(u, m)| {
                *m == Membership::Join
                    && u.server_name() == self.server_name
                    && pl.user_can_invite(u)
            })
            .map(|(u, _)| u)
            .max_by_key(|u| pl.for_user(u));
        let Some(authoriser) = authoriser else {
            return Err(RoomError::UnableToGrantJoin(format!(
                "no local member of {room} may invite, so this server cannot authorise the join"
            )));
        };
        content.insert(AUTHORISED_VIA.into(), Value::from(authoriser.as_str()));
        Ok(())
    }
}
