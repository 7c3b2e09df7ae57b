//! Sync filters: an uploaded filter body or an inline `/sync?filter=` value, parsed into
//! ruma's `FilterDefinition` as `accounts::filter::parse_filter` does (after dropping JSON
//! nulls), and the `/messages` `RoomEventFilter`. What is accepted is stored as JSON and read
//! back later: it must round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::api::client::filter::{FilterDefinition, RoomEventFilter};
use serde_json::Value;

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    drop_nulls(&mut value);
    if let Ok(filter) = serde_json::from_value::<FilterDefinition>(value.clone()) {
        let stored = serde_json::to_string(&filter).expect("a parsed filter serialises");
        serde_json::from_str::<FilterDefinition>(&stored).expect("a stored filter parses back");
    }
    if let Ok(f) = serde_json::from_value::<RoomEventFilter>(value) {
        let stored = serde_json::to_string(&f).expect("serialises");
        serde_json::from_str::<RoomEventFilter>(&stored).expect("parses back");
    }
});
