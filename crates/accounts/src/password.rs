//! Argon2id password hashing with configurable cost, and the pool that bounds how many
//! hashes run at once.
//!
//! Every argon2 call allocates its full memory cost (19 MiB by default), so unbounded
//! concurrency turns a burst of logins or registrations into gigabytes of RSS. The
//! [`HashingPool`] lets a few run at once; the rest wait briefly for a slot and are then
//! refused (the client API answers 429 `M_LIMIT_EXCEEDED`).
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// Argon2id cost parameters (the `[password_hashing]` setting).
///
/// Hashes are stored as PHC strings that carry their own parameters, so changing the
/// cost later only affects new hashes; old ones keep verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PasswordHashing {
    /// Memory cost in KiB (at least 8 × `p_cost`).
    pub m_cost: u32,
    /// Number of passes (at least 1).
    pub t_cost: u32,
    /// Degree of parallelism (at least 1).
    pub p_cost: u32,
}

impl Default for PasswordHashing {
    /// The argon2 crate's recommended defaults (OWASP's Argon2id minimum): 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        PasswordHashing {
            m_cost: Params::DEFAULT_M_COST,
            t_cost: Params::DEFAULT_T_COST,
            p_cost: Params::DEFAULT_P_COST,
        }
    }
}

impl PasswordHashing {
    /// Deliberately cheap parameters for tests and test deployments (Complement):
    /// microseconds per hash. Never use in production.
    pub const fn insecure_fast() -> Self {
        PasswordHashing {
            m_cost: 8,
            t_cost: 1,
            p_cost: 1,
        }
    }

    /// Check that argon2 accepts these parameters.
    pub fn validate(&self) -> Result<(), String> {
        self.params().map(|_| ())
    }

    fn params(&self) -> Result<Params, String> {
        Params::new(self.m_cost, self.t_cost, self.p_cost, None)
            .map_err(|e| format!("invalid argon2 parameters: {e}"))
    }

    /// Hash a password into a PHC string (`$argon2id$v=19$m=...`) with a random salt.
    pub fn hash(&self, password: &str) -> Result<String, String> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params()?);
        argon
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }

    /// Verify a password against a stored PHC string (using the string's own parameters).
    /// A malformed stored hash verifies nothing.
    pub fn verify(password: &str, phc: &str) -> bool {
        Argon2::default()
            .verify_password(password.as_bytes(), phc)
            .is_ok()
    }
}

/// A counting semaphore for password hashing (callers are on blocking threads).
pub struct HashingPool {
    max: usize,
    wait: Duration,
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    running: usize,
    /// Most hashes ever running at once (for tests and metrics).
    peak: usize,
}

/// A slot in the [`HashingPool`]; released on drop.
pub struct HashingPermit<'a>(&'a HashingPool);

impl Drop for HashingPermit<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running -= 1;
        drop(s);
        self.0.freed.notify_one();
    }
}

impl HashingPool {
    /// How long a hash waits for a slot by default before being refused.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);

    /// At most `max` (at least 1) hashes at once; others wait up to `wait`.
    pub fn new(max: usize, wait: Duration) -> Self {
        HashingPool {
            max: max.max(1),
            wait,
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
        }
    }

    /// One slot per CPU (at least 2): hashing is CPU-bound, more in parallel only adds memory.
    pub fn per_cpu() -> Self {
        Self::per_cpu_waiting(Self::DEFAULT_WAIT)
    }

    /// [`HashingPool::per_cpu`] with its own wait before refusing.
    pub fn per_cpu_waiting(wait: Duration) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        HashingPool::new(cpus.max(2), wait)
    }

    /// Wait (blocking, up to the pool's wait time) for a slot; `None` if none freed up.
    pub fn acquire(&self) -> Option<HashingPermit<'_>> {
        let deadline = Instant::now() + self.wait;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.running >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            s = self
                .freed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.running += 1;
        s.peak = s.peak.max(s.running);
        Some(HashingPermit(self))
    }

    /// The most hashes that ever ran at once.
    pub fn peak(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_bounds_concurrency_and_refuses_after_waiting() {
        let pool = std::sync::Arc::new(HashingPool::new(2, Duration::from_millis(20)));
        let a = pool.acquire().expect("slot 1");
        let b = pool.acquire().expect("slot 2");
        assert!(pool.acquire().is_none(), "a third hash must not run");
        drop(a);
        assert!(pool.acquire().is_some());
        drop(b);
        // Many threads, never more than `max` at once.
        let pool = std::sync::Arc::new(HashingPool::new(2, Duration::from_secs(30)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let _p = pool.acquire().expect("slot");
                    std::thread::sleep(Duration::from_millis(5));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(pool.peak(), 2);
    }

    #[test]
    fn hash_and_verify() {
        let h = PasswordHashing::insecure_fast();
        let phc = h.hash("übers3kr1t").expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(PasswordHashing::verify("übers3kr1t", &phc));
        assert!(!PasswordHashing::verify("wrong", &phc));
        assert!(!PasswordHashing::verify("x", "not a hash"));
        // Two hashes of one password differ (random salt).
        assert_ne!(phc, h.hash("übers3kr1t").expect("hash"));
    }

    #[test]
    fn params_are_validated() {
        assert!(PasswordHashing::default().validate().is_ok());
        assert!(PasswordHashing::insecure_fast().validate().is_ok());
        assert!(
            PasswordHashing {
                m_cost: 1,
                t_cost: 1,
                p_cost: 1
            }
            .validate()
            .is_err()
        );
        assert!(
            PasswordHashing {
                m_cost: 64,
                t_cost: 0,
                p_cost: 1
            }
            .validate()
            .is_err()
        );
    }
}
