//! `accounts::filter::parse_filter_str` and `parse_room_event_filter_str`, exactly what
//! `POST /user/{userId}/filter`, `/sync?filter=` and `/messages?filter=` run on client
//! input, then the filter applied (`EventFilterExt`, `RoomFilterExt`, `RoomEventFilterExt`)
//! to events taken from the input. An accepted filter is stored as JSON and parsed again on
//! every `/sync`: it must round-trip to the same filter.
#![no_main]
use accounts::filter::{
    EventFilterExt, RoomEventFilterExt, RoomFilterExt, parse_filter, parse_filter_str,
    parse_room_event_filter_str,
};
use libfuzzer_sys::fuzz_target;
use ruma::{room_id, user_id};
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let room = room_id!("!room:example.org");
    let sender = user_id!("@alice:example.org");
    // Events to match: fixed ones plus the input itself when it is an object.
    let mut events = vec![
        json!({"type": "m.room.message", "sender": sender, "content": {"body": "hi"}}),
        json!({"type": "m.room.message", "sender": "@bob:x", "content": {"url": "mxc://a/b"}}),
    ];
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
        events.push(v);
    }
    if let Ok(filter) = parse_filter_str(s) {
        let stored = serde_json::to_value(&filter).expect("an accepted filter serialises");
        let back = parse_filter(stored.clone()).expect("a stored filter parses back");
        assert_eq!(
            serde_json::to_value(&back).expect("serialises"),
            stored,
            "a stored filter reads back the same"
        );
        let _ = filter.presence.matches("m.presence", Some(sender));
        let _ = filter.account_data.matches("m.direct", None);
        let _ = filter.presence.limit_or(10, 100);
        let _ = filter.room.matches_room(room);
        for e in &events {
            let _ = filter.room.timeline.matches_json(room, e);
            let _ = filter.room.state.matches_json(room, e);
        }
        let _ = filter.room.timeline.excludes_all();
        let _ = filter.room.timeline.limit_or(10, 1000);
    }
    if let Ok(f) = parse_room_event_filter_str(s) {
        for e in &events {
            let _ = f.matches_json(room, e);
        }
        let _ = f.lazy_load_members();
    }
});
