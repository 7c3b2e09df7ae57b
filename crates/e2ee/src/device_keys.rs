//! Device keys: `/keys/upload` (the device-keys part and the whole upload's atomicity),
//! `/keys/query` for local users, and removal of a deleted device's keys.
use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde_json::{Map, Value};
use storage::{Batch, Cf, KeyReader};

use crate::otk::{self, OtkUpload};
use crate::{E2eeError, E2eeService, Result, decode, device_lists, keys};

/// Upper bound on one key object (device keys, a cross-signing key, one OTK) as JSON.
pub const MAX_KEY_OBJECT_BYTES: usize = 16 * 1024;
/// Upper bound on the algorithms and keys one device-keys object lists.
pub const MAX_KEYS_PER_DEVICE: usize = 32;

/// What a `/keys/upload` leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Unclaimed one-time keys per algorithm (`signed_curve25519` always present).
    pub one_time_key_counts: BTreeMap<String, u64>,
    /// Stream position of the device-list change, when the device keys changed.
    pub device_list_pos: Option<u64>,
}

/// Check a device-keys object as the spec shapes it and that it belongs to `user`/`device`.
pub fn validate_device_keys(user: &UserId, device: &DeviceId, keys: &Value) -> Result<()> {
    let obj = keys
        .as_object()
        .ok_or_else(|| E2eeError::BadJson("device_keys must be an object".into()))?;
    if serde_json::to_vec(keys).map_or(usize::MAX, |v| v.len()) > MAX_KEY_OBJECT_BYTES {
        return Err(E2eeError::TooMany(format!(
            "device_keys is larger than {MAX_KEY_OBJECT_BYTES} bytes"
        )));
    }
    let field = |name: &str| {
        obj.get(name)
            .ok_or_else(|| E2eeError::BadJson(format!("device_keys.{name} is missing")))
    };
    let user_id = field("user_id")?
        .as_str()
        .ok_or_else(|| E2eeError::BadJson("device_keys.user_id must be a string".into()))?;
    let device_id = field("device_id")?
        .as_str()
        .ok_or_else(|| E2eeError::BadJson("device_keys.device_id must be a string".into()))?;
    if user_id != user.as_str() || device_id != device.as_str() {
        return Err(E2eeError::InvalidParam(
            "device_keys must be this device's own (user_id and device_id of the requester)".into(),
        ));
    }
    let algorithms = field("algorithms")?
        .as_array()
        .filter(|a| a.iter().all(Value::is_string) && a.len() <= MAX_KEYS_PER_DEVICE)
        .ok_or_else(|| {
            E2eeError::BadJson("device_keys.algorithms must be a list of strings".into())
        })?;
    let _ = algorithms;
    let keys_obj = field("keys")?
        .as_object()
        .filter(|k| k.len() <= MAX_KEYS_PER_DEVICE)
        .ok_or_else(|| E2eeError::BadJson("device_keys.keys must be an object".into()))?;
    for (id, key) in keys_obj {
        let well_formed = id.split_once(':').is_some_and(|(alg, _)| !alg.is_empty());
        if !well_formed || !key.is_string() {
            return Err(E2eeError::BadJson(format!(
                "device_keys.keys: {id:?} must be \"algorithm:key_id\" with a string key"
            )));
        }
    }
    validate_signatures(field("signatures")?, "device_keys.signatures")?;
    // The device signs its own keys with its ed25519 key: a client that relies on these
    // keys checks that, and so do we, so that a corrupted or forged upload is refused at
    // once. Keys without that self-signature are accepted (as Synapse does, and
    // Complement's csapi device-list tests upload such keys): clients ignore them.
    let key_id = format!("ed25519:{device}");
    if let Some(sig) = obj["signatures"][user.as_str()][&key_id].as_str() {
        let public = keys_obj
            .get(&key_id)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                E2eeError::InvalidSignature(format!(
                    "device_keys: signed with {key_id}, which device_keys.keys does not hold"
                ))
            })?;
        crate::verify::check_one(keys, sig, &key_id, public)
            .map_err(|p| E2eeError::InvalidSignature(format!("device_keys: {}", p.message())))?;
    }
    Ok(())
}

/// `signatures` is `{user_id: {algorithm:key_id: signature}}`.
pub(crate) fn validate_signatures(sigs: &Value, what: &str) -> Result<()> {
    let ok = sigs.as_object().is_some_and(|users| {
        users.values().all(|keys| {
            keys.as_object()
                .is_some_and(|k| k.len() <= MAX_KEYS_PER_DEVICE && k.values().all(Value::is_string))
        })
    });
    if ok {
        Ok(())
    } else {
        Err(E2eeError::BadJson(format!(
            "{what} must map user IDs to key IDs to signatures"
        )))
    }
}

impl E2eeService {
    /// `/keys/upload` for `device`: device keys (optional), one-time keys, fallback keys, in
    /// one atomic write. Re-uploading identical keys is a no-op; a one-time key ID that is
    /// already stored with a different key is refused (nothing of the upload is written).
    pub fn upload_keys(
        &self,
        user: &UserId,
        device: &DeviceId,
        device_keys: Option<&Value>,
        one_time_keys: &Map<String, Value>,
        fallback_keys: &Map<String, Value>,
    ) -> Result<UploadOutcome> {
        if let Some(k) = device_keys {
            validate_device_keys(user, device, k)?;
        }
        let otks = OtkUpload::parse(one_time_keys, fallback_keys)?;
        let (u, d) = (user.as_str(), device.as_str());
        let _guard = self.locks.lock(keys::otk_counter(u, d));
        let mut batch = Batch::new();
        otk::stage_upload(self, u, d, &otks, &mut batch)?;
        let keys_changed = match device_keys {
            Some(new) => {
                let old: Option<Value> = self.db().get_json(Cf::E2ee, keys::device_keys(u, d))?;
                if old.as_ref() != Some(new) {
                    batch.put_json(Cf::E2ee, keys::device_keys(u, d), new);
                    true
                } else {
                    false
                }
            }
            None => false,
        };
        let device_list_pos = if keys_changed {
            let (pos, ()) = self.db().write_with_position(|pos, b| {
                std::mem::swap(b, &mut batch);
                device_lists::log_change(b, pos, u);
                Ok::<_, E2eeError>(())
            })?;
            Some(pos)
        } else {
            self.db().write(batch)?;
            None
        };
        Ok(UploadOutcome {
            one_time_key_counts: self.one_time_key_counts(user, device)?,
            device_list_pos,
        })
    }

    /// The stored device keys of one device.
    pub fn device_keys(&self, user: &UserId, device: &DeviceId) -> Result<Option<Value>> {
        Ok(self
            .db()
            .get_json(Cf::E2ee, keys::device_keys(user.as_str(), device.as_str()))?)
    }

    /// Every device of `user` that uploaded keys, with its keys (signatures by the user's
    /// self-signing key merged in by [`E2eeService::add_signatures`]).
    pub fn all_device_keys(&self, user: &UserId) -> Result<Vec<(OwnedDeviceId, Value)>> {
        let mut out = Vec::new();
        for (k, v) in self
            .db()
            .scan_prefix(Cf::E2ee, keys::device_keys_of_user(user.as_str()))?
        {
            let mut r = KeyReader::new(&k);
            let (_space, _user) = (r.str(), r.str());
            if let Some(d) = r.str() {
                out.push((OwnedDeviceId::from(d), decode(&v)?));
            }
        }
        Ok(out)
    }

    /// A device was deleted (logout, `DELETE /devices`): drop its keys and inbox and record
    /// the device-list change. Returns the change's position, or `None` when the device
    /// had no keys (nobody can have seen it as an encryption peer; still drops its inbox).
    pub fn delete_device(&self, user: &UserId, device: &DeviceId) -> Result<Option<u64>> {
        let (u, d) = (user.as_str(), device.as_str());
        let _guard = self.locks.lock(keys::otk_counter(u, d));
        let had_keys = self.db().exists(Cf::E2ee, keys::device_keys(u, d))?;
        let mut batch = Batch::new();
        batch.delete(Cf::E2ee, keys::device_keys(u, d));
        batch.delete(Cf::E2ee, keys::otk_counter(u, d));
        batch.delete(Cf::E2ee, keys::to_device_ack(u, d));
        for prefix in [
            keys::otks_of_device(u, d),
            keys::otk_index_of_device(u, d),
            keys::fallbacks_of_device(u, d),
            keys::to_device_inbox(u, d),
        ] {
            for (k, _) in self.db().scan_prefix(Cf::E2ee, &prefix)? {
                batch.delete(Cf::E2ee, k);
            }
        }
        if had_keys {
            let (pos, ()) = self.db().write_with_position(|pos, b| {
                std::mem::swap(b, &mut batch);
                device_lists::log_change(b, pos, u);
                Ok::<_, E2eeError>(())
            })?;
            Ok(Some(pos))
        } else {
            self.db().write(batch)?;
            Ok(None)
        }
    }
}
