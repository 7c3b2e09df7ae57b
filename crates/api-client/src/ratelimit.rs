//! Request rate limits: a token bucket per client, and a per-account budget of failed
//! logins. When a bucket is empty the request gets 429 `M_LIMIT_EXCEEDED` with
//! `retry_after_ms`.
//!
//! Keys say who is asking, never what they claim: an authenticated request is charged to
//! its user, anything else (including a request with an invalid token) to the client
//! address — the socket peer, or, when the peer is a configured trusted proxy, the last
//! `X-Forwarded-For` hop that is not itself a trusted proxy. A random `Authorization`
//! header therefore buys no fresh bucket.
//!
//! The bucket arithmetic is `presence_core::token_bucket` (shared with the presence `PUT`
//! limit). The buckets are sharded by key hash, so concurrent requests rarely contend on one
//! mutex, and each shard bounds its memory by generations instead of sweeping: when the
//! current map is full it becomes the previous one (the older previous is dropped) and a
//! key found only in the previous map moves forward on use. Every operation is O(1); a
//! bucket forgotten that way had not been used for a whole generation and starts full.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use http::HeaderMap;
use presence_core::token_bucket::TokenBucket;
use ruma::OwnedUserId;

/// The `[rate_limits]` settings.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained requests per second per client.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: f64,
    /// Peers whose `X-Forwarded-For` header is believed (a reverse proxy in front of Pulse).
    pub trusted_proxies: Vec<IpAddr>,
    /// Failed-password budgets (`[limits]`, Synapse's `rc_login.failed_attempts` model).
    pub login: LoginLimits,
}

/// Failed-password budgets: one per account (whatever address the guesses come from) and one
/// per client address (whatever accounts it tries). A budget is a token bucket: `burst`
/// failures at once, refilled at `per_second`. While one is empty, password checks for that
/// account or from that address get 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` before the
/// password is even hashed (the right password too, so a guesser learns nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoginLimits {
    pub per_account_burst: f64,
    pub per_account_per_second: f64,
    pub per_address_burst: f64,
    pub per_address_per_second: f64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_account_burst: FAILED_LOGIN_BURST,
            per_account_per_second: FAILED_LOGINS_PER_SECOND,
            per_address_burst: FAILED_LOGIN_BURST_PER_ADDRESS,
            per_address_per_second: FAILED_LOGINS_PER_SECOND_PER_ADDRESS,
        }
    }
}

/// Failed password attempts allowed per account in a burst...
pub const FAILED_LOGIN_BURST: f64 = 5.0;
/// ...and refilled at this rate (one every 30 seconds).
pub const FAILED_LOGINS_PER_SECOND: f64 = 1.0 / 30.0;
/// Failed password attempts allowed per client address in a burst (any accounts)...
pub const FAILED_LOGIN_BURST_PER_ADDRESS: f64 = 20.0;
/// ...and refilled at this rate (one every 10 seconds).
pub const FAILED_LOGINS_PER_SECOND_PER_ADDRESS: f64 = 0.1;
const SHARDS: usize = 16;
/// Live keys per shard generation (so at most 2 × 16 × this many buckets).
const SHARD_CAPACITY: usize = 8192;

/// Who a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An authenticated request.
    User(OwnedUserId),
    /// An unauthenticated one (or one with an invalid token).
    Addr(IpAddr),
}

/// The address a request came from: the peer, unless the peer is a trusted proxy, in
/// which case the nearest `X-Forwarded-For` hop that is not a trusted proxy. Malformed
/// headers are ignored (the proxy's own address is charged).
pub fn client_addr(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(s) = value.to_str() else {
            return Some(peer);
        };
        for hop in s.split(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return Some(peer),
            }
        }
    }
    // Right to left: each trusted hop vouches for the one before it.
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !trusted.contains(ip))
            .unwrap_or(peer),
    )
}

#[derive(Default)]
struct Shard<K> {
    current: HashMap<K, TokenBucket>,
    previous: HashMap<K, TokenBucket>,
}

/// Token buckets keyed by `K`, sharded, with bounded memory.
pub struct Buckets<K> {
    per_second: f64,
    burst: f64,
    hasher: RandomState,
    shards: Vec<Mutex<Shard<K>>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Buckets {
            per_second,
            burst,
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                    })
                })
                .collect(),
        }
    }

    fn with_bucket<T>(&self, key: &K, now: Instant, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !shard.current.contains_key(key) {
            if shard.current.len() >= SHARD_CAPACITY {
                let full = std::mem::take(&mut shard.current);
                shard.previous = full;
            }
            let bucket = shard
                .previous
                .remove(key)
                .unwrap_or_else(|| TokenBucket::full(self.burst, now));
            shard.current.insert(key.clone(), bucket);
        }
        let bucket = shard
            .current
            .get_mut(key)
            .expect("inserted above while holding the shard lock");
        f(bucket)
    }

    /// Take one token: `Ok(())` to go ahead, or `Err(retry_after_ms)`.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), u64> {
        self.with_bucket(key, now, |b| b.take(now, self.per_second, self.burst))
    }

    /// Whether a token is available, without taking it (`Err(retry_after_ms)` if not).
    pub fn peek(&self, key: &K, now: Instant) -> Result<(), u64> {
        self.with_bucket(key, now, |b| b.peek(now, self.per_second, self.burst))
    }

    /// Take a token even if that leaves the bucket empty (recording a failure).
    pub fn charge(&self, key: &K, now: Instant) {
        self.with_bucket(key, now, |b| b.charge(now, self.per_second, self.burst));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

/// The server's request limiter and per-account failed-login limiter.
pub struct RateLimiter {
    config: RateLimitConfig,
    requests: Buckets<RateKey>,
    /// Keyed by the account's user ID, or for names that are no account, by the name as
    /// typed (lower-cased): unknown names are limited alike, so a 429 reveals nothing.
    failed_logins: Buckets<String>,
    /// Failed passwords per client address, whatever accounts they were for.
    failed_logins_by_addr: Buckets<IpAddr>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        let per_second = if config.per_second > 0.0 {
            config.per_second
        } else {
            1.0
        };
        RateLimiter {
            requests: Buckets::new(per_second, config.burst.max(1.0)),
            failed_logins: Buckets::new(
                config.login.per_account_per_second.max(0.0),
                config.login.per_account_burst.max(1.0),
            ),
            failed_logins_by_addr: Buckets::new(
                config.login.per_address_per_second.max(0.0),
                config.login.per_address_burst.max(1.0),
            ),
            config,
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Charge one request to `key`: `Ok(())` to go ahead, or `Err(retry_after_ms)`.
    pub fn check(&self, key: &RateKey) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &RateKey, now: Instant) -> Result<(), u64> {
        if !self.config.enabled || self.config.per_second <= 0.0 {
            return Ok(());
        }
        self.requests.take(key, now)
    }

    /// Before checking a password of `account` (a user ID, or an unknown name as typed):
    /// `Err(retry_after_ms)` when it has used up its failed attempts (the password is then
    /// not even checked).
    pub fn login_allowed(&self, account: &str) -> Result<(), u64> {
        if !self.config.enabled {
            return Ok(());
        }
        self.failed_logins
            .peek(&account.to_lowercase(), Instant::now())
    }

    /// Record a wrong password for `account`.
    pub fn login_failed(&self, account: &str) {
        if self.config.enabled {
            self.failed_logins
                .charge(&account.to_lowercase(), Instant::now());
        }
    }

    /// [`Self::login_allowed`], and the failed-password budget of the client address `addr`
    /// (`None`: unknown, only the account is checked). The longer wait is returned.
    pub fn login_allowed_from(&self, account: &str, addr: Option<IpAddr>) -> Result<(), u64> {
        let by_account = self.login_allowed(account);
        let by_addr = match addr {
            Some(a) if self.config.enabled => self.failed_logins_by_addr.peek(&a, Instant::now()),
            _ => Ok(()),
        };
        match (by_account, by_addr) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(a),
        }
    }

    /// Record a wrong password for `account` coming from `addr`.
    pub fn login_failed_from(&self, account: &str, addr: Option<IpAddr>) {
        self.login_failed(account);
        if let Some(a) = addr
            && self.config.enabled
        {
            self.failed_logins_by_addr.charge(&a, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(enabled: bool, per_second: f64, burst: f64) -> RateLimitConfig {
        RateLimitConfig {
            enabled,
            per_second,
            burst,
            trusted_proxies: Vec::new(),
            login: LoginLimits::default(),
        }
    }

    fn addr(s: &str) -> RateKey {
        RateKey::Addr(s.parse().expect("ip"))
    }

    #[test]
    fn bucket_empties_then_refills() {
        let l = RateLimiter::new(config(true, 10.0, 2.0));
        let t = Instant::now();
        let k = addr("10.0.0.1");
        assert!(l.check_at(&k, t).is_ok());
        assert!(l.check_at(&k, t).is_ok());
        let retry = l.check_at(&k, t).expect_err("limited");
        assert!(retry > 0 && retry <= 100);
        assert!(l.check_at(&addr("10.0.0.2"), t).is_ok());
        assert!(l.check_at(&k, t + Duration::from_millis(150)).is_ok());
    }

    #[test]
    fn disabled_never_limits() {
        let l = RateLimiter::new(config(false, 0.1, 1.0));
        for _ in 0..100 {
            assert!(l.check(&addr("10.0.0.1")).is_ok());
        }
    }

    #[test]
    fn memory_is_bounded_and_busy_keys_survive_generations() {
        let b: Buckets<u64> = Buckets::new(0.001, 1.0);
        let t = Instant::now();
        assert!(b.take(&0, t).is_ok());
        for k in 1..(SHARDS * SHARD_CAPACITY * 3) as u64 {
            assert!(b.take(&k, t).is_ok());
            if k % 1000 == 0 {
                // Key 0 keeps being used, so it is never forgotten (and stays empty).
                assert!(b.take(&0, t).is_err());
            }
        }
        assert!(b.len() <= 2 * SHARDS * SHARD_CAPACITY);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let client: IpAddr = "203.0.113.7".parse().expect("ip");
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.7".parse().expect("hv"),
        );
        // Untrusted peer: its header is ignored.
        assert_eq!(client_addr(Some(proxy), &h, &[]), Some(proxy));
        // Trusted proxy: the last hop (the one the proxy saw) is the client.
        assert_eq!(client_addr(Some(proxy), &h, &[proxy]), Some(client));
        // A chain of trusted proxies is walked right to left.
        h.insert(
            "x-forwarded-for",
            "203.0.113.7, 10.0.0.2".parse().expect("hv"),
        );
        let inner: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(client_addr(Some(proxy), &h, &[proxy, inner]), Some(client));
        // Garbage: charge the proxy rather than trusting a made-up value.
        h.insert("x-forwarded-for", "not-an-ip".parse().expect("hv"));
        assert_eq!(client_addr(Some(proxy), &h, &[proxy]), Some(proxy));
    }

    #[test]
    fn failed_logins_are_limited_per_account() {
        let l = RateLimiter::new(config(true, 10.0, 10.0));
        let alice = ruma::owned_user_id!("@alice:example.org");
        let bob = ruma::owned_user_id!("@bob:example.org");
        for _ in 0..FAILED_LOGIN_BURST as usize {
            assert!(l.login_allowed(alice.as_str()).is_ok());
            l.login_failed(alice.as_str());
        }
        assert!(l.login_allowed(alice.as_str()).is_err());
        assert!(l.login_allowed(bob.as_str()).is_ok());
        // Unknown names are limited the same way (no existence oracle), case-insensitively.
        for _ in 0..FAILED_LOGIN_BURST as usize {
            l.login_failed("Nobody");
        }
        assert!(l.login_allowed("nobody").is_err());
    }

    #[test]
    fn failed_logins_are_limited_per_address_across_accounts() {
        let mut c = config(true, 10.0, 10.0);
        c.login.per_address_burst = 3.0;
        let l = RateLimiter::new(c);
        let guesser: IpAddr = "198.51.100.9".parse().expect("ip");
        let other: IpAddr = "198.51.100.10".parse().expect("ip");
        // One failure each on three different accounts: no account budget is used up...
        for name in ["@a:x", "@b:x", "@c:x"] {
            assert!(l.login_allowed_from(name, Some(guesser)).is_ok());
            l.login_failed_from(name, Some(guesser));
        }
        // ...but the address is done, for a fresh account too; others are not affected.
        let retry = l
            .login_allowed_from("@d:x", Some(guesser))
            .expect_err("address limited");
        assert!(retry > 0);
        assert!(l.login_allowed_from("@d:x", Some(other)).is_ok());
        assert!(l.login_allowed_from("@d:x", None).is_ok());
        // Disabled limits never refuse.
        let off = RateLimiter::new(config(false, 10.0, 10.0));
        for _ in 0..100 {
            off.login_failed_from("@a:x", Some(guesser));
        }
        assert!(off.login_allowed_from("@a:x", Some(guesser)).is_ok());
    }
}
