//! Timer configuration of the presence engine.

use serde::{Deserialize, Serialize};

/// Durations (milliseconds) that drive presence timers. Defaults are Synapse's, which clients
/// and Complement have been tuned against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// A device stays connected this long after its last `/sync` ended (or its last status
    /// update or activity), so the gap between two long-polls does not flap it offline.
    /// Must exceed any per-user sync rate limit interval.
    pub sync_online_timeout_ms: u64,
    /// Activity within this window makes the user `currently_active`.
    pub last_active_granularity_ms: u64,
    /// An `online` user with no activity for this long is shown `unavailable`.
    pub idle_timeout_ms: u64,
    /// A busy device that stopped syncing stays busy this long (MSC3026 asks not to time busy
    /// out at all; an unbounded busy from a device that went away would never end).
    pub busy_timeout_ms: u64,
}

impl PresenceConfig {
    /// 30 s.
    pub const DEFAULT_SYNC_ONLINE_TIMEOUT_MS: u64 = 30_000;
    /// 60 s.
    pub const DEFAULT_LAST_ACTIVE_GRANULARITY_MS: u64 = 60_000;
    /// 5 min.
    pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
    /// 1 h.
    pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 3_600_000;
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            sync_online_timeout_ms: Self::DEFAULT_SYNC_ONLINE_TIMEOUT_MS,
            last_active_granularity_ms: Self::DEFAULT_LAST_ACTIVE_GRANULARITY_MS,
            idle_timeout_ms: Self::DEFAULT_IDLE_TIMEOUT_MS,
            busy_timeout_ms: Self::DEFAULT_BUSY_TIMEOUT_MS,
        }
    }
}
