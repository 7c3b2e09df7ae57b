//! `GET /_pulse/admin/v1/federation/destinations` (server admins only): every outbound
//! federation destination's queue depth, backoff state and last success, from the federation
//! sender (`federation_sender::FederationSender::status`). 404 when no sender runs.
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::Auth;
use crate::{AppState, AppStateRef};

/// Reports the outbound federation queues as JSON (installed by the server binary).
pub type FederationStatus = Arc<dyn Fn() -> Value + Send + Sync>;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route(
        "/_pulse/admin/v1/federation/destinations",
        get(destinations),
    )
}

async fn destinations(auth: Auth, state: AppStateRef) -> ApiResult<Json<Value>> {
    let accounts = state.accounts.clone();
    let user = auth.user_id.clone();
    let admin = blocking(move || accounts.is_admin(&user))
        .await?
        .map_err(MatrixError::internal)?;
    if !admin {
        return Err(MatrixError::forbidden("Server admins only"));
    }
    match state.federation_status.get() {
        Some(status) => Ok(Json(status())),
        None => Err(MatrixError::unrecognized(StatusCode::NOT_FOUND)),
    }
}
