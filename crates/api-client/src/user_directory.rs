//! `POST /user_directory/search`: the users a searcher may find (those sharing a room
//! with them and those in public rooms, as Synapse's default), matched on user ID and
//! display name by word prefixes; see `search::directory`.
use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody};
use crate::{AppState, AppStateRef, client_route};

pub fn routes() -> Router<Arc<AppState>> {
    client_route(Router::new(), "/user_directory/search", post(search))
}

#[derive(Deserialize)]
struct SearchBody {
    search_term: String,
    #[serde(default)]
    limit: Option<u64>,
}

/// Synapse's cap on `limit`.
const MAX_LIMIT: u64 = 50;

async fn search(
    auth: Auth,
    state: AppStateRef,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let body: SearchBody = serde_json::from_value(body)
        .map_err(|e| MatrixError::bad_json(format!("Invalid search request: {e}")))?;
    let limit = body.limit.unwrap_or(10).min(MAX_LIMIT) as usize;
    let dir = state.indexes.directory.clone();
    let (found, limited) =
        crate::blocking::blocking(move || dir.search(&auth.user_id, &body.search_term, limit))
            .await?
            .map_err(MatrixError::internal)?;
    let results: Vec<Value> = found
        .into_iter()
        .map(|f| {
            let mut o = Map::new();
            o.insert("user_id".into(), Value::from(f.user_id.as_str()));
            if let Some(n) = f.display_name {
                o.insert("display_name".into(), Value::from(n));
            }
            if let Some(a) = f.avatar_url {
                o.insert("avatar_url".into(), Value::from(a));
            }
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({"results": results, "limited": limited})))
}
