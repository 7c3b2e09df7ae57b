//! Federation transaction bodies (`PUT /_matrix/federation/v1/send/{txnId}`): the body is
//! parsed as `api-federation/src/send.rs` does (a JSON object with `pdus` and `edus`), each
//! PDU as a canonical JSON object with its reference hash for every room version, and each
//! EDU by its type the way the EDU handlers read them (ruma's EDU contents).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ruma::CanonicalJsonObject;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(txn)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let empty = Vec::new();
    let pdus = txn.get("pdus").and_then(Value::as_array).unwrap_or(&empty);
    let edus = txn.get("edus").and_then(Value::as_array).unwrap_or(&empty);
    for pdu in pdus.iter().take(50) {
        let Ok(obj) = serde_json::from_value::<CanonicalJsonObject>(pdu.clone()) else {
            continue;
        };
        let _ = obj
            .get("room_id")
            .and_then(|r| r.as_str())
            .map(ruma::RoomId::parse);
        for version in [
            ruma::RoomVersionId::V1,
            ruma::RoomVersionId::V3,
            ruma::RoomVersionId::V11,
        ] {
            if let Some(rules) = version.rules() {
                let _ = ruma::signatures::reference_hash(&obj, &rules);
            }
        }
    }
    for edu in edus.iter().take(100) {
        let content = edu.get("content").cloned().unwrap_or(Value::Null);
        match edu.get("edu_type").and_then(Value::as_str) {
            Some("m.presence") => {
                let _ = serde_json::from_value::<
                    ruma::api::federation::transactions::edu::PresenceContent,
                >(content);
            }
            Some("m.typing") => {
                let _ = serde_json::from_value::<
                    ruma::api::federation::transactions::edu::TypingContent,
                >(content);
            }
            Some("m.receipt") => {
                let _ = serde_json::from_value::<
                    ruma::api::federation::transactions::edu::ReceiptContent,
                >(content);
            }
            Some("m.device_list_update") => {
                let _ = serde_json::from_value::<
                    ruma::api::federation::transactions::edu::DeviceListUpdateContent,
                >(content);
            }
            _ => {
                let _ = serde_json::from_value::<ruma::api::federation::transactions::edu::Edu>(
                    edu.clone(),
                );
            }
        }
    }
});
