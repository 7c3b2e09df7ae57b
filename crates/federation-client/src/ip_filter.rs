//! Which IP addresses outbound federation may connect to.
use std::net::IpAddr;

use ipnet::IpNet;

/// Deny list with allow-list exceptions. An IPv4-mapped IPv6 address is judged as its IPv4 form,
/// so `::ffff:127.0.0.1` cannot slip past a denied `127.0.0.0/8`.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl IpFilter {
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>) -> IpFilter {
        IpFilter { deny, allow }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !self.deny.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FederationConfig;

    #[test]
    fn default_denies_private_and_allow_list_opens_loopback() {
        let c = FederationConfig::default();
        let f = IpFilter::new(c.ip_range_denylist.clone(), vec![]);
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!f.permits(bad.parse().unwrap()), "{bad} should be denied");
        }
        assert!(f.permits("8.8.8.8".parse().unwrap()));
        assert!(f.permits("2a00:1450::1".parse().unwrap()));
        let f = IpFilter::new(c.ip_range_denylist, vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(f.permits("127.0.0.1".parse().unwrap()));
        assert!(!f.permits("10.0.0.1".parse().unwrap()));
    }
}
