//! Typing and public read receipts of local users to the remote servers in the room.
//!
//! [`EphemeralBridge`] observes the `ephemeral` service. Only changes of *local* users that
//! came from local clients (or local typing expiry) are sent, to every remote server with a
//! joined member in the room. `m.read.private` never leaves the server. Both coalesce per
//! destination while it is busy: typing per (room, user) — latest wins — and receipts per
//! (room, user, thread).

use std::sync::{Arc, Weak};

use ephemeral::{EphemeralChange, EphemeralObserver, Origin, ReceiptType};
use presence_service::PresenceService;
use serde_json::json;

use crate::{FederationSender, Transport};

/// Sends local typing and receipts over federation. Register with
/// `EphemeralService::add_observer`.
pub struct EphemeralBridge<T: Transport> {
    sender: FederationSender<T>,
    /// The room membership index (shared with presence): which servers are in a room.
    rooms: Weak<PresenceService>,
}

impl<T: Transport> EphemeralBridge<T> {
    /// A bridge using `presence`'s audience index for room servers.
    pub fn new(sender: FederationSender<T>, presence: &Arc<PresenceService>) -> Arc<Self> {
        Arc::new(EphemeralBridge {
            sender,
            rooms: Arc::downgrade(presence),
        })
    }
}

impl<T: Transport> EphemeralObserver for EphemeralBridge<T> {
    fn changed(&self, change: &EphemeralChange) {
        let Some(rooms) = self.rooms.upgrade() else {
            return;
        };
        let (room, user, key, edu_type, content) = match change {
            EphemeralChange::Typing {
                room,
                user,
                typing,
                origin: Origin::Local,
                ..
            } => (
                room,
                user,
                format!("m.typing {room} {user}"),
                "m.typing",
                json!({"room_id": room, "user_id": user, "typing": typing}),
            ),
            EphemeralChange::Receipt {
                receipt,
                origin: Origin::Local,
                ..
            } if receipt.receipt_type == ReceiptType::Read => {
                let mut data = json!({"ts": receipt.ts});
                if let Some(thread) = &receipt.thread_id {
                    data["thread_id"] = json!(thread);
                }
                (
                    &receipt.room_id,
                    &receipt.user_id,
                    format!(
                        "m.receipt {} {} {}",
                        receipt.room_id,
                        receipt.user_id,
                        receipt.thread_id.as_deref().unwrap_or("")
                    ),
                    "m.receipt",
                    json!({ receipt.room_id.as_str(): { "m.read": { receipt.user_id.as_str(): {
                        "event_ids": [receipt.event_id], "data": data }}}}),
                )
            }
            _ => return,
        };
        if rooms.is_remote(user) {
            return; // a remote user's typing expired here: not ours to announce
        }
        for dest in rooms.remote_servers_in_room(room) {
            if let Err(e) =
                self.sender
                    .queue_edu(&dest, Some(key.clone()), edu_type, content.clone())
            {
                tracing::error!(destination = %dest, "queueing {edu_type} failed: {e}");
            }
        }
    }
}
