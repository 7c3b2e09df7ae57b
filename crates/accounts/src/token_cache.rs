//! Valid access tokens kept in memory, so that resolving a request's token (every client
//! request does it) is a hash-map read on the async worker instead of a storage read handed
//! to the blocking pool.
//!
//! Only found tokens are cached; an unknown token always reads storage. Tokens are deleted
//! only by changes made under the account service's write lock, and releasing that lock
//! empties the cache and bumps its generation ([`crate::AccountService`]'s `write_guard`),
//! after the change is written. A lookup that read storage before that release carries the
//! older generation and is not inserted, so once a revocation is written no later request
//! is served the revoked session from here.
use std::collections::HashMap;
use std::sync::Mutex;

use crate::Session;
use crate::keys::TokenHash;

/// Entries at most; when full, the cache starts over (a re-read per token is cheap).
const CAPACITY: usize = 50_000;

#[derive(Default)]
pub(crate) struct TokenCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    sessions: HashMap<TokenHash, Session>,
}

impl TokenCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, hash: &TokenHash) -> Option<Session> {
        self.inner().sessions.get(hash).cloned()
    }

    /// Take before reading storage; give to [`TokenCache::insert`] with what was read.
    pub(crate) fn generation(&self) -> u64 {
        self.inner().generation
    }

    /// Remember `session` for `hash`, unless a write-locked change ended since `generation`
    /// was taken (what was read may have been revoked since).
    pub(crate) fn insert(&self, generation: u64, hash: TokenHash, session: Session) {
        let mut inner = self.inner();
        if inner.generation != generation {
            return;
        }
        if inner.sessions.len() >= CAPACITY {
            inner.sessions.clear();
        }
        inner.sessions.insert(hash, session);
    }

    /// Forget everything: a change that may have deleted tokens was written.
    pub(crate) fn invalidate(&self) {
        let mut inner = self.inner();
        inner.generation = inner.generation.wrapping_add(1);
        inner.sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str) -> Session {
        Session {
            user_id: user.try_into().expect("user id"),
            device_id: "D".into(),
            expires_ts: None,
            refresh: false,
        }
    }

    #[test]
    fn a_read_from_before_an_invalidation_is_not_cached() {
        let cache = TokenCache::default();
        let h = TokenHash::of("tok");
        let before = cache.generation();
        cache.invalidate();
        cache.insert(before, h, session("@a:x"));
        assert!(cache.get(&h).is_none());
        let now = cache.generation();
        cache.insert(now, h, session("@a:x"));
        assert_eq!(
            cache.get(&h).map(|s| s.user_id.to_string()).as_deref(),
            Some("@a:x")
        );
        cache.invalidate();
        assert!(cache.get(&h).is_none());
    }

    #[test]
    fn full_cache_starts_over() {
        let cache = TokenCache::default();
        let g = cache.generation();
        for i in 0..CAPACITY + 1 {
            cache.insert(g, TokenHash::of(&format!("t{i}")), session("@a:x"));
        }
        assert_eq!(cache.inner().sessions.len(), 1);
    }
}
