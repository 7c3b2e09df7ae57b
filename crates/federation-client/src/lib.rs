//! Outbound federation: discovery, X-Matrix signing and bounded HTTPS requests to other servers.
//!
//! Owns: the `[federation]` config ([`FederationConfig`]), server discovery as the spec describes
//! ([`discovery`]: IP literal, explicit port, `/.well-known/matrix/server` with caching, SRV
//! `_matrix-fed._tcp` then `_matrix._tcp`, port 8448; DNS through hickory-resolver, which reads
//! `/etc/hosts`), the IP range deny/allow lists that keep federation from reaching private
//! addresses ([`ip_filter`]), and [`FederationClient`]: reqwest over rustls with timeouts, no
//! proxy, and a cap on every response body.
//!
//! Public API (for `federation-sender` and `api-federation`):
//! - [`FederationClient::new(config, server_keys)`](FederationClient::new)
//! - [`FederationClient::request(method, destination, path_and_query, body)`](FederationClient::request):
//!   a request signed with `Authorization: X-Matrix origin=…,destination=…,key=…,sig=…` over
//!   `{method, uri, origin, destination, content}`; returns the status and the JSON body
//!   (at most `max_response_bytes`).
//! - [`FederationClient::send_transaction(destination, txn_id, body)`](FederationClient::send_transaction):
//!   `PUT /_matrix/federation/v1/send/{txnId}`; `Ok` only on a 2xx answer.
//! - [`FederationClient::get_unsigned(destination, path)`](FederationClient::get_unsigned): for
//!   key fetching (`/_matrix/key/v2/server` needs no authentication).
//!
//! - [`guarded::GuardedClient`]: a plain (unsigned) HTTP client behind the same IP filter,
//!   for the other outbound requests a user can aim at an address (push gateways, URL
//!   previews).
//!
//! - [`keys::RemoteKeys`] ([`keys::KeySource`]): a remote server's key valid at a given time,
//!   fetched from the origin (or the configured notaries when that fails) and cached in memory
//!   and in storage.
mod client;
pub mod config;
pub mod discovery;
pub mod guarded;
pub mod ip_filter;
pub mod keys;

pub use client::{FederationClient, FederationResponse, RawResponse, percent_encode_segment};
pub use config::FederationConfig;

/// Why an outbound federation request failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation is disabled in the config")]
    Disabled,
    #[error("bad server name {0:?}")]
    BadServerName(String),
    #[error("destination {0} resolves only to denied IP ranges")]
    Denied(String),
    #[error("cannot sign the request: {0}")]
    Signing(String),
    #[error("request to {destination} failed: {message}")]
    Transport {
        destination: String,
        message: String,
    },
    #[error("response from {0} is larger than the limit")]
    TooLarge(String),
    #[error("response from {destination} is not JSON: {message}")]
    BadJson {
        destination: String,
        message: String,
    },
    #[error("{destination} answered {status}: {body}")]
    Status {
        destination: String,
        status: u16,
        body: String,
    },
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, FederationError>;
