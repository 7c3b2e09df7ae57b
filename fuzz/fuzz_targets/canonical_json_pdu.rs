//! Canonical JSON and PDUs: parse arbitrary bytes as a canonical JSON object, serialise it
//! canonically (must round-trip), compute the event ID (reference hash) and the keys its
//! signature check needs for every supported room version, and redact it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::CanonicalJsonObject;
use ruma::canonical_json::{CanonicalJsonValue, RedactionRules, redact};
use ruma::room_version_rules::RoomVersionRules;
use ruma::RoomVersionId;

fuzz_target!(|data: &[u8]| {
    let Ok(pdu) = serde_json::from_slice::<CanonicalJsonObject>(data) else {
        return;
    };
    // Canonical serialisation is stable: parsing it back gives the same object.
    let text = CanonicalJsonValue::Object(pdu.clone()).to_string();
    let back: CanonicalJsonObject =
        serde_json::from_str(&text).expect("canonical JSON parses back");
    assert_eq!(back, pdu, "canonical JSON round trip");
    for version in rooms::supported_room_versions() {
        let _ = rooms::event_id_for(&version, &pdu);
        let _ = rooms::keys_needed(&version, &pdu);
        if let Some(rules) = rules_of(&version) {
            let _ = redact(pdu.clone(), &rules.redaction, None);
            let _ = ruma::signatures::reference_hash(&pdu, &rules);
            let _ = ruma::signatures::content_hash(&pdu);
        }
    }
    let _: Option<&RedactionRules> = None;
});

fn rules_of(version: &RoomVersionId) -> Option<RoomVersionRules> {
    version.rules()
}
