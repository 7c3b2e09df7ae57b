//! The delivery loop: every [`POLL`] it lets the follower queue what is new, then starts a
//! drain task for each pusher with pending pushes that is neither draining nor backing off.
//!
//! A drain sends its pusher's pushes one at a time in stream order (a gateway sees a user's
//! notifications in the order they happened). A push that fails in a way worth retrying
//! stays at the head of the queue with its attempt count stored, and the pusher waits
//! [`backoff`] before the next try; after [`MAX_ATTEMPTS`] the pusher's whole queue is
//! given up on (like Synapse, which drops a pusher's backlog once its backoff tops out), so
//! a dead gateway cannot make its queue grow without bound.
use std::sync::Arc;
use std::time::{Duration, Instant};

use push::pushers::PusherChange;
use serde_json::Value;

use crate::queue::{self, Entry, PusherId};
use crate::send::{self, Outcome};
use crate::{Gateway, Result, payload};

/// How often the stream and the queues are looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// Attempts of one push before the pusher's queue is given up on.
pub const MAX_ATTEMPTS: u32 = 12;
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Entries read per storage round trip of a drain.
const BATCH: usize = 20;
/// Pushers started per poll.
const MAX_PUSHERS_PER_POLL: usize = 1_000;

/// The wait after the `attempts`-th failure: 1 s, doubling, at most [`MAX_BACKOFF`].
pub fn backoff(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

#[derive(Debug, Default)]
pub(crate) struct PusherState {
    busy: bool,
    retry_at: Option<Instant>,
}

impl Gateway {
    /// Run the delivery loop until the process ends.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tracing::debug!("push delivery started");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                me.poll().await;
            }
        });
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Gateway) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || f(&me)).await {
            Ok(r) => r,
            Err(e) => Err(crate::Error::Config(format!("blocking task failed: {e}"))),
        }
    }

    /// One round: queue new pushes, start the drains that are due.
    pub async fn poll(self: &Arc<Self>) {
        let due = self
            .blocking(|g| {
                g.follow()?;
                Ok(queue::pushers_with_pending(&g.db, MAX_PUSHERS_PER_POLL)?)
            })
            .await;
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "push delivery: cannot read the queue");
                return;
            }
        };
        let now = Instant::now();
        for id in due {
            {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                let s = state.entry(id.clone()).or_default();
                if s.busy || s.retry_at.is_some_and(|t| t > now) {
                    continue;
                }
                s.busy = true;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let retry_at = match me.drain(&id).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(user = %id.user, error = %e, "push delivery failed");
                        Some(Instant::now() + backoff(1))
                    }
                };
                if let Ok(mut state) = me.state.lock() {
                    match retry_at {
                        Some(t) => {
                            let s = state.entry(id).or_default();
                            s.busy = false;
                            s.retry_at = Some(t);
                        }
                        None => {
                            state.remove(&id);
                        }
                    }
                }
            });
        }
    }

    /// Send the pusher's queue in order until it is empty (`None`) or a push must wait
    /// (`Some(when)`).
    async fn drain(self: &Arc<Self>, id: &PusherId) -> Result<Option<Instant>> {
        loop {
            let key = id.clone();
            let (pusher, entries) = self
                .blocking(move |g| {
                    let p = g.push.pusher(&key.user, &key.app_id, &key.pushkey)?;
                    Ok((p, queue::pending(&g.db, &key, BATCH)?))
                })
                .await?;
            if entries.is_empty() {
                return Ok(None);
            }
            let Some(pusher) = pusher.filter(|p| p.kind == "http") else {
                // Removed since these were queued.
                let key = id.clone();
                self.blocking(move |g| Ok(queue::clear(&g.db, &key)?))
                    .await?;
                return Ok(None);
            };
            let Some(url) = pusher.data.get("url").and_then(Value::as_str) else {
                let key = id.clone();
                self.blocking(move |g| Ok(queue::clear(&g.db, &key)?))
                    .await?;
                return Ok(None);
            };
            let url = url.to_owned();
            for mut entry in entries {
                let (key, p, e) = (id.clone(), pusher.clone(), entry.clone());
                let body = self.blocking(move |g| g.payload(&key, &p, &e)).await?;
                let outcome = match body {
                    Some(body) => send::notify(&self.client, &url, &body).await,
                    None => Outcome::Drop("the event is gone".into()),
                };
                match outcome {
                    Outcome::Delivered { rejected } => {
                        let key = id.clone();
                        let pos = entry.pos;
                        if rejected.contains(&id.pushkey) {
                            tracing::info!(user = %id.user, app_id = %id.app_id, "the push gateway rejected a push key: removing its pusher");
                            self.blocking(move |g| {
                                g.push.change_pusher(
                                    &key.user,
                                    PusherChange::Remove {
                                        app_id: key.app_id.clone(),
                                        pushkey: key.pushkey.clone(),
                                    },
                                )?;
                                Ok(queue::clear(&g.db, &key)?)
                            })
                            .await?;
                            return Ok(None);
                        }
                        self.blocking(move |g| Ok(queue::remove(&g.db, &key, pos)?))
                            .await?;
                    }
                    Outcome::Drop(why) => {
                        tracing::warn!(user = %id.user, app_id = %id.app_id, %why, "push dropped");
                        let key = id.clone();
                        let pos = entry.pos;
                        self.blocking(move |g| Ok(queue::remove(&g.db, &key, pos)?))
                            .await?;
                    }
                    Outcome::Retry(why) => {
                        entry.push.attempts += 1;
                        let attempts = entry.push.attempts;
                        let key = id.clone();
                        if attempts >= MAX_ATTEMPTS {
                            tracing::warn!(user = %id.user, app_id = %id.app_id, %why, attempts, "push gateway unreachable: giving up on the queued pushes");
                            self.blocking(move |g| Ok(queue::clear(&g.db, &key)?))
                                .await?;
                            return Ok(None);
                        }
                        tracing::debug!(user = %id.user, app_id = %id.app_id, %why, attempts, "push failed, will retry");
                        self.blocking(move |g| Ok(queue::update(&g.db, &key, &entry)?))
                            .await?;
                        return Ok(Some(Instant::now() + backoff(attempts)));
                    }
                }
            }
        }
    }

    /// The body for one queued push (`None`: the event is no longer there).
    fn payload(
        &self,
        id: &PusherId,
        pusher: &push::Pusher,
        entry: &Entry,
    ) -> Result<Option<Value>> {
        let Some(event) = self.rooms.event(&entry.push.event_id)? else {
            return Ok(None);
        };
        let room = &entry.push.room_id;
        let record = self.push.notification_at(&id.user, room, entry.pos)?;
        let sender_display_name = self
            .rooms
            .current_state_event(room, "m.room.member", event.sender())?
            .and_then(|m| m.content_str("displayname").map(str::to_owned));
        let room_name = self
            .rooms
            .current_state_event(room, "m.room.name", "")?
            .and_then(|m| m.content_str("name").map(str::to_owned))
            .filter(|n| !n.is_empty());
        let unread = self
            .push
            .rooms_with_unread(&id.user, self.rooms.current_position())?;
        Ok(Some(payload::build(&payload::Parts {
            event: &event,
            record: record.as_ref(),
            pusher,
            user: id.user.as_str(),
            sender_display_name,
            room_name,
            unread,
        })))
    }
}
