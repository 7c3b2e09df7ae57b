//! The media repository over HTTP: thin handlers over [`::media::MediaService`].
//!
//! * `POST /_matrix/media/v3/upload` (`?filename=`, the body's `Content-Type`): at most
//!   `[media] max_upload_bytes` (413 `M_TOO_LARGE`); answers `{"content_uri": "mxc://…"}`.
//! * Authenticated media (spec v1.11): `GET /_matrix/client/v1/media/config`,
//!   `…/download/{serverName}/{mediaId}[/{fileName}]`, `…/thumbnail/{serverName}/{mediaId}`
//!   (`width`, `height`, `method=scale|crop`; a PNG).
//! * The legacy unauthenticated `GET /_matrix/media/v3/download|thumbnail/…` for the same
//!   local media (the spec deprecates them but still allows them), and
//!   `GET /_matrix/media/v3/config` (with a token).
//! * Media of another server is fetched over federation and cached (`media_remote`).
//! * URL previews (`…/preview_url`) are in `media_preview`.
//! * Asynchronous uploads (`/create`, `PUT /upload/{server}/{id}`) are in `media_async`;
//!   downloads and thumbnails of a reserved ID wait for its content there.
//!
//! Downloads carry the headers the spec asks for against stored XSS: a sandboxing
//! `Content-Security-Policy`, `Cross-Origin-Resource-Policy: cross-origin`, and
//! `Content-Disposition` (`inline` only for types that cannot run script).
use std::sync::Arc;

use ::media::{MediaError, ThumbnailMethod};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Path, Query};
use crate::{AppState, AppStateRef};

/// `[media]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest upload, in bytes (413 `M_TOO_LARGE` above it).
    pub max_upload_bytes: usize,
    /// Unexpired asynchronous-upload reservations one user may hold (`/create`).
    pub max_pending_uploads: usize,
    /// How long a reserved media ID waits for its content, in seconds.
    pub pending_upload_lifetime_secs: u64,
    /// `GET …/preview_url` fetches pages for users (default true; false: 404).
    pub url_preview_enabled: bool,
    /// Addresses previews never fetch from (unset: the federation default denylist of
    /// loopback, private, link-local and other non-routable ranges). Previews fetch URLs
    /// that users choose: this keeps them off internal services (SSRF).
    pub url_preview_ip_range_denylist: Option<Vec<ipnet::IpNet>>,
    /// Exceptions to the denylist (e.g. a test network).
    pub url_preview_ip_range_allowlist: Vec<ipnet::IpNet>,
    /// Largest page or image a preview reads, in bytes.
    pub url_preview_max_bytes: usize,
    /// How long a preview is served from the cache, in seconds.
    pub url_preview_cache_secs: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_upload_bytes: 50 * 1024 * 1024,
            max_pending_uploads: 10,
            pending_upload_lifetime_secs: 24 * 60 * 60,
            url_preview_enabled: true,
            url_preview_ip_range_denylist: None,
            url_preview_ip_range_allowlist: Vec::new(),
            url_preview_max_bytes: 10 * 1024 * 1024,
            url_preview_cache_secs: 60 * 60,
        }
    }
}

impl From<MediaError> for MatrixError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::NotAnImage(m) => MatrixError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", m),
            other => MatrixError::internal(other),
        }
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_matrix/media/v3/upload", post(upload))
        .route("/_matrix/media/r0/upload", post(upload))
        .route("/_matrix/media/v3/config", get(config))
        .route("/_matrix/client/v1/media/config", get(config))
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}",
            get(download_auth),
        )
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/{file_name}",
            get(download_auth_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server}/{media_id}",
            get(thumbnail_auth),
        )
        .route(
            "/_matrix/media/v3/download/{server}/{media_id}",
            get(download_legacy),
        )
        .route(
            "/_matrix/media/v3/download/{server}/{media_id}/{file_name}",
            get(download_legacy_named),
        )
        .route(
            "/_matrix/media/v3/thumbnail/{server}/{media_id}",
            get(thumbnail_legacy),
        )
        .merge(crate::media_preview::routes())
}

async fn config(state: AppStateRef, _auth: Auth) -> Json<Value> {
    Json(json!({ "m.upload.size": state.config.media.max_upload_bytes }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    filename: Option<String>,
}

/// An upload's body (bounded by `[media] max_upload_bytes`), content type and file name.
pub(crate) async fn read_upload(
    state: &AppState,
    q: UploadQuery,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(axum::body::Bytes, String, Option<String>)> {
    let limit = state.config.media.max_upload_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| MatrixError::too_large(format!("Uploads are limited to {limit} bytes")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let filename = q.filename.filter(|f| !f.is_empty());
    if filename.as_ref().is_some_and(|f| f.len() > 255) {
        return Err(MatrixError::invalid_param(
            "The file name is longer than 255 bytes",
        ));
    }
    Ok((bytes, content_type, filename))
}

async fn upload(
    state: AppStateRef,
    auth: Auth,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (bytes, content_type, filename) = read_upload(&state, q, &headers, body).await?;
    let st = state.0.clone();
    let id = blocking(move || {
        st.media.upload(
            &bytes,
            &content_type,
            filename.as_deref(),
            auth.user_id.as_str(),
        )
    })
    .await??;
    Ok(Json(json!({
        "content_uri": format!("mxc://{}/{id}", state.config.server_name)
    })))
}

/// For what only this server's own media IDs can have (pending asynchronous uploads).
pub(crate) fn check_local(state: &AppState, server: &str) -> ApiResult<()> {
    if server != state.config.server_name.as_str() {
        return Err(MatrixError::not_found("Not a media ID of this server"));
    }
    Ok(())
}

fn media_response(content_type: &str, filename: Option<&str>, bytes: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    let ct = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    if let Ok(v) = HeaderValue::from_str(&::media::disposition(content_type, filename)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
             style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    resp
}

#[derive(Debug, Default, Deserialize)]
struct DownloadQuery {
    timeout_ms: Option<u64>,
    /// Legacy endpoints: `false` keeps the server from asking others.
    allow_remote: Option<bool>,
}

async fn download(
    state: &Arc<AppState>,
    server: String,
    media_id: String,
    file_name: Option<String>,
    q: DownloadQuery,
) -> ApiResult<Response> {
    if server != state.config.server_name.as_str() {
        if q.allow_remote == Some(false) {
            return Err(MatrixError::not_found("Remote media was not asked for"));
        }
        let c = crate::media_remote::download(state, &server, &media_id).await?;
        let name = file_name.or(c.filename);
        return Ok(media_response(&c.content_type, name.as_deref(), c.bytes));
    }
    crate::media_async::wait_for_upload(state, &server, &media_id, q.timeout_ms).await?;
    let st = state.clone();
    let found = blocking(move || st.media.download(&media_id)).await??;
    let Some((record, bytes)) = found else {
        return Err(MatrixError::not_found("Unknown media"));
    };
    let name = file_name.or(record.filename);
    Ok(media_response(&record.content_type, name.as_deref(), bytes))
}

async fn download_auth(
    state: AppStateRef,
    _auth: Auth,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    download(&state.0, server, media_id, None, q).await
}

async fn download_auth_named(
    state: AppStateRef,
    _auth: Auth,
    Path((server, media_id, file_name)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    download(&state.0, server, media_id, Some(file_name), q).await
}

async fn download_legacy(
    state: AppStateRef,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    download(&state.0, server, media_id, None, q).await
}

async fn download_legacy_named(
    state: AppStateRef,
    Path((server, media_id, file_name)): Path<(String, String, String)>,
    Query(q): Query<DownloadQuery>,
) -> ApiResult<Response> {
    download(&state.0, server, media_id, Some(file_name), q).await
}

#[derive(Debug, Deserialize)]
struct ThumbnailQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
    timeout_ms: Option<u64>,
    allow_remote: Option<bool>,
}

async fn thumbnail(
    state: &Arc<AppState>,
    server: String,
    media_id: String,
    q: ThumbnailQuery,
) -> ApiResult<Response> {
    let dim = |v: Option<String>, name: &str| -> ApiResult<u32> {
        v.ok_or_else(|| MatrixError::missing_param(format!("Missing '{name}'")))?
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                MatrixError::invalid_param(format!("'{name}' must be a positive integer"))
            })
    };
    let (w, h) = (dim(q.width, "width")?, dim(q.height, "height")?);
    let method = match q.method.as_deref() {
        None | Some("scale") => ThumbnailMethod::Scale,
        Some("crop") => ThumbnailMethod::Crop,
        Some(m) => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown thumbnail method {m:?}"
            )));
        }
    };
    if server != state.config.server_name.as_str() {
        if q.allow_remote == Some(false) {
            return Err(MatrixError::not_found("Remote media was not asked for"));
        }
        let side = ::media::MAX_THUMBNAIL_SIDE;
        let size = (w.min(side), h.min(side), method);
        let c = crate::media_remote::thumbnail(state, &server, &media_id, size).await?;
        return Ok(media_response(
            &c.content_type,
            Some("thumbnail.png"),
            c.bytes,
        ));
    }
    crate::media_async::wait_for_upload(state, &server, &media_id, q.timeout_ms).await?;
    let st = state.clone();
    let png = blocking(move || st.media.thumbnail(&media_id, w, h, method)).await??;
    match png {
        Some(png) => Ok(media_response("image/png", Some("thumbnail.png"), png)),
        None => Err(MatrixError::not_found("Unknown media")),
    }
}

async fn thumbnail_auth(
    state: AppStateRef,
    _auth: Auth,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
) -> ApiResult<Response> {
    thumbnail(&state.0, server, media_id, q).await
}

async fn thumbnail_legacy(
    state: AppStateRef,
    Path((server, media_id)): Path<(String, String)>,
    Query(q): Query<ThumbnailQuery>,
) -> ApiResult<Response> {
    thumbnail(&state.0, server, media_id, q).await
}
