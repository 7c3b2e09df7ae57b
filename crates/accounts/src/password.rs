//! Argon2id password hashing with configurable cost.
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

#[cfg(test)]
mod tests {
    use super::*;

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
