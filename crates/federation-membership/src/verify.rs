//! Checking remote PDUs before anything believes them: the event ID is the reference hash
//! (v3+) or the `event_id` field (v1/v2),
//! every server the room version requires has a valid signature (keys valid at the event's
//! `origin_server_ts`), and a content-hash mismatch yields the redacted event.
use std::collections::BTreeMap;

use federation_client::keys::KeySource;
use ruma::room_version_rules::{EventIdFormatVersion, RoomVersionRules};
use ruma::signatures::{PublicKeyMap, PublicKeySet, Verified};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId};

/// Why a PDU was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("malformed PDU: {0}")]
    Malformed(String),
    #[error("signature check failed: {0}")]
    Signature(String),
}

/// The event ID of a PDU of a room with `rules`: its reference hash, or in v1/v2 its
/// `event_id` field (chosen by the sending server, `$local:server`).
pub fn event_id_of(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, PduError> {
    if rules.event_id_format == EventIdFormatVersion::V1 {
        return match pdu.get("event_id") {
            Some(CanonicalJsonValue::String(s)) => OwnedEventId::try_from(s.as_str())
                .ok()
                .filter(|id| id.server_name().is_some())
                .ok_or_else(|| PduError::Malformed(format!("bad event ID {s:?}"))),
            _ => Err(PduError::Malformed(
                "no event_id (room versions 1 and 2 require one)".into(),
            )),
        };
    }
    let hash = ruma::signatures::reference_hash(pdu, rules)
        .map_err(|e| PduError::Malformed(format!("cannot hash: {e}")))?;
    OwnedEventId::try_from(format!("${hash}"))
        .map_err(|e| PduError::Malformed(format!("bad event ID: {e}")))
}

fn origin_server_ts(pdu: &CanonicalJsonObject) -> u64 {
    match pdu.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => 0,
    }
}

/// Keys fetched while checking a batch of PDUs: (server, key id) → key (None: unavailable).
pub type KeyMemo = BTreeMap<(String, String), Option<ruma::serde::Base64>>;

/// Checks `pdu`'s signatures and hash. Returns its event ID and the PDU to store: the PDU
/// itself, or its redacted form when the content hash does not match (spec: "redact and
/// continue"). `memo` avoids asking the key source twice for one key in a batch.
pub async fn verify_pdu(
    keys: &dyn KeySource,
    rules: &RoomVersionRules,
    pdu: CanonicalJsonObject,
    memo: &mut KeyMemo,
) -> Result<(OwnedEventId, CanonicalJsonObject), PduError> {
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&pdu, &rules.signatures)
            .map_err(|e| PduError::Malformed(e.to_string()))?;
    let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    let map = public_keys(keys, &pdu, &servers, memo).await?;
    let verified = ruma::signatures::verify_event(&map, &pdu, rules)
        .map_err(|e| PduError::Signature(e.to_string()))?;
    let event_id = event_id_of(&pdu, rules)?;
    match verified {
        Verified::All => Ok((event_id, pdu)),
        Verified::Signatures => {
            tracing::info!(%event_id, "content hash mismatch: keeping the redacted event");
            let redacted = ruma::canonical_json::redact(pdu, &rules.redaction, None)
                .map_err(|e| PduError::Malformed(format!("cannot redact: {e}")))?;
            Ok((event_id, redacted))
        }
    }
}

/// Checks that `server` signed `pdu` (e.g. the invitee's server on an invite we sent):
/// the signature over the redacted event, with a key valid at the event's time.
pub async fn verify_server_signature(
    keys: &dyn KeySource,
    rules: &RoomVersionRules,
    pdu: &CanonicalJsonObject,
    server: &str,
    memo: &mut KeyMemo,
) -> Result<(), PduError> {
    let map = public_keys(keys, pdu, &[server.to_owned()], memo).await?;
    let mut redacted = ruma::canonical_json::redact(pdu.clone(), &rules.redaction, None)
        .map_err(|e| PduError::Malformed(format!("cannot redact: {e}")))?;
    // Only `server`'s signatures are checked; `verify_json` checks every signer it has keys for.
    if let Some(CanonicalJsonValue::Object(sigs)) = redacted.get_mut("signatures") {
        sigs.retain(|k, _| k == server);
    }
    ruma::signatures::verify_json(&map, &redacted).map_err(|e| PduError::Signature(e.to_string()))
}

/// The keys of `servers` named in `pdu`'s signatures, valid at its `origin_server_ts`.
async fn public_keys(
    keys: &dyn KeySource,
    pdu: &CanonicalJsonObject,
    servers: &[String],
    memo: &mut KeyMemo,
) -> Result<PublicKeyMap, PduError> {
    let signatures = match pdu.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(PduError::Signature("no signatures".into())),
    };
    let ts = origin_server_ts(pdu);
    let mut map = PublicKeyMap::new();
    for server in servers {
        let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(server.as_str()) else {
            return Err(PduError::Signature(format!("no signature of {server}")));
        };
        let mut set = PublicKeySet::new();
        for key_id in by_key.keys() {
            let memo_key = (server.clone(), key_id.clone());
            let key = match memo.get(&memo_key) {
                Some(k) => k.clone(),
                None => {
                    let k = match keys.key_at(server, key_id, ts).await {
                        Ok(k) => Some(k),
                        Err(e) => {
                            tracing::debug!(%server, %key_id, error = %e, "no key for a PDU signature");
                            None
                        }
                    };
                    memo.insert(memo_key, k.clone());
                    k
                }
            };
            if let Some(k) = key {
                set.insert(key_id.clone(), k);
            }
        }
        if set.is_empty() {
            return Err(PduError::Signature(format!(
                "no key of {server} valid at the event's time"
            )));
        }
        map.insert(server.clone(), set);
    }
    Ok(map)
}

/// The keys a batch check fetched, for the room engine's own check ([`rooms::KeyLookup`]);
/// each was valid at the time of the event it was fetched for.
pub fn static_keys(memo: &KeyMemo) -> rooms::StaticKeys {
    let mut keys = rooms::StaticKeys::default();
    for ((server, key_id), key) in memo {
        if let (Some(key), Ok(server)) = (key, ruma::OwnedServerName::try_from(server.as_str())) {
            keys.0
                .entry(server)
                .or_default()
                .insert(key_id.clone(), key.as_bytes().to_vec());
        }
    }
    keys
}
