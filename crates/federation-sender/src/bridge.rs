//! Connects the presence service to the sender: every published change of a local user is
//! routed ([`PresenceService::federation_routing`]) and queued through the
//! [`PresenceOutbox`]; [`PresenceBridge::spawn_refresh`] re-sends online users' presence
//! before remote servers time them out.

use std::sync::{Arc, Weak};
use std::time::Duration;

use presence_service::{PresenceObserver, PresenceService};
use ruma::UserId;

use crate::presence_out::{PeerTrust, PresenceOutbox};
use crate::{FederationSender, Transport, now_ms};

/// The presence → federation bridge. Install with [`PresenceBridge::install`].
pub struct PresenceBridge<T: Transport> {
    presence: Weak<PresenceService>,
    outbox: PresenceOutbox<T>,
}

impl<T: Transport> PresenceBridge<T> {
    /// Creates the bridge and registers it as `presence`'s observer.
    pub fn install(
        presence: &Arc<PresenceService>,
        sender: FederationSender<T>,
        trust: PeerTrust,
    ) -> Arc<Self> {
        let bridge = Arc::new(PresenceBridge {
            presence: Arc::downgrade(presence),
            outbox: PresenceOutbox::new(sender, trust),
        });
        presence.set_observer(bridge.clone());
        bridge
    }

    /// Routes and queues `user`'s current presence.
    pub fn send_current(&self, user: &UserId) {
        let Some(presence) = self.presence.upgrade() else {
            return;
        };
        let trust = self.outbox.trust();
        let routing = presence.federation_routing(user, |s| trust.honours(s));
        let fed = presence.federation_presence(user);
        if let Err(e) = self.outbox.presence_changed(user, &fed, routing, now_ms()) {
            tracing::error!(%user, "queueing presence for federation failed: {e}");
        }
    }

    /// The audience of `user` may have changed (membership, sharing config, ignore list):
    /// final offline where sight was lost, current presence where it was gained.
    pub fn audience_changed(&self, user: &UserId) {
        let Some(presence) = self.presence.upgrade() else {
            return;
        };
        let trust = self.outbox.trust();
        let routing = presence.federation_routing(user, |s| trust.honours(s));
        let fed = presence.federation_presence(user);
        if let Err(e) = self.outbox.routing_changed(user, &fed, routing, now_ms()) {
            tracing::error!(%user, "queueing presence for federation failed: {e}");
        }
    }

    /// Every minute, re-sends the presence of users due for a refresh.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(me) = me.upgrade() else { return };
                for user in me.outbox.due_for_refresh(now_ms()) {
                    me.send_current(&user);
                }
            }
        })
    }
}

impl<T: Transport> PresenceObserver for PresenceBridge<T> {
    fn presence_changed(&self, user: &UserId) {
        self.send_current(user);
    }

    fn audience_changed(&self, user: &UserId) {
        PresenceBridge::audience_changed(self, user);
    }
}
