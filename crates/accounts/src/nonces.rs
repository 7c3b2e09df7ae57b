//! Shared-secret registration nonces: single use, expiring, bounded without flushing.
use super::*;

impl AccountService {
    /// Issue a single-use nonce for shared-secret registration (valid for [`NONCE_TTL`]).
    /// `None` when [`MAX_NONCES`] unexpired nonces are outstanding: live nonces are never
    /// dropped to make room, so an unauthenticated caller cannot invalidate another's.
    pub fn new_registration_nonce(&self) -> Option<String> {
        let now = Instant::now();
        let mut nonces = lock(&self.nonces);
        if nonces.len() >= MAX_NONCES {
            nonces.retain(|_, at| now.duration_since(*at) < NONCE_TTL);
            if nonces.len() >= MAX_NONCES {
                return None;
            }
        }
        let nonce = random_string(32);
        nonces.insert(nonce.clone(), now);
        Some(nonce)
    }

    /// Consume a nonce: true if it was issued, is unexpired and not used before.
    pub fn take_registration_nonce(&self, nonce: &str) -> bool {
        lock(&self.nonces)
            .remove(nonce)
            .is_some_and(|at| at.elapsed() < NONCE_TTL)
    }
}
