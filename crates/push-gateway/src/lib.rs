//! # push-gateway — delivering notifications to `http` pushers
//!
//! The push service (`crates/push`) decides *whether* an event notifies a user and keeps the
//! pushers; this crate *delivers*: `POST {data.url}` (`/_matrix/push/v1/notify`, the Push
//! Gateway API) for every event whose actions for a user contain `notify`, to each of that
//! user's `http` pushers, whether or not the user is online (as Synapse does).
//!
//! * `follow.rs`: the room stream (every sender, local and federated) after a durable cursor
//!   → queue entries, one per (pusher, event);
//! * `queue.rs`: the durable per-pusher queues in `Cf::PushQueue` (a restart loses nothing
//!   queued);
//! * `payload.rs`: the notification body (full or `event_id_only`);
//! * `send.rs`: one request through a [`GuardedClient`] — the federation IP deny/allow lists
//!   apply to gateway URLs, so a pusher cannot make the server reach internal addresses;
//!   bounded time and answer size;
//! * `worker.rs`: the loop: per pusher, in stream order, with exponential backoff on
//!   failures and a bounded number of attempts; push keys the gateway `rejected` remove
//!   their pusher (as the spec says).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federation_client::guarded::{GuardedClient, GuardedOptions};
use federation_client::ip_filter::IpFilter;
use push::PushService;
use rooms::RoomService;
use storage::{Db, StorageError};

mod follow;
pub mod payload;
pub mod queue;
pub mod send;
mod worker;

pub use worker::{MAX_ATTEMPTS, backoff};

/// Whole-request timeout of one push.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of one push.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Push(#[from] push::PushError),
    #[error(transparent)]
    Room(#[from] rooms::RoomError),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The delivery service; [`Gateway::start`] runs it.
pub struct Gateway {
    db: Arc<Db>,
    rooms: Arc<RoomService>,
    push: Arc<PushService>,
    client: GuardedClient,
    /// Per pusher: whether a drain task runs, and when it may next try after a failure
    /// (in memory: after a restart every queue is tried at once).
    state: Mutex<HashMap<queue::PusherId, worker::PusherState>>,
}

impl Gateway {
    /// Builds the service; `filter` is the federation IP filter. Must run inside a tokio
    /// runtime (the resolver spawns on it).
    pub fn new(
        db: Arc<Db>,
        rooms: Arc<RoomService>,
        push: Arc<PushService>,
        filter: IpFilter,
    ) -> Result<Gateway> {
        let options = GuardedOptions {
            timeout: REQUEST_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            // A gateway that moved is configured anew by its app; following redirects
            // would only widen what a pusher URL can reach.
            max_redirects: 0,
            user_agent: concat!("Pulse/", env!("CARGO_PKG_VERSION")).to_owned(),
        };
        let client = GuardedClient::new(filter, &options)
            .map_err(|e| Error::Config(format!("push gateway client: {e}")))?;
        let gateway = Gateway {
            db,
            rooms,
            push,
            client,
            state: Mutex::new(HashMap::new()),
        };
        // Place the cursor now, before the listeners serve: on a first start, events
        // committed from the first request on are pushed.
        gateway.follow()?;
        Ok(gateway)
    }
}

#[cfg(test)]
mod tests;
