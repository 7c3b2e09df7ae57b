//! Real ed25519 signatures for the key objects the E2EE tests upload (Pulse verifies them):
//! deterministic keys from a label, signed as the spec's "Signing JSON" says.
use ruma::CanonicalJsonValue;
use ruma::serde::{Base64, base64::Standard};
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};
use sha2::Digest;

pub struct Key {
    seed: [u8; 32],
    /// The public key, unpadded base64.
    pub public: String,
}

impl Key {
    /// The key derived from `label` (the same label gives the same key).
    pub fn from_label(label: &str) -> Key {
        let seed: [u8; 32] = sha2::Sha256::digest(label.as_bytes()).into();
        let public = Base64::<Standard, _>::new(pair(&seed, "x").public_key().to_vec()).encode();
        Key { seed, public }
    }

    /// `ed25519:<public key>`: how a cross-signing key is named.
    pub fn own_id(&self) -> String {
        format!("ed25519:{}", self.public)
    }

    /// Add `signer`'s signature with this key, named `ed25519:<version>`, to `obj`.
    pub fn sign(&self, obj: &mut Value, signer: &str, version: &str) {
        let Ok(CanonicalJsonValue::Object(mut o)) = CanonicalJsonValue::try_from(obj.clone())
        else {
            panic!("not canonical JSON: {obj}");
        };
        ruma::signatures::sign_json(signer, &pair(&self.seed, version), &mut o).expect("sign");
        *obj = serde_json::to_value(o).expect("json");
    }
}

/// PKCS#8 v1 DER of an ed25519 seed, as `Ed25519KeyPair::from_der` reads it.
fn pair(seed: &[u8; 32], version: &str) -> Ed25519KeyPair {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    Ed25519KeyPair::from_der(&der, version.to_owned()).expect("key pair")
}

/// The ed25519 key of `user`'s device `device`.
pub fn device_key(user: &str, device: &str) -> Key {
    Key::from_label(&format!("device {user} {device}"))
}

/// Device keys of `user`'s `device`, signed by the device's key (always the same for one
/// user and device).
pub fn device_keys(user: &str, device: &str) -> Value {
    let k = device_key(user, device);
    let mut v = json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): format!("curve-{device}"),
            format!("ed25519:{device}"): k.public,
        },
    });
    k.sign(&mut v, user, device);
    v
}

/// A cross-signing key object of `usage` for `user` with `key`'s public key, signed by
/// `by` (the master key) when given.
pub fn cross_signing_key(user: &str, usage: &str, key: &Key, by: Option<&Key>) -> Value {
    let mut v = json!({ "user_id": user, "usage": [usage], "keys": { key.own_id(): key.public } });
    if let Some(m) = by {
        m.sign(&mut v, user, &m.public);
    }
    v
}
