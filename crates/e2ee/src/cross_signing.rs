//! Cross-signing: the master, self-signing and user-signing keys of a user
//! (`/keys/device_signing/upload`), and signatures (`/keys/signatures/upload`).
//!
//! A signature by a user on their own device keys or master key is merged into the stored
//! object (everyone sees it). A signature on another user's master key (made with the
//! signer's user-signing key) is stored beside it and shown only to the signer, as the
//! spec says user-signing signatures are private. Whether an upload needs user-interactive
//! auth is decided here ([`E2eeService::signing_upload_needs_auth`]) and enforced by the
//! HTTP layer. Signatures are checked for shape and that they sign the stored object; the
//! ed25519 signature itself is verified by the clients that rely on it (not here, yet).
use std::collections::BTreeSet;

use ruma::UserId;
use serde_json::{Map, Value, json};
use storage::{Batch, Cf};

use crate::device_keys::{MAX_KEY_OBJECT_BYTES, validate_signatures};
use crate::{E2eeError, E2eeService, Result, device_lists, keys};

/// The three kinds, as stored and as `usage` names them.
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// The public key of a cross-signing key object (`keys` has exactly one entry).
pub fn public_key(key: &Value) -> Option<&str> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    keys.values().next()?.as_str()
}

/// Validate one cross-signing key object of `kind` for `user`.
pub fn validate_cross_signing_key(user: &UserId, kind: &str, key: &Value) -> Result<()> {
    let what = format!("{kind}_key");
    if !key.is_object() {
        return Err(E2eeError::BadJson(format!("{what} must be an object")));
    }
    if serde_json::to_vec(key).map_or(usize::MAX, |v| v.len()) > MAX_KEY_OBJECT_BYTES {
        return Err(E2eeError::TooMany(format!("{what} is too large")));
    }
    if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(E2eeError::InvalidParam(format!(
            "{what}.user_id must be the requester"
        )));
    }
    let usage_ok = key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind)));
    if !usage_ok {
        return Err(E2eeError::BadJson(format!(
            "{what}.usage must contain {kind:?}"
        )));
    }
    let key_ok = key.get("keys").and_then(Value::as_object).is_some_and(|k| {
        k.len() == 1
            && k.iter()
                .all(|(id, v)| id.starts_with("ed25519:") && v.is_string())
    });
    if !key_ok {
        return Err(E2eeError::BadJson(format!(
            "{what}.keys must hold exactly one ed25519 key"
        )));
    }
    if let Some(s) = key.get("signatures") {
        validate_signatures(s, &format!("{what}.signatures"))?;
    }
    Ok(())
}

/// The object a signature signs: everything but `signatures` and `unsigned`.
fn signed_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    v
}

/// Merge `signer`'s signatures from `from` into `into`'s `signatures`.
fn merge_signatures(into: &mut Value, from: &Value, signer: &str) -> bool {
    let Some(new) = from["signatures"][signer].as_object() else {
        return false;
    };
    if new.is_empty() {
        return false;
    }
    let Some(obj) = into.as_object_mut() else {
        return false;
    };
    let sigs = obj.entry("signatures").or_insert_with(|| json!({}));
    if !sigs.is_object() {
        *sigs = json!({});
    }
    let mine = &mut sigs[signer];
    if !mine.is_object() {
        *mine = json!({});
    }
    let mut changed = false;
    for (k, v) in new {
        if mine.get(k) != Some(v) {
            mine[k.as_str()] = v.clone();
            changed = true;
        }
    }
    changed
}

/// One failed item of a signature upload: `(user, key id, errcode, message)`.
pub type SignatureFailure = (String, String, &'static str, String);

impl E2eeService {
    pub fn cross_signing_key(&self, user: &UserId, kind: &str) -> Result<Option<Value>> {
        Ok(self
            .db()
            .get_json(Cf::E2ee, keys::cross_signing(user.as_str(), kind))?)
    }

    /// The master key as `viewer` sees it: with the signatures `viewer` made on it
    /// with their user-signing key.
    pub fn master_key_for(&self, user: &UserId, viewer: &UserId) -> Result<Option<Value>> {
        let Some(mut key) = self.cross_signing_key(user, MASTER)? else {
            return Ok(None);
        };
        if viewer != user
            && let Some(pk) = public_key(&key).map(str::to_owned)
            && let Some(sigs) = self.db().get_json::<Value>(
                Cf::E2ee,
                keys::signatures(user.as_str(), &pk, viewer.as_str()),
            )?
        {
            merge_signatures(
                &mut key,
                &json!({ "signatures": { viewer.as_str(): sigs } }),
                viewer.as_str(),
            );
        }
        Ok(Some(key))
    }

    /// Whether this upload replaces keys that exist (then UIA is required; a first
    /// upload, or one repeating the stored keys, is allowed without, as MSC3967 /
    /// spec v1.11 say).
    pub fn signing_upload_needs_auth(
        &self,
        user: &UserId,
        uploads: &[(&str, &Value)],
    ) -> Result<bool> {
        if self.cross_signing_key(user, MASTER)?.is_none() {
            return Ok(false);
        }
        for (kind, key) in uploads {
            if self.cross_signing_key(user, kind)?.as_ref() != Some(*key) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Store cross-signing keys (`kind`, key), all or nothing. Self-signing and
    /// user-signing keys need a master key (uploaded now or before). Returns the
    /// device-list change's position.
    pub fn upload_signing_keys(&self, user: &UserId, uploads: &[(&str, &Value)]) -> Result<u64> {
        for (kind, key) in uploads {
            if ![MASTER, SELF_SIGNING, USER_SIGNING].contains(kind) {
                return Err(E2eeError::BadJson(format!("unknown key kind {kind}")));
            }
            validate_cross_signing_key(user, kind, key)?;
        }
        let has_master = uploads.iter().any(|(k, _)| *k == MASTER)
            || self.cross_signing_key(user, MASTER)?.is_some();
        if !has_master && !uploads.is_empty() {
            return Err(E2eeError::InvalidParam(
                "upload a master key before self-signing or user-signing keys".into(),
            ));
        }
        let u = user.as_str();
        let _guard = self.locks.lock(keys::cross_signing(u, MASTER));
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            for (kind, key) in uploads {
                b.put_json(Cf::E2ee, keys::cross_signing(u, kind), *key);
            }
            device_lists::log_change(b, pos, u);
            Ok::<_, E2eeError>(())
        })?;
        Ok(pos)
    }

    /// `/keys/signatures/upload` by `signer`: `{user_id: {key_id or device_id: signed
    /// object}}`. Returns the users whose keys changed (with the position) and the failures.
    pub fn add_signatures(
        &self,
        signer: &UserId,
        signed: &Map<String, Value>,
    ) -> Result<(Option<u64>, BTreeSet<String>, Vec<SignatureFailure>)> {
        let s = signer.as_str();
        let mut failures = Vec::new();
        let mut batch = Batch::new();
        let mut changed = BTreeSet::new();
        let _guard = self.locks.lock(keys::cross_signing(s, MASTER));
        for (target, objects) in signed {
            let Some(objects) = objects.as_object() else {
                failures.push((
                    target.clone(),
                    String::new(),
                    "M_BAD_JSON",
                    "expected an object".into(),
                ));
                continue;
            };
            let Ok(target_id) = <&UserId>::try_from(target.as_str()) else {
                failures.push((
                    target.clone(),
                    String::new(),
                    "M_INVALID_PARAM",
                    "invalid user ID".into(),
                ));
                continue;
            };
            for (key_id, obj) in objects {
                let fail = |code: &'static str, msg: &str| {
                    (target.clone(), key_id.clone(), code, msg.to_owned())
                };
                if obj["signatures"][s]
                    .as_object()
                    .is_none_or(|m| m.is_empty())
                {
                    failures.push(fail("M_INVALID_SIGNATURE", "no signature by the uploader"));
                    continue;
                }
                if validate_signatures(&obj["signatures"], "signatures").is_err() {
                    failures.push(fail("M_BAD_JSON", "malformed signatures"));
                    continue;
                }
                if target_id == signer {
                    // One of the signer's devices, or their master key.
                    let dk = keys::device_keys(s, key_id);
                    let master_k = keys::cross_signing(s, MASTER);
                    let (store_key, stored) = match self.db().get_json::<Value>(Cf::E2ee, &dk)? {
                        Some(v) => (dk, v),
                        None => match self.db().get_json::<Value>(Cf::E2ee, &master_k)? {
                            Some(m) if public_key(&m) == Some(key_id.as_str()) => (master_k, m),
                            _ => {
                                failures.push(fail("M_NOT_FOUND", "no such device or key"));
                                continue;
                            }
                        },
                    };
                    if signed_part(&stored) != signed_part(obj) {
                        failures.push(fail(
                            "M_INVALID_SIGNATURE",
                            "the signed object differs from the stored keys",
                        ));
                        continue;
                    }
                    let mut updated = stored;
                    if merge_signatures(&mut updated, obj, s) {
                        batch.put_json(Cf::E2ee, store_key, &updated);
                        changed.insert(s.to_owned());
                    }
                } else {
                    // Another user's master key, signed with the signer's user-signing key.
                    let Some(master) = self.cross_signing_key(target_id, MASTER)? else {
                        failures.push(fail("M_NOT_FOUND", "that user has no master key"));
                        continue;
                    };
                    if public_key(&master) != Some(key_id.as_str()) {
                        failures.push(fail(
                            "M_INVALID_PARAM",
                            "only another user's master key can be signed",
                        ));
                        continue;
                    }
                    if signed_part(&master) != signed_part(obj) {
                        failures.push(fail(
                            "M_INVALID_SIGNATURE",
                            "the signed object differs from the stored key",
                        ));
                        continue;
                    }
                    let k = keys::signatures(target, key_id, s);
                    let mut mine: Value = self
                        .db()
                        .get_json(Cf::E2ee, &k)?
                        .unwrap_or_else(|| json!({}));
                    let mut holder = json!({ "signatures": { s: mine.take() } });
                    merge_signatures(&mut holder, obj, s);
                    batch.put_json(Cf::E2ee, k, &holder["signatures"][s]);
                    changed.insert(target.clone());
                }
            }
        }
        if changed.is_empty() {
            return Ok((None, changed, failures));
        }
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            std::mem::swap(b, &mut batch);
            for u in &changed {
                device_lists::log_change(b, pos, u);
            }
            Ok::<_, E2eeError>(())
        })?;
        Ok((Some(pos), changed, failures))
    }
}
