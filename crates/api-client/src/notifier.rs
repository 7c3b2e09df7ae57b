//! Wakes long-polling `/sync` requests. Each user with a waiting sync has a
//! `watch` channel; writers call [`SyncNotifier::wake`] with the users whose sync
//! result changed, and exactly those waiters return. Nothing polls.
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
    /// response is built is not lost.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        self.shard(user)
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wake the waiting syncs of these users; `position` is the stream position of the change.
    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, position: u64) {
        for user in users {
            let mut shard = self.shard(user);
            let gone = match shard.get(user) {
                Some(tx) => {
                    tx.send_replace(position);
                    tx.receiver_count() == 0
                }
                None => false,
            };
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
        let mut ra = n.subscribe(&a);
        let rb = n.subscribe(&b);
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
        let receivers: Vec<_> = users.iter().map(|u| n.subscribe(u)).collect();
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
            let _late_rx = n2.subscribe(&late);
            let _ = tx.send(seen_counts.len());
        });
        let walked = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("wake must not hold a lock while walking its users");
        assert_eq!(walked, 100);
        assert!(receivers.iter().all(|r| *r.borrow() == 3));
    }
}
