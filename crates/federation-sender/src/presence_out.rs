//! Local presence to remote servers: turns a [`PresenceRouting`] (computed by
//! `presence_core::routing`) into queued `m.presence` entries, sends one final `offline` where
//! a routing change took sight away, the current presence to servers with new viewers, and
//! says which online users are due for their periodic refresh (remote servers time a user out
//! after 30 minutes without an update).

use std::collections::{HashMap, HashSet};

use presence_core::routing::{PresenceRouting, RouteKind, routing_change};
use presence_core::{FederationPresence, PresenceState};
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::{Value, json};
use storage::StorageError;

use crate::{FederationSender, Transport, lock};

/// Online users' presence is re-sent after this long without a change (Synapse re-sends
/// every 25 minutes and times remote users out after 30).
pub const PRESENCE_REFRESH_MS: u64 = 20 * 60 * 1000;

/// Which peers are known to apply MSC4325 `allowed_recipients` (`[federation]
/// allowed_recipients_peers`). Empty by default: every peer is assumed to ignore the field.
#[derive(Debug, Clone, Default)]
pub struct PeerTrust {
    honouring: HashSet<OwnedServerName>,
}

impl PeerTrust {
    /// Trusts exactly these servers.
    pub fn new(peers: impl IntoIterator<Item = OwnedServerName>) -> Self {
        PeerTrust {
            honouring: peers.into_iter().collect(),
        }
    }

    /// Whether `server` is known to honour `allowed_recipients`.
    pub fn honours(&self, server: &ServerName) -> bool {
        self.honouring.contains(server)
    }
}

/// The `push` entries for one update of `user` to one destination.
pub fn presence_entries(
    user: &UserId,
    presence: &FederationPresence,
    route: &RouteKind,
) -> Vec<Value> {
    let mut base = match serde_json::to_value(presence) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    base["user_id"] = json!(user);
    match route {
        RouteKind::Unrestricted => vec![base],
        RouteKind::Restricted(chunks) => chunks
            .iter()
            .map(|chunk| {
                let mut e = base.clone();
                e["allowed_recipients"] = json!(chunk);
                e
            })
            .collect(),
    }
}

fn offline() -> FederationPresence {
    FederationPresence {
        presence: PresenceState::Offline,
        status_msg: None,
        last_active_ago: 0,
        currently_active: false,
    }
}

struct Sent {
    routing: PresenceRouting,
    online: bool,
    at: u64,
}

/// Remembers each local user's last routing, to send revocations and refreshes.
pub struct PresenceOutbox<T: Transport> {
    sender: FederationSender<T>,
    trust: PeerTrust,
    last: std::sync::Mutex<HashMap<OwnedUserId, Sent>>,
}

impl<T: Transport> PresenceOutbox<T> {
    /// An outbox queueing through `sender`.
    pub fn new(sender: FederationSender<T>, trust: PeerTrust) -> Self {
        PresenceOutbox {
            sender,
            trust,
            last: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The peer trust used for routing (pass `|s| outbox.trust().honours(s)` to the router).
    pub fn trust(&self) -> &PeerTrust {
        &self.trust
    }

    /// `user`'s presence changed (or is due for refresh): queue it for every destination of
    /// `routing`, and a final offline where the routing lost viewers since the last update.
    pub fn presence_changed(
        &self,
        user: &UserId,
        presence: &FederationPresence,
        routing: PresenceRouting,
        now: u64,
    ) -> Result<(), StorageError> {
        self.send_revocations(user, &routing)?;
        for (dest, route) in &routing.destinations {
            self.sender
                .queue_presence(dest, user, presence_entries(user, presence, route))?;
        }
        self.remember(user, presence, routing, now);
        Ok(())
    }

    /// The routing of `user` changed without a presence change (membership, sharing config,
    /// ignore list): final offline where sight was lost, current presence where it was gained.
    pub fn routing_changed(
        &self,
        user: &UserId,
        presence: &FederationPresence,
        routing: PresenceRouting,
        now: u64,
    ) -> Result<(), StorageError> {
        let gained = {
            let last = lock(&self.last);
            let empty = PresenceRouting::default();
            let before = last.get(user).map_or(&empty, |s| &s.routing);
            routing_change(before, &routing, |s| self.trust.honours(s)).send_current
        };
        self.send_revocations(user, &routing)?;
        for dest in gained {
            if let Some(route) = routing.destinations.get(&dest) {
                self.sender
                    .queue_presence(&dest, user, presence_entries(user, presence, route))?;
            }
        }
        self.remember(user, presence, routing, now);
        Ok(())
    }

    fn send_revocations(&self, user: &UserId, after: &PresenceRouting) -> Result<(), StorageError> {
        let change = {
            let last = lock(&self.last);
            let Some(before) = last.get(user) else {
                return Ok(());
            };
            routing_change(&before.routing, after, |s| self.trust.honours(s))
        };
        for (dest, route) in &change.final_offline {
            // Under their own key: a revocation must not be replaced by the update for the
            // users who still see `user` (the receiver keeps per-recipient views).
            self.sender.queue_edu(
                dest,
                Some(format!("{} {user} revoke", crate::PRESENCE_EDU)),
                crate::PRESENCE_EDU,
                Value::Array(presence_entries(user, &offline(), route)),
            )?;
        }
        Ok(())
    }

    fn remember(
        &self,
        user: &UserId,
        presence: &FederationPresence,
        routing: PresenceRouting,
        now: u64,
    ) {
        let mut last = lock(&self.last);
        if routing.destinations.is_empty() {
            last.remove(user);
            return;
        }
        let online = presence.presence != PresenceState::Offline;
        last.insert(
            user.to_owned(),
            Sent {
                routing,
                online,
                at: now,
            },
        );
    }

    /// Users not offline whose last update went out at least [`PRESENCE_REFRESH_MS`] ago: call
    /// [`Self::presence_changed`] for each with their current presence.
    pub fn due_for_refresh(&self, now: u64) -> Vec<OwnedUserId> {
        lock(&self.last)
            .iter()
            .filter(|(_, s)| s.online && now.saturating_sub(s.at) >= PRESENCE_REFRESH_MS)
            .map(|(u, _)| u.clone())
            .collect()
    }
}
