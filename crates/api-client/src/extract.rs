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

/// Where a request's access token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    /// The `access_token` query parameter (deprecated by the spec, still accepted).
    Query,
}

/// The access token of a request and its session, resolved once by the rate-limit
/// middleware (so the extractor does not read storage again on a tokio worker).
#[derive(Debug, Clone)]
pub struct TokenLookup {
    pub token: String,
    pub source: TokenSource,
    /// `None`: the token is not valid.
    pub session: Option<accounts::Session>,
}

/// Pull the access token out of a request, if one was given.
pub fn access_token(parts: &Parts) -> Option<String> {
    access_token_with_source(parts).map(|(t, _)| t)
}

/// The access token of a request and where it was found.
pub fn access_token_with_source(parts: &Parts) -> Option<(String, TokenSource)> {
    if let Some(h) = parts.headers.get(http::header::AUTHORIZATION) {
        let s = h.to_str().ok()?;
        let t = s
            .strip_prefix("Bearer ")
            .or_else(|| s.strip_prefix("bearer "))?;
        return Some((t.trim().to_owned(), TokenSource::Header));
    }
    let query = parts.uri.query()?;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("access_token=") {
            return Some((
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
                TokenSource::Query,
            ));
        }
    }
    None
}

/// Who has already been warned about the `access_token` query parameter: each client
/// (user when the token is valid, else address) is logged once, not on every request.
/// Bounded: past [`QueryTokenWarnings::CAPACITY`] entries it starts over.
#[derive(Default)]
pub struct QueryTokenWarnings {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl QueryTokenWarnings {
    pub const CAPACITY: usize = 10_000;

    /// True the first time this client is seen using the query parameter.
    pub fn first_use(
        &self,
        session: Option<&accounts::Session>,
        addr: Option<std::net::IpAddr>,
    ) -> bool {
        let who = match (session, addr) {
            (Some(s), _) => format!("{}|{}", s.user_id, s.device_id),
            (None, Some(a)) => a.to_string(),
            (None, None) => String::new(),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= Self::CAPACITY && !seen.contains(&who) {
            seen.clear();
        }
        seen.insert(who)
    }
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = MatrixError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, MatrixError> {
        let (token, session) = match parts.extensions.get::<TokenLookup>() {
            Some(l) => (l.token.clone(), l.session.clone()),
            None => {
                let token = access_token(parts).ok_or_else(MatrixError::missing_token)?;
                let accounts = state.accounts.clone();
                let t = token.clone();
                let session =
                    crate::blocking::blocking(move || accounts.authenticate(&t)).await??;
                (token, session)
            }
        };
        let Some(session) = session else {
            return Err(MatrixError::unknown_token());
        };
        // Device "last seen": the cache check is cheap; the write (at most every few
        // minutes per device) goes to the blocking pool.
        let ip = parts
            .extensions
            .get::<crate::ClientAddr>()
            .map(|a| a.0.to_string())
            .or_else(|| {
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
            });
        if state
            .accounts
            .last_seen_due(&session.user_id, &session.device_id, ip.as_deref())
        {
            let accounts = state.accounts.clone();
            let (user, device) = (session.user_id.clone(), session.device_id.clone());
            let written = crate::blocking::blocking(move || {
                accounts.touch_device(&user, &device, ip.as_deref())
            })
            .await?;
            if let Err(e) = written {
                tracing::warn!("recording device last-seen failed: {e}");
            }
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
