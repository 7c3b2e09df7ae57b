//! # pulse — the Pulse homeserver binary
//!
//! Reads the configuration (or uses the embedded default), opens the RocksDB
//! database, builds the services, connects them through their observer traits and serves
//! the client API on every listener — over TLS where the listener has a `[listeners.tls]`
//! table (`tls.rs`). With `[federation] enabled` it also starts the federation sender
//! (`federation.rs`) and serves the federation API on the same listeners.
//! Subcommands:
//!
//! * `pulse serve [--config FILE]` — run the server (plus `/_pulse/status`, `status.rs`, and
//!   with `[metrics] enabled` a Prometheus `/metrics` listener, `metrics/`);
//! * `pulse generate-config` — print a fully commented configuration file;
//! * `pulse register-user USERNAME` — create an account directly in the database
//!   (while the server is stopped: RocksDB allows one process at a time).
//!
//! Shutdown: SIGINT or SIGTERM stops accepting connections, gives in-flight requests
//! up to one second, and exits. Nothing acknowledged can be lost by exiting early:
//! every write a client got a 200 for is already in RocksDB's write-ahead log.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info};

mod backup;
mod config;
mod federation;
mod limits;
mod logging;
mod metrics;
mod remote_keys;
mod remote_media;
mod remote_membership;
mod status;
mod tls;
mod url_preview;

use config::Config;

#[derive(Parser)]
#[command(
    name = "pulse",
    version,
    about = "Pulse, a presence-first Matrix homeserver",
    long_about = "Pulse, a presence-first Matrix homeserver.\n\n\
        Start it with `pulse serve`: with no --config it serves the client API on \
        http://127.0.0.1:8008 for the server name `localhost` and keeps its data in ./pulse-data. \
        `pulse generate-config > pulse.toml` writes a documented configuration file to start from."
)]
struct Cli {
    /// Log filter, overriding the config file's [log] level (e.g. "debug", "pulse=trace,info").
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        /// Configuration file (TOML). Without it the embedded defaults are used.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a documented example configuration to stdout.
    GenerateConfig,
    /// Create a user account directly in the database (the server must be stopped).
    RegisterUser {
        /// Configuration file (TOML), to find the server name and data directory.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The localpart (`alice`) or full user ID (`@alice:example.org`).
        username: String,
        /// The password. Without it a random one is generated and printed.
        #[arg(long)]
        password: Option<String>,
        /// Make the account a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Ask the running server for a consistent backup into DIR (a new directory), without
    /// stopping it. A server admin's access token goes in the PULSE_ADMIN_TOKEN variable.
    Backup {
        /// Configuration file (TOML), to find the server's listener.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The server's base URL (default: its first plain HTTP listener).
        #[arg(long)]
        url: Option<String>,
        /// Where the backup goes (must not exist yet).
        dir: PathBuf,
    },
    /// Restore a backup made by `pulse backup` into the configured data directory, which
    /// must be empty or missing (the server must be stopped).
    Restore {
        /// Configuration file (TOML), to find the server name and data directory.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The backup directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateConfig => {
            print!("{}", include_str!("../../../config.example.toml"));
            ExitCode::SUCCESS
        }
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pulse: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(cli.log_level.as_deref().unwrap_or(&config.log.level));
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("pulse: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    eprintln!("pulse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backup { config, url, dir } => match Config::load(config.as_deref()) {
            Err(e) => {
                eprintln!("pulse: configuration error: {e}");
                ExitCode::from(2)
            }
            Ok(config) => report(backup::request_backup(&config, &dir, url)),
        },
        Command::Restore { config, dir } => match Config::load(config.as_deref()) {
            Err(e) => {
                eprintln!("pulse: configuration error: {e}");
                ExitCode::from(2)
            }
            Ok(config) => report(backup::restore(&config, &dir)),
        },
        Command::RegisterUser {
            config,
            username,
            password,
            admin,
        } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pulse: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            match register_user(&config, &username, password, admin) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pulse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Print a command's outcome: the message on stdout, or the error on stderr.
fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pulse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    logging::init(filter);
}

/// Everything the server runs on, built from the configuration.
struct Services {
    db: Arc<storage::Db>,
    server_keys: server_keys::ServerKeys,
    state: Arc<api_client::AppState>,
    /// Told of membership changes (installed with federation: device lists).
    join_hook: Arc<std::sync::OnceLock<JoinHook>>,
}

/// Called after a membership change is committed: `(room, user, joined now)`.
type JoinHook = Arc<dyn Fn(&ruma::RoomId, &ruma::UserId, bool) + Send + Sync>;

fn open_services(config: &Config) -> Result<Services, String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    // A database of an older schema is brought up to date here (accounts owns its steps).
    let db =
        storage::Db::open_migrating(&config.data_dir, config.storage.fsync, accounts::MIGRATIONS)
            .map_err(|e| {
            format!(
                "cannot open the database in {} ({e}); is another pulse running on it?",
                config.data_dir.display()
            )
        })?;
    let db = Arc::new(db);
    let server_name = ruma::ServerName::parse(&config.server_name).map_err(|e| e.to_string())?;
    // The same stored key rooms signs events with.
    let server_keys = server_keys::ServerKeys::load_or_generate(&db, server_name.clone())
        .map_err(|e| format!("cannot load the server signing key: {e}"))?;
    let hashing = accounts::PasswordHashing {
        m_cost: config.accounts.argon2_memory_kib,
        t_cost: config.accounts.argon2_iterations,
        p_cost: config.accounts.argon2_parallelism,
    };
    hashing
        .validate()
        .map_err(|e| format!("[accounts] argon2 settings: {e}"))?;
    let hashing_pool = {
        let wait = std::time::Duration::from_millis(config.accounts.hashing_wait_ms);
        match config.accounts.hashing_slots {
            0 => accounts::HashingPool::per_cpu_waiting(wait),
            n => accounts::HashingPool::new(n, wait),
        }
    };
    let accounts = Arc::new(
        accounts::AccountService::new(db.clone(), server_name.clone(), hashing)
            .with_hashing_pool(hashing_pool),
    );
    let rooms = Arc::new(
        rooms::RoomService::new(db.clone(), server_name.clone())
            .map_err(|e| format!("cannot open the room engine: {e}"))?
            .with_default_version(
                rooms::parse_room_version(&config.rooms.default_room_version)
                    .map_err(|e| format!("rooms.default_room_version: {e}"))?,
            ),
    );
    let client_config = api_client::ClientApiConfig {
        server_name,
        public_baseurl: config.public_baseurl(),
        max_request_bytes: config.limits.max_request_bytes,
        registration_enabled: config.registration.enabled,
        registration_shared_secret: config
            .registration
            .shared_secret
            .clone()
            .filter(|s| !s.is_empty()),
        rate_limit: api_client::RateLimitConfig {
            enabled: config.rate_limits.enabled,
            per_second: config.rate_limits.per_second,
            burst: config.rate_limits.burst,
            trusted_proxies: config.rate_limits.trusted_proxies.clone(),
            login: api_client::LoginLimits {
                per_account_burst: config.limits.failed_logins_per_account_burst,
                per_account_per_second: config.limits.failed_logins_per_account_per_second,
                per_address_burst: config.limits.failed_logins_per_address_burst,
                per_address_per_second: config.limits.failed_logins_per_address_per_second,
            },
        },
        max_sync_timeout_ms: config.limits.max_sync_timeout_ms,
        voip: config.voip.clone(),
        media: config.media.clone(),
        server_notices: config.server_notices.to_api(),
    };
    let notifier = Arc::new(api_client::SyncNotifier::new());
    let p = &config.presence;
    let presence_config = presence_service::PresenceServiceConfig {
        engine: presence_core::PresenceConfig {
            sync_online_timeout_ms: p.sync_online_timeout_ms,
            last_active_granularity_ms: p.last_active_granularity_ms,
            idle_timeout_ms: p.idle_timeout_ms,
            busy_timeout_ms: p.busy_timeout_ms,
        },
        status_per_second: p.status_per_second,
        status_burst: p.status_burst,
        ..Default::default()
    };
    let presence =
        presence_service::PresenceService::open(db.clone(), presence_config, notifier.clone())
            .map_err(|e| format!("cannot load presence: {e}"))?;
    presence.set_server_name(client_config.server_name.clone());
    // The presence audience index follows room membership: seeded from the database,
    // then kept current by the room engine after every committed membership change.
    for (room, user) in rooms
        .all_joined_memberships()
        .map_err(|e| format!("cannot read memberships: {e}"))?
    {
        presence.membership_changed(&room, &user, true);
    }
    // Search, relations and the user directory (crates/search). The directory is built
    // from the memberships now and then follows membership changes beside presence.
    let profiles_of = accounts.clone();
    let profiles: Arc<search::directory::ProfileSource> = Arc::new(move |user: &ruma::UserId| {
        profiles_of
            .profile(user)
            .ok()
            .flatten()
            .map(|p| (p.displayname, p.avatar_url))
    });
    let indexes = Arc::new(
        search::Indexes::open(rooms.clone(), &config.data_dir.join("search"), profiles)
            .map_err(|e| format!("cannot open the search indexes: {e}"))?,
    );
    indexes.follow(std::time::Duration::from_secs(1));
    let join_hook: Arc<std::sync::OnceLock<JoinHook>> = Arc::default();
    rooms.set_membership_observer(Arc::new(MembershipFanout(vec![
        Arc::new(PresenceAudience(presence.clone(), join_hook.clone())),
        indexes.directory.clone(),
    ])));
    // MSC4325 sharing configs, compiled once here and again on every change (the stable
    // account-data type wins over the unstable one).
    let mut sharing_configs = std::collections::HashMap::new();
    for event_type in presence_service::sharing::SHARING_CONFIG_TYPES.iter().rev() {
        for (user, content) in accounts
            .global_account_data_of_type(event_type)
            .map_err(|e| format!("cannot read presence sharing configs: {e}"))?
        {
            sharing_configs.insert(user, content);
        }
    }
    presence.load_sharing_configs(sharing_configs);
    presence.load_ignored_users(
        accounts
            .global_account_data_of_type(presence_service::sharing::IGNORED_USER_LIST)
            .map_err(|e| format!("cannot read ignore lists: {e}"))?,
    );
    let ephemeral = ephemeral::EphemeralService::new(db.clone());
    // Push first: a sync woken by a receipt must see the read position it moved.
    let push = Arc::new(push::PushService::new(
        db.clone(),
        accounts.clone(),
        rooms.clone(),
    ));
    ephemeral.add_observer(push.clone());
    let media = Arc::new(
        media::MediaService::new(db.clone(), config.data_dir.join("media"))
            .map_err(|e| format!("cannot open the media store: {e}"))?,
    );
    ephemeral.add_observer(Arc::new(api_client::SyncWakeObserver {
        rooms: rooms.clone(),
        notifier: notifier.clone(),
    }));
    let state = Arc::new(api_client::AppState {
        limiter: api_client::RateLimiter::new(client_config.rate_limit.clone()),
        config: client_config,
        accounts,
        rooms,
        notifier,
        presence,
        query_token_warnings: Default::default(),
        ephemeral,
        federation_status: Default::default(),
        remote_membership: Default::default(),
        push,
        e2ee: Arc::new(e2ee::E2eeService::new(db.clone())),
        remote_keys: Default::default(),
        media,
        remote_media: Default::default(),
        url_fetcher: Default::default(),
        indexes,
        backups: Default::default(),
    });
    api_client::admin_api::server_notices::ensure_system_user(&state)?;
    let _ = state.backups.set(Arc::new(backup::ServerBackups {
        db: db.clone(),
        data_dir: config.data_dir.clone(),
        server_name: config.server_name.clone(),
    }));
    Ok(Services {
        db,
        server_keys,
        state,
        join_hook,
    })
}

/// Hands each membership change to several observers, in order.
struct MembershipFanout(Vec<Arc<dyn rooms::MembershipObserver>>);

impl rooms::MembershipObserver for MembershipFanout {
    fn membership_changed(
        &self,
        room: &ruma::RoomId,
        user: &ruma::UserId,
        membership: Option<rooms::Membership>,
    ) {
        for o in &self.0 {
            o.membership_changed(room, user, membership);
        }
    }
}

/// Feeds room membership changes into the presence audience index (and joins into the
/// join hook).
struct PresenceAudience(
    Arc<presence_service::PresenceService>,
    Arc<std::sync::OnceLock<JoinHook>>,
);

impl rooms::MembershipObserver for PresenceAudience {
    fn membership_changed(
        &self,
        room: &ruma::RoomId,
        user: &ruma::UserId,
        membership: Option<rooms::Membership>,
    ) {
        self.0
            .membership_changed(room, user, membership == Some(rooms::Membership::Join));
        self.0.membership_observed(room, user);
        if let Some(hook) = self.1.get() {
            hook(room, user, membership == Some(rooms::Membership::Join));
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let started = std::time::Instant::now();
    match limits::raise_open_files_limit(config.limits.open_files) {
        Ok((before, after)) if after < 10_240 => tracing::warn!(
            "open-files limit is {after} (was {before}): fewer than 10,000 long-polls fit; \
             raise the hard limit (ulimit -Hn / LimitNOFILE=)"
        ),
        Ok((before, after)) => info!("open-files limit {after} (was {before})"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let services = open_services(&config)?;
    let mut app = api_client::router(services.state.clone());
    let mut outbound = None;
    let mut federation_view = None;
    if config.federation.enabled {
        let client = federation_client::FederationClient::new(
            config.federation.clone(),
            services.server_keys.clone(),
        )
        .map_err(|e| format!("[federation]: {e}"))?;
        let fed = federation::start_federation(
            &services.state,
            services.db.clone(),
            client.clone(),
            &config.federation.allowed_recipients_peers,
        )?;
        let remote_keys: Arc<dyn federation_client::keys::KeySource> = Arc::new(
            federation_client::keys::RemoteKeys::persistent(client.clone(), services.db.clone()),
        );
        let s = &services.state;
        let membership = Arc::new(federation_membership::MembershipService::new(
            s.rooms.clone(),
            client.clone(),
            remote_keys.clone(),
        ));
        let _ = s.remote_membership.set(Arc::new(remote_membership::Remote(
            membership,
            s.rooms.clone(),
            client.clone(),
        )));
        let _ = s
            .remote_media
            .set(Arc::new(remote_media::Remote(client.clone())));
        let remote = Arc::new(remote_keys::Remote {
            client: client.clone(),
            sender: fed.sender(),
            rooms: s.rooms.clone(),
            e2ee: s.e2ee.clone(),
        });
        let _ = s.remote_keys.set(remote.clone());
        let accounts = s.accounts.clone();
        let _ = services.join_hook.set(Arc::new(move |room, user, joined| {
            remote.membership_changed(room, user, joined, &accounts)
        }));
        let (wake_state, wake_dl_state) = (services.state.clone(), services.state.clone());
        // EDUs are handled on the blocking pool: the resync is spawned on the runtime.
        let runtime = tokio::runtime::Handle::current();
        let resync = api_client::remote_keys::DeviceListResync::new(services.state.clone());
        let e2ee_state = Arc::new(api_federation::e2ee::E2eeState {
            e2ee: s.e2ee.clone(),
            wake_users: Arc::new(move |users, pos| {
                wake_state.notifier.wake(users.iter().copied(), pos)
            }),
            wake_device_list: Arc::new(move |user, pos| {
                api_client::wake_device_list(&wake_dl_state, user, pos)
            }),
            resync_device_list: Arc::new(move |user| {
                runtime.spawn(resync.clone().resync(user.to_owned()));
            }),
        });
        let app_state = services.state.clone();
        let federation = Arc::new(
            api_federation::FederationState::new(
                services.server_keys.clone(),
                remote_keys,
                s.rooms.clone(),
                s.presence.clone(),
                s.ephemeral.clone(),
                s.accounts.clone(),
                client,
            )
            .with_peer_observer(fed.peer_observer())
            .with_media(s.media.clone())
            .with_e2ee(e2ee_state)
            .with_membership(Arc::new(api_federation::membership::MembershipState {
                forward: Some(fed.resident_forwarder(s.presence.clone())),
                rooms: s.rooms.clone(),
                wake: Arc::new(move |room, pos, extra| {
                    api_client::wake_room_members(&app_state, room, pos, extra)
                }),
            })),
        );
        federation_view = Some(metrics::FederationView {
            sender: fed.sender(),
            inbound: federation.stats.clone(),
        });
        outbound = Some(fed);
        let fed_limits = limits::FederationLimiter::from_config(&config.limits);
        app = app.merge(api_federation::router(federation).layer(
            axum::middleware::from_fn_with_state(fed_limits, limits::federation_limit),
        ));
    }
    let view = Arc::new(metrics::ServerView {
        presence: services.state.presence.clone(),
        db: services.db.clone(),
        accounts: services.state.accounts.clone(),
        federation: federation_view,
        started,
        rates: Default::default(),
    });
    let sampler = metrics::Rates::spawn_sampler(view.clone());
    app = app.merge(status::router(view.clone()));
    // Request metrics only while someone can read them: off, the middleware is not there.
    let metrics_registry = config.metrics.enabled.then(|| {
        let http = Arc::new(metrics::http::HttpMetrics::default());
        app = std::mem::take(&mut app).layer(axum::middleware::from_fn_with_state(
            http.clone(),
            metrics::http::track,
        ));
        Arc::new(metrics::registry(http, view.clone()))
    });
    // Push gateway delivery: gateway URLs obey the federation IP lists (no SSRF).
    let gateway = Arc::new(
        push_gateway::Gateway::new(
            services.db.clone(),
            services.state.rooms.clone(),
            services.state.push.clone(),
            federation_client::ip_filter::IpFilter::new(
                config.federation.ip_range_denylist.clone(),
                config.federation.ip_range_allowlist.clone(),
            ),
        )
        .map_err(|e| format!("[push]: {e}"))?,
    );
    gateway.start();
    let _ = services
        .state
        .url_fetcher
        .set(Arc::new(url_preview::Fetcher::new(&config.media)?));
    let presence_timer = services.state.presence.spawn_timer();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let app = limits::with_body_timeout(
        app,
        Duration::from_millis(config.limits.body_read_timeout_ms),
    );
    let listener_limits =
        limits::ListenerLimits::from_config(&config.limits, &config.rate_limits.trusted_proxies);
    // Bind every socket before serving any: a peer that sees the client port answer may
    // call the federation port next, and a TLS listener still loading its certificate would
    // refuse it (Complement's first /join once hit exactly that window).
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        bound.push(match &listener.tls {
            None => BoundListener::Plain(
                tokio::net::TcpListener::bind(listener.bind)
                    .await
                    .map_err(|e| format!("cannot listen on {}: {e}", listener.bind))?,
            ),
            Some(tls) => {
                let rustls = tls::load_rustls_config(tls, &config.server_name)?;
                let std_listener = std::net::TcpListener::bind(listener.bind)
                    .map_err(|e| format!("cannot listen on {}: {e}", listener.bind))?;
                std_listener
                    .set_nonblocking(true)
                    .map_err(|e| e.to_string())?;
                BoundListener::Tls(std_listener, rustls)
            }
        });
    }
    let metrics_socket = match &metrics_registry {
        Some(_) => Some(
            tokio::net::TcpListener::bind(config.metrics.bind)
                .await
                .map_err(|e| {
                    format!("cannot listen on {} ([metrics]): {e}", config.metrics.bind)
                })?,
        ),
        None => None,
    };
    if let (Some(registry), Some(tcp)) = (metrics_registry, metrics_socket) {
        info!(
            "metrics listening on http://{}/metrics",
            config.metrics.bind
        );
        servers.push(tokio::spawn(limits::serve_plain(
            tcp,
            metrics::router(registry),
            listener_limits.clone(),
            stop_rx.clone(),
        )));
    }
    for (listener, socket) in config.listeners.iter().zip(bound) {
        match socket {
            BoundListener::Plain(tcp) => {
                info!("client API listening on http://{}", listener.bind);
                servers.push(tokio::spawn(limits::serve_plain(
                    tcp,
                    app.clone(),
                    listener_limits.clone(),
                    stop_rx.clone(),
                )));
            }
            BoundListener::Tls(std_listener, rustls) => {
                let make = app
                    .clone()
                    .into_make_service_with_connect_info::<SocketAddr>();
                let handle = axum_server::Handle::new();
                info!("client API listening on https://{}", listener.bind);
                let mut server = axum_server::from_tcp_rustls(std_listener, rustls)
                    .map_err(|e| e.to_string())?
                    .map(|inner| limits::CappedAcceptor {
                        inner,
                        conns: listener_limits.conns.clone(),
                    });
                server
                    .http_builder()
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(listener_limits.header_read_timeout);
                let mut stop = stop_rx.clone();
                let h = handle.clone();
                tokio::spawn(async move {
                    let _ = stop.wait_for(|s| *s).await;
                    h.graceful_shutdown(Some(Duration::from_millis(800)));
                });
                servers.push(tokio::spawn(async move {
                    if let Err(e) = server.handle(handle).serve(make).await {
                        error!("TLS listener failed: {e}");
                    }
                }));
            }
        }
    }
    info!(
        server_name = %config.server_name,
        data_dir = %config.data_dir.display(),
        position = services.db.current_position(),
        "Pulse started in {} ms",
        started.elapsed().as_millis()
    );
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    // Long-polls would hold a graceful shutdown open for their whole timeout; give
    // in-flight requests one second, then exit. Acknowledged writes are already durable.
    let _ = tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(servers)).await;
    presence_timer.abort();
    sampler.abort();
    if let Some(f) = &outbound {
        f.shutdown();
    }
    if let Err(e) = services.state.presence.persist_dirty() {
        error!("persisting presence at shutdown failed: {e}");
    }
    if let Err(e) = services.db.flush() {
        error!("flush at shutdown failed: {e}");
    }
    info!("stopped");
    Ok(())
}

/// A listener's socket, bound (and its TLS configuration loaded) before any is served.
enum BoundListener {
    Plain(tokio::net::TcpListener),
    Tls(std::net::TcpListener, axum_server::tls_rustls::RustlsConfig),
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn register_user(
    config: &Config,
    username: &str,
    password: Option<String>,
    admin: bool,
) -> Result<String, String> {
    let services = open_services(config)?;
    // Accept "@alice:server" as well as "alice"; the server part must be ours.
    let localpart = match username.strip_prefix('@') {
        Some(rest) => {
            let (local, server) = rest
                .split_once(':')
                .ok_or("a full user ID looks like @alice:example.org")?;
            if server != config.server_name {
                return Err(format!(
                    "{username} does not belong to this server ({})",
                    config.server_name
                ));
            }
            local
        }
        None => username,
    };
    let (password, generated) = match password {
        Some(p) => (p, false),
        None => (random_password(), true),
    };
    let registered = services
        .state
        .accounts
        .register(
            localpart,
            Some(&password),
            accounts::NewDevice::default(),
            admin,
            false,
        )
        .map_err(|e| format!("cannot register {username}: {e}"))?;
    let mut msg = format!(
        "registered {}{}",
        registered.user_id,
        if admin { " (admin)" } else { "" }
    );
    if generated {
        msg.push_str(&format!("\npassword: {password}"));
    }
    Ok(msg)
}

fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 20)
}
