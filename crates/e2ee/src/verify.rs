//! ed25519 signatures on key objects (device keys, cross-signing keys), checked as the spec's
//! "Signing JSON" defines them: the canonical JSON of the object without `signatures` and
//! `unsigned`, signed by the key `ed25519:<key id>` of the user in `signatures.<user>`.
use ruma::serde::{Base64, base64::Standard};
use ruma::signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, SigningKeyAlgorithm};
use serde_json::Value;

/// Why a signature was not accepted; the message says which key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureProblem {
    /// The object carries no signature by this key.
    Missing(String),
    /// A signature that does not verify, or one that cannot be read.
    Invalid(String),
}

impl SignatureProblem {
    pub fn message(&self) -> &str {
        match self {
            Self::Missing(m) | Self::Invalid(m) => m,
        }
    }
}

/// Decode unpadded (or padded) standard base64.
fn b64(s: &str) -> Option<Vec<u8>> {
    Base64::<Standard, Vec<u8>>::parse(s)
        .ok()
        .map(Base64::into_inner)
}

/// The bytes a signature of `obj` signs.
pub fn signing_bytes(obj: &Value) -> Result<String, SignatureProblem> {
    let canonical = CanonicalJsonValue::try_from(obj.clone())
        .map_err(|e| SignatureProblem::Invalid(format!("not canonical JSON: {e}")))?;
    let CanonicalJsonValue::Object(o) = canonical else {
        return Err(SignatureProblem::Invalid("not an object".into()));
    };
    let o: CanonicalJsonObject = o;
    to_canonical_json_string_for_signing(&o)
        .map_err(|e| SignatureProblem::Invalid(format!("not canonical JSON: {e}")))
}

/// Check `obj`'s signature by `signer` with key `key_id` (`ed25519:…`), whose public key
/// is `public_key` (base64).
pub fn check_signature(
    obj: &Value,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), SignatureProblem> {
    let Some(sig) = obj["signatures"][signer][key_id].as_str() else {
        return Err(SignatureProblem::Missing(format!(
            "no signature by {signer}'s key {key_id}"
        )));
    };
    check_one(obj, sig, key_id, public_key)
}

/// Verify one signature `sig` (base64) of `obj` made with `key_id`'s `public_key`.
pub fn check_one(
    obj: &Value,
    sig: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), SignatureProblem> {
    if !key_id.starts_with("ed25519:") {
        return Err(SignatureProblem::Invalid(format!(
            "{key_id}: only ed25519 signatures are understood"
        )));
    }
    let (Some(sig), Some(pk)) = (b64(sig), b64(public_key)) else {
        return Err(SignatureProblem::Invalid(format!(
            "{key_id}: the signature or the key is not base64"
        )));
    };
    let bytes = signing_bytes(obj)?;
    verify_canonical_json_bytes(&SigningKeyAlgorithm::Ed25519, &pk, &sig, bytes.as_bytes())
        .map_err(|e| SignatureProblem::Invalid(format!("{key_id}: invalid signature ({e})")))
}

/// Signing for tests: fresh ed25519 keys and the spec's signatures with them.
#[cfg(test)]
pub(crate) mod test_keys {
    use ruma::signatures::{Ed25519KeyPair, KeyPair as _};
    use serde_json::{Value, json};

    use super::*;

    pub(crate) struct TestKey {
        pair: Ed25519KeyPair,
        /// The public key, unpadded base64.
        pub(crate) public: String,
    }

    impl TestKey {
        pub(crate) fn new() -> Self {
            let doc = Ed25519KeyPair::generate();
            let pair = Ed25519KeyPair::from_der(&doc, "k".into()).expect("parse");
            let public = Base64::<Standard, _>::new(pair.public_key().to_vec()).encode();
            Self { pair, public }
        }

        /// `ed25519:<public key>`, the ID of a cross-signing key.
        pub(crate) fn own_id(&self) -> String {
            format!("ed25519:{}", self.public)
        }

        /// Add `signer`'s signature with this key, named `key_id`, to `obj`.
        pub(crate) fn sign(&self, obj: &mut Value, signer: &str, key_id: &str) {
            let bytes = signing_bytes(obj).expect("canonical");
            let sig = self.pair.sign(bytes.as_bytes());
            let sig = Base64::<Standard, _>::new(sig.as_bytes().to_vec()).encode();
            if !obj["signatures"].is_object() {
                obj["signatures"] = json!({});
            }
            if !obj["signatures"][signer].is_object() {
                obj["signatures"][signer] = json!({});
            }
            obj["signatures"][signer][key_id] = json!(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_keys::TestKey;
    use super::*;

    #[test]
    fn a_good_signature_verifies_and_a_changed_object_does_not() {
        let k = TestKey::new();
        let pk = k.public.clone();
        let mut obj =
            json!({ "user_id": "@a:x", "keys": { "ed25519:DEV": pk }, "unsigned": { "n": 1 } });
        k.sign(&mut obj, "@a:x", "ed25519:DEV");
        assert_eq!(check_signature(&obj, "@a:x", "ed25519:DEV", &pk), Ok(()));
        // `unsigned` is not signed: changing it keeps the signature valid.
        obj["unsigned"] = json!({ "device_display_name": "phone" });
        assert_eq!(check_signature(&obj, "@a:x", "ed25519:DEV", &pk), Ok(()));
        obj["user_id"] = json!("@b:x");
        assert!(matches!(
            check_signature(&obj, "@a:x", "ed25519:DEV", &pk),
            Err(SignatureProblem::Invalid(_))
        ));
    }

    #[test]
    fn missing_wrong_key_and_garbage_are_refused() {
        let k = TestKey::new();
        let other = TestKey::new().public;
        let pk = k.public.clone();
        let mut obj = json!({ "user_id": "@a:x" });
        assert!(matches!(
            check_signature(&obj, "@a:x", "ed25519:DEV", &pk),
            Err(SignatureProblem::Missing(_))
        ));
        k.sign(&mut obj, "@a:x", "ed25519:DEV");
        assert!(matches!(
            check_signature(&obj, "@a:x", "ed25519:DEV", &other),
            Err(SignatureProblem::Invalid(_))
        ));
        obj["signatures"]["@a:x"]["ed25519:DEV"] = json!("!!not base64!!");
        assert!(check_signature(&obj, "@a:x", "ed25519:DEV", &pk).is_err());
        obj["signatures"]["@a:x"]["ed25519:DEV"] = json!("AAAA");
        assert!(check_signature(&obj, "@a:x", "ed25519:DEV", &pk).is_err());
        // A float is not canonical JSON: refused, not a panic.
        let mut f = json!({ "x": 1.5 });
        f["signatures"]["@a:x"]["ed25519:DEV"] = json!("AAAA");
        assert!(check_signature(&f, "@a:x", "ed25519:DEV", &pk).is_err());
    }
}
