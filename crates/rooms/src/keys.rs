//! The server's ed25519 signing key, kept in `Cf::Meta` under `signing_key`.
use rand::RngExt as _;
use ruma::serde::Base64;
use ruma::signatures::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use storage::{Batch, Cf, Db};

use crate::{Result, RoomError};

const META_SIGNING_KEY: &[u8] = b"signing_key";

#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// `ed25519:<version>`.
    key_id: String,
    /// PKCS#8 DER document, standard base64.
    pkcs8: String,
}

pub(crate) struct SigningKey {
    pub key_id: String,
    pub pair: Ed25519KeyPair,
}

impl SigningKey {
    pub fn load_or_generate(db: &Db) -> Result<SigningKey> {
        if let Some(stored) = db.get_json::<StoredKey>(Cf::Meta, META_SIGNING_KEY)? {
            let version = stored
                .key_id
                .strip_prefix("ed25519:")
                .ok_or_else(|| {
                    RoomError::Internal(format!("bad signing key id {}", stored.key_id))
                })?
                .to_owned();
            let der: Base64 = Base64::parse(&stored.pkcs8)
                .map_err(|e| RoomError::Internal(format!("signing key is not base64: {e}")))?;
            let pair = Ed25519KeyPair::from_der(der.as_bytes(), version)
                .map_err(|e| RoomError::Internal(format!("signing key does not parse: {e}")))?;
            return Ok(SigningKey {
                key_id: stored.key_id,
                pair,
            });
        }
        let version: String = rand::rng()
            .sample_iter(&rand::distr::Alphanumeric)
            .map(char::from)
            .take(8)
            .collect();
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, version.clone())
            .map_err(|e| RoomError::Internal(format!("generated key does not parse: {e}")))?;
        let stored = StoredKey {
            key_id: format!("ed25519:{version}"),
            pkcs8: Base64::<ruma::serde::base64::Standard, &[u8]>::new(&der[..]).encode(),
        };
        let mut batch = Batch::new();
        batch.put_json(Cf::Meta, META_SIGNING_KEY, &stored);
        db.write(batch)?;
        tracing::info!(key_id = %stored.key_id, "generated a new server signing key");
        Ok(SigningKey {
            key_id: stored.key_id,
            pair,
        })
    }
}
