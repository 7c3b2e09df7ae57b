//! Checking a remote PDU before anything believes it: size, shape, event ID, the signatures of
//! every server the room version requires (with keys valid at the event's `origin_server_ts`),
//! and the content hash (a mismatch gets the event redacted, as the spec says).
//!
//! This is the stand-in until `rooms` offers one entry point for remote PDUs with a key
//! lookup hook; then the signature part moves behind that hook.
use ruma::canonical_json::redact;
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::{PublicKeyMap, PublicKeySet, Verified};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomVersionId};

use federation_client::keys::KeySource;

/// Spec limit on a PDU's canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;
/// Synapse's caps: more is a malformed event.
pub const MAX_PREV_EVENTS: usize = 20;
pub const MAX_AUTH_EVENTS: usize = 10;

/// A PDU that passed [`check_pdu`].
pub struct CheckedPdu {
    /// The PDU (redacted when its content hash did not match).
    pub pdu: CanonicalJsonObject,
    pub redacted: bool,
}

pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules, String> {
    version
        .rules()
        .ok_or_else(|| format!("room version {version} is not supported"))
}

/// The reference-hash event ID (room v3+).
pub fn event_id(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, String> {
    let hash = ruma::signatures::reference_hash(pdu, rules)
        .map_err(|e| format!("cannot hash the PDU: {e}"))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| format!("bad event ID: {e}"))
}

fn str_field<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

pub fn id_list(pdu: &CanonicalJsonObject, name: &str) -> Vec<String> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                CanonicalJsonValue::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Format, size and signature checks. `Err` is the reason, for the per-PDU result.
pub async fn check_pdu(
    keys: &dyn KeySource,
    pdu: CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<CheckedPdu, String> {
    let size = serde_json::to_vec(&pdu)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PDU_BYTES {
        return Err(format!("PDU is {size} bytes; the limit is {MAX_PDU_BYTES}"));
    }
    for field in ["room_id", "sender", "type"] {
        if str_field(&pdu, field).is_none() {
            return Err(format!("PDU without a string {field}"));
        }
    }
    let sender = str_field(&pdu, "sender").unwrap_or_default();
    if ruma::UserId::parse(sender).is_err() {
        return Err(format!("invalid sender {sender:?}"));
    }
    let prevs = id_list(&pdu, "prev_events");
    let auths = id_list(&pdu, "auth_events");
    if prevs.len() > MAX_PREV_EVENTS || auths.len() > MAX_AUTH_EVENTS {
        return Err(format!(
            "too many prev_events ({}) or auth_events ({})",
            prevs.len(),
            auths.len()
        ));
    }
    let ts = match pdu.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => return Err("PDU without an integer origin_server_ts".into()),
    };
    // Room v1–4 ignore key validity; later versions need a key valid when the event was sent.
    let at = if rules.enforce_key_validity { ts } else { 0 };
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&pdu, &rules.signatures)
            .map_err(|e| format!("signatures: {e}"))?;
    let sigs = match pdu.get("signatures") {
        Some(CanonicalJsonValue::Object(o)) => o.clone(),
        _ => return Err("PDU without signatures".into()),
    };
    let mut map = PublicKeyMap::new();
    for server in servers {
        let mut set = PublicKeySet::new();
        let ids: Vec<String> = match sigs.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(o)) => o.keys().cloned().collect(),
            _ => return Err(format!("PDU is not signed by {server}")),
        };
        let mut last_err = String::new();
        // A handful of signatures per server is plenty; more is an attempt to make us fetch.
        for id in ids.into_iter().take(4) {
            match keys.key_at(server.as_str(), &id, at).await {
                Ok(k) => {
                    set.insert(id, k);
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        if set.is_empty() {
            return Err(format!(
                "no key of {server} valid at the event's time: {last_err}"
            ));
        }
        map.insert(server.to_string(), set);
    }
    match ruma::signatures::verify_event(&map, &pdu, rules) {
        Ok(Verified::All) => Ok(CheckedPdu {
            pdu,
            redacted: false,
        }),
        Ok(Verified::Signatures) => {
            let redacted = redact(pdu, &rules.redaction, None)
                .map_err(|e| format!("cannot redact the PDU: {e}"))?;
            Ok(CheckedPdu {
                pdu: redacted,
                redacted: true,
            })
        }
        Err(e) => Err(format!("signature check failed: {e}")),
    }
}
