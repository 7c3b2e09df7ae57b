//! The `[federation]` config table.
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

/// `[federation]` in the config file. Every field has a safe default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Talk to other servers at all (default true).
    pub enabled: bool,
    /// Check peers' TLS certificates (default true). Only a closed test federation turns it off.
    pub verify_tls: bool,
    /// Extra PEM CA certificates trusted for outbound TLS (e.g. Complement's CA).
    pub ca_file: Option<PathBuf>,
    /// Addresses federation never connects to (default: loopback, private, link-local,
    /// carrier-grade NAT, multicast and other non-routable ranges), so a peer cannot make us
    /// reach internal services.
    pub ip_range_denylist: Vec<IpNet>,
    /// Exceptions to the denylist, e.g. `["127.0.0.0/8"]` for a loopback test federation.
    pub ip_range_allowlist: Vec<IpNet>,
    /// Notary servers asked for other servers' keys (default none: keys come from the origin).
    pub trusted_key_servers: Vec<String>,
    /// Whole-request timeout in seconds (default 60).
    pub request_timeout_secs: u64,
    /// Connect timeout in seconds (default 10).
    pub connect_timeout_secs: u64,
    /// Largest response body read from a peer, in bytes (default 32 MiB: send_join replies are big).
    pub max_response_bytes: usize,
    /// Peers known to honour MSC4325 `allowed_recipients` (docs/federation.md, "Presence
    /// routing"). Empty by default: restricted presence goes only where it cannot leak.
    pub allowed_recipients_peers: Vec<String>,
}

/// Non-routable and private ranges (IANA special-purpose registries).
pub const DEFAULT_DENYLIST: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: true,
            verify_tls: true,
            ca_file: None,
            ip_range_denylist: DEFAULT_DENYLIST
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            ip_range_allowlist: Vec::new(),
            trusted_key_servers: Vec::new(),
            request_timeout_secs: 60,
            connect_timeout_secs: 10,
            max_response_bytes: 32 * 1024 * 1024,
            allowed_recipients_peers: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_deny_private_ranges() {
        let c = FederationConfig::default();
        assert_eq!(c.ip_range_denylist.len(), DEFAULT_DENYLIST.len());
        assert!(c.enabled && c.verify_tls);
    }
}
