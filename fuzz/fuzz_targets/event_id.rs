//! `rooms::event_id_for`, the event ID a received PDU gets (`/send`, `/event`, backfill,
//! joins): the reference hash for v3+ rooms, the `event_id` field for v1/v2.
//! Input: `room version \n PDU JSON`. Properties: never panics, the same PDU always gets
//! the same ID, and for hashed versions `signatures` and `unsigned` (which a relaying server
//! may change) do not change it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::room_version_rules::EventIdFormatVersion;
use ruma::{CanonicalJsonObject, CanonicalJsonValue};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (version, json) = s.split_once('\n').unwrap_or(("11", s));
    let Ok(version) = rooms::parse_room_version(version.trim()) else {
        return;
    };
    let Ok(mut pdu) = serde_json::from_str::<CanonicalJsonObject>(json) else {
        return;
    };
    let Ok(id) = rooms::event_id_for(&version, &pdu) else {
        return;
    };
    let again = rooms::event_id_for(&version, &pdu).expect("the same PDU hashes again");
    assert_eq!(id, again, "event IDs are deterministic");
    let hashed = version
        .rules()
        .is_some_and(|r| r.event_id_format != EventIdFormatVersion::V1);
    if hashed {
        assert!(id.as_str().starts_with('$'));
        pdu.insert(
            "unsigned".into(),
            CanonicalJsonValue::Object(CanonicalJsonObject::from([(
                "age".to_owned(),
                CanonicalJsonValue::Integer(5u32.into()),
            )])),
        );
        pdu.insert(
            "signatures".into(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
        let relayed = rooms::event_id_for(&version, &pdu).expect("still hashes");
        assert_eq!(id, relayed, "signatures and unsigned are not part of the ID");
    }
});
