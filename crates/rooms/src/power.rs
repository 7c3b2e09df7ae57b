//! A room's power levels for local permission checks (redact, send state, delete an alias,
//! pick a restricted-join authoriser), as ruma models them: [`RoomPowerLevels`] under the room
//! version's authorization rules, so the checks here and the authorization rules proper
//! (ruma-state-res) read levels the same way.
//!
//! * From v10 levels must be integers: a string level is refused here as the auth rules
//!   refuse it (older versions accept `"50"`).
//! * From v12 the room's creators (the create event's sender and `additional_creators`)
//!   rank above every level ([`UserPowerLevel::Infinite`]); before v12, with no
//!   `m.room.power_levels` in the state, the creator has 100.
use ruma::events::room::power_levels::{
    RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
};
use ruma::room_version_rules::AuthorizationRules;
use ruma::state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent, RoomPowerLevelsIntField};
use ruma::{OwnedUserId, RoomId};

use crate::pdu::Pdu;
use crate::persist::rules_for;
use crate::store::{RoomSummary, StoredEvent};
use crate::{Result, RoomError, RoomService};

/// The level fields ruma-state-res reads with the version's integer rule.
const INT_FIELDS: [RoomPowerLevelsIntField; 7] = [
    RoomPowerLevelsIntField::UsersDefault,
    RoomPowerLevelsIntField::EventsDefault,
    RoomPowerLevelsIntField::StateDefault,
    RoomPowerLevelsIntField::Ban,
    RoomPowerLevelsIntField::Redact,
    RoomPowerLevelsIntField::Kick,
    RoomPowerLevelsIntField::Invite,
];

impl RoomService {
    /// The room's current power levels.
    pub(crate) fn power_levels(
        &self,
        room: &RoomId,
        summary: &RoomSummary,
    ) -> Result<RoomPowerLevels> {
        let event = self.current_state_event(room, "m.room.power_levels", "")?;
        self.power_levels_of(summary, event.as_ref())
    }

    /// The power levels an `m.room.power_levels` event (`None`: none in the state) gives in
    /// the room of `summary`.
    pub(crate) fn power_levels_of(
        &self,
        summary: &RoomSummary,
        event: Option<&StoredEvent>,
    ) -> Result<RoomPowerLevels> {
        let rules = rules_for(&summary.version)?.authorization;
        let creators = self.creators(summary)?;
        let event = event.map(as_pdu).transpose()?;
        levels(event, &rules, creators)
            .map_err(|e| RoomError::Internal(format!("{e} (room version {})", summary.version)))
    }
}

impl RoomService {
    /// The room's creators, the one notion of them the engine has: ruma's reading of the
    /// create event under the version's rules (`creator` until v10, the sender from v11,
    /// plus v12's `additional_creators`), sorted.
    pub(crate) fn creators(&self, summary: &RoomSummary) -> Result<Vec<OwnedUserId>> {
        let rules = rules_for(&summary.version)?.authorization;
        let create = self.require_event(&summary.create_event)?;
        let mut creators: Vec<OwnedUserId> = RoomCreateEvent::new(as_pdu(&create)?)
            .creators(&rules)
            .map_err(|e| RoomError::Internal(format!("room {}: {e}", create.room_id())))?
            .into_iter()
            .collect();
        creators.sort();
        Ok(creators)
    }

    /// The room's creators (v12: the create event's sender and `additional_creators`;
    /// earlier versions: the one creator), sorted.
    pub fn room_creators(&self, room: &RoomId) -> Result<Vec<OwnedUserId>> {
        let summary = self.require_summary(room)?;
        self.creators(&summary)
    }
}

fn as_pdu(event: &StoredEvent) -> Result<Pdu> {
    Pdu::parse(event.event_id.clone(), &event.pdu)
}

/// `RoomPowerLevels` from a power-levels event under `rules`. A level the rules do not allow
/// (a string from v10) is an error: the auth rules would have refused the event.
fn levels(
    event: Option<Pdu>,
    rules: &AuthorizationRules,
    creators: impl IntoIterator<Item = OwnedUserId> + Clone,
) -> Result<RoomPowerLevels, String> {
    let source = match event {
        None => RoomPowerLevelsSource::None,
        Some(pdu) => {
            let content: RoomPowerLevelsEventContent = serde_json::from_str(pdu.content.get())
                .map_err(|e| format!("malformed m.room.power_levels {}: {e}", pdu.event_id))?;
            let checked = RoomPowerLevelsEvent::new(pdu);
            for field in INT_FIELDS {
                checked.get_as_int(field, rules)?;
            }
            checked.events(rules)?;
            checked.users(rules)?;
            checked.notifications(rules)?;
            RoomPowerLevelsSource::Original(content)
        }
    };
    Ok(RoomPowerLevels::new(source, rules, creators))
}

/// Power-levels content as a test or a caller without a stored event has it.
#[cfg(test)]
fn levels_of_content(
    content: Option<serde_json::Value>,
    version: &ruma::RoomVersionId,
    creators: &[OwnedUserId],
) -> Result<RoomPowerLevels, String> {
    use ruma::{CanonicalJsonObject, owned_event_id};
    let rules = version.rules().ok_or("unsupported version")?.authorization;
    let event = match content {
        None => None,
        Some(content) => {
            let pdu: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
                "room_id": "!r:x",
                "sender": creators[0],
                "origin_server_ts": 0,
                "type": "m.room.power_levels",
                "state_key": "",
                "content": content,
            }))
            .map_err(|e| e.to_string())?;
            Some(Pdu::parse(owned_event_id!("$pl"), &pdu).map_err(|e| e.to_string())?)
        }
    };
    levels(event, &rules, creators.to_vec())
}

#[cfg(test)]
mod tests {
    use ruma::events::StateEventType;
    use ruma::events::room::power_levels::UserPowerLevel;
    use ruma::{RoomVersionId, int, owned_user_id, user_id};
    use serde_json::json;

    use super::*;

    #[test]
    fn string_levels_only_before_v10() {
        let creator = owned_user_id!("@alice:x");
        let content = json!({ "users": { "@bob:x": "60" }, "redact": "40" });
        let v9 = levels_of_content(
            Some(content.clone()),
            &RoomVersionId::V9,
            std::slice::from_ref(&creator),
        )
        .expect("v9 accepts string levels");
        assert_eq!(
            v9.for_user(user_id!("@bob:x")),
            UserPowerLevel::Int(int!(60))
        );
        assert!(v9.user_can_redact_event_of_other(user_id!("@bob:x")));
        for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
            let err = levels_of_content(
                Some(content.clone()),
                &version,
                std::slice::from_ref(&creator),
            )
            .expect_err("integer-only versions refuse string levels");
            assert!(err.contains("users") || err.contains("redact"), "{err}");
        }
        let nested = json!({ "events": { "m.room.name": "50" } });
        assert!(levels_of_content(Some(nested), &RoomVersionId::V11, &[creator]).is_err());
    }

    #[test]
    fn integer_levels_and_defaults() {
        let alice = owned_user_id!("@alice:x");
        let content = json!({
            "users": { "@alice:x": 100, "@bob:x": 50 },
            "events": { "m.room.canonical_alias": 60 },
            "state_default": 40,
            "invite": 50
        });
        let pl = levels_of_content(Some(content), &RoomVersionId::V11, &[alice]).unwrap();
        let bob = user_id!("@bob:x");
        let carol = user_id!("@carol:x");
        assert!(pl.user_can_send_state(bob, StateEventType::RoomName));
        assert!(!pl.user_can_send_state(bob, StateEventType::RoomCanonicalAlias));
        assert!(pl.user_can_invite(bob));
        assert!(!pl.user_can_invite(carol));
        // `redact` defaults to 50.
        assert!(pl.user_can_redact_event_of_other(bob));
        assert!(!pl.user_can_redact_event_of_other(carol));
    }

    #[test]
    fn without_power_levels_the_creator_has_100_before_v12() {
        let alice = owned_user_id!("@alice:x");
        let pl =
            levels_of_content(None, &RoomVersionId::V11, std::slice::from_ref(&alice)).unwrap();
        assert_eq!(pl.for_user(&alice), UserPowerLevel::Int(int!(100)));
        assert_eq!(
            pl.for_user(user_id!("@bob:x")),
            UserPowerLevel::Int(int!(0))
        );
    }

    #[test]
    fn v12_creators_outrank_every_level() {
        let alice = owned_user_id!("@alice:x");
        let dave = owned_user_id!("@dave:x");
        let content = json!({ "users": { "@bob:x": 9000 }, "users_default": 0 });
        let creators = [alice.clone(), dave.clone()];
        let v12 = levels_of_content(Some(content.clone()), &RoomVersionId::V12, &creators).unwrap();
        assert_eq!(v12.for_user(&alice), UserPowerLevel::Infinite);
        assert_eq!(v12.for_user(&dave), UserPowerLevel::Infinite);
        assert!(v12.for_user(&alice) > v12.for_user(user_id!("@bob:x")));
        // The same content before v12: the creator is an ordinary user not listed.
        let v11 = levels_of_content(Some(content), &RoomVersionId::V11, &creators).unwrap();
        assert_eq!(v11.for_user(&alice), UserPowerLevel::Int(int!(0)));
        // And with no power levels at all.
        let none = levels_of_content(None, &RoomVersionId::V12, &creators).unwrap();
        assert_eq!(none.for_user(&dave), UserPowerLevel::Infinite);
    }
}
