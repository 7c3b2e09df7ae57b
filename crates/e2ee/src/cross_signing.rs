//! Cross-signing: the master, self-signing and user-signing keys of a user
//! (`/keys/device_signing/upload`), and signatures (`/keys/signatures/upload`).
//!
//! A signature by a user on their own device keys or master key is merged into the stored
//! object (everyone sees it). A signature on another user's master key (made with the
//! signer's user-signing key) is stored beside it and shown only to the signer, as the
//! spec says user-signing signatures are private. Whether an upload needs user-interactive
//! auth is decided here ([`E2eeService::signing_upload_needs_auth`]) and enforced by the
//! HTTP layer. Every signature is verified (ed25519, [`crate::verify`]) against the key the
//! spec says makes it: self-signing and user-signing keys by the master key; a master key's
//! own signatures by itself or one of the user's devices; in `/keys/signatures/upload`, a
//! device by the self-signing key, one's own master key by a device, another user's master
//! key by the user-signing key. A bad one is refused with `M_INVALID_SIGNATURE`.
use std::collections::BTreeSet;

use ruma::UserId;
use serde_json::{Map, Value, json};
use storage::{Batch, Cf};

use crate::device_keys::{MAX_KEY_OBJECT_BYTES, validate_signatures};
use crate::verify::check_one;
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

/// Which key must have made a new signature.
#[derive(Clone, Copy)]
enum Expected {
    SelfSigning,
    UserSigning,
    Device,
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
        self.add_viewer_signatures(user, &mut key, viewer)?;
        Ok(Some(key))
    }

    /// Add to `user`'s master key `key` (ours, cached, or just fetched from the user's
    /// server) the signatures `viewer` made on it with their user-signing key. Those stay
    /// here: the spec shows them only to the signer, so the user's own server never has
    /// them and every answer about a remote user needs them merged in.
    pub fn add_viewer_signatures(
        &self,
        user: &UserId,
        key: &mut Value,
        viewer: &UserId,
    ) -> Result<()> {
        if viewer != user
            && let Some(pk) = public_key(key).map(str::to_owned)
            && let Some(sigs) = self.db().get_json::<Value>(
                Cf::E2ee,
                keys::signatures(user.as_str(), &pk, viewer.as_str()),
            )?
        {
            merge_signatures(
                key,
                &json!({ "signatures": { viewer.as_str(): sigs } }),
                viewer.as_str(),
            );
        }
        Ok(())
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
        let master = match uploads.iter().find(|(k, _)| *k == MASTER) {
            Some((_, m)) => Some((*m).clone()),
            None => self.cross_signing_key(user, MASTER)?,
        };
        let master_pk = master.as_ref().and_then(public_key).map(str::to_owned);
        for (kind, key) in uploads {
            self.check_key_signatures(user, kind, key, master_pk.as_deref())?;
        }
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            for (kind, key) in uploads {
                b.put_json(Cf::E2ee, keys::cross_signing(u, kind), *key);
            }
            device_lists::log_change(b, pos, u);
            Ok::<_, E2eeError>(())
        })?;
        Ok(pos)
    }

    /// Verify the signatures `user` made on their cross-signing key `key` of `kind`:
    /// self-signing and user-signing keys must be signed by the master key (`master_pk`);
    /// a master key's signatures by the user must be its own or a device's.
    fn check_key_signatures(
        &self,
        user: &UserId,
        kind: &str,
        key: &Value,
        master_pk: Option<&str>,
    ) -> Result<()> {
        let u = user.as_str();
        let bad = |m: String| E2eeError::InvalidSignature(format!("{kind}_key: {m}"));
        let sigs = key["signatures"][u].as_object();
        if kind != MASTER {
            let pk = master_pk.ok_or_else(|| bad("there is no master key to check it".into()))?;
            let key_id = format!("ed25519:{pk}");
            return crate::verify::check_signature(key, u, &key_id, pk)
                .map_err(|p| bad(format!("must be signed by the master key: {}", p.message())));
        }
        for (key_id, sig) in sigs.into_iter().flatten() {
            let sig = sig.as_str().unwrap_or_default();
            let own = public_key(key).filter(|pk| key_id.strip_prefix("ed25519:") == Some(*pk));
            let pk = match own {
                Some(pk) => Some(pk.to_owned()),
                None => self.device_signing_key(user, key_id)?,
            };
            let Some(pk) = pk else {
                return Err(bad(format!(
                    "signed by {key_id}, which is not a key of {u}"
                )));
            };
            check_one(key, sig, key_id, &pk).map_err(|p| bad(p.message().to_owned()))?;
        }
        Ok(())
    }

    /// The ed25519 key of `user`'s device named by `key_id` (`ed25519:<device>`).
    fn device_signing_key(&self, user: &UserId, key_id: &str) -> Result<Option<String>> {
        let Some(device) = key_id.strip_prefix("ed25519:") else {
            return Ok(None);
        };
        let stored: Option<Value> = self
            .db()
            .get_json(Cf::E2ee, keys::device_keys(user.as_str(), device))?;
        Ok(stored.and_then(|d| d["keys"][key_id].as_str().map(str::to_owned)))
    }

    /// The public key of `user`'s cross-signing key of `kind`, if they have one.
    fn cross_signing_public(&self, user: &UserId, kind: &str) -> Result<Option<String>> {
        Ok(self
            .cross_signing_key(user, kind)?
            .as_ref()
            .and_then(public_key)
            .map(str::to_owned))
    }

    /// Verify the signatures `signer` adds to `stored` in `obj` (those not stored yet), each
    /// made with the key `expected` names: `Err((errcode, message))` for the failures list.
    fn check_new_signatures(
        &self,
        signer: &UserId,
        stored: &Value,
        obj: &Value,
        expected: Expected,
    ) -> Result<std::result::Result<(), (&'static str, String)>> {
        let s = signer.as_str();
        for (key_id, sig) in obj["signatures"][s].as_object().into_iter().flatten() {
            if stored["signatures"][s].get(key_id) == Some(sig) {
                continue;
            }
            let pk = match expected {
                Expected::SelfSigning => self
                    .cross_signing_public(signer, SELF_SIGNING)?
                    .filter(|pk| key_id.strip_prefix("ed25519:") == Some(pk.as_str())),
                Expected::UserSigning => self
                    .cross_signing_public(signer, USER_SIGNING)?
                    .filter(|pk| key_id.strip_prefix("ed25519:") == Some(pk.as_str())),
                Expected::Device => self.device_signing_key(signer, key_id)?,
            };
            let Some(pk) = pk else {
                let what = match expected {
                    Expected::SelfSigning => "the uploader's self-signing key",
                    Expected::UserSigning => "the uploader's user-signing key",
                    Expected::Device => "one of the uploader's devices",
                };
                return Ok(Err((
                    "M_INVALID_SIGNATURE",
                    format!("{key_id} is not {what}, which must make this signature"),
                )));
            };
            let sig = sig.as_str().unwrap_or_default();
            if let Err(p) = check_one(obj, sig, key_id, &pk) {
                return Ok(Err(("M_INVALID_SIGNATURE", p.message().to_owned())));
            }
        }
        Ok(Ok(()))
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
                    // A device is signed by the self-signing key, the master key by a device.
                    let (store_key, stored, expected) =
                        match self.db().get_json::<Value>(Cf::E2ee, &dk)? {
                            Some(v) => (dk, v, Expected::SelfSigning),
                            None => match self.db().get_json::<Value>(Cf::E2ee, &master_k)? {
                                Some(m) if public_key(&m) == Some(key_id.as_str()) => {
                                    (master_k, m, Expected::Device)
                                }
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
                    if let Err((code, msg)) =
                        self.check_new_signatures(signer, &stored, obj, expected)?
                    {
                        failures.push(fail(code, &msg));
                        continue;
                    }
                    let mut updated = stored;
                    if merge_signatures(&mut updated, obj, s) {
                        batch.put_json(Cf::E2ee, store_key, &updated);
                        changed.insert(s.to_owned());
                    }
                } else {
                    // Another user's master key, signed with the signer's user-signing key.
                    // A remote user's master key comes from their cached device list.
                    let master = match self.cross_signing_key(target_id, MASTER)? {
                        Some(m) => Some(m),
                        None => self.remote_devices(target_id)?.and_then(|l| l.master_key),
                    };
                    let Some(master) = master else {
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
                    let mine_before: Value = self
                        .db()
                        .get_json(Cf::E2ee, &k)?
                        .unwrap_or_else(|| json!({}));
                    let before = json!({ "signatures": { s: mine_before } });
                    if let Err((code, msg)) =
                        self.check_new_signatures(signer, &before, obj, Expected::UserSigning)?
                    {
                        failures.push(fail(code, &msg));
                        continue;
                    }
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
