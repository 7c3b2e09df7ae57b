//! Asynchronous uploads over HTTP (spec v1.7), over [`::media::pending`]:
//!
//! * `POST /_matrix/media/v1/create` reserves a media ID for the caller:
//!   `{"content_uri", "unused_expires_at"}`; at most `[media] max_pending_uploads` unexpired
//!   reservations per user (429 `M_LIMIT_EXCEEDED`, `retry_after_ms` = the earliest expiry).
//! * `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}` uploads the content: 403 for a
//!   reservation of somebody else, 404 for an unknown or expired one, 409
//!   `M_CANNOT_OVERWRITE_MEDIA` once content is there, 413 above the size limit.
//! * Downloads and thumbnails of a reserved ID wait for the content ([`wait_for_upload`]):
//!   up to `timeout_ms` (default 20 s, as Synapse; capped at 120 s), then 504
//!   `M_NOT_YET_UPLOADED`.
use std::sync::Arc;
use std::time::Duration;

use ::media::{Completed, MediaState, PendingLimits, Reserved};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Path, Query};
use crate::media::{UploadQuery, check_local, read_upload};
use crate::{AppState, AppStateRef};

/// Default and largest wait of a download for content still being uploaded.
pub const DEFAULT_WAIT_MS: u64 = 20_000;
pub const MAX_WAIT_MS: u64 = 120_000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_matrix/media/v1/create", post(create))
        .route(
            "/_matrix/media/v3/upload/{server}/{media_id}",
            put(upload_to),
        )
}

async fn create(state: AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    let cfg = &state.config.media;
    let limits = PendingLimits {
        max_per_user: cfg.max_pending_uploads,
        lifetime_ms: cfg.pending_upload_lifetime_secs.saturating_mul(1000),
    };
    let st = state.0.clone();
    let reserved = blocking(move || st.media.reserve(auth.user_id.as_str(), limits)).await??;
    match reserved {
        Reserved::Created {
            media_id,
            expires_ms,
        } => Ok(Json(json!({
            "content_uri": format!("mxc://{}/{media_id}", state.config.server_name),
            "unused_expires_at": expires_ms,
        }))),
        Reserved::TooMany { retry_after_ms } => Err(MatrixError::limit_exceeded(retry_after_ms)),
    }
}

async fn upload_to(
    state: AppStateRef,
    auth: Auth,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    if server != state.config.server_name.as_str() {
        return Err(MatrixError::forbidden(
            "Media of other servers cannot be uploaded here",
        ));
    }
    let (bytes, content_type, filename) = read_upload(&state, q, &headers, body).await?;
    let st = state.0.clone();
    let id = media_id.clone();
    let done = blocking(move || {
        st.media.complete(
            &id,
            auth.user_id.as_str(),
            &bytes,
            &content_type,
            filename.as_deref(),
        )
    })
    .await??;
    match done {
        Completed::Stored => Ok(Json(json!({}))),
        Completed::Unknown => Err(MatrixError::not_found(
            "No reservation for this media ID (never made, or expired)",
        )),
        Completed::NotYours => Err(MatrixError::forbidden(
            "This media ID was reserved by another user",
        )),
        Completed::AlreadyUploaded => Err(MatrixError::new(
            StatusCode::CONFLICT,
            "M_CANNOT_OVERWRITE_MEDIA",
            "Content has already been uploaded to this media ID",
        )),
    }
}

/// Before serving `media_id`: if it is reserved but not uploaded yet, wait up to
/// `timeout_ms` for the upload; 504 `M_NOT_YET_UPLOADED` if it does not come. Unknown IDs
/// and uploaded ones return at once (the caller answers them).
pub async fn wait_for_upload(
    state: &Arc<AppState>,
    server: &str,
    media_id: &str,
    timeout_ms: Option<u64>,
) -> ApiResult<()> {
    check_local(state, server)?;
    let wait = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = state.media.uploads_completed().notified();
        tokio::pin!(notified);
        // Registered before the check: a completion between the check and the await wakes us.
        notified.as_mut().enable();
        let st = state.clone();
        let id = media_id.to_owned();
        match blocking(move || st.media.state(&id)).await?? {
            MediaState::Uploaded | MediaState::Unknown => return Ok(()),
            MediaState::Pending => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(MatrixError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "The content of this media ID has not been uploaded yet",
            ));
        }
    }
}
