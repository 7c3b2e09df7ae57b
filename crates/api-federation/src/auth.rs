//! X-Matrix authentication of inbound federation requests.
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use federation_client::keys::now_ms;
use http::StatusCode;
use ruma::api::federation::authentication::XMatrix;
use ruma::signatures::{PublicKeyMap, PublicKeySet};

use crate::{FederationState, MAX_BODY_BYTES, error};

/// The authenticated origin server, added to the request's extensions.
#[derive(Debug, Clone)]
pub struct Origin(pub ruma::OwnedServerName);

/// Why a request was refused.
#[derive(Debug)]
pub enum AuthError {
    Missing,
    Malformed(String),
    WrongDestination,
    NoKey(String),
    BadSignature(String),
    TooLarge,
}

impl AuthError {
    fn into_response(self) -> Response {
        let (status, code, msg) = match self {
            AuthError::Missing => (
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                "missing X-Matrix Authorization header".to_owned(),
            ),
            AuthError::Malformed(m) => (
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                format!("malformed X-Matrix Authorization header: {m}"),
            ),
            AuthError::WrongDestination => (
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                "X-Matrix destination is not this server".to_owned(),
            ),
            AuthError::NoKey(m) => (
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                format!("cannot get the origin's key: {m}"),
            ),
            AuthError::BadSignature(m) => (
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                format!("X-Matrix signature does not verify: {m}"),
            ),
            AuthError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "request body too large".to_owned(),
            ),
        };
        error(status, code, &msg)
    }
}

/// Middleware: verifies the X-Matrix signature, then passes the request on with [`Origin`].
pub(crate) async fn require_x_matrix(
    State(state): State<Arc<FederationState>>,
    req: Request,
    next: Next,
) -> Response {
    match authenticate(&state, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => {
            tracing::info!("refused federation request: {e:?}");
            e.into_response()
        }
    }
}

async fn authenticate(state: &FederationState, req: Request) -> Result<Request, AuthError> {
    // The signature covers the request-target as sent: OriginalUri, not the nested path.
    let raw_uri = req
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    let (parts, body) = req.into_parts();
    let mut last = Err(AuthError::Missing);
    let headers: Vec<_> = parts
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter(|v| v.as_bytes().starts_with(b"X-Matrix"))
        .cloned()
        .collect();
    if headers.is_empty() {
        return Err(AuthError::Missing);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| AuthError::TooLarge)?;
    let path_and_query = raw_uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let check = http::Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .body(bytes.clone())
        .map_err(|e| AuthError::Malformed(e.to_string()))?;
    let our_name = state.keys.server_name();
    for header in headers {
        let xm = match header
            .to_str()
            .map_err(|e| e.to_string())
            .and_then(|s| XMatrix::parse(s).map_err(|e| e.to_string()))
        {
            Ok(xm) => xm,
            Err(e) => {
                last = Err(AuthError::Malformed(e));
                continue;
            }
        };
        if xm.destination.as_ref().is_some_and(|d| d != our_name) {
            return Err(AuthError::WrongDestination);
        }
        let key = match state
            .remote_keys
            .key_at(xm.origin.as_str(), xm.key.as_str(), now_ms())
            .await
        {
            Ok(k) => k,
            Err(e) => {
                last = Err(AuthError::NoKey(e.to_string()));
                continue;
            }
        };
        let mut set = PublicKeySet::new();
        set.insert(xm.key.to_string(), key);
        let mut map = PublicKeyMap::new();
        map.insert(xm.origin.to_string(), set);
        match xm.verify_http_request(&check, our_name, &map) {
            Ok(()) => {
                if let Some(observer) = &state.peer_observer {
                    observer.server_contacted(&xm.origin);
                }
                let mut req = Request::from_parts(parts, Body::from(bytes));
                req.extensions_mut().insert(super::Origin(xm.origin));
                return Ok(req);
            }
            Err(e) => last = Err(AuthError::BadSignature(e.to_string())),
        }
    }
    last
}
