//! Sync filters: an uploaded filter body or an inline `/sync?filter=` value
//! (`accounts::filter::parse_filter_str`), and the `/messages` room event filter. What is
//! accepted is stored as JSON and read back later: it must round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = accounts::filter::parse_filter_str(s) {
        let stored = serde_json::to_string(&filter).expect("a parsed filter serialises");
        accounts::filter::parse_filter_str(&stored).expect("a stored filter parses back");
    }
    let _ = accounts::filter::parse_room_event_filter_str(s);
});
