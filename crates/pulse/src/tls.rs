//! TLS for listeners: the `[listeners.tls]` table and the rustls configuration built from it.
//!
//! A listener's `tls` table takes one of two forms:
//! - `cert_file` + `key_file`: PEM files used as given (chain leaf first; PKCS#8, PKCS#1 or SEC1
//!   key).
//! - neither: a fresh ECDSA P-256 key and certificate are made at every start for the server name
//!   (port stripped) plus `extra_names`. The certificate is signed by the CA in `ca_cert` +
//!   `ca_key` when both files exist at start (Complement copies its per-run CA to
//!   `/complement/ca/ca.{crt,key}`, the key as PKCS#1 "RSA PRIVATE KEY"); otherwise it is
//!   self-signed. This is for tests and development; a deployment gives `cert_file`/`key_file`.
//!
//! This file checks which form a table is; `cert` reads and makes the certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;

mod cert;
#[cfg(test)]
mod tests;

/// TLS settings of one listener, as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first, served as given. Requires `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Without `cert_file`: PEM CA certificate that signs the certificate made at start.
    /// If this file or `ca_key` does not exist at start, the certificate is self-signed.
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of `ca_cert` (PKCS#8, PKCS#1 RSA or SEC1).
    pub ca_key: Option<PathBuf>,
    /// Without `cert_file`: DNS names or IP addresses the certificate made at start covers
    /// besides the server name, e.g. `["localhost", "127.0.0.1"]`.
    #[serde(default)]
    pub extra_names: Vec<String>,
}

/// Where a listener's certificate comes from, once the table's combination is checked.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    Files {
        cert: &'a Path,
        key: &'a Path,
    },
    /// Made at start, signed by `ca` (certificate, key) when given.
    Generated {
        ca: Option<(&'a Path, &'a Path)>,
        extra_names: &'a [String],
    },
}

impl TlsConfig {
    fn source(&self) -> Result<Source<'_>, String> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                if self.ca_cert.is_some() || self.ca_key.is_some() || !self.extra_names.is_empty() {
                    return Err(
                        "TLS: ca_cert, ca_key and extra_names only apply without cert_file".into(),
                    );
                }
                Ok(Source::Files { cert, key })
            }
            (None, None) => {
                let ca = match (&self.ca_cert, &self.ca_key) {
                    // Complement mounts its CA only in its own runs: absent files mean "none".
                    (Some(cert), Some(key)) if cert.exists() && key.exists() => {
                        Some((&**cert, &**key))
                    }
                    (Some(_), Some(_)) | (None, None) => None,
                    _ => return Err("TLS: ca_cert and ca_key go together".into()),
                };
                Ok(Source::Generated {
                    ca,
                    extra_names: &self.extra_names,
                })
            }
            _ => Err("TLS: cert_file and key_file go together".into()),
        }
    }
}

/// Builds the TLS configuration of a listener (ALPN h2 and http/1.1).
pub fn load_rustls_config(tls: &TlsConfig, server_name: &str) -> Result<RustlsConfig, String> {
    let certified = match tls.source()? {
        Source::Files { cert, key } => cert::from_files(cert, key)?,
        Source::Generated { ca, extra_names } => cert::generate(server_name, extra_names, ca)?,
    };
    server_config(certified)
}

fn server_config(certified: cert::Certified) -> Result<RustlsConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certified.chain, certified.key)
        .map_err(|e| format!("TLS: cannot use the certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}
