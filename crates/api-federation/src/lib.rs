//! Inbound federation: the axum router for `/_matrix/key/v2/*` and `/_matrix/federation/*`.
//!
//! Owns: publishing our signed key document (`GET /_matrix/key/v2/server`), the unauthenticated
//! `GET /_matrix/federation/v1/version`, and authentication of every other
//! `/_matrix/federation/*` request: ruma's X-Matrix parser, `destination` must be our name
//! (401), the origin's key valid *now* fetched through a [`KeySource`], and the signature checked
//! over method + the raw request URI (axum `OriginalUri`, never a nested router's path) + origin +
//! destination + body. Bodies are capped at [`MAX_BODY_BYTES`].
//!
//! Not yet: `/query/profile`, `/send/{txnId}` and the rest of the federation endpoints; an
//! authenticated request to a path we do not serve gets `404 M_UNRECOGNIZED` after its
//! signature has been checked.
mod auth;
pub mod membership;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use federation_client::keys::{KeySource, now_ms};
use server_keys::ServerKeys;

pub use auth::{AuthError, Origin};

/// Largest request body accepted on federation endpoints (a transaction of 50 PDUs of
/// 65,536 bytes plus EDUs fits).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What the federation router needs.
pub struct FederationState {
    pub keys: ServerKeys,
    pub remote_keys: Arc<dyn KeySource>,
    /// Room membership endpoints (make/send join and leave, invite); `None`: not served.
    pub membership: Option<Arc<membership::MembershipState>>,
}

/// The router for `/_matrix/key/*` and `/_matrix/federation/*`; merge it into the main app.
pub fn router(state: Arc<FederationState>) -> Router {
    let authenticated =
        membership::routes()
            .fallback(unrecognized)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_x_matrix,
            ));
    Router::new()
        .route("/_matrix/key/v2/server", get(key_server))
        .route("/_matrix/key/v2/server/{key_id}", get(key_server))
        .route("/_matrix/federation/v1/version", get(version))
        .nest("/_matrix/federation", authenticated)
        .with_state(state)
}

async fn key_server(State(state): State<Arc<FederationState>>) -> Response {
    match state.keys.key_document(now_ms()) {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => {
            tracing::error!("cannot sign the key document: {e}");
            error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "cannot sign the key document",
            )
        }
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "server": { "name": "Pulse", "version": env!("CARGO_PKG_VERSION") }
    }))
}

async fn unrecognized(axum::Extension(origin): axum::Extension<Origin>) -> Response {
    tracing::debug!(origin = %origin.0, "authenticated request to an endpoint we do not serve");
    error(
        http::StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "unrecognized federation endpoint",
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
mod tests;
