//! Server metadata: `GET /_matrix/client/versions`, `/.well-known/matrix/{client,server}`
//! and `GET /_matrix/client/v3/capabilities`.
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::client_route;
use crate::extract::Auth;
use crate::{AppState, AppStateRef};

/// Spec versions this server speaks (advertised by `/versions`).
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
];

/// The `unstable_features` map of `/versions`: MSC flag → enabled. Add a line here for
/// every unstable feature a module implements (values must be booleans).
pub fn unstable_features() -> Map<String, Value> {
    let mut m = Map::new();
    // MSC3026: the busy presence state (`org.matrix.msc3026.busy`).
    m.insert("org.matrix.msc3026.busy_presence".into(), Value::Bool(true));
    // MSC4043: the presence override API (MSC4042 `disabled` is one of its values).
    m.insert("support.feline.msc4043.v1".into(), Value::Bool(true));
    // MSC4325: presence sharing config (`m.presence_sharing_config`, unstable type too).
    m.insert(
        "events.matrix-community.presence_sharing_config".into(),
        Value::Bool(true),
    );
    m
}

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route("/.well-known/matrix/client", get(well_known_client))
        .route("/.well-known/matrix/server", get(well_known_server));
    client_route(r, "/capabilities", get(capabilities))
}

async fn versions() -> Json<Value> {
    Json(json!({ "versions": SUPPORTED_VERSIONS, "unstable_features": unstable_features() }))
}

async fn well_known_client(state: AppStateRef) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": state.config.public_baseurl } }))
}

/// `m.server` for federation delegation. This document is fetched from
/// `https://<server_name>/.well-known/matrix/server`, i.e. port 443, so when it reaches
/// us we are serving `server_name` on 443 and delegate to exactly that: `server_name:443`
/// (a server name that already has an explicit port is returned as is). Without this
/// answer, peers would fall back to port 8448.
async fn well_known_server(state: AppStateRef) -> Json<Value> {
    let name = state.config.server_name.as_str();
    let m_server = if state.config.server_name.port().is_some() {
        name.to_owned()
    } else {
        format!("{name}:443")
    };
    Json(json!({ "m.server": m_server }))
}

async fn capabilities(_auth: Auth) -> Json<Value> {
    let available: Map<String, Value> = rooms::supported_room_versions()
        .iter()
        .map(|v| (v.to_string(), Value::from("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.room_versions": {
                "default": rooms::DEFAULT_ROOM_VERSION.to_string(),
                "available": available,
            },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_the_spec_grammar() {
        for v in SUPPORTED_VERSIONS {
            let ok = v.strip_prefix("r0.").is_some()
                || v.strip_prefix("v1.")
                    .is_some_and(|m| m.parse::<u32>().is_ok());
            assert!(ok, "{v}");
        }
        assert!(unstable_features().values().all(Value::is_boolean));
    }
}
