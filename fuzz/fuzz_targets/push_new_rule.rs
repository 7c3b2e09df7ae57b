//! `push::rules::new_rule`, what `PUT /pushrules/global/{kind}/{ruleId}` runs on the path's
//! kind and rule ID and the client's body, then the insert into the server-default ruleset
//! (`push::rules::server_default`, errors through `insert_error`) and the read back
//! (`rule_json`, what `GET` of the rule answers). Input: `kind \n rule_id \n body JSON`.
//! Property: a rule that was inserted can be read back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use push::rules::{insert_error, new_rule, parse_kind, rule_json, server_default};
use ruma::user_id;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(3, '\n');
    let (Some(kind), Some(rule_id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(kind) = parse_kind(kind) else {
        return;
    };
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let Ok(rule) = new_rule(&kind, rule_id, &body) else {
        return;
    };
    let mut rules = server_default(user_id!("@me:example.org"));
    match rules.insert(rule, None, None) {
        Ok(()) => {
            assert!(
                rule_json(&rules, &kind, rule_id).is_some(),
                "an inserted rule is found again"
            );
        }
        Err(e) => {
            let _ = insert_error(e).to_string();
        }
    }
});
