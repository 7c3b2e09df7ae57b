//! Third-party networks and identifiers, which Pulse has none of (no application services,
//! no identity server), answered as the spec allows instead of 404:
//! * `GET /thirdparty/protocols` → `{}` (no bridged protocols);
//! * `GET /account/3pid` → `{"threepids": []}` (no e-mail or phone bound to accounts; the
//!   `m.3pid_changes` capability says they cannot be added).
//!
//! `POST /login/get_token` stays unrouted: 404 `M_UNRECOGNIZED`, which is what the spec asks
//! of a server without the feature (the `m.get_login_token` capability says `enabled: false`).
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::extract::Auth;
use crate::{AppState, client_route};

pub fn routes() -> Router<Arc<AppState>> {
    let r = client_route(Router::new(), "/thirdparty/protocols", get(protocols));
    client_route(r, "/account/3pid", get(threepids))
}

async fn protocols(_auth: Auth) -> Json<Value> {
    Json(json!({}))
}

async fn threepids(_auth: Auth) -> Json<Value> {
    Json(json!({ "threepids": [] }))
}
