//! Wakes long-polling `/sync` requests. Each user with a waiting sync has a
//! `watch` channel; writers call [`SyncNotifier::wake`] with the users whose sync
//! result changed, and exactly those waiters return. Nothing polls.
use std::collections::HashMap;
use std::sync::Mutex;

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

#[derive(Default)]
pub struct SyncNotifier {
    channels: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
}

impl SyncNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribe *before* computing a sync response, so a wake that happens while the
    /// response is built is not lost.
    pub fn subscribe(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wake the waiting syncs of these users; `position` is the stream position of the change.
    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, position: u64) {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for user in users {
            let gone = match map.get(user) {
                Some(tx) => {
                    tx.send_replace(position);
                    tx.receiver_count() == 0
                }
                None => false,
            };
            if gone {
                map.remove(user);
            }
        }
    }

    /// Number of users with a channel (for metrics and tests).
    pub fn channel_count(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl presence_service::SyncWaker for SyncNotifier {
    fn wake_users(&self, users: &[&UserId], position: u64) {
        self.wake(users.iter().copied(), position);
    }
}

#[cfg(test)]
mod tests {
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
}
