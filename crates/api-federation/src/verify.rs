//! The key side of checking a remote PDU: `rooms` verifies signatures and hashes through its
//! synchronous [`rooms::KeyLookup`] hook and never fetches keys itself, so before a PDU goes in
//! the keys it needs are fetched here ([`KeySource`], async) — each one only if it was valid
//! at the event's `origin_server_ts` (room v5+; v1–4 ignore validity) — and handed over as a
//! [`StaticKeys`] map.
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId, ServerName};

use federation_client::keys::KeySource;
use rooms::StaticKeys;

/// Synapse's caps: more is a malformed event.
pub const MAX_PREV_EVENTS: usize = 20;
pub const MAX_AUTH_EVENTS: usize = 10;
/// Signatures per server we look keys up for: more is an attempt to make us fetch.
const MAX_KEYS_PER_SERVER: usize = 4;

/// The event IDs of `prev_events` / `auth_events`: plain IDs (v3+) or the first element
/// of v1/v2's `[event_id, {"sha256": …}]` pairs.
pub fn id_list(pdu: &CanonicalJsonObject, name: &str) -> Vec<String> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                CanonicalJsonValue::String(s) => Some(s.clone()),
                CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The keys checking `pdu`'s signatures needs, valid at its time. `Err` names the server
/// whose signature cannot be checked (and why), for the per-PDU result.
pub async fn prefetch_keys(
    keys: &dyn KeySource,
    our_name: &ServerName,
    version: &RoomVersionId,
    pdu: &CanonicalJsonObject,
) -> Result<StaticKeys, String> {
    // Checked again by rooms; here so no key is fetched for an event that cannot be stored.
    let size = serde_json::to_vec(pdu).map_or(usize::MAX, |v| v.len());
    if size > rooms::MAX_PDU_BYTES {
        return Err(format!(
            "PDU is {size} bytes, the limit is {}",
            rooms::MAX_PDU_BYTES
        ));
    }
    let rules = version
        .rules()
        .ok_or_else(|| format!("room version {version} is not supported"))?;
    let prevs = id_list(pdu, "prev_events");
    let auths = id_list(pdu, "auth_events");
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
    let at = if rules.enforce_key_validity { ts } else { 0 };
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures)
            .map_err(|e| format!("cannot tell who must sign: {e}"))?;
    let Some(CanonicalJsonValue::Object(sigs)) = pdu.get("signatures") else {
        return Err("PDU is not signed".into());
    };
    let mut out = StaticKeys::default();
    for server in servers {
        if server == our_name {
            continue; // rooms checks our own signature with our own key
        }
        let Some(CanonicalJsonValue::Object(ids)) = sigs.get(server.as_str()) else {
            return Err(format!("PDU is not signed by {server}"));
        };
        let mut last_err = String::from("no usable signature");
        let mut found = false;
        for id in ids.keys().take(MAX_KEYS_PER_SERVER) {
            match keys.key_at(server.as_str(), id, at).await {
                Ok(k) => {
                    out.0
                        .entry(server.clone())
                        .or_default()
                        .insert(id.clone(), k.as_bytes().to_vec());
                    found = true;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        if !found {
            return Err(format!(
                "no key of {server} valid at the event's time: {last_err}"
            ));
        }
    }
    Ok(out)
}
