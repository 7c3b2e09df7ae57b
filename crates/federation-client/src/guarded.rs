//! [`GuardedClient`]: outbound HTTP that a *user* chooses the address of (a pusher's gateway
//! URL, a page to preview), kept off private and internal addresses by an [`IpFilter`].
//!
//! Three doors are guarded: host names go through the filtering resolver federation uses
//! (every resolved address must pass, a name that resolves only to denied ranges fails), IP
//! literals — which reqwest connects to without asking the resolver — are checked by
//! [`GuardedClient::check_url`] before the request and by the redirect policy on every hop,
//! and redirects are bounded. No proxy is used (a proxy would connect on our behalf, past
//! the filter).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;

use crate::client::{DnsHandle, FilteredDns, read_bounded};
use crate::ip_filter::IpFilter;
use crate::{FederationError, Result};

/// How a [`GuardedClient`] behaves.
#[derive(Debug, Clone)]
pub struct GuardedOptions {
    /// Whole-request timeout (connect, send, read the body).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Redirects followed (0: none).
    pub max_redirects: usize,
    pub user_agent: String,
}

/// A reqwest client that connects only where the filter permits (cheap to clone).
#[derive(Clone)]
pub struct GuardedClient {
    http: reqwest::Client,
    filter: IpFilter,
}

/// Why a URL may not be fetched, or `None` when it may (IP literals only: names are
/// checked when they resolve).
fn literal_denied(filter: &IpFilter, url: &reqwest::Url) -> Option<String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Some(format!("scheme {:?} is not http(s)", url.scheme()));
    }
    let Some(host) = url.host_str() else {
        return Some("the URL has no host".into());
    };
    // IPv6 literals come bracketed; a name does not parse as an address.
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return None;
    };
    (!filter.permits(ip)).then(|| format!("{ip} is in a denied IP range"))
}

impl GuardedClient {
    /// Builds the client. Must run inside a tokio runtime (the resolver spawns on it).
    pub fn new(filter: IpFilter, options: &GuardedOptions) -> Result<GuardedClient> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| FederationError::Config(format!("DNS resolver: {e}")))?
            .build()
            .map_err(|e| FederationError::Config(format!("DNS resolver: {e}")))?;
        let dns = Arc::new(FilteredDns {
            resolver,
            filter: filter.clone(),
            overrides: Mutex::new(HashMap::new()),
        });
        let hops = options.max_redirects;
        let hop_filter = filter.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > hops {
                return attempt.error(format!("more than {hops} redirects"));
            }
            match literal_denied(&hop_filter, attempt.url()) {
                Some(why) => attempt.error(why),
                None => attempt.follow(),
            }
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(DnsHandle(dns)))
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(policy)
            .user_agent(options.user_agent.clone())
            .build()
            .map_err(|e| FederationError::Config(format!("HTTP client: {e}")))?;
        Ok(GuardedClient { http, filter })
    }

    /// Parse `url` and check it may be fetched (an http(s) URL whose host, if an IP
    /// literal, is permitted); the error says why not.
    pub fn check_url(&self, url: &str) -> std::result::Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
        match literal_denied(&self.filter, &parsed) {
            Some(why) => Err(why),
            None => Ok(parsed),
        }
    }

    /// The client, for building requests to URLs [`Self::check_url`] accepted.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Read a response body, failing (with `None`) past `limit` bytes.
    pub async fn read_body(
        resp: reqwest::Response,
        limit: usize,
    ) -> std::result::Result<Vec<u8>, Option<reqwest::Error>> {
        read_bounded(resp, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FederationConfig;

    fn client(allow: Vec<ipnet::IpNet>) -> GuardedClient {
        let c = FederationConfig::default();
        let options = GuardedOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 2,
            user_agent: "test".into(),
        };
        GuardedClient::new(IpFilter::new(c.ip_range_denylist, allow), &options).expect("client")
    }

    #[tokio::test]
    async fn literals_in_denied_ranges_are_refused() {
        let c = client(vec![]);
        for bad in [
            "http://127.0.0.1:8008/_matrix/push/v1/notify",
            "http://[::1]/x",
            "http://[::ffff:10.0.0.1]/x",
            "http://169.254.169.254/latest/meta-data",
            "ftp://example.org/x",
            "not a url",
        ] {
            assert!(c.check_url(bad).is_err(), "{bad} should be refused");
        }
        assert!(c.check_url("https://8.8.8.8/x").is_ok());
        assert!(c.check_url("https://push.example.org/x").is_ok());
        let c = client(vec!["127.0.0.0/8".parse().expect("net")]);
        assert!(c.check_url("http://127.0.0.1:8008/x").is_ok());
        assert!(c.check_url("http://10.0.0.1/x").is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_denied_ranges_fail_to_connect() {
        // `localhost` resolves (from /etc/hosts) to loopback only.
        let c = client(vec![]);
        let url = c
            .check_url("http://localhost:9/x")
            .expect("a name passes the literal check");
        let err = c
            .http()
            .get(url)
            .send()
            .await
            .expect_err("must not connect");
        assert!(err.is_connect() || err.is_request(), "{err:?}");
    }
}
