//! Membership as the resident server: `make_join` / `v2/send_join`, `make_leave` /
//! `v2/send_leave`, `make_knock` / `v1/send_knock` (answered with `knock_room_state`),
//! and receiving invites for our users (`v2/invite`).
//!
//! Every handler runs behind the X-Matrix middleware, so [`Origin`] is the authenticated
//! requesting server; a membership event is accepted only for a user of that server (a
//! server speaks only for its own users), and only with a valid signature of it.
use std::sync::Arc;

use axum::extract::{Extension, OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use federation_membership::{KeyMemo, static_keys, verify_pdu};
use http::StatusCode;
use rooms::{Membership, RoomError, RoomService};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
};
use serde_json::{Value, json};

use crate::{FederationState, Origin};

/// Wakes local `/sync`s after an event was stored: (room, stream position, extra users).
pub type WakeFn = dyn Fn(&RoomId, u64, &[&UserId]) + Send + Sync;

/// Hands an event a remote server had us accept as the resident server (`send_join`,
/// `send_leave`) to the federation sender, for the room's *other* servers, which learn of it
/// only from us: (room, stream position, the stored PDU, the server that sent it).
pub type ForwardFn = dyn Fn(&RoomId, u64, &CanonicalJsonObject, &ruma::ServerName) + Send + Sync;

/// What the membership endpoints need besides the keys.
pub struct MembershipState {
    pub rooms: Arc<RoomService>,
    pub wake: Arc<WakeFn>,
    /// `None`: accepted events are not forwarded (no outbound federation).
    pub forward: Option<Arc<ForwardFn>>,
}

/// Most entries of `invite_room_state` looked at.
const MAX_INVITE_ROOM_STATE: usize = 50;

pub(crate) fn routes() -> Router<Arc<FederationState>> {
    Router::new()
        .route("/v1/make_join/{room_id}/{user_id}", get(make_join))
        .route("/v1/make_leave/{room_id}/{user_id}", get(make_leave))
        .route("/v2/send_join/{room_id}/{event_id}", put(send_join))
        .route("/v2/send_leave/{room_id}/{event_id}", put(send_leave))
        .route("/v1/send_join/{room_id}/{event_id}", put(send_join_v1))
        .route("/v1/send_leave/{room_id}/{event_id}", put(send_leave_v1))
        .route("/v2/invite/{room_id}/{event_id}", put(invite))
        .route("/v1/make_knock/{room_id}/{user_id}", get(make_knock))
        .route("/v1/send_knock/{room_id}/{event_id}", put(send_knock))
}

/// A refusal: status, Matrix error code, message (and the room version, for
/// `M_INCOMPATIBLE_ROOM_VERSION`).
pub(crate) struct Fail {
    status: StatusCode,
    errcode: &'static str,
    message: String,
    room_version: Option<String>,
}

impl Fail {
    fn new(status: StatusCode, errcode: &'static str, message: &str) -> Fail {
        Fail {
            status,
            errcode,
            message: message.to_owned(),
            room_version: None,
        }
    }

    fn into_response(self) -> Response {
        let mut body = json!({ "errcode": self.errcode, "error": self.message });
        if let Some(v) = self.room_version {
            body["room_version"] = Value::from(v);
        }
        (self.status, Json(body)).into_response()
    }
}

fn room_error(e: RoomError) -> Fail {
    match e {
        RoomError::Forbidden(m) => Fail::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", &m),
        RoomError::UnknownRoom(r) => Fail::new(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("unknown room {r}"),
        ),
        RoomError::NotFound(m) => Fail::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", &m),
        RoomError::UnsupportedRoomVersion(v) => Fail {
            room_version: Some(v.clone()),
            ..Fail::new(
                StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                &format!("the room's version {v} is not one the joining server supports"),
            )
        },
        RoomError::TooLarge(m) => Fail::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", &m),
        RoomError::InvalidParam(m) => Fail::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", &m),
        RoomError::BadJson(m) => Fail::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", &m),
        RoomError::BadAlias(m) | RoomError::BadState(m) | RoomError::AliasInUse(m) => {
            Fail::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", &m)
        }
        RoomError::Storage(e) => {
            tracing::error!("storage error in a federation membership request: {e}");
            Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "storage error",
            )
        }
        RoomError::UnableToAuthoriseJoin(m) => {
            Fail::new(StatusCode::BAD_REQUEST, "M_UNABLE_TO_AUTHORISE_JOIN", &m)
        }
        RoomError::UnableToGrantJoin(m) => {
            Fail::new(StatusCode::BAD_REQUEST, "M_UNABLE_TO_GRANT_JOIN", &m)
        }
        RoomError::Internal(m) => {
            tracing::error!("internal error in a federation membership request: {m}");
            Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "internal error",
            )
        }
    }
}

fn membership_state(state: &FederationState) -> Result<&Arc<MembershipState>, Fail> {
    state.membership.as_ref().ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "this server does not serve room membership over federation",
        )
    })
}

fn parse_room(raw: &str) -> Result<OwnedRoomId, Fail> {
    OwnedRoomId::try_from(raw).map_err(|_| {
        Fail::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "invalid room ID",
        )
    })
}

/// The path's user must belong to the requesting server.
fn parse_origin_user(raw: &str, origin: &Origin) -> Result<OwnedUserId, Fail> {
    let user = OwnedUserId::try_from(raw).map_err(|_| {
        Fail::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "invalid user ID",
        )
    })?;
    if user.server_name() != origin.0 {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "a server may only ask for its own users",
        ));
    }
    Ok(user)
}

/// The `ver` query parameters (repeated); none means room version 1 (spec default).
fn versions_from_query(uri: &http::Uri) -> Vec<RoomVersionId> {
    let mut out = Vec::new();
    for pair in uri.query().unwrap_or("").split('&') {
        let Some(v) = pair.strip_prefix("ver=") else {
            continue;
        };
        let v = percent_decode(v);
        if let Ok(v) = RoomVersionId::try_from(v.as_str())
            && out.len() < 64
        {
            out.push(v);
        }
    }
    if out.is_empty() {
        out.push(RoomVersionId::V1);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RoomError> + Send + 'static,
) -> Result<T, Fail> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(room_error),
        Err(e) => {
            tracing::error!("federation membership task failed: {e}");
            Err(Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "internal error",
            ))
        }
    }
}

async fn make_join(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    OriginalUri(uri): OriginalUri,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Response {
    make_member(state, origin, uri, room_id, user_id, Membership::Join).await
}

async fn make_leave(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    OriginalUri(uri): OriginalUri,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Response {
    make_member(state, origin, uri, room_id, user_id, Membership::Leave).await
}

async fn make_knock(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    OriginalUri(uri): OriginalUri,
    Path((room_id, user_id)): Path<(String, String)>,
) -> Response {
    make_member(state, origin, uri, room_id, user_id, Membership::Knock).await
}

async fn send_knock(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    send_member(state, origin, room_id, event_id, body, Membership::Knock).await
}

async fn make_member(
    state: Arc<FederationState>,
    origin: Origin,
    uri: http::Uri,
    room_id: String,
    user_id: String,
    membership: Membership,
) -> Response {
    let run = async {
        let m = membership_state(&state)?.clone();
        let room = parse_room(&room_id)?;
        let user = parse_origin_user(&user_id, &origin)?;
        // make_leave has no `ver`: any version the room has is fine for a leave.
        let versions = match membership {
            Membership::Join | Membership::Knock => versions_from_query(&uri),
            _ => rooms::supported_room_versions().to_vec(),
        };
        let (version, template) =
            blocking(move || m.rooms.member_template(&room, &user, membership, &versions)).await?;
        Ok::<_, Fail>(
            Json(json!({
                "room_version": version.as_str(),
                "event": Value::from(CanonicalJsonValue::Object(template)),
            }))
            .into_response(),
        )
    };
    run.await.unwrap_or_else(Fail::into_response)
}

async fn send_join(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    send_member(state, origin, room_id, event_id, body, Membership::Join).await
}

async fn send_leave(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    send_member(state, origin, room_id, event_id, body, Membership::Leave).await
}

/// `PUT /v1/send_join`: the v2 handler, its success answer in v1's `[200, body]` form.
async fn send_join_v1(
    state: State<Arc<FederationState>>,
    origin: Extension<Origin>,
    path: Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    v1_answer(send_join(state, origin, path, body).await).await
}

/// `PUT /v1/send_leave`: as [`send_join_v1`].
async fn send_leave_v1(
    state: State<Arc<FederationState>>,
    origin: Extension<Origin>,
    path: Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    v1_answer(send_leave(state, origin, path, body).await).await
}

/// Wraps a successful answer as `[200, body]` (the v1 membership endpoints' historical
/// form); errors are passed through unchanged.
async fn v1_answer(resp: Response) -> Response {
    if resp.status() != StatusCode::OK {
        return resp;
    }
    // Our own answer, built above: a bound far beyond any state we answer is only a guard.
    match axum::body::to_bytes(resp.into_body(), 256 * 1024 * 1024).await {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Json(json!([200, v])).into_response(),
            Err(_) => Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "internal error",
            )
            .into_response(),
        },
        Err(_) => Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "internal error",
        )
        .into_response(),
    }
}

fn parse_pdu(body: &[u8]) -> Result<CanonicalJsonObject, Fail> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Fail::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", &format!("body: {e}")))?;
    object_of(v)
}

fn object_of(v: Value) -> Result<CanonicalJsonObject, Fail> {
    match CanonicalJsonValue::try_from(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        _ => Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            "the event is not a canonical JSON object",
        )),
    }
}

fn str_field<'a>(obj: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match obj.get(field) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// Checks the origin's signature on its user's event (the sender must be the origin's);
/// returns the keys the check fetched, for the room engine's own check.
async fn check_origin_event(
    state: &FederationState,
    origin: &Origin,
    version: &RoomVersionId,
    pdu: &CanonicalJsonObject,
) -> Result<rooms::StaticKeys, Fail> {
    let sender = str_field(pdu, "sender")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Fail::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "bad sender"))?;
    if sender.server_name() != origin.0 {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "the event's sender does not belong to the requesting server",
        ));
    }
    let rules = version
        .rules()
        .ok_or_else(|| room_error(RoomError::UnsupportedRoomVersion(version.to_string())))?;
    let mut memo = KeyMemo::new();
    if names_local_authoriser(pdu, state.keys.server_name()) {
        // A restricted join we are asked to vouch for: our signature is added by the room
        // engine once it has checked the allow conditions, so only the origin's is checked
        // here (the engine then checks every signature and the content hash).
        federation_membership::verify_server_signature(
            &*state.remote_keys,
            &rules,
            pdu,
            origin.0.as_str(),
            &mut memo,
        )
        .await
        .map_err(|e| Fail::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", &e.to_string()))?;
        return Ok(static_keys(&memo));
    }
    verify_pdu(&*state.remote_keys, &rules, pdu.clone(), &mut memo)
        .await
        .map_err(|e| Fail::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", &e.to_string()))?;
    Ok(static_keys(&memo))
}

/// Whether the event's `join_authorised_via_users_server` names a user of ours.
fn names_local_authoriser(pdu: &CanonicalJsonObject, ours: &ruma::ServerName) -> bool {
    let via = match pdu.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("join_authorised_via_users_server") {
            Some(CanonicalJsonValue::String(v)) => v,
            _ => return false,
        },
        _ => return false,
    };
    UserId::parse(via).is_ok_and(|u| u.server_name() == ours)
}

async fn send_member(
    state: Arc<FederationState>,
    origin: Origin,
    room_id: String,
    event_id: String,
    body: axum::body::Bytes,
    membership: Membership,
) -> Response {
    let run = async {
        let m = membership_state(&state)?.clone();
        let room = parse_room(&room_id)?;
        let event_id = ruma::OwnedEventId::try_from(event_id).map_err(|_| {
            Fail::new(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                "invalid event ID",
            )
        })?;
        let pdu = parse_pdu(&body)?;
        let rooms = m.rooms.clone();
        let r = room.clone();
        let version = blocking(move || {
            rooms
                .room_version(&r)?
                .ok_or_else(|| RoomError::UnknownRoom(r.clone()))
        })
        .await?;
        let keys = check_origin_event(&state, &origin, &version, &pdu).await?;
        let rooms = m.rooms.clone();
        let r = room.clone();
        let from = origin.0.clone();
        let accepted = blocking(move || {
            rooms.accept_remote_member(&from, &r, &event_id, pdu, membership, &keys)
        })
        .await?;
        let wake = m.wake.clone();
        let r = room.clone();
        let pos = accepted.pos;
        let _ = tokio::task::spawn_blocking(move || wake(&r, pos, &[])).await;
        if let Some(forward) = m.forward.clone() {
            let (r, pdu, from) = (room.clone(), accepted.event.clone(), origin.0.clone());
            let _ = tokio::task::spawn_blocking(move || forward(&r, pos, &pdu, &from)).await;
        }
        let to_json = |v: Vec<CanonicalJsonObject>| -> Vec<Value> {
            v.into_iter()
                .map(|o| Value::from(CanonicalJsonValue::Object(o)))
                .collect()
        };
        let body = match membership {
            Membership::Join => json!({
                "origin": state.keys.server_name().as_str(),
                "state": to_json(accepted.state),
                "auth_chain": to_json(accepted.auth_chain),
                "event": Value::from(CanonicalJsonValue::Object(accepted.event)),
                "members_omitted": false,
                "servers_in_room": accepted.servers_in_room,
            }),
            Membership::Knock => {
                let rooms = m.rooms.clone();
                let r = room.clone();
                json!({ "knock_room_state": blocking(move || rooms.knock_room_state(&r)).await? })
            }
            _ => json!({}),
        };
        Ok::<_, Fail>(Json(body).into_response())
    };
    run.await.unwrap_or_else(Fail::into_response)
}

/// `PUT /v2/invite`: a remote server invites one of our users. We check the event and the
/// inviting server's signature, add ours, store the invite with its stripped room state,
/// and return the counter-signed event.
async fn invite(
    State(state): State<Arc<FederationState>>,
    Extension(origin): Extension<Origin>,
    Path((room_id, event_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let run = async {
        let m = membership_state(&state)?.clone();
        let room = parse_room(&room_id)?;
        let event_id = ruma::OwnedEventId::try_from(event_id).map_err(|_| {
            Fail::new(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                "invalid event ID",
            )
        })?;
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| Fail::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", &format!("body: {e}")))?;
        let version_str = body
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        let version = RoomVersionId::try_from(version_str).map_err(|_| {
            Fail::new(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                "invalid room_version",
            )
        })?;
        if !rooms::supported_room_versions().contains(&version) {
            return Err(room_error(RoomError::UnsupportedRoomVersion(
                version.to_string(),
            )));
        }
        let pdu = object_of(body.get("event").cloned().unwrap_or(Value::Null))?;
        let bad = |m: &str| Fail::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m);
        if str_field(&pdu, "room_id") != Some(room.as_str()) {
            return Err(bad("the event is for another room"));
        }
        if str_field(&pdu, "type") != Some("m.room.member") {
            return Err(bad("the event is not an m.room.member event"));
        }
        let membership = match pdu.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
                Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
                _ => None,
            },
            _ => None,
        };
        if membership != Some("invite") {
            return Err(bad("the event's membership is not invite"));
        }
        let invitee = str_field(&pdu, "state_key")
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| bad("the event's state_key is not a user ID"))?;
        if invitee.server_name() != state.keys.server_name() {
            return Err(bad("the invitee is not a user of this server"));
        }
        let rules = version
            .rules()
            .ok_or_else(|| room_error(RoomError::UnsupportedRoomVersion(version.to_string())))?;
        let computed =
            federation_membership::event_id_of(&pdu, &rules).map_err(|e| bad(&e.to_string()))?;
        if computed != event_id {
            return Err(bad("the event ID in the path is not the event's ID"));
        }
        let keys = check_origin_event(&state, &origin, &version, &pdu).await?;
        let stripped: Vec<Value> = body
            .get("invite_room_state")
            .and_then(Value::as_array)
            .map(|a| a.iter().take(MAX_INVITE_ROOM_STATE).cloned().collect())
            .unwrap_or_default();
        let rooms = m.rooms.clone();
        let from = origin.0.clone();
        let signed =
            blocking(move || rooms.receive_invite(&from, &version, pdu, stripped, &keys)).await?;
        let rooms = m.rooms.clone();
        let (r, u) = (room.clone(), invitee.clone());
        let pos =
            blocking(move || Ok(rooms.membership(&r, &u)?.map(|m| m.pos).unwrap_or(0))).await?;
        let wake = m.wake.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let invitee: &UserId = &invitee;
            wake(&room, pos, &[invitee])
        })
        .await;
        Ok::<_, Fail>(
            Json(json!({ "event": Value::from(CanonicalJsonValue::Object(signed)) }))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(Fail::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ver_parameters_are_collected() {
        let uri: http::Uri =
            "/_matrix/federation/v1/make_join/%21r%3Ax/%40u%3Ay?ver=10&ver=11&other=1"
                .parse()
                .unwrap();
        assert_eq!(
            versions_from_query(&uri),
            vec![RoomVersionId::V10, RoomVersionId::V11]
        );
        let none: http::Uri = "/x".parse().unwrap();
        assert_eq!(versions_from_query(&none), vec![RoomVersionId::V1]);
        assert_eq!(percent_decode("org.matrix.msc%32"), "org.matrix.msc2");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }
}
