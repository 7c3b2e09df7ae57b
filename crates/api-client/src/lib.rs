//! # api-client — the Matrix client-server HTTP API of Pulse
//!
//! Axum handlers for `/_matrix/client/*` (plus `/.well-known/matrix/*` and the
//! Synapse-compatible shared-secret registration endpoint). Handlers are thin: they
//! validate input at the edge, call the services in [`AppState`] (accounts, rooms,
//! presence-service, ephemeral) and turn results into JSON or a [`MatrixError`]; no handler
//! names a storage column family.
//!
//! Cross-cutting behaviour lives in [`router`]: CORS for browsers, trailing-slash
//! tolerance, body size limits (413 `M_TOO_LARGE`), rate limits (429
//! `M_LIMIT_EXCEEDED`), and `M_UNRECOGNIZED` for unknown paths (404) and methods (405).
//!
//! Long-polling `/sync` waits on the [`notifier::SyncNotifier`]: writers wake exactly
//! the users whose sync result changed.
//!
//! Modules by area: `meta` (versions, well-known, capabilities), `account`
//! (register, login, logout, whoami, devices), `admin` (shared-secret registration),
//! `profile`, `account_data`, `filter`, `push` (push rules, notifications, pushers), `voip`
//! (TURN credentials), `thirdparty` (protocols and 3PIDs: none), `media` (upload, download,
//! thumbnails), `presence` (status and MSC4043 override), `room` (room endpoints),
//! `ephemeral` (typing, receipts, read markers), `sync`; end-to-end encryption: `keys`
//! (upload, query, claim, changes, cross-signing), `to_device`, `room_keys` (key backup),
//! `device_lists` and `sync_e2ee` (their `/sync` sections), `remote_keys` (the federation hook).
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

pub mod error;
pub mod extract;
pub mod federation_admin;
pub mod notifier;
pub mod ratelimit;
pub mod remote_keys;
pub mod remote_membership;

mod account;
mod account_data;
mod admin;
pub mod admin_api;
mod blocking;
mod device_lists;
mod ephemeral;
mod filter;
mod ignored;
mod keys;
mod media;
mod media_async;
pub mod media_preview;
pub mod media_remote;
mod meta;
mod presence;
mod profile;
mod push;
mod room;
mod room_keys;
mod sync;
mod sync_e2ee;
mod thirdparty;
mod to_device;
mod user_directory;
mod voip;

pub use ephemeral::SyncWakeObserver;
pub use error::{ApiResult, MatrixError};
pub use keys::{device_names, wake_device_list};
pub use media::MediaConfig;
pub use notifier::SyncNotifier;
pub use ratelimit::{Buckets, LoginLimits, RateKey, RateLimitConfig, RateLimiter};
pub use voip::VoipConfig;

/// Settings the client API needs (built by the `pulse` binary from its config file).
#[derive(Debug, Clone)]
pub struct ClientApiConfig {
    pub server_name: ruma::OwnedServerName,
    /// Base URL clients should use, advertised in `/.well-known/matrix/client`.
    pub public_baseurl: String,
    /// Requests with larger bodies get 413 `M_TOO_LARGE`.
    pub max_request_bytes: usize,
    /// Open registration through `POST /register` (`m.login.dummy`).
    pub registration_enabled: bool,
    /// Enables `/_synapse/admin/v1/register` when set.
    pub registration_shared_secret: Option<String>,
    pub rate_limit: RateLimitConfig,
    /// Upper bound for a `/sync` `timeout`, in milliseconds.
    pub max_sync_timeout_ms: u64,
    /// `[voip]`: TURN servers for `/voip/turnServer`.
    pub voip: VoipConfig,
    /// `[media]`: the upload size limit.
    pub media: MediaConfig,
    /// `[server_notices]`: on when set.
    pub server_notices: Option<admin_api::ServerNoticesConfig>,
}

/// Everything handlers need, passed explicitly as axum state.
pub struct AppState {
    pub config: ClientApiConfig,
    pub accounts: Arc<accounts::AccountService>,
    pub rooms: Arc<rooms::RoomService>,
    pub notifier: Arc<SyncNotifier>,
    pub presence: Arc<presence_service::PresenceService>,
    pub limiter: RateLimiter,
    /// Clients already warned about the deprecated `access_token` query parameter.
    pub query_token_warnings: extract::QueryTokenWarnings,
    /// Typing and receipts (shared with inbound federation).
    pub ephemeral: Arc<::ephemeral::EphemeralService>,
    /// The outbound federation queues' status, once a federation sender runs.
    pub federation_status: std::sync::OnceLock<federation_admin::FederationStatus>,
    /// Joins, leaves and invites that need another server, once federation runs.
    pub remote_membership:
        std::sync::OnceLock<std::sync::Arc<dyn remote_membership::RemoteMembership>>,
    /// Push rules, notification counts and pushers.
    pub push: Arc<::push::PushService>,
    /// End-to-end encryption: device keys, one-time keys, to-device, key backup.
    pub e2ee: Arc<e2ee::E2eeService>,
    /// Key queries, claims, to-device messages and device-list updates for other servers,
    /// once federation runs.
    pub remote_keys: std::sync::OnceLock<std::sync::Arc<dyn remote_keys::RemoteKeys>>,
    /// Uploaded files and their thumbnails.
    pub media: Arc<::media::MediaService>,
    /// Fetches other servers' media, once federation runs.
    pub remote_media: std::sync::OnceLock<std::sync::Arc<dyn media_remote::RemoteMedia>>,
    /// Fetches pages and images for URL previews (installed by the binary, behind the
    /// `[media]` IP filter).
    pub url_fetcher: std::sync::OnceLock<std::sync::Arc<dyn media_preview::UrlFetcher>>,
    /// Full-text search, relations and threads, the user directory.
    pub indexes: Arc<::search::Indexes>,
    /// Online backups for the admin API, once the binary installs them.
    pub backups: std::sync::OnceLock<Arc<dyn admin_api::Backups>>,
}

pub type AppStateRef = State<Arc<AppState>>;

/// Wake the `/sync`s of a room's joined members (plus `extra`) at stream position `pos`,
/// for events stored outside a client request (federation). Reads storage: call it from
/// the blocking pool.
pub fn wake_room_members(state: &AppState, room: &ruma::RoomId, pos: u64, extra: &[&ruma::UserId]) {
    room::wake_room(&state.rooms, &state.notifier, room, pos, extra);
}

/// The complete client API. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so rate limits can key on IP.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .merge(meta::routes())
        .merge(account::routes())
        .merge(admin::routes())
        .merge(admin_api::routes())
        .merge(federation_admin::routes())
        .merge(profile::routes())
        .merge(account_data::routes())
        .merge(filter::routes())
        .merge(presence::routes())
        .merge(room::routes())
        .merge(ephemeral::routes())
        .merge(sync::routes())
        .merge(push::routes())
        .merge(voip::routes())
        .merge(thirdparty::routes())
        .merge(keys::routes())
        .merge(to_device::routes())
        .merge(room_keys::routes())
        .merge(media::routes())
        .merge(user_directory::routes())
        .merge(media_async::routes())
        .fallback(|| async { MatrixError::unrecognized(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            MatrixError::unrecognized(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit,
        ))
        .layer(axum::middleware::from_fn(expose_matched_path))
        .with_state(state);
    // Strip a trailing slash *before* routing, so `/foo/` and `/foo` are the same
    // endpoint (and `/state/{type}/` means the empty state key).
    let api = api.map_request(|mut req: Request| {
        let path = req.uri().path();
        if path.len() > 1 && path.ends_with('/') {
            let trimmed = path.trim_end_matches('/');
            let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
            let pq = match req.uri().query() {
                Some(q) => format!("{trimmed}?{q}"),
                None => trimmed.to_owned(),
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        req
    });
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn(cors))
}

/// Copies the route template a request matched into its response, for layers outside the
/// fallback this router is served behind (the binary's request metrics label by template,
/// never by raw path).
async fn expose_matched_path(req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut().insert(m);
    }
    resp
}

/// CORS for browser clients, as the spec asks: any origin, the Matrix methods and headers.
async fn cors(req: Request, next: Next) -> Response {
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Date"),
    );
    resp
}

/// Resolves the access token once per request (from the accounts' token cache, else on the
/// blocking pool: a storage read) and charges the request to its user, or to the client
/// address when there is no valid token. The lookup is left in the request for the
/// [`extract::Auth`] extractor.
async fn rate_limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let lookup = match extract::access_token_with_source(&parts) {
        Some((token, source)) => {
            let session = match state.accounts.authenticate_cached(&token) {
                Some(s) => Some(s),
                None => {
                    let accounts = state.accounts.clone();
                    let t = token.clone();
                    match blocking::blocking(move || accounts.authenticate(&t)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return MatrixError::from(e).into_response(),
                        Err(e) => return e.into_response(),
                    }
                }
            };
            Some(extract::TokenLookup {
                token,
                source,
                session,
            })
        }
        None => None,
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let addr = ratelimit::client_addr(
        peer,
        &parts.headers,
        &state.limiter.config().trusted_proxies,
    );
    if let Some(l) = &lookup
        && l.source == extract::TokenSource::Query
        && state
            .query_token_warnings
            .first_use(l.session.as_ref(), addr)
    {
        tracing::warn!(
            user = ?l.session.as_ref().map(|s| s.user_id.as_str()),
            client = ?addr,
            "client sent the deprecated access_token query parameter (use the Authorization header)"
        );
    }
    let key = match lookup.as_ref().and_then(|l| l.session.as_ref()) {
        Some(s) => Some(RateKey::User(s.user_id.clone())),
        None => addr.map(RateKey::Addr),
    };
    if let Some(l) = lookup {
        parts.extensions.insert(l);
    }
    if let Some(addr) = addr {
        parts.extensions.insert(ClientAddr(addr));
    }
    if let Some(key) = key
        && let Err(retry) = state.limiter.check(&key)
    {
        return MatrixError::limit_exceeded(retry).into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The client's address as the rate limiter saw it (trusted proxies resolved).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

/// Register `method_router` at `/_matrix/client/r0{path}` and `/_matrix/client/v3{path}`.
pub(crate) fn client_route(
    router: Router<Arc<AppState>>,
    path: &str,
    method_router: axum::routing::MethodRouter<Arc<AppState>>,
) -> Router<Arc<AppState>> {
    router
        .route(&format!("/_matrix/client/r0{path}"), method_router.clone())
        .route(&format!("/_matrix/client/v3{path}"), method_router)
}

pub use storage::now_ms;
