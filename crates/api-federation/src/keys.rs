//! `/_matrix/key/v2/*`: our own key document, and the notary endpoints serving our keys and the
//! remote keys we have cached (each document countersigned by us).
use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use federation_client::keys::now_ms;
use http::StatusCode;
use serde::Deserialize;

use crate::{FederationState, error};

/// Servers one notary query may name (an unauthenticated caller must not make us fetch from
/// an unbounded list of servers).
pub const MAX_QUERY_SERVERS: usize = 20;
const MAX_QUERY_BODY: usize = 64 * 1024;

pub(crate) async fn key_server(State(state): State<Arc<FederationState>>) -> Response {
    match state.keys.key_document(now_ms()) {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => {
            tracing::error!("cannot sign the key document: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "cannot sign the key document",
            )
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct MinValid {
    minimum_valid_until_ts: Option<u64>,
}

/// `GET /_matrix/key/v2/query/{serverName}`.
pub(crate) async fn query_one(
    State(state): State<Arc<FederationState>>,
    Path(server): Path<String>,
    Query(q): Query<MinValid>,
) -> Response {
    let docs = documents(&state, &server, q.minimum_valid_until_ts.unwrap_or(0)).await;
    Json(serde_json::json!({ "server_keys": docs })).into_response()
}

#[derive(Deserialize)]
struct BatchQuery {
    server_keys: HashMap<String, HashMap<String, KeyCriteria>>,
}

#[derive(Deserialize, Default)]
struct KeyCriteria {
    minimum_valid_until_ts: Option<u64>,
}

/// `POST /_matrix/key/v2/query`.
pub(crate) async fn query_batch(
    State(state): State<Arc<FederationState>>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_QUERY_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            "key query body too large",
        );
    }
    let query: BatchQuery = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                &format!("key query: {e}"),
            );
        }
    };
    if query.server_keys.len() > MAX_QUERY_SERVERS {
        return error(
            StatusCode::BAD_REQUEST,
            "M_LIMIT_EXCEEDED",
            &format!("at most {MAX_QUERY_SERVERS} servers per key query"),
        );
    }
    let mut out = Vec::new();
    for (server, keys) in &query.server_keys {
        let minimum = keys
            .values()
            .filter_map(|c| c.minimum_valid_until_ts)
            .max()
            .unwrap_or(0);
        out.extend(documents(&state, server, minimum).await);
    }
    Json(serde_json::json!({ "server_keys": out })).into_response()
}

/// Our own document, or the cached/fetched documents of `server`, countersigned by us.
async fn documents(state: &FederationState, server: &str, minimum: u64) -> Vec<serde_json::Value> {
    if server == state.keys.server_name().as_str() {
        return match state.keys.key_document(now_ms()) {
            Ok(doc) => vec![serde_json::Value::Object(
                doc.into_iter().map(|(k, v)| (k, v.into())).collect(),
            )],
            Err(e) => {
                tracing::error!("cannot sign the key document: {e}");
                Vec::new()
            }
        };
    }
    if ruma::ServerName::parse(server).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for doc in state.remote_keys.key_documents(server, minimum).await {
        let Ok(mut obj) = serde_json::from_value::<ruma::CanonicalJsonObject>(doc) else {
            continue;
        };
        if let Err(e) = state.keys.sign_json(&mut obj) {
            tracing::error!("cannot countersign a key document: {e}");
            continue;
        }
        out.push(serde_json::Value::Object(
            obj.into_iter().map(|(k, v)| (k, v.into())).collect(),
        ));
    }
    out
}
