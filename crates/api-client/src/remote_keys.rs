//! The hook through which key queries, claims, to-device messages and device-list changes
//! reach other servers. The server binary installs an implementation over the federation
//! client and sender; without one (federation off) every remote server is reported in
//! `failures`, as the spec says for a server that cannot be reached.
//!
//! A remote server's answer is trusted only for its own users: entries for anyone else
//! are dropped before they are merged into the client's response.
use std::collections::BTreeMap;
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

/// Query remote servers concurrently and merge their answers into `out`; returns `failures`.
pub(crate) async fn query_remote(
    state: &AppState,
    remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>>,
    timeout: Duration,
    out: &mut Map<String, Value>,
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
