//! Answers to key queries and claims for local users, shared by the client API
//! (`/keys/query`, `/keys/claim`) and the federation API (`/user/keys/query`,
//! `/user/keys/claim`, `/user/devices`). Which devices exist (and their display names) is
//! the accounts service's knowledge: the caller passes it in.
use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::cross_signing::{SELF_SIGNING, USER_SIGNING};
use crate::{E2eeError, E2eeService, Result};

/// A user's existing devices: device ID → display name.
pub type DeviceNames = BTreeMap<String, Option<String>>;

impl E2eeService {
    /// The keys of one user's devices that still exist (`wanted` empty: all), with
    /// `unsigned.device_display_name` when `with_names`.
    pub fn devices_with_keys(
        &self,
        user: &UserId,
        wanted: &[String],
        names: &DeviceNames,
        with_names: bool,
    ) -> Result<Map<String, Value>> {
        let mut devices = Map::new();
        for (device, mut keys) in self.all_device_keys(user)? {
            if !wanted.is_empty() && !wanted.iter().any(|w| w == device.as_str()) {
                continue;
            }
            // Keys of a device that no longer exists are not served.
            let Some(name) = names.get(device.as_str()) else {
                continue;
            };
            if with_names && let (Some(name), Some(obj)) = (name, keys.as_object_mut()) {
                let unsigned = obj.entry("unsigned").or_insert_with(|| json!({}));
                if unsigned.is_object() {
                    unsigned["device_display_name"] = json!(name);
                }
            }
            devices.insert(device.to_string(), keys);
        }
        Ok(devices)
    }

    /// `device_keys`, `master_keys`, `self_signing_keys` (and, for a local requester,
    /// `user_signing_keys`, only their own) for local `users`. `requester` `None`: a remote
    /// server asks (it gets no private signatures and no user-signing keys).
    pub fn query_local(
        &self,
        requester: Option<&UserId>,
        users: &BTreeMap<OwnedUserId, Vec<String>>,
        names_of: impl Fn(&UserId) -> Result<DeviceNames, String>,
    ) -> Result<Map<String, Value>> {
        let mut device_keys = Map::new();
        let mut master = Map::new();
        let mut self_signing = Map::new();
        let mut user_signing = Map::new();
        for (user, wanted) in users {
            let names = names_of(user).map_err(E2eeError::Internal)?;
            let devices = self.devices_with_keys(user, wanted, &names, requester.is_some())?;
            device_keys.insert(user.to_string(), Value::Object(devices));
            let viewer = requester.unwrap_or(user);
            if let Some(k) = self.master_key_for(user, viewer)? {
                master.insert(user.to_string(), k);
            }
            if let Some(k) = self.cross_signing_key(user, SELF_SIGNING)? {
                self_signing.insert(user.to_string(), k);
            }
            if requester == Some(&**user)
                && let Some(k) = self.cross_signing_key(user, USER_SIGNING)?
            {
                user_signing.insert(user.to_string(), k);
            }
        }
        let mut out = Map::new();
        out.insert("device_keys".into(), Value::Object(device_keys));
        out.insert("master_keys".into(), Value::Object(master));
        out.insert("self_signing_keys".into(), Value::Object(self_signing));
        if requester.is_some() {
            out.insert("user_signing_keys".into(), Value::Object(user_signing));
        }
        Ok(out)
    }

    /// Claim one key per (local user, device, algorithm): `{user: {device: {key_id: key}}}`;
    /// users with no key left are omitted.
    pub fn claim_local(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (user, devices) in wanted {
            let mut per_device = Map::new();
            for (device, algorithm) in devices {
                let device = OwnedDeviceId::from(device.as_str());
                if let Some(c) = self.claim_key(user, &device, algorithm)? {
                    per_device.insert(device.to_string(), json!({ c.id: c.key }));
                }
            }
            if !per_device.is_empty() {
                out.insert(user.to_string(), Value::Object(per_device));
            }
        }
        Ok(out)
    }
}
