//! Wakes long-polling `/sync` requests. Each user with a waiting sync has a
//! `watch` channel; writers call [`SyncNotifier::wake`] with the users whose sync
//! result changed, and exactly those waiters return. Nothing polls.
//!
//! A channel's value is the highest stream position the user was woken at, or — for a
//! channel created since — the stream position when it was created, whichever is higher:
//! every change that concerns the user is at or below it (a writer wakes only after its
//! position is visible, and a change whose wake found no channel was committed before the
//! channel existed, so at or below the position read after creating it). A `/sync` whose
//! token is at or past that value has nothing new to build, and waits right away
//! ([`SyncNotifier::nothing_since`]): a client's next long-poll after a response does not
//! rebuild an empty response.
//!
//! The channels are split over [`SHARDS`] independently locked maps by user, and a wake
//! takes one shard's lock per user, only around that user's send: a wake of a large
//! room never holds a lock other syncs or writers wait on for more than one send.
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

/// Number of independently locked channel maps.
pub const SHARDS: usize = 64;

type Channels = HashMap<OwnedUserId, watch::Sender<u64>>;

pub struct SyncNotifier {
    shards: Vec<Mutex<Channels>>,
    hasher: RandomState,
}

impl Default for SyncNotifier {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl SyncNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, Channels> {
        let i = (self.hasher.hash_one(user.as_str()) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe *before* computing a sync response, so a wake that happens while the
    /// response is built is not lost. `current_position` reads the stream position; it is
    /// called only when the user has no channel yet, after the channel is in place.
    pub fn subscribe(
        &self,
        user: &UserId,
        current_position: impl FnOnce() -> u64,
    ) -> watch::Receiver<u64> {
        let mut shard = self.shard(user);
        if let Some(tx) = shard.get(user) {
            return tx.subscribe();
        }
        let tx = shard
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        // Read only now, under the shard lock: a wake that missed the channel came from a
        // change committed before it was inserted, hence at or below this position.
        let floor = current_position();
        tx.send_modify(|v| *v = (*v).max(floor));
        // Subscribed after the floor: setting it is not a wake-up.
        tx.subscribe()
    }

    /// Whether nothing concerning the user of `rx` happened after stream position `since`
    /// (see the module comment): a sync from that token would build an empty response.
    pub fn nothing_since(rx: &watch::Receiver<u64>, since: u64) -> bool {
        *rx.borrow() <= since
    }

    /// Wake the waiting syncs of these users; `position` is the stream position of the change.
    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, position: u64) {
        for user in users {
            let mut shard = self.shard(user);
            let gone = match shard.get(user) {
                Some(tx) => {
                    // Always a wake-up, even below the value: a waiter that built before a
                    // lower position became visible must look again.
                    tx.send_modify(|v| *v = (*v).max(position));
                    tx.receiver_count() == 0
                }
                None => false,
            };
            // Dropping a channel nobody listens to is safe: the next subscription starts
            // again from the current position (a sync from an older token builds).
            if gone {
                shard.remove(user);
            }
        }
    }

    /// Number of users with a channel (for metrics and tests).
    pub fn channel_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl presence_service::SyncWaker for SyncNotifier {
    fn wake_users(&self, users: &[&UserId], position: u64) {
        self.wake(users.iter().copied(), position);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wake_reaches_only_the_named_user() {
        let n = SyncNotifier::new();
        let a: OwnedUserId = "@a:x".try_into().expect("id");
        let b: OwnedUserId = "@b:x".try_into().expect("id");
        let mut ra = n.subscribe(&a, || 0);
        let rb = n.subscribe(&b, || 0);
        n.wake([&*a], 7);
        assert!(ra.has_changed().expect("open"));
        assert!(!rb.has_changed().expect("open"));
        ra.changed().await.expect("changed");
        assert_eq!(*ra.borrow(), 7);
    }

    /// A wake holds no lock between sends: while it walks its users, others can
    /// subscribe and count (with one global lock held across the walk, this hangs).
    #[test]
    fn wake_holds_no_lock_between_sends() {
        let n = Arc::new(SyncNotifier::new());
        let users: Vec<OwnedUserId> = (0..100)
            .map(|i| format!("@u{i}:x").try_into().expect("id"))
            .collect();
        let receivers: Vec<_> = users.iter().map(|u| n.subscribe(u, || 0)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let n2 = n.clone();
        std::thread::spawn(move || {
            let late: OwnedUserId = "@late:x".try_into().expect("id");
            let mut seen_counts = Vec::new();
            let walk = users.iter().map(|u| {
                // Runs between sends, on the waking thread.
                seen_counts.push(n2.channel_count());
                &**u
            });
            n2.wake(walk, 3);
            let _late_rx = n2.subscribe(&late, || 0);
            let _ = tx.send(seen_counts.len());
        });
        let walked = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("wake must not hold a lock while walking its users");
        assert_eq!(walked, 100);
        assert!(receivers.iter().all(|r| *r.borrow() == 3));
    }

    /// The value a sync compares its token with: the stream position at the channel's
    /// creation, raised (never lowered) by every wake, and a wake always wakes.
    #[test]
    fn nothing_since_follows_creation_and_wakes() {
        let n = SyncNotifier::new();
        let a: OwnedUserId = "@a:x".try_into().expect("id");
        let mut rx = n.subscribe(&a, || 10);
        assert!(SyncNotifier::nothing_since(&rx, 10));
        assert!(!SyncNotifier::nothing_since(&rx, 9));
        // An existing channel keeps its value: the position is not read again.
        let rx2 = n.subscribe(&a, || panic!("read only for a new channel"));
        assert!(SyncNotifier::nothing_since(&rx2, 10));
        n.wake([&*a], 12);
        assert!(!SyncNotifier::nothing_since(&rx, 11));
        assert!(SyncNotifier::nothing_since(&rx, 12));
        let _ = rx.borrow_and_update();
        // A lower position (a writer whose commit became visible later) still wakes.
        n.wake([&*a], 11);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow(), 12);
    }

    /// A wake that finds no listener drops the channel; the next subscription starts from
    /// the current position, so a sync from a token before that wake still builds.
    #[test]
    fn a_dropped_channel_restarts_at_the_current_position() {
        let n = SyncNotifier::new();
        let a: OwnedUserId = "@a:x".try_into().expect("id");
        drop(n.subscribe(&a, || 5));
        n.wake([&*a], 7);
        assert_eq!(n.channel_count(), 0);
        let rx = n.subscribe(&a, || 7);
        assert!(!SyncNotifier::nothing_since(&rx, 5));
        assert!(SyncNotifier::nothing_since(&rx, 7));
    }
}
