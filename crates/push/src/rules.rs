//! A user's push rules: stored as global account data `m.push_rules` (`{"global": ruleset}`)
//! so `/sync` carries them like any account data, read back merged with the current
//! server-default rules, and edited through [`PushService::edit_rules`] (one writer per user).
//!
//! The server defaults are ruma's [`Ruleset::server_default`] (the spec's predefined rules)
//! plus the legacy rules the spec deprecated in v1.7 but clients and Synapse still rely on
//! for messages without `m.mentions` (`.m.rule.contains_display_name`, `.m.rule.roomnotif`,
//! `.m.rule.contains_user_name`).
use ruma::UserId;
use ruma::push::{
    Action, ConditionalPushRule, ConditionalPushRuleInit, HighlightTweakValue, NewPushRule,
    PatternedPushRule, PatternedPushRuleInit, PushCondition, RuleKind, Ruleset, SoundTweakValue,
    Tweak,
};
use serde_json::{Value, json};

use crate::{PushError, PushService, Result};

/// The account data type the rules are stored under.
pub const PUSH_RULES_TYPE: &str = "m.push_rules";

/// The spec's server-default rules for `user`, with the deprecated legacy mention rules.
pub fn server_default(user: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    let highlight = |sound: bool| {
        let mut a = vec![
            Action::Notify,
            Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
        ];
        if sound {
            a.push(Action::SetTweak(Tweak::Sound(SoundTweakValue::Default)));
        }
        a
    };
    // Legacy overrides go right after `.m.rule.is_room_mention`, where the spec had them.
    let legacy_overrides = [
        ConditionalPushRule::from(ConditionalPushRuleInit {
            actions: highlight(true),
            default: true,
            enabled: true,
            rule_id: ".m.rule.contains_display_name".into(),
            // Deprecated by the spec (v1.7) but what clients without `m.mentions` rely on.
            #[allow(deprecated)]
            conditions: vec![PushCondition::ContainsDisplayName],
        }),
        ConditionalPushRule::from(ConditionalPushRuleInit {
            actions: highlight(false),
            default: true,
            enabled: true,
            rule_id: ".m.rule.roomnotif".into(),
            conditions: vec![
                PushCondition::EventMatch(ruma::push::EventMatchConditionData::new(
                    "content.body".into(),
                    "@room".into(),
                )),
                PushCondition::SenderNotificationPermission(
                    ruma::push::SenderNotificationPermissionConditionData::new("room".into()),
                ),
            ],
        }),
    ];
    let at = rules
        .override_
        .get_index_of(".m.rule.is_room_mention")
        .map_or(rules.override_.len(), |i| i + 1);
    for (i, rule) in legacy_overrides.into_iter().enumerate() {
        let (idx, _) = rules.override_.insert_full(rule);
        rules.override_.move_index(idx, at + i);
    }
    rules
        .content
        .insert(PatternedPushRule::from(PatternedPushRuleInit {
            actions: highlight(true),
            default: true,
            enabled: true,
            rule_id: ".m.rule.contains_user_name".into(),
            pattern: user.localpart().to_owned(),
        }));
    rules
}

/// Parse a kind from a path segment (`override`, `underride`, `sender`, `room`, `content`).
pub fn parse_kind(kind: &str) -> Result<RuleKind> {
    match kind {
        "override" | "underride" | "sender" | "room" | "content" => Ok(RuleKind::from(kind)),
        _ => Err(PushError::InvalidParam(format!(
            "Unknown push rule kind {kind:?}"
        ))),
    }
}

/// One rule as the client API shows it (`GET /pushrules/global/{kind}/{ruleId}`).
pub fn rule_json(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Option<Value> {
    let v = match kind {
        RuleKind::Override => serde_json::to_value(rules.override_.get(rule_id)?),
        RuleKind::Underride => serde_json::to_value(rules.underride.get(rule_id)?),
        RuleKind::Content => serde_json::to_value(rules.content.get(rule_id)?),
        RuleKind::Room => serde_json::to_value(rules.room.iter().find(|r| r.rule_id == rule_id)?),
        RuleKind::Sender => {
            serde_json::to_value(rules.sender.iter().find(|r| r.rule_id == rule_id)?)
        }
        _ => return None,
    };
    v.ok()
}

/// The body of `PUT /pushrules/global/{kind}/{ruleId}` as a ruma [`NewPushRule`].
pub fn new_rule(kind: &RuleKind, rule_id: &str, body: &Value) -> Result<NewPushRule> {
    let actions: Vec<Action> = match body.get("actions") {
        Some(a) => serde_json::from_value(a.clone())
            .map_err(|e| PushError::BadJson(format!("Invalid actions: {e}")))?,
        None => return Err(PushError::MissingParam("Missing 'actions'".into())),
    };
    use ruma::push::{NewConditionalPushRule, NewPatternedPushRule, NewSimplePushRule};
    let conditions = || -> Result<Vec<PushCondition>> {
        match body.get("conditions") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(c) => serde_json::from_value(c.clone())
                .map_err(|e| PushError::BadJson(format!("Invalid conditions: {e}"))),
        }
    };
    Ok(match kind {
        RuleKind::Override => NewPushRule::Override(NewConditionalPushRule::new(
            rule_id.to_owned(),
            conditions()?,
            actions,
        )),
        RuleKind::Underride => NewPushRule::Underride(NewConditionalPushRule::new(
            rule_id.to_owned(),
            conditions()?,
            actions,
        )),
        RuleKind::Content => {
            let pattern = body
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(|| PushError::MissingParam("Content rules need a 'pattern'".into()))?;
            NewPushRule::Content(NewPatternedPushRule::new(
                rule_id.to_owned(),
                pattern.to_owned(),
                actions,
            ))
        }
        RuleKind::Room => {
            let room = ruma::OwnedRoomId::try_from(rule_id).map_err(|_| {
                PushError::InvalidParam(format!("A room rule's ID must be a room ID: {rule_id:?}"))
            })?;
            NewPushRule::Room(NewSimplePushRule::new(room, actions))
        }
        RuleKind::Sender => {
            let user = ruma::OwnedUserId::try_from(rule_id).map_err(|_| {
                PushError::InvalidParam(format!(
                    "A sender rule's ID must be a user ID: {rule_id:?}"
                ))
            })?;
            NewPushRule::Sender(NewSimplePushRule::new(user, actions))
        }
        _ => return Err(PushError::InvalidParam("Unknown push rule kind".into())),
    })
}

/// `ruma`'s insert errors as the client API's.
pub fn insert_error(e: ruma::push::InsertPushRuleError) -> PushError {
    use ruma::push::InsertPushRuleError as E;
    match e {
        E::UnknownRuleId => PushError::NotFound("The before/after rule does not exist".into()),
        E::ServerDefaultRuleId => {
            PushError::InvalidParam("Rule IDs starting with '.' are reserved for the server".into())
        }
        E::InvalidRuleId => PushError::InvalidParam("Rule IDs cannot contain '/' or '\\'".into()),
        E::RelativeToServerDefaultRule => PushError::InvalidParam(
            "A rule cannot be placed relative to a server-default rule".into(),
        ),
        E::BeforeHigherThanAfter => {
            PushError::InvalidParam("'before' has a higher priority than 'after'".into())
        }
        other => PushError::InvalidParam(other.to_string()),
    }
}

impl PushService {
    /// The user's rules: the stored ones brought up to date with the server defaults, or the
    /// server defaults when nothing is stored.
    pub fn rules(&self, user: &UserId) -> Result<Ruleset> {
        Ok(self.stored_rules(user)?.0)
    }

    /// The rules and whether they are stored as they are (false: stored absent or stale).
    fn stored_rules(&self, user: &UserId) -> Result<(Ruleset, bool)> {
        let stored = self
            .accounts
            .account_data(user, None, PUSH_RULES_TYPE)?
            .and_then(|c| c.get("global").cloned())
            .and_then(|g| serde_json::from_value::<Ruleset>(g).ok());
        let default = server_default(user);
        match stored {
            None => Ok((default, false)),
            Some(mut rules) => {
                let before = serde_json::to_value(&rules).ok();
                rules.update_with_server_default(default);
                let fresh = before == serde_json::to_value(&rules).ok();
                Ok((rules, fresh))
            }
        }
    }

    /// Store the user's rules as account data if they are not stored (or are stale), so an
    /// initial `/sync` carries `m.push_rules`. Returns the stream position of a write.
    pub fn ensure_rules_stored(&self, user: &UserId) -> Result<Option<u64>> {
        let _guard = self.rule_locks.lock(user.as_str());
        let (rules, fresh) = self.stored_rules(user)?;
        if fresh {
            return Ok(None);
        }
        self.store_rules(user, &rules).map(Some)
    }

    fn store_rules(&self, user: &UserId, rules: &Ruleset) -> Result<u64> {
        let content = json!({ "global": rules });
        Ok(self
            .accounts
            .set_account_data(user, None, PUSH_RULES_TYPE, &content)?)
    }

    /// Change the user's rules with `f` and store them (one writer per user at a time).
    /// Returns `f`'s answer and the stream position of the write (wake the user's syncs).
    pub fn edit_rules<T>(
        &self,
        user: &UserId,
        f: impl FnOnce(&mut Ruleset) -> Result<T>,
    ) -> Result<(T, u64)> {
        let _guard = self.rule_locks.lock(user.as_str());
        let (mut rules, _) = self.stored_rules(user)?;
        let out = f(&mut rules)?;
        let pos = self.store_rules(user, &rules)?;
        Ok((out, pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_every_predefined_rule_in_spec_order() {
        let user = ruma::user_id!("@bob:example.org");
        let rules = server_default(user);
        let overrides: Vec<_> = rules.override_.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(overrides[0], ".m.rule.master");
        for id in [
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.member_event",
            ".m.rule.is_user_mention",
            ".m.rule.is_room_mention",
            ".m.rule.contains_display_name",
            ".m.rule.roomnotif",
            ".m.rule.tombstone",
        ] {
            assert!(overrides.contains(&id), "{id} missing from {overrides:?}");
        }
        let pos = |id: &str| overrides.iter().position(|r| *r == id);
        assert_eq!(
            pos(".m.rule.contains_display_name"),
            pos(".m.rule.is_room_mention").map(|p| p + 1)
        );
        let underride: Vec<_> = rules.underride.iter().map(|r| r.rule_id.as_str()).collect();
        for id in [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted",
        ] {
            assert!(underride.contains(&id), "{id} missing from {underride:?}");
        }
        let content = rules
            .content
            .get(".m.rule.contains_user_name")
            .expect("content rule");
        assert_eq!(content.pattern, "bob");
    }

    #[test]
    fn new_rule_checks_the_body_for_each_kind() {
        let body = json!({"actions": ["notify"], "pattern": "cake*"});
        assert!(new_rule(&RuleKind::Content, "cake", &body).is_ok());
        assert!(matches!(
            new_rule(&RuleKind::Content, "cake", &json!({"actions": []})),
            Err(PushError::MissingParam(_))
        ));
        assert!(matches!(
            new_rule(&RuleKind::Room, "not-a-room", &json!({"actions": []})),
            Err(PushError::InvalidParam(_))
        ));
        assert!(matches!(
            new_rule(&RuleKind::Override, "x", &json!({"actions": "notify"})),
            Err(PushError::BadJson(_))
        ));
        assert!(matches!(
            new_rule(&RuleKind::Override, "x", &json!({})),
            Err(PushError::MissingParam(_))
        ));
        assert!(parse_kind("bogus").is_err());
    }
}
