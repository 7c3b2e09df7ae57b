//! Glue: the client API's [`UrlFetcher`] for URL previews over a
//! [`GuardedClient`] — the `[media] url_preview_ip_range_denylist` (default: federation's
//! denylist of private and non-routable ranges) with its allowlist, at most
//! [`MAX_REDIRECTS`] redirects (each hop checked), [`TIMEOUT`] per fetch, bodies cut off at
//! the configured size.
use std::time::Duration;

use api_client::media_preview::{FetchError, Fetched, UrlFetcher};
use federation_client::guarded::{GuardedClient, GuardedOptions};
use federation_client::ip_filter::IpFilter;
use futures::future::BoxFuture;

pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_REDIRECTS: usize = 5;

pub struct Fetcher(GuardedClient);

impl Fetcher {
    /// Builds the fetcher from `[media]`. Must run inside a tokio runtime.
    pub fn new(config: &api_client::MediaConfig) -> Result<Fetcher, String> {
        let deny = match &config.url_preview_ip_range_denylist {
            Some(d) => d.clone(),
            None => federation_client::config::DEFAULT_DENYLIST
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        };
        let filter = IpFilter::new(deny, config.url_preview_ip_range_allowlist.clone());
        let options = GuardedOptions {
            timeout: TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            max_redirects: MAX_REDIRECTS,
            // Some sites serve OpenGraph only to crawlers that say so.
            user_agent: concat!("Pulse/", env!("CARGO_PKG_VERSION"), " (URL preview bot)")
                .to_owned(),
        };
        GuardedClient::new(filter, &options)
            .map(Fetcher)
            .map_err(|e| format!("[media] URL preview client: {e}"))
    }
}

impl UrlFetcher for Fetcher {
    fn fetch(&self, url: String, max_bytes: usize) -> BoxFuture<'_, Result<Fetched, FetchError>> {
        Box::pin(async move {
            let parsed = self.0.check_url(&url).map_err(FetchError::Denied)?;
            let resp = self
                .0
                .http()
                .get(parsed)
                .send()
                .await
                .map_err(|e| FetchError::Failed(e.to_string()))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(FetchError::Failed(format!("the server answered {status}")));
            }
            let final_url = resp.url().to_string();
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = GuardedClient::read_body(resp, max_bytes)
                .await
                .map_err(|e| match e {
                    Some(e) => FetchError::Failed(e.to_string()),
                    None => FetchError::Failed(format!("larger than {max_bytes} bytes")),
                })?;
            Ok(Fetched {
                url: final_url,
                content_type,
                bytes,
            })
        })
    }
}
