//! The configuration file (TOML). Every key is documented in `config.example.toml` at the
//! repository root; unknown keys are an error that names the key. With no file at all,
//! [`Config::default`] is a working single-user-machine setup on 127.0.0.1:8008.
//!
//! Environment overrides (for containers): `PULSE_SERVER_NAME`, `PULSE_DATA_DIR`,
//! `PULSE_BIND` (replaces the first listener's address), `PULSE_LOG`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tls::TlsConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after `:` in user IDs. Cannot change once users exist.
    pub server_name: String,
    /// Where RocksDB keeps its files; created if missing.
    pub data_dir: PathBuf,
    /// The base URL clients use, advertised in `/.well-known/matrix/client`.
    /// Defaults to `http://<first listener>`.
    pub public_baseurl: Option<String>,
    pub listeners: Vec<Listener>,
    pub registration: Registration,
    pub accounts: Accounts,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub storage: StorageSettings,
    pub log: Log,
    /// Reserved for the presence engine (issue 4).
    pub presence: Presence,
    /// `[federation]`: outbound TLS, IP range lists, notaries (see `federation_client`).
    pub federation: federation_client::FederationConfig,
    /// `[voip]`: TURN servers handed out by `/voip/turnServer`.
    pub voip: api_client::VoipConfig,
    /// `[media]`: the media repository (files under `<data_dir>/media`).
    pub media: api_client::MediaConfig,
    /// `[rooms]`: room creation defaults.
    pub rooms: RoomsSettings,
    /// `[server_notices]`: off unless `system_mxid_localpart` is set.
    pub server_notices: ServerNotices,
    /// `[metrics]`: the Prometheus `/metrics` listener (off by default).
    pub metrics: MetricsSettings,
}

/// `[server_notices]`, as Synapse's `server_notices` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerNotices {
    /// The localpart of the user notices come from; unset: server notices are off.
    pub system_mxid_localpart: Option<String>,
    pub system_mxid_display_name: Option<String>,
    pub room_name: String,
}

impl Default for ServerNotices {
    fn default() -> Self {
        ServerNotices {
            system_mxid_localpart: None,
            system_mxid_display_name: None,
            room_name: "Server Notices".into(),
        }
    }
}

impl ServerNotices {
    pub fn to_api(&self) -> Option<api_client::admin_api::ServerNoticesConfig> {
        let localpart = self
            .system_mxid_localpart
            .clone()
            .filter(|l| !l.is_empty())?;
        Some(api_client::admin_api::ServerNoticesConfig {
            localpart,
            display_name: self.system_mxid_display_name.clone(),
            room_name: self.room_name.clone(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` (Prometheus text format) on `bind`.
    pub enabled: bool,
    /// Its own socket, apart from the client listeners: keep it private (loopback, or a
    /// network only the Prometheus server reaches). It has no authentication.
    pub bind: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 9108)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsSettings {
    /// The version of rooms created without `room_version` (and `/capabilities`' default),
    /// like Synapse's `default_room_version`. Any stable version "1" to "12".
    pub default_room_version: String,
}

impl Default for RoomsSettings {
    fn default() -> Self {
        RoomsSettings {
            default_room_version: rooms::DEFAULT_ROOM_VERSION.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub bind: SocketAddr,
    /// Serve HTTPS on this listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    /// Open registration with `m.login.dummy` on `POST /register`.
    pub enabled: bool,
    /// Enables Synapse-compatible `/_synapse/admin/v1/register` (HMAC-SHA1 with this secret).
    pub shared_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Accounts {
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Argon2id parallelism.
    pub argon2_parallelism: u32,
    /// Password hashes (and verifications) running at once; 0 = one per CPU, at least 2.
    /// Peak hashing memory is about this × `argon2_memory_kib`.
    pub hashing_slots: usize,
    /// How long a hash waits for a free slot before the request gets 429.
    pub hashing_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request bodies over this many bytes get 413 `M_TOO_LARGE`.
    pub max_request_bytes: usize,
    /// `/sync?timeout=` is capped at this many milliseconds.
    pub max_sync_timeout_ms: u64,
    /// Failed passwords per account: this many at once (while `[rate_limits] enabled`)...
    pub failed_logins_per_account_burst: f64,
    /// ...refilled at this rate.
    pub failed_logins_per_account_per_second: f64,
    /// Failed passwords per client address, whatever the accounts: burst...
    pub failed_logins_per_address_burst: f64,
    /// ...and refill rate.
    pub failed_logins_per_address_per_second: f64,
    /// A request's headers must arrive within this (also the keep-alive idle limit).
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this, counted from its headers.
    pub body_read_timeout_ms: u64,
    /// Open connections per client address (0: unlimited).
    pub max_connections_per_address: usize,
    /// Addresses not subject to `max_connections_per_address` (besides trusted proxies).
    pub connection_limit_exempt: Vec<std::net::IpAddr>,
    /// Inbound federation requests per remote origin (and address): sustained rate (0: off)...
    pub federation_per_origin_per_second: f64,
    /// ...and burst.
    pub federation_per_origin_burst: f64,
    /// Inbound federation requests per remote address, all origins together: rate...
    pub federation_per_address_per_second: f64,
    /// ...and burst.
    pub federation_per_address_burst: f64,
    /// Raise the soft open-files limit to this at start (0: to the hard limit).
    pub open_files: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub enabled: bool,
    /// Sustained requests per second per user (per client address without a valid token).
    pub per_second: f64,
    /// Burst size.
    pub burst: f64,
    /// Reverse proxies whose `X-Forwarded-For` names the real client (exact addresses).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// fsync the write-ahead log on every write (survives power loss, costs latency).
    /// Without it every acknowledged write is still in the WAL and survives `kill -9`.
    pub fsync: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `pulse=debug,info`, ...
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Presence {
    /// A device stays online this long after its last `/sync` ended.
    pub sync_online_timeout_ms: u64,
    /// An online user with no activity for this long becomes `unavailable`.
    pub idle_timeout_ms: u64,
    /// Activity within this window makes a user `currently_active`.
    pub last_active_granularity_ms: u64,
    /// A busy device that stopped syncing stays busy this long.
    pub busy_timeout_ms: u64,
    /// `PUT /presence/{userId}/status`: sustained updates per second per user (0 = no limit).
    pub status_per_second: f64,
    /// ... and the burst allowed.
    pub status_burst: f64,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            sync_online_timeout_ms: 30_000,
            idle_timeout_ms: 300_000,
            last_active_granularity_ms: 60_000,
            busy_timeout_ms: 3_600_000,
            status_per_second: 1.0,
            status_burst: 10.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".into(),
            data_dir: PathBuf::from("pulse-data"),
            public_baseurl: None,
            listeners: vec![Listener {
                bind: SocketAddr::from(([127, 0, 0, 1], 8008)),
                tls: None,
            }],
            registration: Registration::default(),
            accounts: Accounts::default(),
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            storage: StorageSettings::default(),
            log: Log::default(),
            presence: Presence::default(),
            federation: federation_client::FederationConfig::default(),
            voip: api_client::VoipConfig::default(),
            media: api_client::MediaConfig::default(),
            rooms: RoomsSettings::default(),
            server_notices: ServerNotices::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

impl Default for Registration {
    fn default() -> Self {
        Registration {
            enabled: true,
            shared_secret: None,
        }
    }
}

impl Default for Accounts {
    fn default() -> Self {
        // OWASP's argon2id baseline (19 MiB, 2 iterations, 1 lane).
        Accounts {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hashing_slots: 0,
            hashing_wait_ms: 2_000,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1024 * 1024,
            max_sync_timeout_ms: 120_000,
            failed_logins_per_account_burst: api_client::ratelimit::FAILED_LOGIN_BURST,
            failed_logins_per_account_per_second: api_client::ratelimit::FAILED_LOGINS_PER_SECOND,
            failed_logins_per_address_burst: api_client::ratelimit::FAILED_LOGIN_BURST_PER_ADDRESS,
            failed_logins_per_address_per_second:
                api_client::ratelimit::FAILED_LOGINS_PER_SECOND_PER_ADDRESS,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            max_connections_per_address: 256,
            connection_limit_exempt: vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            federation_per_origin_per_second: 50.0,
            federation_per_origin_burst: 200.0,
            federation_per_address_per_second: 200.0,
            federation_per_address_burst: 800.0,
            open_files: 0,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            per_second: 20.0,
            burst: 100.0,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Parse a config file's text. Unknown keys and wrong types are errors naming the key.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                Config::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = var("PULSE_SERVER_NAME") {
            self.server_name = v;
        }
        if let Some(v) = var("PULSE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("PULSE_BIND") {
            let addr: SocketAddr = v.parse().map_err(|e| format!("PULSE_BIND={v}: {e}"))?;
            match self.listeners.first_mut() {
                Some(l) => l.bind = addr,
                None => self.listeners.push(Listener {
                    bind: addr,
                    tls: None,
                }),
            }
        }
        if let Some(v) = var("PULSE_LOG") {
            self.log.level = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            format!(
                "server_name {:?} is not a valid Matrix server name: {e}",
                self.server_name
            )
        })?;
        if self.listeners.is_empty() {
            return Err("at least one [[listeners]] entry is needed".into());
        }
        if self.limits.max_request_bytes < 65_536 {
            return Err(
                "limits.max_request_bytes must be at least 65536 (the event size limit)".into(),
            );
        }
        let l = &self.limits;
        if l.header_read_timeout_ms == 0 || l.body_read_timeout_ms == 0 {
            return Err(
                "limits.header_read_timeout_ms and body_read_timeout_ms must be > 0".into(),
            );
        }
        for (name, burst, rate) in [
            (
                "failed_logins_per_account",
                l.failed_logins_per_account_burst,
                l.failed_logins_per_account_per_second,
            ),
            (
                "failed_logins_per_address",
                l.failed_logins_per_address_burst,
                l.failed_logins_per_address_per_second,
            ),
            (
                "federation_per_origin",
                l.federation_per_origin_burst,
                l.federation_per_origin_per_second,
            ),
            (
                "federation_per_address",
                l.federation_per_address_burst,
                l.federation_per_address_per_second,
            ),
        ] {
            if burst < 1.0 || rate < 0.0 || !rate.is_finite() {
                return Err(format!(
                    "limits.{name}_burst must be >= 1 and limits.{name}_per_second >= 0"
                ));
            }
        }
        rooms::parse_room_version(&self.rooms.default_room_version).map_err(|e| {
            format!(
                "rooms.default_room_version {:?}: {e}",
                self.rooms.default_room_version
            )
        })?;
        if self.accounts.hashing_slots > 1024 {
            return Err("accounts.hashing_slots must be at most 1024 (0: one per CPU)".into());
        }
        if self.accounts.hashing_wait_ms > 60_000 {
            return Err("accounts.hashing_wait_ms must be at most 60000".into());
        }
        let p = &self.presence;
        if p.sync_online_timeout_ms == 0 || p.idle_timeout_ms == 0 || p.busy_timeout_ms == 0 {
            return Err("presence timeouts must be greater than zero".into());
        }
        if p.status_per_second < 0.0 || (p.status_per_second > 0.0 && p.status_burst < 1.0) {
            return Err(
                "presence.status_per_second must be >= 0 and presence.status_burst >= 1".into(),
            );
        }
        if self.metrics.enabled && self.listeners.iter().any(|l| l.bind == self.metrics.bind) {
            return Err(format!(
                "metrics.bind {} is also a [[listeners]] address; give /metrics its own port",
                self.metrics.bind
            ));
        }
        if self.rate_limits.enabled
            && (self.rate_limits.per_second <= 0.0 || self.rate_limits.burst < 1.0)
        {
            return Err("rate_limits.per_second must be > 0 and rate_limits.burst >= 1".into());
        }
        Ok(())
    }

    pub fn public_baseurl(&self) -> String {
        if let Some(u) = &self.public_baseurl {
            return u.trim_end_matches('/').to_owned();
        }
        let l = &self.listeners[0];
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        let host = if l.bind.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            l.bind.ip().to_string()
        };
        if l.bind.is_ipv6() {
            format!("{scheme}://[{host}]:{}", l.bind.port())
        } else {
            format!("{scheme}://{host}:{}", l.bind.port())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let c =
            Config::parse(include_str!("../../../config.example.toml")).expect("example parses");
        c.validate().expect("example is valid");
    }

    #[test]
    fn hashing_pool_is_configurable_and_bounded() {
        let c = Config::parse("[accounts]\nhashing_slots = 3\nhashing_wait_ms = 500\n")
            .expect("parses");
        assert_eq!(
            (c.accounts.hashing_slots, c.accounts.hashing_wait_ms),
            (3, 500)
        );
        c.validate().expect("valid");
        let c = Config::parse("[accounts]\nhashing_slots = 5000\n").expect("parses");
        let err = c.validate().expect_err("too many slots");
        assert!(err.contains("hashing_slots"), "{err}");
        let c = Config::parse("[accounts]\nhashing_wait_ms = 600000\n").expect("parses");
        assert!(c.validate().is_err());
    }

    #[test]
    fn metrics_are_off_by_default_and_need_their_own_port() {
        let c = Config::default();
        assert!(!c.metrics.enabled);
        assert_eq!(c.metrics.bind.to_string(), "127.0.0.1:9108");
        let c = Config::parse("[metrics]\nenabled = true\nbind = \"127.0.0.1:9200\"\n")
            .expect("parses");
        c.validate().expect("valid");
        let c = Config::parse("[metrics]\nenabled = true\nbind = \"127.0.0.1:8008\"\n")
            .expect("parses");
        assert!(
            c.validate()
                .expect_err("same port")
                .contains("metrics.bind")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("server_name = \"x\"\nservr = 1\n").expect_err("unknown key");
        assert!(err.contains("servr"), "{err}");
        let err = Config::parse("[registration]\nenabld = true\n").expect_err("unknown nested key");
        assert!(err.contains("enabld"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "PULSE_SERVER_NAME" => Some("hs1".into()),
            "PULSE_BIND" => Some("0.0.0.0:9000".into()),
            _ => None,
        })
        .expect("env");
        assert_eq!(c.server_name, "hs1");
        assert_eq!(c.listeners[0].bind.port(), 9000);
        assert_eq!(c.public_baseurl(), "http://127.0.0.1:9000");
    }

    #[test]
    fn bad_server_name_is_refused() {
        let c = Config {
            server_name: "not a name".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
