//! The hook through which key queries, claims, to-device messages and device-list changes
//! reach other servers. The server binary installs an implementation over the federation
//! client and sender; without one (federation off) every remote server is reported in
//! `failures`, as the spec says for a server that cannot be reached.
//!
//! A remote server's answer is trusted only for its own users: entries for anyone else
//! are dropped before they are merged into the client's response.
//!
//! Key queries for remote users a local user shares a room with are answered from the
//! device-list cache (`e2ee::remote`), filled on a miss from that server's
//! `/user/devices/{userId}` and kept current by its EDUs; for anyone else (no shared room:
//! no updates reach us) the user's server is asked each time, and a stale entry dropped.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::AppState;

/// What changed about a local user's devices, for the EDU that tells other servers.
#[derive(Debug, Clone)]
pub enum DeviceChange {
    /// A device's keys were uploaded or replaced, or the device was deleted.
    Device {
        device_id: ruma::OwnedDeviceId,
        deleted: bool,
    },
    /// Cross-signing keys or signatures changed (`m.signing_key_update`).
    CrossSigning,
}

pub trait RemoteKeys: Send + Sync {
    /// `POST /_matrix/federation/v1/user/keys/query` with `{"device_keys": ...}`.
    fn query(
        &self,
        server: OwnedServerName,
        body: Value,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, String>>;
    /// `GET /_matrix/federation/v1/user/devices/{userId}` ([`user_devices_path`]).
    fn user_devices(
        &self,
        server: OwnedServerName,
        user: OwnedUserId,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, String>>;
    /// `POST /_matrix/federation/v1/user/keys/claim` with `{"one_time_keys": ...}`.
    fn claim(
        &self,
        server: OwnedServerName,
        body: Value,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, String>>;
    /// A local user's devices or keys changed: send `m.device_list_update` (and
    /// `m.signing_key_update`) to the servers sharing a room with them. Does storage I/O.
    fn device_list_changed(&self, user: &UserId, change: DeviceChange);
    /// Queue one `m.direct_to_device` EDU per server (`messages`: user → device → content).
    /// Does storage I/O.
    fn send_to_device(
        &self,
        sender: &UserId,
        kind: &str,
        message_id: &str,
        messages: BTreeMap<OwnedServerName, Map<String, Value>>,
    );
}

/// The federation path of `GET /user/devices/{userId}`, the user ID percent-encoded.
pub fn user_devices_path(user: &UserId) -> String {
    format!(
        "/_matrix/federation/v1/user/devices/{}",
        percent_encoding::utf8_percent_encode(user.as_str(), percent_encoding::NON_ALPHANUMERIC)
    )
}

/// Resyncs a remote user's cached device list as soon as an update shows one was missed
/// (a `prev_id` we never saw), so the next `/keys/query` of a local client finds it ready
/// instead of waiting for `/user/devices`. At most one resync per user per
/// [`DeviceListResync::MIN_INTERVAL`]: a server that keeps sending broken chains does not
/// get us to fetch its lists in a loop (the client's own query still resyncs on a miss).
pub struct DeviceListResync {
    state: Arc<AppState>,
    recent: std::sync::Mutex<std::collections::HashMap<OwnedUserId, std::time::Instant>>,
}

impl DeviceListResync {
    pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
    /// Users remembered at most; older entries are forgotten first.
    const MAX_REMEMBERED: usize = 10_000;

    pub fn new(state: Arc<AppState>) -> Arc<Self> {
        Arc::new(Self {
            state,
            recent: Default::default(),
        })
    }

    /// Whether a resync of `user` may start now (and note that it did).
    fn may_start(&self, user: &UserId) -> bool {
        let now = std::time::Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent
            .get(user)
            .is_some_and(|t| now.duration_since(*t) < Self::MIN_INTERVAL)
        {
            return false;
        }
        if recent.len() >= Self::MAX_REMEMBERED {
            recent.retain(|_, t| now.duration_since(*t) < Self::MIN_INTERVAL);
        }
        recent.insert(user.to_owned(), now);
        true
    }

    /// Fetch and store `user`'s list from their server, if a local user shares a room with
    /// them (otherwise no cache is kept). Logs and gives up on failure.
    pub async fn resync(self: Arc<Self>, user: OwnedUserId) {
        if !self.may_start(&user) {
            return;
        }
        let Some(hook) = self.state.remote_keys.get() else {
            return;
        };
        let (st, u) = (self.state.clone(), user.clone());
        match crate::blocking::blocking(move || shares_room_with_local_user(&st, &u)).await {
            Ok(true) => {}
            _ => return,
        }
        let timeout = Duration::from_secs(10);
        let server = user.server_name().to_owned();
        let answer = match tokio::time::timeout(
            timeout,
            hook.user_devices(server, user.clone(), timeout),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::info!(%user, "resyncing a device list after a missed update failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%user, "resyncing a device list after a missed update timed out");
                return;
            }
        };
        let (st, u) = (self.state.clone(), user.clone());
        match crate::blocking::blocking(move || st.e2ee.store_remote_devices(&u, &answer)).await {
            Ok(Ok(_)) => tracing::debug!(%user, "device list resynced after a missed update"),
            Ok(Err(e)) => tracing::info!(%user, "storing a resynced device list failed: {e}"),
            Err(e) => tracing::info!(%user, "storing a resynced device list failed: {}", e.message),
        }
    }
}

/// Whether remote `user` is joined to a room a local user is joined to (then their server
/// sends us their device-list updates and the cache can be trusted).
fn shares_room_with_local_user(state: &AppState, user: &UserId) -> bool {
    let own = &state.config.server_name;
    state.rooms.joined_rooms(user).is_ok_and(|rooms| {
        rooms.iter().any(|r| {
            state
                .rooms
                .joined_members(r)
                .is_ok_and(|m| m.iter().any(|u| u.server_name() == own))
        })
    })
}

/// Put one user's cached answer into a `/keys/query` response.
fn merge_cached(
    out: &mut Map<String, Value>,
    user: &UserId,
    list: &e2ee::remote::RemoteDeviceList,
    wanted: &[String],
) {
    let (devices, master, self_signing) = list.answer(wanted);
    let mut put = |section: &str, v: Value| {
        if let Some(Value::Object(target)) = out.get_mut(section) {
            target.insert(user.to_string(), v);
        }
    };
    put("device_keys", Value::Object(devices));
    if let Some(m) = master {
        put("master_keys", m);
    }
    if let Some(s) = self_signing {
        put("self_signing_keys", s);
    }
}

/// Answer what the cache can (resyncing missing entries of users we share a room with);
/// returns the users left for a live `/user/keys/query`.
async fn query_cached(
    state: &Arc<AppState>,
    hook: &dyn RemoteKeys,
    remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>>,
    timeout: Duration,
    out: &mut Map<String, Value>,
) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>> {
    type Sorted = (
        Vec<(OwnedUserId, Vec<String>, e2ee::remote::RemoteDeviceList)>,
        Vec<(OwnedServerName, OwnedUserId, Vec<String>)>,
        BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>>,
    );
    let st = state.clone();
    let sorted = crate::blocking::blocking(move || -> Sorted {
        let (mut cached, mut resync, mut live) = (Vec::new(), Vec::new(), BTreeMap::new());
        for (server, users) in remote {
            for (user, wanted) in users {
                if !shares_room_with_local_user(&st, &user) {
                    if let Err(e) = st.e2ee.drop_remote_devices(&user) {
                        tracing::warn!(%user, "dropping a cached device list failed: {e}");
                    }
                    live.entry(server.clone())
                        .or_insert_with(BTreeMap::new)
                        .insert(user, wanted);
                    continue;
                }
                match st.e2ee.remote_devices(&user) {
                    Ok(Some(list)) => cached.push((user, wanted, list)),
                    _ => resync.push((server.clone(), user, wanted)),
                }
            }
        }
        (cached, resync, live)
    })
    .await;
    let Ok((cached, resync, mut live)) = sorted else {
        return BTreeMap::new();
    };
    for (user, wanted, list) in &cached {
        merge_cached(out, user, list, wanted);
    }
    let calls = resync.into_iter().map(|(server, user, wanted)| async move {
        let r = tokio::time::timeout(
            timeout,
            hook.user_devices(server.clone(), user.clone(), timeout),
        )
        .await;
        (server, user, wanted, r)
    });
    for (server, user, wanted, r) in futures::future::join_all(calls).await {
        let stored = match r {
            Ok(Ok(answer)) => {
                let (st, u) = (state.clone(), user.clone());
                crate::blocking::blocking(move || st.e2ee.store_remote_devices(&u, &answer))
                    .await
                    .map_err(|e| e.message.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timed out".to_owned()),
        };
        match stored {
            Ok((list, _)) => merge_cached(out, &user, &list, &wanted),
            Err(e) => {
                // The live query below reports the server in `failures` if it fails too.
                tracing::info!(%user, "resyncing a remote device list failed: {e}");
                live.entry(server).or_default().insert(user, wanted);
            }
        }
    }
    live
}

fn failure(message: impl Into<String>) -> Value {
    json!({ "status": 503, "message": message.into() })
}

/// Keep only `server`'s own users in one section of a remote answer.
fn own_users(section: &Value, server: &ruma::ServerName) -> Map<String, Value> {
    section
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(u, _)| <&UserId>::try_from(u.as_str()).is_ok_and(|u| u.server_name() == server))
        .map(|(u, v)| (u.clone(), v.clone()))
        .collect()
}

/// Query remote servers concurrently and merge their answers into `out`, with `viewer`'s own
/// signatures on the remote master keys; returns `failures`.
pub(crate) async fn query_remote(
    state: &Arc<AppState>,
    viewer: &UserId,
    remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>>,
    timeout: Duration,
    out: &mut Map<String, Value>,
) -> Map<String, Value> {
    if remote.is_empty() {
        return Map::new();
    }
    let failures = query_remote_servers(state, remote, timeout, out).await;
    add_viewer_signatures(state, viewer, out).await;
    failures
}

/// The remote master keys of a key-query answer as `viewer` sees them: with the signatures
/// `viewer` made on them (kept only here, see `E2eeService::add_viewer_signatures`).
async fn add_viewer_signatures(
    state: &Arc<AppState>,
    viewer: &UserId,
    out: &mut Map<String, Value>,
) {
    let Some(Value::Object(masters)) = out.get_mut("master_keys") else {
        return;
    };
    let own = state.config.server_name.clone();
    let remote: Map<String, Value> = masters
        .iter()
        .filter(|(u, _)| <&UserId>::try_from(u.as_str()).is_ok_and(|u| u.server_name() != own))
        .map(|(u, k)| (u.clone(), k.clone()))
        .collect();
    if remote.is_empty() {
        return;
    }
    let (st, viewer) = (state.clone(), viewer.to_owned());
    let signed = crate::blocking::blocking(move || {
        let mut remote = remote;
        for (user, key) in remote.iter_mut() {
            if let Ok(user) = <&UserId>::try_from(user.as_str())
                && let Err(e) = st.e2ee.add_viewer_signatures(user, key, &viewer)
            {
                tracing::warn!(%user, "reading user-signing signatures failed: {e}");
            }
        }
        remote
    })
    .await;
    if let Ok(signed) = signed {
        masters.extend(signed);
    }
}

async fn query_remote_servers(
    state: &Arc<AppState>,
    remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>>,
    timeout: Duration,
    out: &mut Map<String, Value>,
) -> Map<String, Value> {
    let mut failures = Map::new();
    let Some(hook) = state.remote_keys.get() else {
        for server in remote.keys() {
            failures.insert(server.to_string(), failure("federation is disabled"));
        }
        return failures;
    };
    let remote = query_cached(state, hook.as_ref(), remote, timeout, out).await;
    let calls = remote.into_iter().map(|(server, users)| {
        let body = json!({ "device_keys": users });
        async move {
            let r = tokio::time::timeout(timeout, hook.query(server.clone(), body, timeout)).await;
            (server, r)
        }
    });
    for (server, result) in futures::future::join_all(calls).await {
        match result {
            Ok(Ok(answer)) => {
                for section in ["device_keys", "master_keys", "self_signing_keys"] {
                    let mine = own_users(&answer[section], &server);
                    if let Some(Value::Object(target)) = out.get_mut(section) {
                        target.extend(mine);
                    }
                }
            }
            Ok(Err(e)) => {
                failures.insert(server.to_string(), failure(e));
            }
            Err(_) => {
                failures.insert(server.to_string(), failure("timed out"));
            }
        }
    }
    failures
}

/// Claim from remote servers concurrently, merging into `keys`; returns `failures`.
pub(crate) async fn claim_remote(
    state: &AppState,
    remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, BTreeMap<String, String>>>,
    timeout: Duration,
    keys: &mut Map<String, Value>,
) -> Map<String, Value> {
    let mut failures = Map::new();
    if remote.is_empty() {
        return failures;
    }
    let Some(hook) = state.remote_keys.get() else {
        for server in remote.keys() {
            failures.insert(server.to_string(), failure("federation is disabled"));
        }
        return failures;
    };
    let calls = remote.into_iter().map(|(server, users)| {
        let body = json!({ "one_time_keys": users });
        async move {
            let r = tokio::time::timeout(timeout, hook.claim(server.clone(), body, timeout)).await;
            (server, r)
        }
    });
    for (server, result) in futures::future::join_all(calls).await {
        match result {
            Ok(Ok(answer)) => keys.extend(own_users(&answer["one_time_keys"], &server)),
            Ok(Err(e)) => {
                failures.insert(server.to_string(), failure(e));
            }
            Err(_) => {
                failures.insert(server.to_string(), failure("timed out"));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_speaks_only_for_its_own_users() {
        let section = json!({ "@a:remote": {"D": {}}, "@b:elsewhere": {"E": {}}, "bad": {} });
        let server: OwnedServerName = "remote".try_into().expect("name");
        let kept = own_users(&section, &server);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["@a:remote"]);
    }
}
