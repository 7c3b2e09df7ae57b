//! `GET /voip/turnServer`: TURN credentials for VoIP calls.
//!
//! With `[voip] turn_shared_secret` set, credentials are time-limited as coturn's REST API
//! (`use-auth-secret`) and Synapse do it: the username is `<expiry, seconds since the epoch>:
//! <user ID>` and the password `base64(HMAC-SHA1(secret, username))`, valid for
//! `turn_user_lifetime_ms`. With static `turn_username`/`turn_password` those are handed out
//! instead. Without `turn_uris` (the default) the answer is `{}`, as Synapse gives: clients
//! then make calls without a TURN relay.
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;

use crate::extract::Auth;
use crate::{AppState, AppStateRef, client_route};

/// `[voip]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoipConfig {
    /// TURN server URIs handed to clients, e.g. `turn:turn.example.org:3478?transport=udp`.
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    pub turn_shared_secret: Option<String>,
    /// Static credentials, used when no shared secret is set.
    pub turn_username: Option<String>,
    pub turn_password: Option<String>,
    /// How long credentials made from the shared secret stay valid.
    pub turn_user_lifetime_ms: u64,
}

impl Default for VoipConfig {
    fn default() -> Self {
        VoipConfig {
            turn_uris: Vec::new(),
            turn_shared_secret: None,
            turn_username: None,
            turn_password: None,
            turn_user_lifetime_ms: 3_600_000,
        }
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    client_route(Router::new(), "/voip/turnServer", get(turn_server))
}

async fn turn_server(state: AppStateRef, auth: Auth) -> Json<Value> {
    Json(credentials(
        &state.config.voip,
        auth.user_id.as_str(),
        crate::now_ms(),
    ))
}

/// The `/voip/turnServer` answer for `user` at `now_ms`.
pub fn credentials(config: &VoipConfig, user: &str, now_ms: u64) -> Value {
    if config.turn_uris.is_empty() {
        return json!({});
    }
    let ttl_s = config.turn_user_lifetime_ms / 1000;
    let secret = config
        .turn_shared_secret
        .as_deref()
        .filter(|s| !s.is_empty());
    let (username, password) = match (secret, &config.turn_username, &config.turn_password) {
        (Some(secret), _, _) => {
            let username = format!("{}:{user}", now_ms / 1000 + ttl_s);
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
                return json!({});
            };
            mac.update(username.as_bytes());
            let password =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            (username, password)
        }
        (None, Some(u), Some(p)) => (u.clone(), p.clone()),
        // URIs but no credentials: nothing a client could log in with.
        _ => return json!({}),
    };
    json!({
        "username": username,
        "password": password,
        "uris": config.turn_uris,
        "ttl": ttl_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_credentials_match_coturns_rest_scheme() {
        let config = VoipConfig {
            turn_uris: vec!["turn:turn.example.org:3478?transport=udp".into()],
            turn_shared_secret: Some("s3cret".into()),
            turn_user_lifetime_ms: 86_400_000,
            ..Default::default()
        };
        let v = credentials(&config, "@alice:example.org", 1_700_000_000_000);
        assert_eq!(v["username"], "1700086400:@alice:example.org");
        // python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(b"s3cret",
        //   b"1700086400:@alice:example.org", hashlib.sha1).digest()).decode())'
        assert_eq!(v["password"], "UD7jjEzq2I7HtUre54NaXWzW4Y0=");
        assert_eq!(v["ttl"], 86_400);
        assert_eq!(v["uris"][0], "turn:turn.example.org:3478?transport=udp");
    }

    #[test]
    fn unconfigured_or_credentialless_is_empty() {
        assert_eq!(credentials(&VoipConfig::default(), "@a:b", 0), json!({}));
        let uris_only = VoipConfig {
            turn_uris: vec!["turn:x".into()],
            ..Default::default()
        };
        assert_eq!(credentials(&uris_only, "@a:b", 0), json!({}));
        let fixed = VoipConfig {
            turn_uris: vec!["turn:x".into()],
            turn_username: Some("u".into()),
            turn_password: Some("p".into()),
            ..Default::default()
        };
        assert_eq!(credentials(&fixed, "@a:b", 0)["username"], "u");
    }
}
