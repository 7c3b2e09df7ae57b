//! Server metadata: `GET /_matrix/client/versions`, `/.well-known/matrix/{client,server}`
//! and `GET /_matrix/client/v3/capabilities`.
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::client_route;
use crate::extract::Auth;
use crate::{AppState, AppStateRef};

/// Spec versions advertised by `/versions`: only what is true enough to rely on.
///
/// The floor clients require (`r0.6.1`, `v1.1`) is advertised because Pulse serves those
/// versions' endpoint shapes (r0 and v3 paths, UIA, filters, sync, rooms); their known
/// gaps — no E2EE (`/keys/*`, to-device: `/sync` returns empty `to_device` and
/// `device_lists`), no media repository, no push rules (unread counts are always 0) — are
/// listed in `docs/compliance.md`. Later versions are added only when what they introduce
/// exists: v1.11 requires authenticated media, v1.7+ client features build on the media
/// and E2EE pieces above. The E2EE and client issues raise this list as they land.
pub const SUPPORTED_VERSIONS: &[&str] = &["r0.6.1", "v1.1"];

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

async fn capabilities(state: AppStateRef, _auth: Auth) -> Json<Value> {
    let available: Map<String, Value> = rooms::supported_room_versions()
        .iter()
        .map(|v| (v.to_string(), Value::from("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.room_versions": {
                "default": state.rooms.default_version().to_string(),
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

    /// Issue 13 item 21: no version whose headline features Pulse lacks (v1.11 made
    /// authenticated media mandatory; there is no media repository).
    #[test]
    fn versions_claim_nothing_unimplemented() {
        for v in SUPPORTED_VERSIONS {
            let minor = v
                .strip_prefix("v1.")
                .and_then(|m| m.parse::<u32>().ok())
                .unwrap_or(0);
            assert!(
                minor <= 1,
                "{v} is advertised but its features are not implemented"
            );
        }
        assert!(SUPPORTED_VERSIONS.contains(&"v1.1"), "clients need v1.1");
    }
}
