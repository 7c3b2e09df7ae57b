//! Push rules: the body of `PUT /pushrules/global/{kind}/{ruleId}` turned into a ruma
//! `NewPushRule` the way `push::rules::new_rule` does (actions, conditions, pattern),
//! inserted into the server-default ruleset, then the ruleset evaluated against an event
//! taken from the same input (`push::eval::evaluate`: ruma's `get_actions`).
//! Input: `kind \n rule_id \n body JSON \n event JSON`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::push::{
    Action, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule,
    PushCondition, PushConditionRoomCtx, Ruleset,
};
use ruma::serde::Raw;
use ruma::{owned_room_id, owned_user_id, uint, user_id};
use serde_json::Value;

fn new_rule(kind: &str, rule_id: &str, body: &Value) -> Option<NewPushRule> {
    let actions: Vec<Action> = serde_json::from_value(body.get("actions")?.clone()).ok()?;
    let conditions = || -> Option<Vec<PushCondition>> {
        match body.get("conditions") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(c) => serde_json::from_value(c.clone()).ok(),
        }
    };
    let id = rule_id.to_owned();
    Some(match kind {
        "override" => {
            NewPushRule::Override(NewConditionalPushRule::new(id, conditions()?, actions))
        }
        "underride" => {
            NewPushRule::Underride(NewConditionalPushRule::new(id, conditions()?, actions))
        }
        "content" => {
            let pattern = body.get("pattern")?.as_str()?.to_owned();
            NewPushRule::Content(NewPatternedPushRule::new(id, pattern, actions))
        }
        "room" => NewPushRule::Room(NewSimplePushRule::new(id.try_into().ok()?, actions)),
        "sender" => NewPushRule::Sender(NewSimplePushRule::new(id.try_into().ok()?, actions)),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(4, '\n');
    let (Some(kind), Some(rule_id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let event = parts.next().unwrap_or("{}");
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let mut rules = Ruleset::server_default(user_id!("@me:example.org"));
    if let Some(rule) = new_rule(kind, rule_id, &body) {
        let _ = rules.insert(rule, None, None);
    }
    let Ok(raw) = serde_json::value::to_raw_value(
        &serde_json::from_str::<Value>(event).unwrap_or(Value::Null),
    ) else {
        return;
    };
    let raw = Raw::<Value>::from_json(raw);
    let ctx = PushConditionRoomCtx::new(
        owned_room_id!("!room:example.org"),
        uint!(3),
        owned_user_id!("@me:example.org"),
        "Me".to_owned(),
    );
    let _ = futures_executor(rules.get_actions(&raw, &ctx));
});

/// ruma's evaluator is async only for a callback Pulse does not set; poll it to completion.
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
