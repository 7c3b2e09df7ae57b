//! A token-bucket rate limiter keyed by access token (or client IP when there is none).
//! Off by default in test configs; when a bucket is empty the request gets 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms`.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained requests per second per key.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: f64,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(())` to go ahead, or `Err(retry_after_ms)`.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let c = self.config;
        if !c.enabled || c.per_second <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory: forget full buckets (they would start full anyway).
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * c.per_second < c.burst
            });
        }
        let (tokens, at) = map.entry(key.to_owned()).or_insert((c.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * c.per_second).min(c.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / c.per_second;
            Err((wait * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_empties_then_refills() {
        let l = RateLimiter::new(RateLimitConfig {
            enabled: true,
            per_second: 10.0,
            burst: 2.0,
        });
        let t = Instant::now();
        assert!(l.check_at("k", t).is_ok());
        assert!(l.check_at("k", t).is_ok());
        let retry = l.check_at("k", t).expect_err("limited");
        assert!(retry > 0 && retry <= 100);
        assert!(l.check_at("other", t).is_ok());
        assert!(l.check_at("k", t + Duration::from_millis(150)).is_ok());
    }

    #[test]
    fn disabled_never_limits() {
        let l = RateLimiter::new(RateLimitConfig {
            enabled: false,
            per_second: 0.1,
            burst: 1.0,
        });
        for _ in 0..100 {
            assert!(l.check("k").is_ok());
        }
    }
}
