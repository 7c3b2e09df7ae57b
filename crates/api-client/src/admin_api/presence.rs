//! `GET /_pulse/admin/v1/presence/{userId}`: everything Pulse knows about one local user's
//! presence, for an operator answering "why does Bob look offline to Alice?": the effective
//! presence (as an MSC4042-aware client would see it, and whether an override made it), the
//! MSC4043 override, each device's state, the MSC4325 sharing config and the audience it
//! gives (the first 100 users who can see them).
use axum::Json;
use axum::extract::Path;
use presence_core::Audience;
use serde_json::{Value, json};

use super::AdminAuth;
use crate::AppStateRef;
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::parse_user_id;

/// Audience members listed at most.
const AUDIENCE_LIMIT: usize = 100;

pub(super) async fn view(
    _admin: AdminAuth,
    state: AppStateRef,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = parse_user_id(&raw)?;
    if user.server_name() != state.config.server_name {
        return Err(MatrixError::invalid_param(
            "Only local users' presence is held here",
        ));
    }
    let st = state.0.clone();
    blocking(move || -> ApiResult<Json<Value>> {
        if !st.accounts.user_exists(&user)? {
            return Err(MatrixError::not_found("User not found"));
        }
        let now = storage::now_ms();
        let effective = st.presence.current(&user);
        let snapshot = st.presence.snapshot(&user);
        let sharing = st
            .accounts
            .account_data(&user, None, "m.presence_sharing_config")?;
        let audience = st.presence.audience_preview(&user, None, AUDIENCE_LIMIT);
        Ok(Json(json!({
            "user_id": user,
            "effective": effective.content(now, Audience::Msc4042Client),
            "overridden": effective.overridden,
            "override": st.presence.get_override(&user),
            "devices": snapshot.as_ref().map(|s| json!(s.devices)).unwrap_or_else(|| json!({})),
            "published": snapshot.map(|s| json!(s.published.content(now, Audience::Msc4042Client))),
            "sharing_config": sharing,
            "audience": audience,
        })))
    })
    .await?
}
