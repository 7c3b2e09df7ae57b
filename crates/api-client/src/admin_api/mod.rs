//! The admin API: the subset of Synapse's that admin tools use (`/_synapse/admin/…`: server
//! version, users, devices and sessions, rooms and their members), Pulse's own presence view
//! of one user and online backups (`/_pulse/admin/v1/…`).
//!
//! Every call needs a server admin's access token ([`AdminAuth`]: anyone else gets 403
//! `M_FORBIDDEN`) and is logged with the admin's ID, the method and the path — never the
//! body, which may hold a password. Shared-secret registration (`admin.rs`) is apart: it
//! authenticates with the secret, not a token.
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::Auth;
use crate::{AppState, AppStateRef};

mod backup;
mod presence;
mod rooms;
pub mod server_notices;
mod users;

pub use backup::Backups;
pub use server_notices::ServerNoticesConfig;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_synapse/admin/v1/server_version", get(server_version))
        .route("/_synapse/admin/v2/users", get(users::list))
        .route(
            "/_synapse/admin/v2/users/{user_id}",
            get(users::get_user).put(users::put_user),
        )
        .route(
            "/_synapse/admin/v2/users/{user_id}/devices",
            get(users::devices),
        )
        .route("/_synapse/admin/v1/whois/{user_id}", get(users::whois))
        .route("/_synapse/admin/v1/rooms", get(rooms::list))
        .route("/_synapse/admin/v1/rooms/{room_id}", get(rooms::get_room))
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/members",
            get(rooms::members),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/state",
            get(rooms::state),
        )
        .route("/_pulse/admin/v1/presence/{user_id}", get(presence::view))
        .route("/_pulse/admin/v1/backup", post(backup::backup))
        .route(
            "/_synapse/admin/v1/send_server_notice",
            post(server_notices::send),
        )
        .route(
            "/_synapse/admin/v1/send_server_notice/{txn_id}",
            axum::routing::put(server_notices::send_txn),
        )
}

/// A request by a server admin (checked against the account, on every call).
pub struct AdminAuth(pub Auth);

impl FromRequestParts<Arc<AppState>> for AdminAuth {
    type Rejection = MatrixError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, MatrixError> {
        let auth = Auth::from_request_parts(parts, state).await?;
        let (accounts, user) = (state.accounts.clone(), auth.user_id.clone());
        let admin = blocking(move || accounts.is_admin(&user))
            .await?
            .map_err(MatrixError::internal)?;
        if !admin {
            tracing::info!(user = %auth.user_id, method = %parts.method, path = %parts.uri.path(), "admin API call refused: not an admin");
            return Err(MatrixError::forbidden("You are not a server admin"));
        }
        tracing::info!(admin = %auth.user_id, method = %parts.method, path = %parts.uri.path(), "admin API call");
        Ok(AdminAuth(auth))
    }
}

async fn server_version(_admin: AdminAuth, _state: AppStateRef) -> Json<Value> {
    Json(json!({ "server_version": concat!("pulse ", env!("CARGO_PKG_VERSION")) }))
}

/// `from` / `limit` paging parameters: `from` is an offset (Synapse sends it as a string),
/// `limit` at most [`MAX_PAGE`] (default 100).
pub(crate) fn page(from: Option<&str>, limit: Option<u64>) -> ApiResult<(usize, usize)> {
    let from = match from {
        None | Some("") => 0,
        Some(f) => f
            .parse::<usize>()
            .map_err(|_| MatrixError::invalid_param("from must be a non-negative integer"))?,
    };
    let limit = limit.unwrap_or(100);
    if limit == 0 {
        return Err(MatrixError::invalid_param("limit must be positive"));
    }
    Ok((from, (limit as usize).min(MAX_PAGE)))
}

/// The largest page any listing returns.
pub(crate) const MAX_PAGE: usize = 1_000;
