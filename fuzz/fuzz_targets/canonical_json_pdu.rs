//! Canonical JSON and PDUs: parse arbitrary bytes as a canonical JSON object, serialise it
//! canonically (must round-trip), and for every room version compute what `rooms` computes
//! for a received PDU (`rooms::version::event_id_of`, `rooms::remote`): the reference hash
//! (the event ID of v3+), the content hash, and the redacted form — then hash the redacted
//! form again (what signature checks of a redacted event do).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::canonical_json::redact;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId};

const VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

fuzz_target!(|data: &[u8]| {
    let Ok(pdu) = serde_json::from_slice::<CanonicalJsonObject>(data) else {
        return;
    };
    // Canonical serialisation is stable: parsing it back gives the same object.
    let text = CanonicalJsonValue::Object(pdu.clone()).to_string();
    let back: CanonicalJsonObject =
        serde_json::from_str(&text).expect("canonical JSON parses back");
    assert_eq!(back, pdu, "canonical JSON round trip");
    let _ = ruma::signatures::content_hash(&pdu);
    for version in VERSIONS {
        let Some(rules) = version.rules() else {
            continue;
        };
        let _ = ruma::signatures::reference_hash(&pdu, &rules);
        if let Ok(redacted) = redact(pdu.clone(), &rules.redaction, None) {
            let _ = ruma::signatures::reference_hash(&redacted, &rules);
            // Redaction is idempotent.
            let twice = redact(redacted.clone(), &rules.redaction, None)
                .expect("a redacted event redacts again");
            assert_eq!(twice, redacted, "redaction is idempotent ({version})");
        }
    }
});
