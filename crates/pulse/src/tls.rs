//! TLS for a listener (placeholder until the Complement work lands its implementation).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

pub fn load_rustls_config(_tls: &TlsConfig, _server_name: &str) -> Result<axum_server::tls_rustls::RustlsConfig, String> {
    Err("TLS listeners are not implemented yet".into())
}
