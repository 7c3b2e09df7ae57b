//! Evaluating one event against one user's rules with ruma's evaluator
//! ([`Ruleset::get_actions`]), in a [`PushConditionRoomCtx`] built from the room's current
//! state (member count, the user's display name, power levels with the room version's rules).
//!
//! The context is the state *at evaluation time*, not at the event: evaluation happens when
//! the user next syncs (see `notify.rs`), so a display name changed in between is the new one.
use ruma::events::room::power_levels::{
    RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
};
use ruma::push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{RoomId, UInt, UserId};
use serde_json::Value;

use crate::{PushService, Result};

/// What the rules say about one event for one user.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub notify: bool,
    pub highlight: bool,
    pub actions: Vec<Action>,
}

impl PushService {
    /// The evaluation context of `room` for `user`, from the room's current state.
    pub fn room_ctx(&self, room: &RoomId, user: &UserId) -> Result<PushConditionRoomCtx> {
        let members = self.rooms.joined_members(room)?.len();
        let display_name = self
            .rooms
            .current_state_event(room, "m.room.member", user.as_str())?
            .and_then(|ev| ev.content_str("displayname").map(str::to_owned))
            .unwrap_or_else(|| user.localpart().to_owned());
        let ctx = PushConditionRoomCtx::new(
            room.to_owned(),
            UInt::try_from(members as u64).unwrap_or(UInt::MAX),
            user.to_owned(),
            display_name,
        );
        Ok(match self.power_levels_ctx(room)? {
            Some(pl) => ctx.with_power_levels(pl),
            None => ctx,
        })
    }

    /// The room's power levels as the evaluator needs them (`None`: room version unknown).
    fn power_levels_ctx(&self, room: &RoomId) -> Result<Option<PushConditionPowerLevelsCtx>> {
        let Some(rules) = self.rooms.room_version(room)?.and_then(|v| v.rules()) else {
            return Ok(None);
        };
        let creators = self.rooms.room_creators(room)?;
        let source = match self
            .rooms
            .current_state_event(room, "m.room.power_levels", "")?
            .and_then(|ev| serde_json::from_value::<RoomPowerLevelsEventContent>(ev.content()).ok())
        {
            Some(content) => RoomPowerLevelsSource::Original(content),
            None => RoomPowerLevelsSource::None,
        };
        let levels = RoomPowerLevels::new(source, &rules.authorization, creators);
        Ok(Some(levels.into()))
    }
}

/// Evaluate `event` (client format) against `rules`. The user's own events never notify.
pub fn evaluate(rules: &Ruleset, ctx: &PushConditionRoomCtx, event: &Value) -> Verdict {
    let raw = match serde_json::value::to_raw_value(event) {
        Ok(r) => Raw::<Value>::from_json(r),
        Err(_) => {
            return Verdict {
                notify: false,
                highlight: false,
                actions: Vec::new(),
            };
        }
    };
    // ruma's evaluator is async only for an MSC4306 callback Pulse does not set: nothing in
    // it waits, so polling it to completion here does not block.
    let actions = futures::executor::block_on(rules.get_actions(&raw, ctx)).to_vec();
    Verdict {
        notify: actions.iter().any(Action::should_notify),
        highlight: actions.iter().any(Action::is_highlight),
        actions,
    }
}

/// The thread an event belongs to (`m.relates_to` with `rel_type: m.thread`).
pub fn thread_of(event: &Value) -> Option<String> {
    let rel = event.get("content")?.get("m.relates_to")?;
    (rel.get("rel_type")?.as_str()? == "m.thread")
        .then(|| rel.get("event_id")?.as_str().map(str::to_owned))
        .flatten()
}

#[cfg(test)]
mod tests {
    use ruma::{owned_room_id, user_id};
    use serde_json::json;

    use super::*;
    use crate::rules::server_default;

    fn ctx(members: u32) -> PushConditionRoomCtx {
        PushConditionRoomCtx::new(
            owned_room_id!("!r:example.org"),
            UInt::from(members),
            user_id!("@bob:example.org").to_owned(),
            "Bobby".into(),
        )
    }

    fn msg(content: Value) -> Value {
        json!({"type": "m.room.message", "sender": "@alice:example.org",
               "room_id": "!r:example.org", "event_id": "$e", "content": content})
    }

    #[test]
    fn default_rules_give_the_spec_verdicts() {
        let rules = server_default(user_id!("@bob:example.org"));
        let plain = evaluate(
            &rules,
            &ctx(3),
            &msg(json!({"msgtype": "m.text", "body": "hi"})),
        );
        assert!(plain.notify && !plain.highlight, "{plain:?}");
        let mention = msg(json!({"body": "hi", "m.mentions": {"user_ids": ["@bob:example.org"]}}));
        let v = evaluate(&rules, &ctx(3), &mention);
        assert!(v.notify && v.highlight, "{v:?}");
        let by_name = evaluate(&rules, &ctx(3), &msg(json!({"body": "hey Bobby!"})));
        assert!(by_name.highlight, "display name: {by_name:?}");
        let by_localpart = evaluate(
            &rules,
            &ctx(3),
            &msg(json!({"body": "hey @bob:example.org"})),
        );
        assert!(by_localpart.highlight, "user name: {by_localpart:?}");
        let notice = evaluate(
            &rules,
            &ctx(3),
            &msg(json!({"msgtype": "m.notice", "body": "x"})),
        );
        assert!(!notice.notify, "{notice:?}");
        // One-to-one: notify with sound, no highlight.
        let dm = evaluate(&rules, &ctx(2), &msg(json!({"body": "x"})));
        assert!(dm.notify && !dm.highlight && dm.actions.iter().any(|a| a.sound().is_some()));
        let mut enc = msg(json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}));
        enc["type"] = json!("m.room.encrypted");
        assert!(evaluate(&rules, &ctx(5), &enc).notify);
        let own = json!({"type": "m.room.message", "sender": "@bob:example.org",
                         "content": {"body": "Bobby"}});
        assert!(!evaluate(&rules, &ctx(3), &own).notify);
        let member = json!({"type": "m.room.member", "sender": "@carol:example.org",
                            "state_key": "@carol:example.org", "content": {"membership": "join"}});
        assert!(!evaluate(&rules, &ctx(3), &member).notify);
    }

    #[test]
    fn threads_are_read_from_relations() {
        let ev = msg(
            json!({"body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}),
        );
        assert_eq!(thread_of(&ev).as_deref(), Some("$root"));
        let reply = msg(
            json!({"body": "x", "m.relates_to": {"rel_type": "m.reference", "event_id": "$r"}}),
        );
        assert_eq!(thread_of(&reply), None);
    }
}
