//! `GET /_matrix/client/v1/media/preview_url` and the legacy `/_matrix/media/v3/preview_url`.
//!
//! The page at `url` is fetched by the binary's [`UrlFetcher`] (bounded in size and time,
//! redirects bounded, every address checked against `[media]
//! url_preview_ip_range_denylist/allowlist`), its OpenGraph data read
//! ([`::media::preview::parse_html`]), and an `og:image` fetched the same way and stored in
//! the media repository, so the answer names it as an `mxc://` URI with
//! `matrix:image:size` and its width and height. An image URL is previewed as that image.
//! Other content types give an empty preview (`{}`): the page exists but says nothing.
//!
//! Previews are cached per URL for `[media] url_preview_cache_secs`; `ts` asks for the
//! page as of that time (a cached preview that was still fresh then is served; none older
//! is kept, so an older `ts` gets the newest, as the spec allows).
//!
//! Errors: 400 `M_MISSING_PARAM` / `M_INVALID_PARAM` for a missing or non-http(s) `url`,
//! 403 `M_FORBIDDEN` for an address the IP filter denies, 502 `M_UNKNOWN` when the page
//! cannot be fetched, 404 `M_UNRECOGNIZED` when previews are off.
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, Query};
use crate::{AppState, AppStateRef};

/// A fetched page or image.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The URL after redirects (relative links resolve against it).
    pub url: String,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// Why a fetch failed.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// The address is in a denied range (or not http(s)).
    Denied(String),
    /// Unreachable, too slow, too large, an error status.
    Failed(String),
}

/// Fetches URLs for previews (the binary installs one over a guarded HTTP client).
pub trait UrlFetcher: Send + Sync {
    fn fetch(&self, url: String, max_bytes: usize) -> BoxFuture<'_, Result<Fetched, FetchError>>;
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_matrix/client/v1/media/preview_url", get(preview))
        .route("/_matrix/media/v3/preview_url", get(preview))
        .route("/_matrix/media/r0/preview_url", get(preview))
}

#[derive(Debug, Deserialize)]
struct PreviewQuery {
    url: Option<String>,
    ts: Option<u64>,
}

fn is_image(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("image/"))
}
fn is_html(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.contains("text/html") || t.contains("application/xhtml")
    })
}

async fn preview(
    state: AppStateRef,
    auth: Auth,
    Query(q): Query<PreviewQuery>,
) -> ApiResult<Json<Map<String, Value>>> {
    let config = &state.config.media;
    let fetcher = match state.url_fetcher.get() {
        Some(f) if config.url_preview_enabled => f.clone(),
        _ => {
            return Err(MatrixError::new(
                StatusCode::NOT_FOUND,
                "M_UNRECOGNIZED",
                "URL previews are disabled on this server",
            ));
        }
    };
    let url = q
        .url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| MatrixError::missing_param("Missing 'url'"))?;
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || url.len() > 2048 {
        return Err(MatrixError::invalid_param(
            "'url' must be an http(s) URL of at most 2048 bytes",
        ));
    }
    let ttl_ms = config.url_preview_cache_secs.saturating_mul(1000);
    let now = storage::now_ms();
    let at = q.ts.unwrap_or(now).min(now);
    let st = state.0.clone();
    let key = url.clone();
    if let Some(cached) = blocking(move || st.media.cached_preview(&key)).await??
        && cached.serves(at, ttl_ms)
    {
        return Ok(Json(cached.og));
    }
    let max = config.url_preview_max_bytes.min(config.max_upload_bytes);
    let page = fetcher.fetch(url.clone(), max).await.map_err(|e| match e {
        FetchError::Denied(why) => MatrixError::forbidden(format!("URL blocked: {why}")),
        FetchError::Failed(why) => MatrixError::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("Cannot fetch the URL: {why}"),
        ),
    })?;
    let mut og = Map::new();
    let image = if is_image(page.content_type.as_deref()) {
        Some(page)
    } else if is_html(page.content_type.as_deref()) {
        let html = String::from_utf8_lossy(&page.bytes).into_owned();
        let page_url = page.url.clone();
        og = blocking(move || ::media::preview::parse_html(&html, &page_url)).await?;
        match og.get("og:image").and_then(Value::as_str) {
            Some(src) => match fetcher.fetch(src.to_owned(), max).await {
                Ok(img) if is_image(img.content_type.as_deref()) => Some(img),
                // A preview without its picture is still a preview.
                _ => {
                    og.remove("og:image");
                    None
                }
            },
            None => None,
        }
    } else {
        None
    };
    let st = state.0.clone();
    let user = auth.user_id.to_string();
    let server = state.config.server_name.to_string();
    let preview = blocking(move || -> ApiResult<::media::preview::CachedPreview> {
        if let Some(img) = image {
            let ct = img
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into());
            let id = st.media.upload(&img.bytes, &ct, None, &user)?;
            og.insert("og:image".into(), json!(format!("mxc://{server}/{id}")));
            og.insert("og:image:type".into(), json!(ct));
            og.insert("matrix:image:size".into(), json!(img.bytes.len()));
            if let Some((w, h)) = ::media::preview::image_size(&img.bytes) {
                og.insert("og:image:width".into(), json!(w));
                og.insert("og:image:height".into(), json!(h));
            }
        }
        let preview = ::media::preview::CachedPreview {
            fetched_ms: storage::now_ms(),
            og,
        };
        st.media.store_preview(&url, &preview)?;
        Ok(preview)
    })
    .await??;
    Ok(Json(preview.og))
}
