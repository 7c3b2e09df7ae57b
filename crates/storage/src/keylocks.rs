//! Per-key serialisation for read-modify-write callers of positioned writes.
//!
//! [`Db::write_with_position`](crate::Db::write_with_position) runs its closure without a
//! global lock, so two writers of the same logical key (one user's account data type, one
//! receipt kind) could both read the old value and both write on top of it. Such a caller
//! holds `KeyLocks::lock(key)` across its whole read + positioned write: writers of one key
//! go one at a time, in position order, while unrelated keys proceed in parallel (a fixed
//! number of shards, so two keys may share one; that only costs parallelism).
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

/// Sharded mutexes addressed by key bytes. Hold at most one guard of one `KeyLocks` at a
/// time (two keys may share a shard, and a second lock could then deadlock).
pub struct KeyLocks {
    shards: Box<[Mutex<()>]>,
    hasher: RandomState,
}

impl KeyLocks {
    /// `shards` mutexes (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Lock the shard of `key` until the guard is dropped.
    pub fn lock(&self, key: impl AsRef<[u8]>) -> MutexGuard<'_, ()> {
        let i = (self.hasher.hash_one(key.as_ref()) % self.shards.len() as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for KeyLocks {
    /// 64 shards: plenty for a couple of CPUs' worth of concurrent writers.
    fn default() -> Self {
        Self::new(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_is_exclusive_and_other_shards_are_not() {
        let locks = KeyLocks::new(2);
        let held = locks.lock(b"a");
        // The same key's shard is busy...
        let i = (locks.hasher.hash_one(b"a".as_slice()) % 2) as usize;
        assert!(locks.shards[i].try_lock().is_err());
        // ...the other shard is free.
        assert!(locks.shards[1 - i].try_lock().is_ok());
        drop(held);
        assert!(locks.shards[i].try_lock().is_ok());
    }
}
