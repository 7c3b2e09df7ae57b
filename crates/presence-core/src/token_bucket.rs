//! The token bucket: the one implementation behind every rate limit in Pulse (the HTTP
//! request limiter in `api-client`, the presence `PUT` limit in `presence-service`). Pure
//! arithmetic; callers pass the time in, so it is testable without a clock.
use std::time::Instant;

/// A bucket holding up to `burst` tokens, refilled at `rate` tokens per second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// Milliseconds until one token is available (at least 1).
    fn retry_ms(&self, rate: f64) -> u64 {
        (((1.0 - self.tokens) / rate) * 1000.0).ceil().max(1.0) as u64
    }

    /// Take one token: `Ok(())`, or `Err(retry_after_ms)` when the bucket is empty.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.retry_ms(rate))
        }
    }

    /// Whether a token is available, without taking it.
    pub fn peek(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(self.retry_ms(rate))
        }
    }

    /// Whether the bucket has refilled to `burst` by `now`: it then answers exactly as a new
    /// [`TokenBucket::full`] would, so a caller keeping one bucket per key may drop it.
    pub fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }

    /// Take a token even if that empties the bucket (recording a failure after the fact).
    pub fn charge(&mut self, now: Instant, rate: f64, burst: f64) {
        self.refill(now, rate, burst);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn empties_refills_and_caps_at_burst() {
        let t = Instant::now();
        let mut b = TokenBucket::full(2.0, t);
        assert!(b.take(t, 10.0, 2.0).is_ok());
        assert!(b.take(t, 10.0, 2.0).is_ok());
        let retry = b.take(t, 10.0, 2.0).expect_err("empty");
        assert!((1..=100).contains(&retry));
        assert!(b.peek(t + Duration::from_millis(150), 10.0, 2.0).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = t + Duration::from_secs(60);
        assert!(b.take(later, 10.0, 2.0).is_ok());
        assert!(b.take(later, 10.0, 2.0).is_ok());
        assert!(b.take(later, 10.0, 2.0).is_err());
        b.charge(later, 10.0, 2.0);
        assert!(b.peek(later, 10.0, 2.0).is_err());
    }

    #[test]
    fn is_full_once_refilled_to_the_burst() {
        let t = Instant::now();
        let mut b = TokenBucket::full(2.0, t);
        assert!(b.is_full(t, 10.0, 2.0));
        assert!(b.take(t, 10.0, 2.0).is_ok());
        assert!(!b.is_full(t, 10.0, 2.0));
        assert!(!b.is_full(t + Duration::from_millis(50), 10.0, 2.0));
        assert!(b.is_full(t + Duration::from_millis(100), 10.0, 2.0));
    }
}
