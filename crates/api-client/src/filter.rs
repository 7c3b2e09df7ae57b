//! Filters: `POST /user/{userId}/filter` and `GET /user/{userId}/filter/{filterId}`.
//! A filter is validated against the spec's schema on upload (400 `M_BAD_JSON` when a
//! field has the wrong type or an ID is malformed) and read back exactly as uploaded.
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::account_data::own_user;
use crate::client_route;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};
use crate::{AppState, AppStateRef};

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = client_route(r, "/user/{user_id}/filter", post(create_filter));
    client_route(r, "/user/{user_id}/filter/{filter_id}", get(get_filter))
}

async fn create_filter(
    state: AppStateRef,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(filter): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id, "create filters")?;
    let filter_id = state.accounts.create_filter(&auth.user_id, &filter)?;
    Ok(Json(json!({ "filter_id": filter_id })))
}

async fn get_filter(
    state: AppStateRef,
    auth: Auth,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id, "read filters")?;
    match state.accounts.filter_json(&auth.user_id, &filter_id)? {
        Some(f) => Ok(Json(f)),
        None => Err(MatrixError::not_found("No such filter")),
    }
}
