//! Media of other servers, for the client download and thumbnail endpoints.
//!
//! The server binary installs a [`RemoteMedia`] over the federation client (the federation
//! media endpoints, `multipart/mixed`); without one (federation off) remote media is 404. A
//! fetched item or thumbnail is cached in [`::media::MediaService`] (`media::remote`) and
//! served from there afterwards; fetches are bounded by `[media] max_upload_bytes`, so a
//! remote server cannot make us store more than a local user could upload. A remote server
//! that does not have the item answers 404, which is passed on; one that cannot be reached
//! or answers nonsense gives 502 `M_UNKNOWN`, so a client can tell the two apart.
use std::sync::Arc;

use ::media::ThumbnailMethod;
use axum::http::StatusCode;
use futures::future::BoxFuture;
use ruma::OwnedServerName;

use crate::AppState;
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};

/// One item (or thumbnail) as another server answered it.
#[derive(Debug, Clone)]
pub struct RemoteContent {
    pub content_type: String,
    pub filename: Option<String>,
    pub bytes: Vec<u8>,
}

/// What asking a remote server gave.
#[derive(Debug)]
pub enum RemoteFetch {
    Found(RemoteContent),
    /// The server says it has no such item (404).
    NotFound,
    /// Unreachable, refused, too large or unreadable: the reason, for the log.
    Failed(String),
}

pub trait RemoteMedia: Send + Sync {
    /// `GET /_matrix/federation/v1/media/download/{mediaId}` on `server`.
    fn download(
        &self,
        server: OwnedServerName,
        media_id: String,
        max_bytes: usize,
    ) -> BoxFuture<'_, RemoteFetch>;
    /// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}` on `server`.
    fn thumbnail(
        &self,
        server: OwnedServerName,
        media_id: String,
        size: (u32, u32, ThumbnailMethod),
        max_bytes: usize,
    ) -> BoxFuture<'_, RemoteFetch>;
}

fn parse_server(server: &str) -> ApiResult<OwnedServerName> {
    OwnedServerName::try_from(server)
        .map_err(|_| MatrixError::invalid_param(format!("Bad server name {server:?}")))
}

fn media_id_ok(media_id: &str) -> ApiResult<()> {
    // Spec grammar for media IDs: `[A-Za-z0-9_-]+`; anything else is not worth a request.
    if media_id.is_empty()
        || media_id.len() > 255
        || !media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(MatrixError::not_found("Unknown media"));
    }
    Ok(())
}

fn hook(state: &AppState) -> ApiResult<Arc<dyn RemoteMedia>> {
    state.remote_media.get().cloned().ok_or_else(|| {
        MatrixError::not_found("Media of other servers is not available (federation is off)")
    })
}

fn answer(fetch: RemoteFetch, server: &str) -> ApiResult<RemoteContent> {
    match fetch {
        RemoteFetch::Found(c) => Ok(c),
        RemoteFetch::NotFound => Err(MatrixError::not_found("Unknown media")),
        RemoteFetch::Failed(why) => {
            tracing::info!(server, "remote media fetch failed: {why}");
            Err(MatrixError::new(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("Could not fetch the media from {server}"),
            ))
        }
    }
}

/// Another server's item: from the cache, or fetched and cached.
pub(crate) async fn download(
    state: &Arc<AppState>,
    server: &str,
    media_id: &str,
) -> ApiResult<RemoteContent> {
    media_id_ok(media_id)?;
    let name = parse_server(server)?;
    let (st, s, id) = (state.clone(), server.to_owned(), media_id.to_owned());
    if let Some((rec, bytes)) = blocking(move || st.media.remote_cached(&s, &id)).await?? {
        return Ok(RemoteContent {
            content_type: rec.content_type,
            filename: rec.filename,
            bytes,
        });
    }
    let max = state.config.media.max_upload_bytes;
    let fetched = hook(state)?.download(name, media_id.to_owned(), max).await;
    let content = answer(fetched, server)?;
    let (st, s, id, c) = (
        state.clone(),
        server.to_owned(),
        media_id.to_owned(),
        content.clone(),
    );
    blocking(move || {
        st.media
            .store_remote(&s, &id, &c.content_type, c.filename.as_deref(), &c.bytes)
    })
    .await??;
    Ok(content)
}

/// A thumbnail of another server's item: from the cache, or fetched and cached.
pub(crate) async fn thumbnail(
    state: &Arc<AppState>,
    server: &str,
    media_id: &str,
    size: (u32, u32, ThumbnailMethod),
) -> ApiResult<RemoteContent> {
    media_id_ok(media_id)?;
    let name = parse_server(server)?;
    let (w, h, method) = size;
    let (st, s, id) = (state.clone(), server.to_owned(), media_id.to_owned());
    let cached =
        blocking(move || st.media.remote_thumbnail_cached(&s, &id, w, h, method)).await??;
    if let Some((rec, bytes)) = cached {
        return Ok(RemoteContent {
            content_type: rec.content_type,
            filename: None,
            bytes,
        });
    }
    let max = state.config.media.max_upload_bytes;
    let fetched = hook(state)?
        .thumbnail(name, media_id.to_owned(), size, max)
        .await;
    let content = answer(fetched, server)?;
    let (st, s, id, c) = (
        state.clone(),
        server.to_owned(),
        media_id.to_owned(),
        content.clone(),
    );
    blocking(move || {
        st.media
            .store_remote_thumbnail(&s, &id, size, &c.content_type, &c.bytes)
    })
    .await??;
    Ok(content)
}
