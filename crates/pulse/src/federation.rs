//! Outbound federation wiring: starts the `federation-sender` and connects it to the services
//! whose changes must reach remote servers.
//!
//! * events of remote servers we accepted as the resident server (`send_join`,
//!   `send_leave`) → [`PduOutbox`] for the room's other servers
//!   ([`Federation::resident_forwarder`]);
//! * room events of local senders → [`PduOutbox`] (through the room engine's
//!   [`rooms::EventObserver`]), to every remote server with a joined member after the event
//!   and to the server of a remote user the event makes leave; events committed while the
//!   sender was not running (a crash between commit and queueing) are replayed first;
//! * presence → [`PresenceBridge`] (routing under MSC4325 sharing configs), refreshed for
//!   online users before remote servers time them out;
//! * typing and read receipts → [`EphemeralBridge`];
//! * `GET /_pulse/admin/v1/federation/destinations` → [`FederationSender::status`].
use std::sync::Arc;
use std::time::Duration;

use federation_client::FederationClient;
use federation_sender::bridge::PresenceBridge;
use federation_sender::ephemeral_out::EphemeralBridge;
use federation_sender::pdu_out::PduOutbox;
use federation_sender::presence_out::PeerTrust;
use federation_sender::{FederationSender, SenderConfig};
use presence_core::PresenceState;
use presence_service::PresenceService;
use ruma::{OwnedServerName, OwnedUserId};
use serde_json::json;

/// Events replayed per storage read at start-up.
const CATCH_UP_BATCH: usize = 500;
/// How often the PDU cursor is written when events went nowhere.
const CURSOR_PERSIST_INTERVAL: Duration = Duration::from_secs(5);

pub type Sender = FederationSender<FederationClient>;

/// The running outbound federation.
pub struct Federation {
    sender: Sender,
    pdus: Arc<PduOutbox<FederationClient>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the sender on `client` and hooks it into `state`'s services. Call before the
/// listeners accept requests, so catch-up is queued before any new event.
pub fn start_federation(
    state: &api_client::AppState,
    db: Arc<storage::Db>,
    client: FederationClient,
    allowed_recipients_peers: &[String],
) -> Result<Federation, String> {
    let origin = state.config.server_name.clone();
    let sender = FederationSender::start(db, client, SenderConfig::new(origin.clone()))
        .map_err(|e| format!("cannot open the federation queues: {e}"))?;
    let trust = PeerTrust::new(allowed_recipients_peers.iter().filter_map(|s| {
        OwnedServerName::try_from(s.as_str())
            .map_err(|e| tracing::warn!("[federation] allowed_recipients_peers: {s:?}: {e}"))
            .ok()
    }));
    let bridge = PresenceBridge::install(&state.presence, sender.clone(), trust);
    state
        .ephemeral
        .add_observer(EphemeralBridge::new(sender.clone(), &state.presence));

    let pdus = Arc::new(
        PduOutbox::open(sender.clone())
            .map_err(|e| format!("cannot read the federation cursor: {e}"))?,
    );
    let replayed =
        catch_up(&state.rooms, &pdus).map_err(|e| format!("federation catch-up failed: {e}"))?;
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "federation: queued events missed before a restart"
        );
    }
    state.rooms.set_event_observer(Arc::new(PduForwarder {
        pdus: pdus.clone(),
        presence: state.presence.clone(),
        origin,
    }));

    let status = sender.clone();
    let _ = state
        .federation_status
        .set(Arc::new(move || json!({ "destinations": status.status() })));

    // Remote servers forgot nothing, but our refresh timers did: announce who is online now,
    // which also restarts their periodic refresh.
    for user in online_users_with_remote_audience(&state.rooms, &state.presence)? {
        bridge.send_current(&user);
    }
    let mut tasks = vec![bridge.spawn_refresh()];
    let p = pdus.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(CURSOR_PERSIST_INTERVAL).await;
            if let Err(e) = p.persist_cursor(None) {
                tracing::error!("persisting the federation cursor failed: {e}");
            }
        }
    }));
    Ok(Federation {
        sender,
        pdus,
        tasks,
    })
}

impl Federation {
    /// The outbound queues, for hooks that queue their own EDUs (end-to-end encryption).
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// The hook api-federation calls when a server contacts us: that destination is up,
    /// so its backoff ends at once.
    pub fn peer_observer(&self) -> Arc<dyn api_federation::PeerObserver> {
        Arc::new(DestinationUp(self.sender.clone()))
    }

    /// The hook api-federation's membership endpoints call with a remote server's join or
    /// leave we accepted as the resident server: queued for every other remote server with a
    /// joined member (the sender's origin excluded). Not replayed after a crash between
    /// commit and queueing, unlike local events (the catch-up reads local events only).
    pub fn resident_forwarder(
        &self,
        presence: Arc<PresenceService>,
    ) -> Arc<api_federation::membership::ForwardFn> {
        let pdus = self.pdus.clone();
        Arc::new(move |room, pos, pdu, from| {
            let servers: Vec<OwnedServerName> = presence
                .remote_servers_in_room(room)
                .into_iter()
                .filter(|s| **s != *from)
                .collect();
            let value = match serde_json::to_value(pdu) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(%room, "cannot serialise PDU for federation: {e}");
                    return;
                }
            };
            if let Err(e) = pdus.event(pos, servers.iter().map(|s| &**s), &value) {
                tracing::error!(%room, "queueing a forwarded PDU for federation failed: {e}");
            }
        })
    }

    /// Stops the workers after their transaction in flight; queues stay on disk.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Err(e) = self.pdus.persist_cursor(None) {
            tracing::error!("persisting the federation cursor failed: {e}");
        }
        self.sender.shutdown();
    }
}

/// Queues the PDUs of local events after the stored cursor, with the servers joined at each
/// event (from the room state, not today's membership).
fn catch_up(
    rooms: &rooms::RoomService,
    pdus: &PduOutbox<FederationClient>,
) -> Result<usize, String> {
    let mut after = pdus.cursor();
    let mut replayed = 0;
    loop {
        let (events, last) = rooms
            .local_events_after(after, CATCH_UP_BATCH)
            .map_err(|e| e.to_string())?;
        for ev in &events {
            let servers = rooms
                .servers_joined_after(&ev.event)
                .map_err(|e| e.to_string())?;
            let pdu = serde_json::to_value(&ev.event.pdu).map_err(|e| e.to_string())?;
            if pdus
                .event(ev.event.pos, servers.iter().map(|s| &**s), &pdu)
                .map_err(|e| e.to_string())?
            {
                replayed += 1;
            }
        }
        if last == after {
            break;
        }
        after = last;
    }
    pdus.persist_cursor(Some(after))
        .map_err(|e| e.to_string())?;
    Ok(replayed)
}

/// Local users who are not offline and share a room with a remote user.
fn online_users_with_remote_audience(
    rooms: &rooms::RoomService,
    presence: &PresenceService,
) -> Result<Vec<OwnedUserId>, String> {
    let mut members: std::collections::HashMap<ruma::OwnedRoomId, Vec<OwnedUserId>> =
        Default::default();
    for (room, user) in rooms
        .all_joined_memberships()
        .map_err(|e| format!("cannot read memberships: {e}"))?
    {
        members.entry(room).or_default().push(user);
    }
    let mut users: Vec<OwnedUserId> = members
        .into_values()
        .filter(|m| m.iter().any(|u| presence.is_remote(u)))
        .flatten()
        .filter(|u| !presence.is_remote(u) && presence.current(u).state != PresenceState::Offline)
        .collect();
    users.sort();
    users.dedup();
    Ok(users)
}

/// The room engine's hook: queues each committed local event for the servers in its room.
struct PduForwarder {
    pdus: Arc<PduOutbox<FederationClient>>,
    presence: Arc<PresenceService>,
    origin: OwnedServerName,
}

impl rooms::EventObserver for PduForwarder {
    fn event_committed(
        &self,
        room: &ruma::RoomId,
        event_id: &ruma::EventId,
        pos: u64,
        pdu: &ruma::CanonicalJsonObject,
    ) {
        // The membership index was updated for this event just before (see EventObserver).
        let mut servers = self.presence.remote_servers_in_room(room);
        if let Some(target) = rooms::departing_remote_target(pdu, &self.origin)
            && !servers.contains(&target)
        {
            servers.push(target);
        }
        let value = match serde_json::to_value(pdu) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(%event_id, "cannot serialise PDU for federation: {e}");
                return;
            }
        };
        // A storage failure here is logged; a restart within a few seconds replays the
        // event, later the cursor has moved past it.
        if let Err(e) = self.pdus.event(pos, servers.iter().map(|s| &**s), &value) {
            tracing::error!(%event_id, "queueing PDU for federation failed: {e}");
        }
    }
}

/// Resets a destination's backoff when it makes an authenticated request to us.
struct DestinationUp(Sender);

impl api_federation::PeerObserver for DestinationUp {
    fn server_contacted(&self, server: &ruma::ServerName) {
        self.0.notify_destination_up(server);
    }
}
