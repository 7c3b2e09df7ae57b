//! Remote server keys: fetched from the origin's `/_matrix/key/v2/server`, or, when that fails,
//! through the configured notaries (`POST /_matrix/key/v2/query` of `trusted_key_servers`);
//! checked (server name, the origin's self-signature, and the notary's signature); cached in
//! memory and in storage so they survive restarts.
//!
//! A current key is valid until min(`valid_until_ts`, fetch time + 7 days); an old key (from
//! `old_verify_keys`) until its `expired_ts`. [`KeySource::key_at`] answers "key K of server S
//! valid at time T" — T is now for a request, the event's `origin_server_ts` for a PDU.
//!
//! Storage: `Cf::Misc`, key `"remote_keys" 0xFF server 0xFF` → [`StoredServerKeys`]: every key
//! ever learned for the server with its validity end, and the latest key document exactly as
//! the origin signed it (what we serve when acting as a notary). One record per server, so an
//! update is one write.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use serde::{Deserialize, Serialize};
use storage::{Batch, Cf, Db, Key};

use crate::{FederationClient, FederationError, Result};

const MAX_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;
/// After failed fetches of a server's keys, ask again only after a pause that doubles with
/// each further failure, from this (a flood of PDUs signed by an unreachable server must
/// not become a flood of outbound requests)...
const FAILURE_BACKOFF_MS: u64 = 1_000;
/// ...up to this.
const MAX_FAILURE_BACKOFF_MS: u64 = 60_000;

/// How long to wait after `failures` consecutive failed fetches. A single failure costs
/// nothing: a server that was not up yet a moment ago (a peer starting beside us) is asked
/// again at once; only a second failure in a row starts the pause.
fn failure_backoff_ms(failures: u32) -> u64 {
    match failures {
        0 | 1 => 0,
        n => FAILURE_BACKOFF_MS
            .saturating_mul(1u64 << (n - 2).min(16))
            .min(MAX_FAILURE_BACKOFF_MS),
    }
}
/// A notary answer with more entries than this is not a real one.
const MAX_NOTARY_ENTRIES: usize = 16;

/// Looks up the public key `key_id` of `server` valid at `at_ms`.
pub trait KeySource: Send + Sync {
    fn key_at<'a>(
        &'a self,
        server: &'a str,
        key_id: &'a str,
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Base64>>;

    /// The key documents of `server` (signed by it) valid until at least
    /// `minimum_valid_until`, fetching from the origin when none is cached — what a notary
    /// serves. Sources that keep no documents answer none.
    fn key_documents<'a>(
        &'a self,
        server: &'a str,
        minimum_valid_until: u64,
    ) -> BoxFuture<'a, Vec<serde_json::Value>> {
        let _ = (server, minimum_valid_until);
        Box::pin(async { Vec::new() })
    }
}

/// Where key documents come from (a trait so the rules are tested without a network).
pub trait KeyFetcher: Send + Sync {
    /// `GET /_matrix/key/v2/server` of `server`: the JSON body of a 200 answer.
    fn server_keys<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<serde_json::Value>>;
    /// `POST /_matrix/key/v2/query` to `notary` with `body`: the JSON body of a 200 answer.
    fn notary_query<'a>(
        &'a self,
        notary: &'a str,
        body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value>>;
}

impl KeyFetcher for FederationClient {
    fn server_keys<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<serde_json::Value>> {
        Box::pin(async move {
            let resp = self.get_unsigned(server, "/_matrix/key/v2/server").await?;
            ok_body(server, resp)
        })
    }

    fn notary_query<'a>(
        &'a self,
        notary: &'a str,
        body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value>> {
        Box::pin(async move {
            let resp = self
                .request(
                    http::Method::POST,
                    notary,
                    "/_matrix/key/v2/query",
                    Some(body),
                )
                .await?;
            ok_body(notary, resp)
        })
    }
}

fn ok_body(server: &str, resp: crate::FederationResponse) -> Result<serde_json::Value> {
    if resp.status != 200 {
        return Err(FederationError::Status {
            destination: server.to_owned(),
            status: resp.status,
            body: resp.body.to_string().chars().take(200).collect(),
        });
    }
    Ok(resp.body)
}

/// One learned key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    /// Unpadded standard base64.
    pub key: String,
    /// For a current key: min(valid_until_ts, fetched + 7 d); for an old key: expired_ts.
    pub valid_until: u64,
}

/// Everything known about one server's keys (the storage record).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredServerKeys {
    pub keys: HashMap<String, StoredKey>,
    /// The newest key document as the origin signed it (plus any notary signatures).
    pub document: Option<serde_json::Value>,
    /// `valid_until_ts` of that document, capped like the keys.
    pub document_valid_until: u64,
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

/// Key fetcher with a memory cache in front of a storage-backed one.
pub struct RemoteKeys {
    fetcher: Arc<dyn KeyFetcher>,
    notaries: Vec<String>,
    db: Option<Arc<Db>>,
    cache: Mutex<HashMap<String, StoredServerKeys>>,
    /// Server → time of its last failed fetch.
    /// Per server: when its keys were last asked for in vain, and how many times in a row.
    failures: Mutex<HashMap<String, (u64, u32)>>,
    now: fn() -> u64,
}

impl RemoteKeys {
    /// In memory only (tools, tests); notaries from the client's config.
    pub fn new(client: FederationClient) -> RemoteKeys {
        let notaries = client.config().trusted_key_servers.clone();
        Self::with_fetcher(Arc::new(client), notaries, None)
    }

    /// Cached in `db` too, so keys survive a restart; notaries from the client's config.
    pub fn persistent(client: FederationClient, db: Arc<Db>) -> RemoteKeys {
        let notaries = client.config().trusted_key_servers.clone();
        Self::with_fetcher(Arc::new(client), notaries, Some(db))
    }

    pub fn with_fetcher(
        fetcher: Arc<dyn KeyFetcher>,
        notaries: Vec<String>,
        db: Option<Arc<Db>>,
    ) -> RemoteKeys {
        RemoteKeys {
            fetcher,
            notaries,
            db,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            now: now_ms,
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, now: fn() -> u64) -> RemoteKeys {
        self.now = now;
        self
    }

    fn storage_key(server: &str) -> Key {
        Key::new().str("remote_keys").str(server)
    }

    /// The record of `server`: memory, else storage (then kept in memory).
    fn record(&self, server: &str) -> Option<StoredServerKeys> {
        if let Ok(cache) = self.cache.lock()
            && let Some(r) = cache.get(server)
        {
            return Some(r.clone());
        }
        let db = self.db.as_ref()?;
        match db.get_json::<StoredServerKeys>(Cf::Misc, Self::storage_key(server)) {
            Ok(Some(r)) => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(server.to_owned(), r.clone());
                }
                Some(r)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%server, "cannot read cached server keys: {e}");
                None
            }
        }
    }

    fn cached(&self, server: &str, key_id: &str, at_ms: u64) -> Option<Base64> {
        let record = self.record(server)?;
        let k = record.keys.get(key_id)?;
        if k.valid_until < at_ms {
            return None;
        }
        Base64::parse(&k.key).ok()
    }

    /// Merges a checked document into the server's record (old keys we learned earlier stay)
    /// and stores it in one write.
    fn remember(&self, server: &str, doc: serde_json::Value, checked: Checked) -> Result<()> {
        let mut record = self.record(server).unwrap_or_default();
        for (id, key) in checked.keys {
            record.keys.insert(id, key);
        }
        if checked.valid_until >= record.document_valid_until {
            record.document = Some(doc);
            record.document_valid_until = checked.valid_until;
        }
        if let Some(db) = &self.db {
            let mut batch = Batch::new();
            batch.put_json(Cf::Misc, Self::storage_key(server), &record);
            db.write(batch)
                .map_err(|e| FederationError::Config(format!("storage: {e}")))?;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(server.to_owned(), record);
        }
        Ok(())
    }

    fn recently_failed(&self, server: &str) -> bool {
        let now = (self.now)();
        self.failures
            .lock()
            .ok()
            .and_then(|f| f.get(server).copied())
            .is_some_and(|(t, n)| now.saturating_sub(t) < failure_backoff_ms(n))
    }

    fn note_failure(&self, server: &str, ok: bool) {
        if let Ok(mut f) = self.failures.lock() {
            if ok {
                f.remove(server);
            } else {
                let n = f.get(server).map_or(0, |(_, n)| *n);
                f.insert(server.to_owned(), ((self.now)(), n.saturating_add(1)));
            }
        }
    }

    /// The origin's own document.
    async fn fetch_direct(&self, server: &str) -> Result<()> {
        let body = self.fetcher.server_keys(server).await?;
        let checked = check_key_document(server, &body, (self.now)())?;
        self.remember(server, body, checked)
    }

    /// The origin's document as a notary serves it: signed by the origin and by the notary
    /// (whose own key is fetched directly, never through another notary).
    async fn fetch_via_notary(
        &self,
        notary: &str,
        server: &str,
        key_id: &str,
        at: u64,
    ) -> Result<()> {
        let query = serde_json::json!({
            "server_keys": { server: { key_id: { "minimum_valid_until_ts": at } } }
        });
        let body = self.fetcher.notary_query(notary, &query).await?;
        let bad = |m: &str| FederationError::BadJson {
            destination: notary.to_owned(),
            message: m.to_owned(),
        };
        let entries = body
            .get("server_keys")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("no server_keys list"))?;
        let mut found = false;
        for doc in entries.iter().take(MAX_NOTARY_ENTRIES) {
            if doc.get("server_name").and_then(|v| v.as_str()) != Some(server) {
                continue;
            }
            let checked = check_key_document(server, doc, (self.now)())?;
            self.check_notary_signature(notary, doc).await?;
            self.remember(server, doc.clone(), checked)?;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(bad(&format!("the notary has no keys of {server}")))
        }
    }

    async fn check_notary_signature(&self, notary: &str, doc: &serde_json::Value) -> Result<()> {
        let bad = |m: String| FederationError::BadJson {
            destination: notary.to_owned(),
            message: m,
        };
        let ids: Vec<String> = doc
            .get("signatures")
            .and_then(|s| s.get(notary))
            .and_then(|s| s.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return Err(bad("key document is not signed by the notary".into()));
        }
        let now = (self.now)();
        let mut set = PublicKeySet::new();
        for id in ids {
            if self.cached(notary, &id, now).is_none() && !self.recently_failed(notary) {
                let r = self.fetch_direct(notary).await;
                self.note_failure(notary, r.is_ok());
            }
            if let Some(k) = self.cached(notary, &id, now) {
                set.insert(id, k);
            }
        }
        let mut map = PublicKeyMap::new();
        map.insert(notary.to_owned(), set);
        let object = signed_by(doc, notary).map_err(bad)?;
        ruma::signatures::verify_json(&map, &object)
            .map_err(|e| bad(format!("notary signature: {e}")))
    }

    async fn fetch(&self, server: &str, key_id: &str, at: u64) -> Result<()> {
        if self.recently_failed(server) {
            return Err(FederationError::Transport {
                destination: server.to_owned(),
                message: "key fetch failed recently; not retrying yet".into(),
            });
        }
        let direct = self.fetch_direct(server).await;
        if direct.is_ok() && self.cached(server, key_id, at).is_some() {
            self.note_failure(server, true);
            return Ok(());
        }
        let mut last = direct;
        for notary in &self.notaries {
            if notary == server {
                continue;
            }
            match self.fetch_via_notary(notary, server, key_id, at).await {
                Ok(()) if self.cached(server, key_id, at).is_some() => {
                    self.note_failure(server, true);
                    return Ok(());
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::info!(%server, %notary, "notary key query failed: {e}");
                    last = Err(e);
                }
            }
        }
        self.note_failure(server, false);
        last
    }
}

/// `doc` with only `entity`'s signatures: `verify_json` insists on a key for every signer,
/// and a notary's answer carries both the origin's and the notary's.
fn signed_by(
    doc: &serde_json::Value,
    entity: &str,
) -> std::result::Result<ruma::CanonicalJsonObject, String> {
    let mut object: ruma::CanonicalJsonObject =
        serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    if let Some(ruma::CanonicalJsonValue::Object(sigs)) = object.get_mut("signatures") {
        sigs.retain(|name, _| name == entity);
    }
    Ok(object)
}

/// A checked document: its keys and its capped validity.
struct Checked {
    keys: Vec<(String, StoredKey)>,
    valid_until: u64,
}

/// Validates a key document of `server` (name, self-signature) and returns its keys with
/// their validity ends.
fn check_key_document(server: &str, body: &serde_json::Value, now: u64) -> Result<Checked> {
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
    let object = signed_by(body, server).map_err(|e| bad(&e))?;
    ruma::signatures::verify_json(&map, &object)
        .map_err(|e| bad(&format!("key document signature: {e}")))?;
    let valid_until = doc.valid_until_ts.min(now.saturating_add(MAX_VALIDITY_MS));
    let mut keys: Vec<(String, StoredKey)> = set
        .into_iter()
        .map(|(id, key)| {
            (
                id,
                StoredKey {
                    key: key.encode(),
                    valid_until,
                },
            )
        })
        .collect();
    for (id, k) in doc.old_verify_keys {
        if doc.verify_keys.contains_key(&id) {
            continue;
        }
        if let Ok(key) = Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(&k.key) {
            keys.push((
                id,
                StoredKey {
                    key: key.encode(),
                    valid_until: k.expired_ts,
                },
            ));
        }
    }
    Ok(Checked { keys, valid_until })
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
            self.fetch(server, key_id, at_ms).await?;
            self.cached(server, key_id, at_ms)
                .ok_or_else(|| FederationError::Status {
                    destination: server.to_owned(),
                    status: 401,
                    body: format!("no key {key_id} of {server} valid at {at_ms}"),
                })
        })
    }

    fn key_documents<'a>(
        &'a self,
        server: &'a str,
        minimum_valid_until: u64,
    ) -> BoxFuture<'a, Vec<serde_json::Value>> {
        Box::pin(async move {
            let fresh = |r: &StoredServerKeys| {
                r.document_valid_until >= minimum_valid_until.max((self.now)())
            };
            let record = self.record(server);
            if !record.as_ref().is_some_and(fresh) && !self.recently_failed(server) {
                let r = self.fetch_direct(server).await;
                if let Err(e) = &r {
                    tracing::info!(%server, "key fetch for a notary query failed: {e}");
                }
                self.note_failure(server, r.is_ok());
            }
            // An expired document is still served when nothing newer can be had: the asker
            // applies its own validity rules.
            self.record(server)
                .and_then(|r| r.document)
                .into_iter()
                .collect()
        })
    }
}

/// The one clock (storage owns it), re-exported for the federation crates.
pub use storage::now_ms;

#[cfg(test)]
mod tests;
