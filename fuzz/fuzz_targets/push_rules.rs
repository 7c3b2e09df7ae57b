//! Push rules: the body of `PUT /pushrules/global/{kind}/{ruleId}` (`push::rules::new_rule`),
//! inserted into the server-default ruleset, then evaluated against an event taken from the
//! same input. Input: `kind \n rule_id \n body JSON \n event JSON`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::push::PushConditionRoomCtx;
use ruma::{owned_room_id, owned_user_id, uint, user_id};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(4, '\n');
    let (Some(kind), Some(rule_id), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let event = parts.next().unwrap_or("{}");
    let Ok(kind) = push::rules::parse_kind(kind) else {
        return;
    };
    let Ok(body) = serde_json::from_str::<serde_json::Value>(body) else {
        return;
    };
    let mut rules = push::rules::server_default(user_id!("@me:example.org"));
    if let Ok(rule) = push::rules::new_rule(&kind, rule_id, &body) {
        if rules.insert(rule, None, None).is_ok() {
            let _ = push::rules::rule_json(&rules, &kind, rule_id);
        }
    }
    let Ok(event) = serde_json::from_str::<serde_json::Value>(event) else {
        return;
    };
    let ctx = PushConditionRoomCtx::new(
        owned_room_id!("!room:example.org"),
        uint!(3),
        owned_user_id!("@me:example.org"),
        "Me".to_owned(),
    );
    let _ = push::eval::evaluate(&rules, &ctx, &event);
});
