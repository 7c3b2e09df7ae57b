//! Remote server keys: fetched from the origin's `/_matrix/key/v2/server`, checked (server name,
//! self-signature) and cached in memory until `valid_until_ts` (capped at fetch time + 7 days).
//!
//! Not yet: the storage-backed cache and notary (`trusted_key_servers`) queries.
use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use serde::Deserialize;

use crate::{FederationClient, FederationError, Result};

const MAX_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;

/// Looks up the public key `key_id` of `server` valid at `at_ms`.
pub trait KeySource: Send + Sync {
    fn key_at<'a>(
        &'a self,
        server: &'a str,
        key_id: &'a str,
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Base64>>;
}

#[derive(Debug, Clone)]
struct CachedKey {
    key: Base64,
    /// For a current key: min(valid_until_ts, fetched + 7 d); for an old key: expired_ts.
    valid_until: u64,
}

#[derive(Deserialize)]
struct KeyDoc {
    server_name: String,
    #[serde(default)]
    verify_keys: HashMap<String, VerifyKey>,
    #[serde(default)]
    old_verify_keys: HashMap<String, OldVerifyKey>,
    valid_until_ts: u64,
}

#[derive(Deserialize)]
struct VerifyKey {
    key: String,
}

#[derive(Deserialize)]
struct OldVerifyKey {
    key: String,
    expired_ts: u64,
}

/// Key fetcher with an in-memory cache.
pub struct RemoteKeys {
    client: FederationClient,
    cache: Mutex<HashMap<(String, String), CachedKey>>,
    now: fn() -> u64,
}

impl RemoteKeys {
    pub fn new(client: FederationClient) -> RemoteKeys {
        RemoteKeys {
            client,
            cache: Mutex::new(HashMap::new()),
            now: now_ms,
        }
    }

    fn cached(&self, server: &str, key_id: &str, at_ms: u64) -> Option<Base64> {
        let cache = self.cache.lock().ok()?;
        let k = cache.get(&(server.to_owned(), key_id.to_owned()))?;
        (k.valid_until >= at_ms).then(|| k.key.clone())
    }

    async fn fetch(&self, server: &str) -> Result<()> {
        let resp = self
            .client
            .get_unsigned(server, "/_matrix/key/v2/server")
            .await?;
        if resp.status != 200 {
            return Err(FederationError::Status {
                destination: server.to_owned(),
                status: resp.status,
                body: resp.body.to_string().chars().take(200).collect(),
            });
        }
        let entries = check_key_document(server, &resp.body, (self.now)())?;
        if let Ok(mut cache) = self.cache.lock() {
            for (id, key) in entries {
                cache.insert((server.to_owned(), id), key);
            }
        }
        Ok(())
    }
}

/// Validates a key document of `server` and returns its keys with their validity ends.
fn check_key_document(
    server: &str,
    body: &serde_json::Value,
    now: u64,
) -> Result<Vec<(String, CachedKey)>> {
    let bad = |m: &str| FederationError::BadJson {
        destination: server.to_owned(),
        message: m.to_owned(),
    };
    let doc: KeyDoc = serde_json::from_value(body.clone()).map_err(|e| bad(&e.to_string()))?;
    if doc.server_name != server {
        return Err(bad("key document names another server"));
    }
    let mut set = PublicKeySet::new();
    for (id, k) in &doc.verify_keys {
        set.insert(
            id.clone(),
            Base64::parse(&k.key).map_err(|_| bad("key is not base64"))?,
        );
    }
    let mut map = PublicKeyMap::new();
    map.insert(server.to_owned(), set.clone());
    let object: ruma::CanonicalJsonObject =
        serde_json::from_value(body.clone()).map_err(|e| bad(&e.to_string()))?;
    ruma::signatures::verify_json(&map, &object)
        .map_err(|e| bad(&format!("key document signature: {e}")))?;
    let valid_until = doc.valid_until_ts.min(now.saturating_add(MAX_VALIDITY_MS));
    let mut out: Vec<(String, CachedKey)> = set
        .into_iter()
        .map(|(id, key)| (id, CachedKey { key, valid_until }))
        .collect();
    for (id, k) in doc.old_verify_keys {
        if let Ok(key) = Base64::parse(&k.key) {
            out.push((
                id,
                CachedKey {
                    key,
                    valid_until: k.expired_ts,
                },
            ));
        }
    }
    Ok(out)
}

impl KeySource for RemoteKeys {
    fn key_at<'a>(
        &'a self,
        server: &'a str,
        key_id: &'a str,
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Base64>> {
        Box::pin(async move {
            if let Some(k) = self.cached(server, key_id, at_ms) {
                return Ok(k);
            }
            self.fetch(server).await?;
            self.cached(server, key_id, at_ms)
                .ok_or_else(|| FederationError::Status {
                    destination: server.to_owned(),
                    status: 401,
                    body: format!("no key {key_id} of {server} valid at {at_ms}"),
                })
        })
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use server_keys::ServerKeys;

    #[test]
    fn key_document_checks_name_signature_and_caps_validity() {
        let keys = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
        let doc = serde_json::to_value(keys.key_document(1_000).unwrap()).unwrap();
        let out = check_key_document("a.test", &doc, 1_000).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, keys.key_id());
        assert_eq!(
            out[0].1.valid_until,
            1_000 + server_keys::PUBLISHED_VALIDITY_MS
        );
        assert!(check_key_document("b.test", &doc, 1_000).is_err());
        let mut forged = doc.clone();
        forged["valid_until_ts"] = serde_json::json!(u64::from(u32::MAX) * 1000);
        assert!(check_key_document("a.test", &forged, 1_000).is_err());
    }
}
