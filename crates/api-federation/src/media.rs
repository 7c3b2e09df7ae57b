//! Federation media (spec v1.11): `GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `…/thumbnail/{mediaId}?width&height&method`, for this server's own uploads only (a server
//! never relays media it cached from a third one). The answer is `multipart/mixed`: a JSON
//! metadata part (`{}`) and the content with its type and disposition
//! ([`media::remote::multipart_answer`]); content is always inline, never a `Location`
//! redirect. Served only when the server runs a media store ([`FederationState::with_media`]).
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use media::ThumbnailMethod;
use serde::Deserialize;

use crate::{FederationState, error};

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Unknown media")
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("federation media read failed: {e}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        "internal error",
    )
}

fn answer(content_type: &str, filename: Option<&str>, bytes: &[u8]) -> Response {
    let disposition = media::disposition(content_type, filename);
    let (ct, body) = media::remote::multipart_answer(content_type, &disposition, bytes);
    let mut resp = (StatusCode::OK, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

pub(crate) async fn download(
    State(state): State<Arc<FederationState>>,
    Path(media_id): Path<String>,
) -> Response {
    let Some(store) = state.media.clone() else {
        return not_found();
    };
    match tokio::task::spawn_blocking(move || store.download(&media_id)).await {
        Ok(Ok(Some((record, bytes)))) => {
            answer(&record.content_type, record.filename.as_deref(), &bytes)
        }
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ThumbnailQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
}

pub(crate) async fn thumbnail(
    State(state): State<Arc<FederationState>>,
    Path(media_id): Path<String>,
    Query(q): Query<ThumbnailQuery>,
) -> Response {
    let Some(store) = state.media.clone() else {
        return not_found();
    };
    let dim = |v: Option<String>| v.and_then(|v| v.parse::<u32>().ok()).filter(|n| *n > 0);
    let (Some(w), Some(h)) = (dim(q.width), dim(q.height)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "width and height must be positive integers",
        );
    };
    let method = match q.method.as_deref() {
        None | Some("scale") => ThumbnailMethod::Scale,
        Some("crop") => ThumbnailMethod::Crop,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                "method must be scale or crop",
            );
        }
    };
    match tokio::task::spawn_blocking(move || store.thumbnail(&media_id, w, h, method)).await {
        Ok(Ok(Some(png))) => answer("image/png", Some("thumbnail.png"), &png),
        Ok(Ok(None)) => not_found(),
        Ok(Err(media::MediaError::NotAnImage(m))) => {
            error(StatusCode::BAD_REQUEST, "M_UNKNOWN", &m)
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
