//! Remote users' device lists, cached while a local user shares a room with them.
//!
//! * **Filled** from the user's server's `GET /_matrix/federation/v1/user/devices/{userId}`
//!   ([`E2eeService::store_remote_devices`]): every device's keys (each must be the
//!   device's own and carry its valid self-signature; others are left out), the master and
//!   self-signing keys, and the `stream_id` of that snapshot.
//! * **Kept current** by that server's EDUs ([`E2eeService::apply_remote_device_update`],
//!   [`E2eeService::apply_remote_signing_update`]): an `m.device_list_update` whose `prev_id`s
//!   are all stream ids this entry has seen (or that has none) is applied — a device added,
//!   replaced or deleted. One that names a `prev_id` we never saw means an update was lost:
//!   the entry is dropped, and the next key query resyncs through `/user/devices`.
//! * **Read** by the client API's `/keys/query` only while a local user shares a room with
//!   the user (the caller checks; with no shared room the server stops sending us updates,
//!   so the caller drops the entry and asks the user's server directly).
//!
//! Every update also logs a device-list change (one batch with the cache write), so local
//! room-mates see the user in `device_lists.changed` and re-query.
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use storage::Cf;

use crate::cross_signing::{MASTER, SELF_SIGNING, validate_cross_signing_key};
use crate::device_keys::validate_device_keys;
use crate::{E2eeError, E2eeService, Result, device_lists, keys};

/// Devices kept for one remote user, at most (the rest of a snapshot is left out).
pub const MAX_REMOTE_DEVICES: usize = 1_000;
/// Set (`true`) in the `m.device_list_update`s Pulse sends when a local user joins a room,
/// announcing devices that did not change: a receiver that does not track the user need
/// not tell its clients (other servers ignore the field).
pub const JOIN_ANNOUNCEMENT: &str = "org.pulse.join_announcement";
/// Stream ids remembered per user to recognise `prev_id`s.
const SEEN_IDS: usize = 16;

/// The cached device list of one remote user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteDeviceList {
    /// The newest stream id applied.
    pub stream_id: u64,
    /// The stream id of the `/user/devices` snapshot: every update up to it is in it.
    #[serde(default)]
    pub snapshot_id: u64,
    /// Recent stream ids applied (newest last), to check `prev_id` chains.
    pub seen: Vec<u64>,
    /// Device ID → its signed device keys (`unsigned.device_display_name` when the server
    /// shared one).
    pub devices: Map<String, Value>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

impl RemoteDeviceList {
    /// Whether the update with stream id `id` is already reflected here.
    fn knows(&self, id: u64) -> bool {
        id <= self.snapshot_id || self.seen.contains(&id)
    }

    fn saw(&mut self, id: u64) {
        self.stream_id = self.stream_id.max(id);
        if !self.seen.contains(&id) {
            self.seen.push(id);
        }
        if self.seen.len() > SEEN_IDS {
            let extra = self.seen.len() - SEEN_IDS;
            self.seen.drain(..extra);
        }
    }

    /// The answer to a key query for this user (`wanted` empty: all devices):
    /// `(device_keys, master_key, self_signing_key)`.
    pub fn answer(&self, wanted: &[String]) -> (Map<String, Value>, Option<Value>, Option<Value>) {
        let devices = self
            .devices
            .iter()
            .filter(|(d, _)| wanted.is_empty() || wanted.iter().any(|w| w == *d))
            .map(|(d, k)| (d.clone(), k.clone()))
            .collect();
        (
            devices,
            self.master_key.clone(),
            self.self_signing_key.clone(),
        )
    }
}

/// A device's keys from a remote server, if they are the device's own and validly
/// self-signed; the display name (if any) goes into `unsigned`.
fn checked_device(
    user: &UserId,
    device: &str,
    keys: &Value,
    name: Option<&Value>,
) -> Option<Value> {
    let device_id: &ruma::DeviceId = device.into();
    if validate_device_keys(user, device_id, keys).is_err() {
        return None;
    }
    let mut keys = keys.clone();
    if let (Some(name), Some(obj)) = (name.filter(|n| n.is_string()), keys.as_object_mut()) {
        let unsigned = obj.entry("unsigned").or_insert_with(|| json!({}));
        if unsigned.is_object() {
            unsigned["device_display_name"] = name.clone();
        }
    }
    Some(keys)
}

/// A cross-signing key of `kind` from a remote server, if well-formed and the user's.
fn checked_cross_signing(user: &UserId, kind: &str, key: Option<&Value>) -> Option<Value> {
    let key = key.filter(|k| !k.is_null())?;
    validate_cross_signing_key(user, kind, key).ok()?;
    Some(key.clone())
}

/// What an `m.device_list_update` did to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteUpdate {
    /// Applied to the cached list.
    Applied,
    /// Nothing cached for the user: only the change was recorded.
    NotCached,
    /// Already applied (a repeated EDU).
    Duplicate,
    /// A `prev_id` we never saw (or a malformed update): the entry was dropped and the
    /// next query resyncs.
    Dropped,
}

impl E2eeService {
    /// The cached device list of remote `user`.
    pub fn remote_devices(&self, user: &UserId) -> Result<Option<RemoteDeviceList>> {
        Ok(self
            .db()
            .get_json(Cf::E2ee, keys::remote_device_list(user.as_str()))?)
    }

    /// Forget remote `user`'s cached device list (no local user shares a room with them).
    pub fn drop_remote_devices(&self, user: &UserId) -> Result<()> {
        let mut b = storage::Batch::new();
        b.delete(Cf::E2ee, keys::remote_device_list(user.as_str()));
        self.db().write(b)?;
        Ok(())
    }

    /// Cache a `/user/devices/{user}` answer for remote `user` (the caller made sure
    /// `user` belongs to the answering server). Returns the stored list; a change is
    /// logged on the device-list stream only when the list differs from the cached one.
    pub fn store_remote_devices(
        &self,
        user: &UserId,
        answer: &Value,
    ) -> Result<(RemoteDeviceList, Option<u64>)> {
        if answer.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
            return Err(E2eeError::BadJson(
                "/user/devices answered for another user".into(),
            ));
        }
        let stream_id = answer.get("stream_id").and_then(Value::as_u64).unwrap_or(0);
        let mut list = RemoteDeviceList {
            snapshot_id: stream_id,
            ..Default::default()
        };
        list.saw(stream_id);
        for d in answer
            .get("devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if list.devices.len() >= MAX_REMOTE_DEVICES {
                tracing::info!(%user, "more than {MAX_REMOTE_DEVICES} devices; the rest left out");
                break;
            }
            let Some(id) = d.get("device_id").and_then(Value::as_str) else {
                continue;
            };
            if let Some(keys) = d.get("keys")
                && let Some(k) = checked_device(user, id, keys, d.get("device_display_name"))
            {
                list.devices.insert(id.to_owned(), k);
            }
        }
        list.master_key = checked_cross_signing(user, MASTER, answer.get("master_key"));
        list.self_signing_key =
            checked_cross_signing(user, SELF_SIGNING, answer.get("self_signing_key"));
        let _guard = self.locks.lock(keys::remote_device_list(user.as_str()));
        let old = self.remote_devices(user)?;
        let changed = old.as_ref().is_none_or(|o| {
            o.devices != list.devices
                || o.master_key != list.master_key
                || o.self_signing_key != list.self_signing_key
        });
        // A snapshot no newer than what we hold already is not stored over it.
        if let Some(o) = &old
            && o.stream_id > stream_id
        {
            return Ok((o.clone(), None));
        }
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            b.put_json(Cf::E2ee, keys::remote_device_list(user.as_str()), &list);
            if changed && old.is_some() {
                device_lists::log_change(b, pos, user.as_str());
            }
            Ok::<_, E2eeError>(())
        })?;
        Ok((list, (changed && old.is_some()).then_some(pos)))
    }

    /// An `m.device_list_update` from remote `user`'s server (the caller checked the
    /// origin owns `user`): applied to the cache when its `prev_id` chain is known, and
    /// logged as a device-list change unless it tells nothing new. Returns what happened
    /// and the change's position.
    pub fn apply_remote_device_update(
        &self,
        user: &UserId,
        edu: &Value,
    ) -> Result<(RemoteUpdate, Option<u64>)> {
        let u = user.as_str();
        let _guard = self.locks.lock(keys::remote_device_list(u));
        let cached = self.remote_devices(user)?;
        let stream_id = edu.get("stream_id").and_then(Value::as_u64);
        let prev: Option<Vec<u64>> = match edu.get("prev_id") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(Value::as_u64).collect(),
            Some(_) => None,
        };
        let device = edu.get("device_id").and_then(Value::as_str);
        let deleted = edu.get("deleted").and_then(Value::as_bool).unwrap_or(false);
        let (outcome, list) = match cached {
            None => (RemoteUpdate::NotCached, None),
            Some(list) => match (stream_id, prev, device) {
                (Some(id), _, _) if list.knows(id) => (RemoteUpdate::Duplicate, None),
                (Some(id), Some(prev), Some(device)) if prev.iter().all(|p| list.knows(*p)) => {
                    let mut list = list;
                    let ok = if deleted {
                        list.devices.remove(device);
                        true
                    } else {
                        match edu.get("keys") {
                            Some(keys) if !keys.is_null() => {
                                match checked_device(
                                    user,
                                    device,
                                    keys,
                                    edu.get("device_display_name"),
                                ) {
                                    Some(k)
                                        if list.devices.len() < MAX_REMOTE_DEVICES
                                            || list.devices.contains_key(device) =>
                                    {
                                        list.devices.insert(device.to_owned(), k);
                                        true
                                    }
                                    _ => false,
                                }
                            }
                            // A device without keys (yet): nothing to cache.
                            _ => true,
                        }
                    };
                    if ok {
                        list.saw(id);
                        (RemoteUpdate::Applied, Some(list))
                    } else {
                        (RemoteUpdate::Dropped, None)
                    }
                }
                _ => (RemoteUpdate::Dropped, None),
            },
        };
        // Nothing new for local viewers: a repeat, or a join announcement
        // ([`JOIN_ANNOUNCEMENT`]) about a user nobody here tracks (their join already put
        // them in room-mates' `device_lists.changed`).
        let announcement = edu.get(JOIN_ANNOUNCEMENT).and_then(Value::as_bool) == Some(true);
        if outcome == RemoteUpdate::Duplicate
            || (outcome == RemoteUpdate::NotCached && announcement)
        {
            return Ok((outcome, None));
        }
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            match (&outcome, &list) {
                (RemoteUpdate::Applied, Some(l)) => {
                    b.put_json(Cf::E2ee, keys::remote_device_list(u), l);
                }
                (RemoteUpdate::Dropped, _) => b.delete(Cf::E2ee, keys::remote_device_list(u)),
                _ => {}
            }
            device_lists::log_change(b, pos, u);
            Ok::<_, E2eeError>(())
        })?;
        Ok((outcome, Some(pos)))
    }

    /// An `m.signing_key_update` for remote `user`: the cached master and self-signing keys
    /// are replaced by the ones it carries. Always logged as a device-list change.
    pub fn apply_remote_signing_update(&self, user: &UserId, edu: &Value) -> Result<u64> {
        let u = user.as_str();
        let _guard = self.locks.lock(keys::remote_device_list(u));
        let cached = self.remote_devices(user)?;
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            if let Some(mut list) = cached {
                if let Some(k) = checked_cross_signing(user, MASTER, edu.get("master_key")) {
                    list.master_key = Some(k);
                }
                if let Some(k) =
                    checked_cross_signing(user, SELF_SIGNING, edu.get("self_signing_key"))
                {
                    list.self_signing_key = Some(k);
                }
                b.put_json(Cf::E2ee, keys::remote_device_list(u), &list);
            }
            device_lists::log_change(b, pos, u);
            Ok::<_, E2eeError>(())
        })?;
        Ok(pos)
    }

    /// The `stream_id` and `prev_id` of the next `m.device_list_update` about local `user`:
    /// a new id (the user's device-list version, or one past the last id sent when that is
    /// not newer: every update gets its own), chained to the one sent before it.
    pub fn next_device_list_update_ids(&self, user: &UserId) -> Result<(u64, Vec<u64>)> {
        let u = user.as_str();
        let _guard = self.locks.lock(keys::device_list_sent(u));
        let current = self.device_list_version(user)?;
        let last = self.last_device_list_update_id(user)?;
        let id = last.map_or(current, |l| current.max(l + 1));
        let mut b = storage::Batch::new();
        b.put(
            Cf::E2ee,
            keys::device_list_sent(u),
            id.to_be_bytes().to_vec(),
        );
        self.db().write(b)?;
        Ok((id, last.into_iter().collect()))
    }

    fn last_device_list_update_id(&self, user: &UserId) -> Result<Option<u64>> {
        Ok(self
            .db()
            .get(Cf::E2ee, keys::device_list_sent(user.as_str()))?
            .and_then(|v| storage::decode_u64(&v)))
    }

    /// The `stream_id` of a `/user/devices` snapshot of local `user`: it includes every
    /// update announced so far.
    pub fn device_list_snapshot_id(&self, user: &UserId) -> Result<u64> {
        let last = self.last_device_list_update_id(user)?.unwrap_or(0);
        Ok(self.device_list_version(user)?.max(last))
    }
}
