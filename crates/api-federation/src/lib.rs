//! Inbound federation: the axum router for `/_matrix/key/v2/*` and `/_matrix/federation/*`.
//!
//! Owns: publishing our signed key document (`GET /_matrix/key/v2/server`), the unauthenticated
//! `GET /_matrix/federation/v1/version`, and authentication of every other
//! `/_matrix/federation/*` request: ruma's X-Matrix parser, `destination` must be our name
//! (401), the origin's key valid *now* fetched through a [`KeySource`], and the signature checked
//! over method + the raw request URI (axum `OriginalUri`, never a nested router's path) + origin +
//! destination + body. Bodies are capped at [`MAX_BODY_BYTES`].
//!
//! Also: the notary endpoints `GET /_matrix/key/v2/query/{server}` and
//! `POST /_matrix/key/v2/query` (`keys`); inbound transactions `PUT /v1/send/{txnId}` (`send`:
//! bounds, per-(origin, txn) idempotency, presence / typing / receipt EDUs; `inbound`: each PDU
//! through ACL and sender checks, keys valid at its time (`verify`), `rooms::receive_pdu`, and
//! the missing events it asks for); the reads `/event`, `/state`, `/state_ids`, `/backfill`,
//! `/get_missing_events`, `/event_auth` (`reads`: ACL, server membership, history visibility),
//! a withdrawn invite for a room we have no state of (`rescind`)
//! and `/query/profile`, `/query/directory`, `/publicRooms` (`queries`); a space's
//! `/hierarchy` (`hierarchy`); `m.room.server_acl`
//! (`acl`); end-to-end encryption: `/user/keys/query`, `/user/keys/claim`,
//! `/user/devices/{userId}` and the `m.device_list_update`, `m.signing_key_update`,
//! `m.direct_to_device` EDUs (`e2ee`). Joins, leaves and invites live in `membership`
//! (another owner). A path we do not serve gets `404 M_UNRECOGNIZED` and a method we do not
//! serve on a path we do `405 M_UNRECOGNIZED`, both without authentication (as the spec and
//! Complement's `TestUnknownEndpoints` ask). docs/federation.md has the life of an inbound
//! PDU.
//!
//! Handlers go through the services (rooms, accounts, presence-service, ephemeral).
mod acl;
mod auth;
pub mod e2ee;
mod hierarchy;
mod inbound;
mod keys;
mod media;
pub mod membership;
mod queries;
mod reads;
mod rescind;
mod send;
pub mod stats;
mod verify;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use federation_client::FederationClient;
use federation_client::keys::KeySource;
use server_keys::ServerKeys;

pub use acl::server_allowed_by_acl;
pub use auth::{AuthError, Origin};
pub use send::{MAX_EDUS_PER_TXN, MAX_PDUS_PER_TXN};

/// Largest request body accepted on federation endpoints (a transaction of 50 PDUs of
/// 65,536 bytes plus EDUs fits).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Told when a remote server made an authenticated request to us (the federation sender
/// resets that destination's backoff: it is evidently up).
pub trait PeerObserver: Send + Sync {
    fn server_contacted(&self, server: &ruma::ServerName);
}

/// What the federation router needs.
pub struct FederationState {
    pub keys: ServerKeys,
    pub remote_keys: Arc<dyn KeySource>,
    pub rooms: Arc<rooms::RoomService>,
    pub presence: Arc<presence_service::PresenceService>,
    pub ephemeral: Arc<ephemeral::EphemeralService>,
    pub accounts: Arc<accounts::AccountService>,
    /// Outbound requests made while answering (`get_missing_events` to the origin).
    pub client: FederationClient,
    /// Called after every successfully authenticated request (see [`PeerObserver`]).
    pub peer_observer: Option<Arc<dyn PeerObserver>>,
    /// Serialises transactions per origin, so a retried transaction waits for the first
    /// attempt and then gets its stored answer.
    txn_locks: send::TxnLocks,
    /// Room membership endpoints (make/send join and leave, invite); `None`: not served.
    pub membership: Option<Arc<membership::MembershipState>>,
    /// Key queries and claims, device lists, to-device EDUs; `None`: not served.
    pub e2ee: Option<Arc<e2ee::E2eeState>>,
    /// This server's uploads, for the federation media endpoints; `None`: 404.
    pub media: Option<Arc<::media::MediaService>>,
    /// Transactions, PDUs and EDUs received (read by the binary's `/metrics`).
    pub stats: Arc<stats::InboundStats>,
}

impl FederationState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: ServerKeys,
        remote_keys: Arc<dyn KeySource>,
        rooms: Arc<rooms::RoomService>,
        presence: Arc<presence_service::PresenceService>,
        ephemeral: Arc<ephemeral::EphemeralService>,
        accounts: Arc<accounts::AccountService>,
        client: FederationClient,
    ) -> FederationState {
        FederationState {
            keys,
            remote_keys,
            rooms,
            presence,
            ephemeral,
            accounts,
            client,
            peer_observer: None,
            txn_locks: Default::default(),
            membership: None,
            e2ee: None,
            media: None,
            stats: Default::default(),
        }
    }

    /// Serves the room membership endpoints with `membership`.
    pub fn with_e2ee(mut self, e2ee: Arc<e2ee::E2eeState>) -> FederationState {
        self.e2ee = Some(e2ee);
        self
    }

    pub fn with_membership(
        mut self,
        membership: Arc<membership::MembershipState>,
    ) -> FederationState {
        self.membership = Some(membership);
        self
    }

    /// Serves `/v1/media/download|thumbnail` from `media`.
    pub fn with_media(mut self, media: Arc<::media::MediaService>) -> FederationState {
        self.media = Some(media);
        self
    }

    /// Sets the hook told about every authenticated peer (the federation sender).
    pub fn with_peer_observer(mut self, observer: Arc<dyn PeerObserver>) -> FederationState {
        self.peer_observer = Some(observer);
        self
    }
}

/// The router for `/_matrix/key/*` and `/_matrix/federation/*`; merge it into the main app.
pub fn router(state: Arc<FederationState>) -> Router {
    let authenticated = membership::routes()
        .route("/v1/send/{txn_id}", put(send::send_transaction))
        .route("/v1/event/{event_id}", get(reads::get_event))
        .route("/v1/state/{room_id}", get(reads::get_state))
        .route("/v1/state_ids/{room_id}", get(reads::get_state_ids))
        .route(
            "/v1/timestamp_to_event/{room_id}",
            get(reads::timestamp_to_event),
        )
        .route("/v1/backfill/{room_id}", get(reads::backfill))
        .route("/v1/hierarchy/{room_id}", get(hierarchy::hierarchy))
        .route(
            "/v1/get_missing_events/{room_id}",
            post(reads::get_missing_events),
        )
        .route(
            "/v1/event_auth/{room_id}/{event_id}",
            get(reads::get_event_auth),
        )
        .route("/v1/user/keys/query", post(e2ee::user_keys_query))
        .route("/v1/user/keys/claim", post(e2ee::user_keys_claim))
        .route("/v1/user/devices/{user_id}", get(e2ee::user_devices))
        .route("/v1/media/download/{media_id}", get(media::download))
        .route("/v1/media/thumbnail/{media_id}", get(media::thumbnail))
        .route("/v1/query/profile", get(queries::profile))
        .route("/v1/query/directory", get(queries::directory))
        .route(
            "/v1/publicRooms",
            get(queries::public_rooms_get).post(queries::public_rooms_post),
        )
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        // `route_layer`: only requests that match a route are authenticated; an unknown path
        // or method is answered 404 / 405 whoever asks.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_x_matrix,
        ));
    Router::new()
        .route("/_matrix/key/v2/server", get(keys::key_server))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::key_server))
        .route("/_matrix/key/v2/query", post(keys::query_batch))
        .route("/_matrix/key/v2/query/{server}", get(keys::query_one))
        .route("/_matrix/federation/v1/version", get(version))
        .method_not_allowed_fallback(method_not_allowed)
        .nest("/_matrix/federation", authenticated)
        .with_state(state)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "server": { "name": "Pulse", "version": env!("CARGO_PKG_VERSION") }
    }))
}

async fn unrecognized() -> Response {
    error(
        http::StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "unrecognized federation endpoint",
    )
}

async fn method_not_allowed() -> Response {
    error(
        http::StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "method not allowed on this federation endpoint",
    )
}

pub(crate) fn error(status: http::StatusCode, errcode: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "errcode": errcode, "error": message })),
    )
        .into_response()
}

#[cfg(test)]
mod reads_tests;
#[cfg(test)]
mod send_tests;
#[cfg(test)]
mod tests;
