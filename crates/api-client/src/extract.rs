//! Request extractors: the authenticated device ([`Auth`]), a JSON body with Matrix
//! error codes ([`JsonBody`]), query strings ([`Query`]) and path segments ([`Path`]) whose
//! failures become Matrix errors instead of axum's plain-text rejections.
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::MatrixError;

/// The caller, authenticated by access token (header `Authorization: Bearer` or
/// the `access_token` query parameter).
#[derive(Debug, Clone)]
pub struct Auth {
    pub user_id: ruma::OwnedUserId,
    pub device_id: ruma::OwnedDeviceId,
    pub access_token: String,
}

/// Pull the access token out of a request, if one was given.
pub fn access_token(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(http::header::AUTHORIZATION) {
        let s = h.to_str().ok()?;
        let t = s
            .strip_prefix("Bearer ")
            .or_else(|| s.strip_prefix("bearer "))?;
        return Some(t.trim().to_owned());
    }
    let query = parts.uri.query()?;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("access_token=") {
            return Some(
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
    }
    None
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = MatrixError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, MatrixError> {
        let token = access_token(parts).ok_or_else(MatrixError::missing_token)?;
        let Some(session) = state.accounts.authenticate(&token)? else {
            return Err(MatrixError::unknown_token());
        };
        // Device "last seen" (cached: writes at most every few minutes per device).
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        if let Err(e) =
            state
                .accounts
                .touch_device(&session.user_id, &session.device_id, ip.as_deref())
        {
            tracing::warn!("recording device last-seen failed: {e}");
        }
        Ok(Auth {
            user_id: session.user_id,
            device_id: session.device_id,
            access_token: token,
        })
    }
}

/// Like [`Auth`] but for endpoints where a token is optional.
pub struct MaybeAuth(pub Option<Auth>);

impl FromRequestParts<Arc<AppState>> for MaybeAuth {
    type Rejection = MatrixError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, MatrixError> {
        if access_token(parts).is_none() {
            return Ok(MaybeAuth(None));
        }
        Ok(MaybeAuth(Some(
            Auth::from_request_parts(parts, state).await?,
        )))
    }
}

/// Read the whole body, enforcing the configured size limit (413 `M_TOO_LARGE`).
pub async fn body_bytes(req: Request, limit: usize) -> Result<bytes::Bytes, MatrixError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| MatrixError::too_large(format!("Request body is larger than {limit} bytes")))
}

/// A JSON request body: not JSON → `M_NOT_JSON`; JSON of the wrong shape → `M_BAD_JSON`.
/// An empty body is read as `{}` (many clients send none for "no options").
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = MatrixError;
    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, MatrixError> {
        let bytes = body_bytes(req, state.config.max_request_bytes).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MatrixError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| MatrixError::bad_json(e.to_string()))
}

/// Query parameters; a malformed one is `M_INVALID_PARAM`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = MatrixError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, MatrixError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| MatrixError::invalid_param(e.body_text()))
    }
}

/// Percent-decoded path segments; a malformed one is `M_INVALID_PARAM`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = MatrixError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, MatrixError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| MatrixError::invalid_param(e.body_text()))
    }
}

/// A user ID from a path or body; malformed → 400 `M_INVALID_PARAM`.
pub fn parse_user_id(raw: &str) -> Result<ruma::OwnedUserId, MatrixError> {
    ruma::OwnedUserId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid user ID {raw:?}")))
}
