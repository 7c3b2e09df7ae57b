//! Glue: the client API's [`RemoteKeys`] hook over the federation client (key queries and
//! claims to other servers) and the federation sender (`m.device_list_update`,
//! `m.signing_key_update` and `m.direct_to_device` EDUs in the durable per-destination
//! queues).
//!
//! Device-list updates are chained: `stream_id` is the user's device-list version and
//! `prev_id` the `stream_id` of the update sent before (none for the first), so a receiver
//! that missed one resyncs through `/user/devices/{userId}`.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api_client::remote_keys::{DeviceChange, RemoteKeys};
use federation_client::FederationClient;
use futures::future::BoxFuture;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::federation::Sender;

pub struct Remote {
    pub client: FederationClient,
    pub sender: Sender,
    pub rooms: Arc<rooms::RoomService>,
    pub e2ee: Arc<e2ee::E2eeService>,
}

impl Remote {
    async fn post(
        &self,
        server: OwnedServerName,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let resp = self
            .client
            .request(http::Method::POST, server.as_str(), path, Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        if resp.status == 200 {
            Ok(resp.body)
        } else {
            Err(format!("{server} answered {}", resp.status))
        }
    }

    /// Remote servers with a member in a room `user` is joined to.
    fn servers_sharing(&self, user: &UserId) -> Vec<OwnedServerName> {
        let own = self.rooms.server_name();
        let mut out: Vec<OwnedServerName> = Vec::new();
        let rooms = match self.rooms.joined_rooms(user) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%user, "cannot list rooms for a device-list update: {e}");
                return out;
            }
        };
        for room in rooms {
            for s in self.rooms.servers_in_room(&room).unwrap_or_default() {
                if let Ok(s) = OwnedServerName::try_from(s.as_str())
                    && s != own
                    && !out.contains(&s)
                {
                    out.push(s);
                }
            }
        }
        out
    }

    /// A membership change in `room`: a local user's join is announced
    /// ([`Remote::local_user_joined`]); after a leave, remote users who no longer share a
    /// room with any local user lose their cached device list (their server stops sending
    /// us updates, so it would go stale; a later query resyncs).
    pub fn membership_changed(
        self: &Arc<Self>,
        room: &ruma::RoomId,
        user: &UserId,
        joined: bool,
        accounts: &Arc<accounts::AccountService>,
    ) {
        if joined {
            self.local_user_joined(room, user, accounts);
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, room, user) = (self.clone(), room.to_owned(), user.to_owned());
        handle.spawn_blocking(move || {
            let own = this.rooms.server_name().to_owned();
            let candidates: Vec<ruma::OwnedUserId> = if user.server_name() == own {
                this.rooms
                    .joined_members(&room)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|u| u.server_name() != own)
                    .collect()
            } else {
                vec![user]
            };
            for u in candidates {
                let shares = this.rooms.joined_rooms(&u).is_ok_and(|rooms| {
                    rooms.iter().any(|r| {
                        this.rooms
                            .joined_members(r)
                            .is_ok_and(|m| m.iter().any(|m| m.server_name() == own))
                    })
                });
                if !shares
                    && matches!(this.e2ee.remote_devices(&u), Ok(Some(_)))
                    && let Err(e) = this.e2ee.drop_remote_devices(&u)
                {
                    tracing::warn!(user = %u, "dropping a cached device list failed: {e}");
                }
            }
        });
    }

    /// A user joined `room`: if local, tell the room's other servers about each of the
    /// user's devices (`m.device_list_update`, keys when uploaded), as the spec asks for
    /// servers that may not track the user yet. These carry the current snapshot id and no
    /// `prev_id`: a server that tracks the user already sees a known id and ignores them.
    /// The work runs on the blocking pool, after the join's commit.
    fn local_user_joined(
        self: &Arc<Self>,
        room: &ruma::RoomId,
        user: &UserId,
        accounts: &Arc<accounts::AccountService>,
    ) {
        if user.server_name() != self.rooms.server_name() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, room, user, accounts) = (
            self.clone(),
            room.to_owned(),
            user.to_owned(),
            accounts.clone(),
        );
        handle.spawn_blocking(move || {
            let own = this.rooms.server_name();
            let servers: Vec<OwnedServerName> = this
                .rooms
                .servers_in_room(&room)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|s| OwnedServerName::try_from(s.as_str()).ok())
                .filter(|s| s != own)
                .collect();
            if servers.is_empty() {
                return;
            }
            let devices = match accounts.devices(&user) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%user, "cannot list devices after a join: {e}");
                    return;
                }
            };
            let stream_id = this.e2ee.device_list_snapshot_id(&user).unwrap_or(0);
            for d in devices {
                let mut content = json!({
                    "user_id": user, "device_id": d.device_id, "stream_id": stream_id,
                    "prev_id": [], "deleted": false,
                    e2ee::remote::JOIN_ANNOUNCEMENT: true,
                });
                if let Ok(Some(keys)) = this.e2ee.device_keys(&user, &d.device_id) {
                    content["keys"] = keys;
                }
                this.queue(&servers, None, "m.device_list_update", &content);
            }
        });
    }

    fn queue(&self, servers: &[OwnedServerName], key: Option<String>, kind: &str, content: &Value) {
        for s in servers {
            if let Err(e) = self.sender.queue_edu(s, key.clone(), kind, content.clone()) {
                tracing::warn!(destination = %s, "queueing {kind} failed: {e}");
            }
        }
    }
}

impl RemoteKeys for Remote {
    fn query(
        &self,
        server: OwnedServerName,
        body: Value,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(self.post(server, "/_matrix/federation/v1/user/keys/query", body))
    }

    fn user_devices(
        &self,
        server: OwnedServerName,
        user: OwnedUserId,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            let path = api_client::remote_keys::user_devices_path(&user);
            let resp = self
                .client
                .request(http::Method::GET, server.as_str(), &path, None::<&Value>)
                .await
                .map_err(|e| e.to_string())?;
            if resp.status == 200 {
                Ok(resp.body)
            } else {
                Err(format!("{server} answered {}", resp.status))
            }
        })
    }

    fn claim(
        &self,
        server: OwnedServerName,
        body: Value,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(self.post(server, "/_matrix/federation/v1/user/keys/claim", body))
    }

    fn device_list_changed(&self, user: &UserId, change: DeviceChange) {
        let servers = self.servers_sharing(user);
        if servers.is_empty() {
            return;
        }
        match change {
            DeviceChange::Device { device_id, deleted } => {
                let (stream_id, prev_id) = self
                    .e2ee
                    .next_device_list_update_ids(user)
                    .unwrap_or_else(|e| {
                        tracing::warn!(%user, "reading the device-list chain failed: {e}");
                        (self.e2ee.device_list_version(user).unwrap_or(0), Vec::new())
                    });
                let mut content = json!({
                    "user_id": user, "device_id": device_id, "stream_id": stream_id,
                    "prev_id": prev_id, "deleted": deleted,
                });
                // Keys only: device names stay on this server (docs/decisions.md).
                if !deleted && let Ok(Some(keys)) = self.e2ee.device_keys(user, &device_id) {
                    content["keys"] = keys;
                }
                self.queue(&servers, None, "m.device_list_update", &content);
            }
            DeviceChange::CrossSigning => {
                let mut content = json!({ "user_id": user });
                if let Ok(Some(k)) = self.e2ee.master_key_for(user, user) {
                    content["master_key"] = k;
                }
                if let Ok(Some(k)) = self
                    .e2ee
                    .cross_signing_key(user, e2ee::cross_signing::SELF_SIGNING)
                {
                    content["self_signing_key"] = k;
                }
                let key = Some(format!("m.signing_key_update {user}"));
                self.queue(&servers, key, "m.signing_key_update", &content);
            }
        }
    }

    fn send_to_device(
        &self,
        sender: &UserId,
        kind: &str,
        message_id: &str,
        messages: BTreeMap<OwnedServerName, Map<String, Value>>,
    ) {
        for (server, msgs) in messages {
            let content = json!({
                "sender": sender, "type": kind, "message_id": message_id, "messages": msgs,
            });
            self.queue(&[server], None, "m.direct_to_device", &content);
        }
    }
}
