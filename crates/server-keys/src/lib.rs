//! The server's own ed25519 signing key and the key document it publishes.
//!
//! Owns: loading (or generating on first start) the signing key kept in `Cf::Meta` under
//! `signing_key` (the same record `rooms` reads, so both sign with one key), rotating it (the old
//! public key moves to `old_signing_keys` with its `expired_ts`; the new key always gets a fresh
//! random key ID, because peers such as Synapse cache keys per key ID until `valid_until_ts`), and
//! building the signed `GET /_matrix/key/v2/server` response.
use std::sync::Arc;

use rand::RngExt as _;
use ruma::serde::Base64;
use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName};
use serde::{Deserialize, Serialize};
use storage::{Batch, Cf, Db};

const META_SIGNING_KEY: &[u8] = b"signing_key";
const META_OLD_KEYS: &[u8] = b"old_signing_keys";

/// How long the published key document says our key stays valid. Peers refetch before then.
pub const PUBLISHED_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("signing key: {0}")]
    Key(String),
}

pub type Result<T> = std::result::Result<T, KeyError>;

#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// `ed25519:<version>`.
    key_id: String,
    /// PKCS#8 DER document, standard base64.
    pkcs8: String,
}

/// A key we signed with before a rotation: published in `old_verify_keys`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OldKey {
    pub key_id: String,
    /// Unpadded standard base64 public key.
    pub public_key: String,
    pub expired_ts: u64,
}

/// The server's identity: its name and current signing key (cheap to clone).
#[derive(Clone)]
pub struct ServerKeys {
    inner: Arc<Inner>,
}

struct Inner {
    server_name: OwnedServerName,
    key_id: String,
    pair: Ed25519KeyPair,
    old_keys: Vec<OldKey>,
}

impl ServerKeys {
    /// Loads the stored key, generating and storing one on first start.
    pub fn load_or_generate(db: &Db, server_name: OwnedServerName) -> Result<ServerKeys> {
        let old_keys = db
            .get_json::<Vec<OldKey>>(Cf::Meta, META_OLD_KEYS)?
            .unwrap_or_default();
        if let Some(stored) = db.get_json::<StoredKey>(Cf::Meta, META_SIGNING_KEY)? {
            let pair = decode(&stored)?;
            return Ok(Self::new(server_name, stored.key_id, pair, old_keys));
        }
        let (stored, pair) = generate()?;
        let mut batch = Batch::new();
        batch.put_json(Cf::Meta, META_SIGNING_KEY, &stored);
        db.write(batch)?;
        tracing::info!(key_id = %stored.key_id, "generated a new server signing key");
        Ok(Self::new(server_name, stored.key_id, pair, old_keys))
    }

    /// Replaces the signing key with a fresh one under a new key ID; the current key becomes an
    /// old key expired at `now_ms`. Both records change in one write batch.
    pub fn rotate(db: &Db, server_name: OwnedServerName, now_ms: u64) -> Result<ServerKeys> {
        let current = Self::load_or_generate(db, server_name.clone())?;
        let mut old_keys = current.inner.old_keys.clone();
        old_keys.push(OldKey {
            key_id: current.inner.key_id.clone(),
            public_key: current.public_key_base64(),
            expired_ts: now_ms,
        });
        let (stored, pair) = generate()?;
        let mut batch = Batch::new();
        batch.put_json(Cf::Meta, META_SIGNING_KEY, &stored);
        batch.put_json(Cf::Meta, META_OLD_KEYS, &old_keys);
        db.write(batch)?;
        tracing::info!(old = %current.inner.key_id, new = %stored.key_id, "rotated the server signing key");
        Ok(Self::new(server_name, stored.key_id, pair, old_keys))
    }

    /// A key pair not backed by storage (tests, tools).
    pub fn from_pair(server_name: OwnedServerName, pair: Ed25519KeyPair) -> ServerKeys {
        let key_id = format!("ed25519:{}", pair.version());
        Self::new(server_name, key_id, pair, Vec::new())
    }

    /// A freshly generated, unstored key pair (tests, tools).
    pub fn generate_ephemeral(server_name: OwnedServerName) -> Result<ServerKeys> {
        let (stored, pair) = generate()?;
        Ok(Self::new(server_name, stored.key_id, pair, Vec::new()))
    }

    fn new(
        server_name: OwnedServerName,
        key_id: String,
        pair: Ed25519KeyPair,
        old_keys: Vec<OldKey>,
    ) -> ServerKeys {
        ServerKeys {
            inner: Arc::new(Inner {
                server_name,
                key_id,
                pair,
                old_keys,
            }),
        }
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.inner.server_name
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.inner.pair
    }

    pub fn old_keys(&self) -> &[OldKey] {
        &self.inner.old_keys
    }

    /// Unpadded standard base64 of the current public key.
    pub fn public_key_base64(&self) -> String {
        Base64::<ruma::serde::base64::Standard, _>::new(self.inner.pair.public_key()).encode()
    }

    /// Signs `object` in place with the server key (adds to `signatures`).
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) -> Result<()> {
        ruma::signatures::sign_json(self.inner.server_name.as_str(), &self.inner.pair, object)
            .map_err(|e| KeyError::Key(e.to_string()))
    }

    /// The signed `GET /_matrix/key/v2/server` document, valid until `now_ms` + 24 h.
    /// `old_verify_keys` is always present (older servers require the field).
    pub fn key_document(&self, now_ms: u64) -> Result<CanonicalJsonObject> {
        let mut verify = CanonicalJsonObject::new();
        verify.insert(
            self.inner.key_id.clone(),
            object([("key", self.public_key_base64().into())]),
        );
        let mut old = CanonicalJsonObject::new();
        for key in &self.inner.old_keys {
            if key.key_id == self.inner.key_id {
                continue;
            }
            old.insert(
                key.key_id.clone(),
                object([
                    ("key", key.public_key.clone().into()),
                    ("expired_ts", int(key.expired_ts)),
                ]),
            );
        }
        let mut doc = CanonicalJsonObject::new();
        doc.insert("server_name".into(), self.inner.server_name.as_str().into());
        doc.insert("verify_keys".into(), CanonicalJsonValue::Object(verify));
        doc.insert("old_verify_keys".into(), CanonicalJsonValue::Object(old));
        doc.insert(
            "valid_until_ts".into(),
            int(now_ms.saturating_add(PUBLISHED_VALIDITY_MS)),
        );
        self.sign_json(&mut doc)?;
        Ok(doc)
    }
}

fn object<const N: usize>(entries: [(&str, CanonicalJsonValue); N]) -> CanonicalJsonValue {
    CanonicalJsonValue::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn int(n: u64) -> CanonicalJsonValue {
    // Timestamps fit in the canonical JSON integer range (< 2^53) for millennia.
    CanonicalJsonValue::Integer(ruma::Int::new_saturating(n.min(i64::MAX as u64) as i64))
}

fn decode(stored: &StoredKey) -> Result<Ed25519KeyPair> {
    let version = stored
        .key_id
        .strip_prefix("ed25519:")
        .ok_or_else(|| KeyError::Key(format!("bad signing key id {}", stored.key_id)))?
        .to_owned();
    let der: Base64 = Base64::parse(&stored.pkcs8)
        .map_err(|e| KeyError::Key(format!("signing key is not base64: {e}")))?;
    Ed25519KeyPair::from_der(der.as_bytes(), version)
        .map_err(|e| KeyError::Key(format!("signing key does not parse: {e}")))
}

fn generate() -> Result<(StoredKey, Ed25519KeyPair)> {
    let version: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .map(char::from)
        .take(8)
        .collect();
    let der = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&der, version.clone())
        .map_err(|e| KeyError::Key(format!("generated key does not parse: {e}")))?;
    let stored = StoredKey {
        key_id: format!("ed25519:{version}"),
        pkcs8: Base64::<ruma::serde::base64::Standard, &[u8]>::new(&der[..]).encode(),
    };
    Ok((stored, pair))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> OwnedServerName {
        "example.org".try_into().unwrap()
    }

    #[test]
    fn key_survives_reload_and_rotation_gives_fresh_id() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let first = ServerKeys::load_or_generate(&db, name()).unwrap();
        let again = ServerKeys::load_or_generate(&db, name()).unwrap();
        assert_eq!(first.key_id(), again.key_id());
        assert_eq!(first.public_key_base64(), again.public_key_base64());

        let rotated = ServerKeys::rotate(&db, name(), 1_000).unwrap();
        assert_ne!(rotated.key_id(), first.key_id());
        let doc = rotated.key_document(5_000).unwrap();
        let old = doc["old_verify_keys"].as_object().unwrap();
        assert!(old.contains_key(first.key_id()));
        assert!(
            !doc["verify_keys"]
                .as_object()
                .unwrap()
                .contains_key(first.key_id())
        );
        assert_eq!(doc["valid_until_ts"], int(5_000 + PUBLISHED_VALIDITY_MS));

        // The document verifies with the key it publishes.
        let mut keys = ruma::signatures::PublicKeySet::new();
        keys.insert(
            rotated.key_id().to_owned(),
            Base64::parse(rotated.public_key_base64()).unwrap(),
        );
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert("example.org".to_owned(), keys);
        ruma::signatures::verify_json(&map, &doc).unwrap();
    }
}
