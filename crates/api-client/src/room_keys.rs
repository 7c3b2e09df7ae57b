//! Server-side key backup, `/room_keys/version[/{version}]` and
//! `/room_keys/keys[/{roomId}[/{sessionId}]]?version=`. The store is the e2ee crate's;
//! a user without a backup gets 404 `M_NOT_FOUND`, writes to a version that is not the
//! current one 403 `M_WRONG_ROOM_KEYS_VERSION`, as the spec says.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use e2ee::backup::{BackedUpSession, SessionData};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query};
use crate::{AppState, AppStateRef, client_route};

pub fn routes() -> Router<Arc<AppState>> {
    let mut r = Router::new();
    r = client_route(
        r,
        "/room_keys/version",
        post(create_version).get(current_version),
    );
    r = client_route(
        r,
        "/room_keys/version/{version}",
        get(get_version).put(put_version).delete(delete_version),
    );
    r = client_route(
        r,
        "/room_keys/keys",
        get(get_all).put(put_all).delete(delete_all),
    );
    r = client_route(
        r,
        "/room_keys/keys/{room_id}",
        get(get_room).put(put_room).delete(delete_room),
    );
    client_route(
        r,
        "/room_keys/keys/{room_id}/{session_id}",
        get(get_session).put(put_session).delete(delete_session),
    )
}

fn no_backup() -> MatrixError {
    MatrixError::not_found("No backup found")
}

/// A version in a path or query: anything but a number is an unknown version.
fn parse_version(v: &str) -> ApiResult<u64> {
    v.parse().map_err(|_| no_backup())
}

#[derive(Deserialize)]
struct VersionBody {
    algorithm: String,
    auth_data: Value,
    version: Option<String>,
}

#[derive(Deserialize)]
struct VersionParam {
    version: Option<String>,
}

impl VersionParam {
    fn get(&self) -> ApiResult<u64> {
        let v = self
            .version
            .as_deref()
            .ok_or_else(|| MatrixError::missing_param("Missing version"))?;
        parse_version(v)
    }
}

async fn create_version(
    State(state): AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<VersionBody>,
) -> ApiResult<Json<Value>> {
    if !body.auth_data.is_object() {
        return Err(MatrixError::bad_json("auth_data must be an object"));
    }
    let st = state.clone();
    let v = blocking(move || {
        st.e2ee
            .create_backup(&auth.user_id, &body.algorithm, &body.auth_data)
    })
    .await??;
    Ok(Json(json!({ "version": v.to_string() })))
}

async fn version_info(
    state: &Arc<AppState>,
    auth: Auth,
    version: Option<u64>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    let found = blocking(move || st.e2ee.backup(&auth.user_id, version)).await??;
    let (v, info, count) = found.ok_or_else(no_backup)?;
    Ok(Json(json!({
        "algorithm": info.algorithm,
        "auth_data": info.auth_data,
        "count": count,
        "etag": info.etag.to_string(),
        "version": v.to_string(),
    })))
}

async fn current_version(State(state): AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    version_info(&state, auth, None).await
}

async fn get_version(
    State(state): AppStateRef,
    auth: Auth,
    Path(version): Path<String>,
) -> ApiResult<Json<Value>> {
    version_info(&state, auth, Some(parse_version(&version)?)).await
}

async fn put_version(
    State(state): AppStateRef,
    auth: Auth,
    Path(version): Path<String>,
    JsonBody(body): JsonBody<VersionBody>,
) -> ApiResult<Json<Value>> {
    let v = parse_version(&version)?;
    if body.version.as_deref().is_some_and(|b| b != version) {
        return Err(MatrixError::invalid_param(
            "The version in the body does not match the path",
        ));
    }
    if !body.auth_data.is_object() {
        return Err(MatrixError::bad_json("auth_data must be an object"));
    }
    let st = state.clone();
    blocking(move || {
        st.e2ee
            .update_backup(&auth.user_id, v, &body.algorithm, &body.auth_data)
    })
    .await??;
    Ok(Json(json!({})))
}

async fn delete_version(
    State(state): AppStateRef,
    auth: Auth,
    Path(version): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = parse_version(&version)?;
    let st = state.clone();
    blocking(move || st.e2ee.delete_backup(&auth.user_id, v)).await??;
    Ok(Json(json!({})))
}

// ----- keys -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct RoomSessions {
    sessions: BTreeMap<String, SessionData>,
}

#[derive(Deserialize)]
struct AllRooms {
    rooms: BTreeMap<String, RoomSessions>,
}

async fn store(
    state: &Arc<AppState>,
    auth: Auth,
    version: u64,
    sessions: Vec<BackedUpSession>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    let (count, etag) =
        blocking(move || st.e2ee.put_room_keys(&auth.user_id, version, &sessions)).await??;
    Ok(Json(json!({ "count": count, "etag": etag.to_string() })))
}

async fn put_all(
    State(state): AppStateRef,
    auth: Auth,
    Query(q): Query<VersionParam>,
    JsonBody(body): JsonBody<AllRooms>,
) -> ApiResult<Json<Value>> {
    let sessions = body
        .rooms
        .into_iter()
        .flat_map(|(room, s)| {
            s.sessions
                .into_iter()
                .map(move |(sid, data)| (room.clone(), sid, data))
        })
        .collect();
    store(&state, auth, q.get()?, sessions).await
}

async fn put_room(
    State(state): AppStateRef,
    auth: Auth,
    Path(room): Path<String>,
    Query(q): Query<VersionParam>,
    JsonBody(body): JsonBody<RoomSessions>,
) -> ApiResult<Json<Value>> {
    let sessions = body
        .sessions
        .into_iter()
        .map(|(sid, data)| (room.clone(), sid, data))
        .collect();
    store(&state, auth, q.get()?, sessions).await
}

async fn put_session(
    State(state): AppStateRef,
    auth: Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<VersionParam>,
    JsonBody(body): JsonBody<SessionData>,
) -> ApiResult<Json<Value>> {
    store(&state, auth, q.get()?, vec![(room, session, body)]).await
}

async fn read(
    state: &Arc<AppState>,
    auth: Auth,
    version: u64,
    room: Option<String>,
    session: Option<String>,
) -> ApiResult<Vec<BackedUpSession>> {
    let st = state.clone();
    blocking(move || {
        st.e2ee
            .room_keys(&auth.user_id, version, room.as_deref(), session.as_deref())
    })
    .await?
    .map_err(MatrixError::from)
}

fn session_json(d: SessionData) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

async fn get_all(
    State(state): AppStateRef,
    auth: Auth,
    Query(q): Query<VersionParam>,
) -> ApiResult<Json<Value>> {
    let mut rooms: Map<String, Value> = Map::new();
    for (room, sid, data) in read(&state, auth, q.get()?, None, None).await? {
        let entry = rooms
            .entry(room)
            .or_insert_with(|| json!({ "sessions": {} }));
        entry["sessions"][sid.as_str()] = session_json(data);
    }
    Ok(Json(json!({ "rooms": rooms })))
}

async fn get_room(
    State(state): AppStateRef,
    auth: Auth,
    Path(room): Path<String>,
    Query(q): Query<VersionParam>,
) -> ApiResult<Json<Value>> {
    let mut sessions = Map::new();
    for (_, sid, data) in read(&state, auth, q.get()?, Some(room), None).await? {
        sessions.insert(sid, session_json(data));
    }
    Ok(Json(json!({ "sessions": sessions })))
}

async fn get_session(
    State(state): AppStateRef,
    auth: Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<VersionParam>,
) -> ApiResult<Json<Value>> {
    let found = read(&state, auth, q.get()?, Some(room), Some(session)).await?;
    let (_, _, data) = found
        .into_iter()
        .next()
        .ok_or_else(|| MatrixError::not_found("No such session in the backup"))?;
    Ok(Json(session_json(data)))
}

async fn remove(
    state: &Arc<AppState>,
    auth: Auth,
    version: u64,
    room: Option<String>,
    session: Option<String>,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    let (count, etag) = blocking(move || {
        st.e2ee
            .delete_room_keys(&auth.user_id, version, room.as_deref(), session.as_deref())
    })
    .await??;
    Ok(Json(json!({ "count": count, "etag": etag.to_string() })))
}

async fn delete_all(
    State(state): AppStateRef,
    auth: Auth,
    Query(q): Query<VersionParam>,
) -> ApiResult<Json<Value>> {
    remove(&state, auth, q.get()?, None, None).await
}

async fn delete_room(
    State(state): AppStateRef,
    auth: Auth,
    Path(room): Path<String>,
    Query(q): Query<VersionParam>,
) -> ApiResult<Json<Value>> {
    remove(&state, auth, q.get()?, Some(room), None).await
}

async fn delete_session(
    State(state): AppStateRef,
    auth: Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<VersionParam>,
) -> ApiResult<Json<Value>> {
    remove(&state, auth, q.get()?, Some(room), Some(session)).await
}
