//! One-time keys and fallback keys.
//!
//! One-time keys are stored per (user, device, algorithm) under an increasing per-device
//! sequence number, so a claim hands out the oldest upload first (MSC4225, Complement's
//! `TestKeyClaimOrdering`). A claim reads the first key and deletes it in one write while
//! holding the device's lock: two concurrent claims never get the same key, and a key is
//! never lost. When none is left the device's fallback key of that algorithm is returned
//! (it stays, marked used, until the device uploads a new one).
use std::collections::BTreeMap;

use ruma::{DeviceId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use storage::{Batch, Cf, KeyReader};

use crate::device_keys::MAX_KEY_OBJECT_BYTES;
use crate::{E2eeError, E2eeService, Result, decode, keys};

/// One-time keys accepted in one upload.
pub const MAX_OTKS_PER_UPLOAD: usize = 200;
/// Unclaimed one-time keys kept per device and algorithm (clients keep about 50).
pub const MAX_OTKS_STORED: u64 = 1_000;
/// The algorithm whose count `/keys/upload` and `/sync` always report (0 when none).
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredOtk {
    /// `algorithm:key_id`.
    pub id: String,
    pub key: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredFallback {
    /// `algorithm:key_id`.
    pub id: String,
    pub key: Value,
    /// Handed out by a claim since it was uploaded.
    pub used: bool,
}

/// A parsed, validated upload: `(algorithm, algorithm:key_id, key)`.
pub(crate) struct OtkUpload {
    one_time: Vec<(String, String, Value)>,
    fallback: Vec<(String, String, Value)>,
}

fn parse_key_map(map: &Map<String, Value>, what: &str) -> Result<Vec<(String, String, Value)>> {
    let mut out = Vec::with_capacity(map.len());
    for (id, key) in map {
        let Some((alg, key_id)) = id.split_once(':') else {
            return Err(E2eeError::BadJson(format!(
                "{what}: {id:?} must be \"algorithm:key_id\""
            )));
        };
        if alg.is_empty() || key_id.is_empty() {
            return Err(E2eeError::BadJson(format!(
                "{what}: {id:?} must be \"algorithm:key_id\""
            )));
        }
        if !(key.is_string() || key.get("key").is_some_and(Value::is_string)) {
            return Err(E2eeError::BadJson(format!(
                "{what}: {id:?} must be a key string or an object with a \"key\""
            )));
        }
        if serde_json::to_vec(key).map_or(usize::MAX, |v| v.len()) > MAX_KEY_OBJECT_BYTES {
            return Err(E2eeError::TooMany(format!("{what}: {id:?} is too large")));
        }
        out.push((alg.to_owned(), id.clone(), key.clone()));
    }
    Ok(out)
}

impl OtkUpload {
    pub(crate) fn parse(
        one_time: &Map<String, Value>,
        fallback: &Map<String, Value>,
    ) -> Result<Self> {
        if one_time.len() > MAX_OTKS_PER_UPLOAD {
            return Err(E2eeError::TooMany(format!(
                "at most {MAX_OTKS_PER_UPLOAD} one-time keys per upload"
            )));
        }
        let fallback = parse_key_map(fallback, "fallback_keys")?;
        let mut algs: Vec<&str> = fallback.iter().map(|(a, _, _)| a.as_str()).collect();
        algs.sort_unstable();
        if algs.windows(2).any(|w| w[0] == w[1]) {
            return Err(E2eeError::BadJson(
                "fallback_keys: at most one key per algorithm".into(),
            ));
        }
        Ok(OtkUpload {
            one_time: parse_key_map(one_time, "one_time_keys")?,
            fallback,
        })
    }
}

/// Stage an upload's one-time and fallback keys into `batch`. The caller holds the
/// device's lock until the batch is written.
pub(crate) fn stage_upload(
    svc: &E2eeService,
    user: &str,
    device: &str,
    up: &OtkUpload,
    batch: &mut Batch,
) -> Result<()> {
    let db = svc.db();
    let mut next = db
        .get(Cf::E2ee, keys::otk_counter(user, device))?
        .and_then(|v| storage::decode_u64(&v))
        .unwrap_or(0);
    let counts = count_otks(svc, user, device)?;
    let mut added: BTreeMap<&str, u64> = BTreeMap::new();
    for (alg, id, key) in &up.one_time {
        if let Some(seq) = db
            .get(Cf::E2ee, keys::otk_index(user, device, id))?
            .and_then(|v| storage::decode_u64(&v))
        {
            // Already stored: fine when it is the same key (a client retrying an upload).
            let existing: Option<StoredOtk> =
                db.get_json(Cf::E2ee, keys::otk(user, device, alg, seq))?;
            match existing {
                Some(e) if e.key == *key => continue,
                Some(_) => {
                    return Err(E2eeError::InvalidParam(format!(
                        "one-time key {id} already exists with a different key"
                    )));
                }
                // Index without key: the key was uploaded and claimed already. A client
                // retrying an old upload must not get an error, and the key must not be
                // handed out a second time: ignore it.
                None => continue,
            }
        }
        let n = added.entry(alg.as_str()).or_default();
        *n += 1;
        if counts.get(alg.as_str()).copied().unwrap_or(0) + *n > MAX_OTKS_STORED {
            return Err(E2eeError::TooMany(format!(
                "at most {MAX_OTKS_STORED} unclaimed one-time keys per algorithm"
            )));
        }
        let stored = StoredOtk {
            id: id.clone(),
            key: key.clone(),
        };
        batch.put_json(Cf::E2ee, keys::otk(user, device, alg, next), &stored);
        batch.put(
            Cf::E2ee,
            keys::otk_index(user, device, id),
            next.to_be_bytes().to_vec(),
        );
        next += 1;
    }
    batch.put(
        Cf::E2ee,
        keys::otk_counter(user, device),
        next.to_be_bytes().to_vec(),
    );
    for (alg, id, key) in &up.fallback {
        let k = keys::fallback(user, device, alg);
        let old: Option<StoredFallback> = db.get_json(Cf::E2ee, &k)?;
        // The same key uploaded again keeps its "used" mark.
        let used = old.is_some_and(|o| o.id == *id && o.key == *key && o.used);
        batch.put_json(
            Cf::E2ee,
            k,
            &StoredFallback {
                id: id.clone(),
                key: key.clone(),
                used,
            },
        );
    }
    Ok(())
}

fn count_otks(svc: &E2eeService, user: &str, device: &str) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for (k, _) in svc
        .db()
        .scan_prefix(Cf::E2ee, keys::otks_of_device(user, device))?
    {
        let mut r = KeyReader::new(&k);
        let (_space, _user, _device) = (r.str(), r.str(), r.str());
        if let Some(alg) = r.str() {
            *counts.entry(alg.to_owned()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedKey {
    /// `algorithm:key_id`.
    pub id: String,
    pub key: Value,
    /// True when this is the device's fallback key (no one-time key was left).
    pub fallback: bool,
}

impl E2eeService {
    /// Unclaimed one-time keys per algorithm; `signed_curve25519` is always present.
    pub fn one_time_key_counts(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = count_otks(self, user.as_str(), device.as_str())?;
        counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
        Ok(counts)
    }

    /// Algorithms whose fallback key has not been handed out yet.
    pub fn unused_fallback_key_types(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (k, v) in self.db().scan_prefix(
            Cf::E2ee,
            keys::fallbacks_of_device(user.as_str(), device.as_str()),
        )? {
            let fb: StoredFallback = decode(&v)?;
            let mut r = KeyReader::new(&k);
            let (_space, _user, _device) = (r.str(), r.str(), r.str());
            if let (false, Some(alg)) = (fb.used, r.str()) {
                out.push(alg.to_owned());
            }
        }
        Ok(out)
    }

    /// Claim one key of `algorithm` for `device`: the oldest one-time key (removed), else
    /// the fallback key (kept, marked used), else `None`.
    pub fn claim_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<ClaimedKey>> {
        let (u, d) = (user.as_str(), device.as_str());
        let _guard = self.locks.lock(keys::otk_counter(u, d));
        let prefix = keys::otks_of_algorithm(u, d, algorithm);
        let end = keys::prefix_end(&prefix);
        if let Some((k, v)) = self
            .db()
            .scan_range(Cf::E2ee, &prefix, &end, false, 1)?
            .into_iter()
            .next()
        {
            let otk: StoredOtk = decode(&v)?;
            let mut b = Batch::new();
            b.delete(Cf::E2ee, k);
            // The index entry stays (without its key) so a re-upload of a claimed key ID
            // is recognised; it goes with the device.
            self.db().write(b)?;
            return Ok(Some(ClaimedKey {
                id: otk.id,
                key: otk.key,
                fallback: false,
            }));
        }
        let fk = keys::fallback(u, d, algorithm);
        let Some(mut fb) = self.db().get_json::<StoredFallback>(Cf::E2ee, &fk)? else {
            return Ok(None);
        };
        if !fb.used {
            fb.used = true;
            let mut b = Batch::new();
            b.put_json(Cf::E2ee, &fk, &fb);
            self.db().write(b)?;
        }
        Ok(Some(ClaimedKey {
            id: fb.id,
            key: fb.key,
            fallback: true,
        }))
    }
}
