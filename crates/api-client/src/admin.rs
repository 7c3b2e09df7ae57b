//! Synapse-compatible shared-secret registration: `GET/POST /_synapse/admin/v1/register`
//! (what `register_new_matrix_user` and Complement's admin users use).
//!
//! Enabled only when `registration_shared_secret` is configured; otherwise both methods
//! answer 404 `M_UNRECOGNIZED` like any unknown endpoint. `GET` issues a single-use nonce
//! (valid for [`accounts::NONCE_TTL`]); `POST` registers a user when `mac` is the hex
//! HMAC-SHA1, keyed by the secret, of `nonce \0 username \0 password \0 admin|notadmin`
//! (username and password exactly as sent). It works even when open registration is off.
use std::sync::Arc;

use accounts::NewDevice;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::JsonBody;
use crate::{AppState, AppStateRef};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/_synapse/admin/v1/register", get(nonce).post(register))
}

fn secret(state: &AppState) -> ApiResult<&str> {
    state
        .config
        .registration_shared_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| MatrixError::unrecognized(StatusCode::NOT_FOUND))
}

async fn nonce(state: AppStateRef) -> ApiResult<Json<Value>> {
    secret(&state)?;
    // Outstanding nonces are bounded; when full, callers wait for some to expire.
    let nonce = state
        .accounts
        .new_registration_nonce()
        .ok_or_else(|| MatrixError::limit_exceeded(accounts::NONCE_TTL.as_millis() as u64))?;
    Ok(Json(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
struct SharedSecretBody {
    nonce: Option<String>,
    username: Option<String>,
    password: Option<String>,
    mac: Option<String>,
    admin: Option<bool>,
    displayname: Option<String>,
}

/// Hex HMAC-SHA1 check, in constant time.
pub(crate) fn mac_matches(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
    mac_hex: &str,
) -> bool {
    let Ok(expected) = hex::decode(mac_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(nonce.as_bytes());
    mac.update(b"\x00");
    mac.update(username.as_bytes());
    mac.update(b"\x00");
    mac.update(password.as_bytes());
    mac.update(b"\x00");
    mac.update(if admin { b"admin" } else { b"notadmin" });
    mac.verify_slice(&expected).is_ok()
}

async fn register(
    state: AppStateRef,
    JsonBody(body): JsonBody<SharedSecretBody>,
) -> ApiResult<Json<Value>> {
    let secret = secret(&state)?.to_owned();
    let Some(nonce) = body.nonce else {
        return Err(MatrixError::missing_param("nonce must be specified"));
    };
    let Some(username) = body.username else {
        return Err(MatrixError::missing_param("username must be specified"));
    };
    let Some(password) = body.password else {
        return Err(MatrixError::missing_param("password must be specified"));
    };
    let Some(mac) = body.mac else {
        return Err(MatrixError::missing_param("mac must be specified"));
    };
    let admin = body.admin.unwrap_or(false);
    if !state.accounts.take_registration_nonce(&nonce) {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unrecognised nonce",
        ));
    }
    if password.contains('\0') {
        return Err(MatrixError::invalid_param("Invalid password"));
    }
    if !mac_matches(&secret, &nonce, &username, &password, admin, &mac) {
        return Err(MatrixError::forbidden("HMAC incorrect"));
    }
    let accounts = state.accounts.clone();
    let registered = blocking(move || {
        accounts.register(
            &username,
            Some(&password),
            NewDevice::default(),
            admin,
            true,
        )
    })
    .await??;
    if let Some(name) = body.displayname.filter(|n| !n.is_empty()) {
        state
            .accounts
            .set_displayname(&registered.user_id, Some(name))?;
    }
    Ok(Json(json!({
        "user_id": registered.user_id,
        "access_token": registered.access_token,
        "device_id": registered.device_id,
        "home_server": state.config.server_name,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_synapse_construction() {
        // Reference values from Python: hmac.new(b"complement", b"n\0alice\0pw\0notadmin", sha1).
        let notadmin = "b29dd3c8c9750b094bdcb10d74ea272e018cf81b";
        let admin = "f263c22dae8179037eda2ae4bd5f2892664cbb52";
        assert!(mac_matches(
            "complement",
            "n",
            "alice",
            "pw",
            false,
            notadmin
        ));
        assert!(mac_matches("complement", "n", "alice", "pw", true, admin));
        assert!(mac_matches(
            "complement",
            "n",
            "alice",
            "pw",
            true,
            &admin.to_uppercase()
        ));
        assert!(!mac_matches(
            "complement",
            "n",
            "alice",
            "pw",
            true,
            notadmin
        ));
        assert!(!mac_matches("other", "n", "alice", "pw", false, notadmin));
        assert!(!mac_matches(
            "complement",
            "n",
            "Alice",
            "pw",
            false,
            notadmin
        ));
        assert!(!mac_matches("complement", "n", "alice", "pw", false, "zz"));
        assert!(!mac_matches("complement", "n", "alice", "pw", false, ""));
    }
}
