//! The MSC4325 presence sharing config and its globs (presence-core, Pulse's own code):
//! parsing (`SharingConfig::from_json`, the core of the account-data PUT's validation),
//! compilation, and the visibility decision for viewers taken from the input (glob matching
//! against arbitrary user IDs), with a small room index.
#![no_main]
use libfuzzer_sys::fuzz_target;
use presence_core::audience::AudienceIndex;
use presence_core::sharing::SharingPolicy;
use ruma::{OwnedUserId, room_id, user_id};

fuzz_target!(|data: &[u8]| {
    let Ok(content) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let owner = user_id!("@owner:example.org");
    let mut rooms = AudienceIndex::new();
    rooms.apply_membership(room_id!("!shared:example.org"), owner, true);
    rooms.apply_membership(
        room_id!("!shared:example.org"),
        user_id!("@friend:example.org"),
        true,
    );
    if let Ok(config) = presence_core::sharing::SharingConfig::from_json(&content) {
        let _ = SharingPolicy::compile(&config);
    }
    let policy = SharingPolicy::from_account_data(Some(&content));
    // Viewers: every string in the input that is a user ID, plus a few fixed ones.
    let mut viewers: Vec<OwnedUserId> = vec![
        user_id!("@friend:example.org").to_owned(),
        user_id!("@stranger:other.example").to_owned(),
        owner.to_owned(),
    ];
    collect_users(&content, &mut viewers);
    for viewer in viewers.iter().take(64) {
        let _ = policy.may_see(owner, viewer, &rooms);
    }
    let _ = policy.explicitly_allowed_users().count();
});

fn collect_users(v: &serde_json::Value, out: &mut Vec<OwnedUserId>) {
    match v {
        serde_json::Value::String(s) => {
            if let Ok(u) = OwnedUserId::try_from(s.as_str()) {
                out.push(u);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_users(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| collect_users(x, out)),
        _ => {}
    }
}
