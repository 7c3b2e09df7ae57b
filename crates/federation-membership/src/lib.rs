//! # federation-membership — joins, leaves and invites as the *joining* server
//!
//! Owns the outbound half of room membership over federation, for local users and rooms
//! that live elsewhere:
//!
//! * **Join** ([`MembershipService::join`]): resolve a remote alias with
//!   `GET /query/directory`; try the candidate servers (`via`/`server_name`, the alias's
//!   servers, the room ID's server, the inviter's server) in order with
//!   `GET /make_join?ver=…`; check and sign the template (`rooms`), `PUT /v2/send_join`;
//!   verify every returned state and auth-chain event (reference-hash event ID, signatures
//!   with keys valid at the event's time, content hash → redact) and hand the verified events
//!   and the join to [`rooms::RoomService::import_join`], which runs the authorization rules
//!   and only then marks the user joined.
//! * **Leave / reject an invite** ([`MembershipService::leave`]) for a room this server has
//!   no state of: `make_leave` / `v2/send_leave` through the inviter's or the room's server.
//! * **Knock** ([`MembershipService::knock`]): `make_knock?ver=…` / `v1/send_knock`
//!   through the candidate servers; the signed knock and the resident's
//!   `knock_room_state` are recorded ([`rooms::RoomService::record_remote_knock`]).
//!   Rescinding it is a leave; accepting it is the resident's invite.
//! * **Invite a remote user** ([`MembershipService::invite`]): the invite is built and
//!   authorised locally, counter-signed by the invitee's server (`PUT /v2/invite` with
//!   `invite_room_state` as full PDUs), and appended once that signature checks.
//!
//! The resident-server half (serving these endpoints) is `api-federation`'s `membership`
//! module; events after the join arrive through `/send` and leave through the sender.
mod verify;

use std::sync::Arc;

use federation_client::keys::KeySource;
use federation_client::{FederationClient, FederationError, FederationResponse};
use rooms::{Membership, RoomError, RoomService};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomAliasId, RoomId, RoomVersionId, UserId,
};
use serde_json::{Map, Value, json};

pub use verify::{
    KeyMemo, PduError, event_id_of, static_keys, verify_pdu, verify_server_signature,
};

/// Most servers a join tries before giving up.
const MAX_JOIN_CANDIDATES: usize = 10;
/// Most state plus auth-chain events accepted from a `send_join` answer.
const MAX_JOIN_EVENTS: usize = 100_000;

/// Why a federated membership change failed. The HTTP layer maps these to Matrix errors.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Room(#[from] RoomError),
    /// A remote server refused, with its Matrix error (passed on to the client).
    #[error("{server} refused: {errcode}: {message}")]
    Refused {
        server: String,
        status: u16,
        errcode: String,
        message: String,
    },
    /// No server could be reached or answered sensibly.
    #[error("{0}")]
    Unreachable(String),
    /// A remote server answered something we cannot believe.
    #[error("{0}")]
    BadResponse(String),
    #[error("{0}")]
    NotFound(String),
    /// 400 `M_INCOMPATIBLE_ROOM_VERSION`.
    #[error("room version {0} is not supported by this server")]
    IncompatibleVersion(String),
}

pub type Result<T, E = MembershipError> = std::result::Result<T, E>;

/// The outcome of a join, leave or invite: the stored event and its stream position.
#[derive(Debug, Clone)]
pub struct Done {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub pos: u64,
}

/// Joins, leaves and invites that need another server.
pub struct MembershipService {
    rooms: Arc<RoomService>,
    client: FederationClient,
    keys: Arc<dyn KeySource>,
}

/// Percent-encodes one path segment or query value (everything but unreserved characters).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn errcode_of(resp: &FederationResponse) -> (String, String) {
    let code = resp
        .body
        .get("errcode")
        .and_then(Value::as_str)
        .unwrap_or("M_UNKNOWN")
        .to_owned();
    let msg = resp
        .body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    (code, msg)
}

fn to_object(v: Value, what: &str) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(MembershipError::BadResponse(format!(
            "{what} is not an object"
        ))),
        Err(e) => Err(MembershipError::BadResponse(format!(
            "{what} is not canonical JSON: {e}"
        ))),
    }
}

fn rules_of(version: &RoomVersionId) -> Result<ruma::room_version_rules::RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| MembershipError::IncompatibleVersion(version.to_string()))
}

impl MembershipService {
    pub fn new(
        rooms: Arc<RoomService>,
        client: FederationClient,
        keys: Arc<dyn KeySource>,
    ) -> MembershipService {
        MembershipService {
            rooms,
            client,
            keys,
        }
    }

    fn our_name(&self) -> &ruma::ServerName {
        self.rooms.server_name()
    }

    /// Whether a join of `room_or_alias` needs federation: a remote alias, or a room this
    /// server has no state of or none of our users is joined to (we would be joining on a
    /// stale copy otherwise).
    pub fn join_needs_federation(&self, room_or_alias: &str) -> Result<bool> {
        if room_or_alias.starts_with('#') {
            let alias = RoomAliasId::parse(room_or_alias).map_err(|_| {
                RoomError::InvalidParam(format!("invalid room alias {room_or_alias:?}"))
            })?;
            return Ok(alias.server_name() != self.our_name());
        }
        let room = RoomId::parse(room_or_alias)
            .map_err(|_| RoomError::InvalidParam(format!("invalid room id {room_or_alias:?}")))?;
        if !self.rooms.room_exists(&room)? {
            return Ok(true);
        }
        let ours = self.our_name();
        let local_joined = self
            .rooms
            .joined_members(&room)?
            .iter()
            .any(|u| u.server_name() == ours);
        Ok(!local_joined
            && self
                .rooms
                .servers_in_room(&room)?
                .iter()
                .any(|s| s != ours.as_str()))
    }

    /// `GET /_matrix/federation/v1/query/directory` at the alias's server.
    pub async fn resolve_remote_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let server = alias.server_name().as_str();
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            enc(alias.as_str())
        );
        let resp = self
            .client
            .request(http::Method::GET, server, &path, None)
            .await
            .map_err(|e| MembershipError::Unreachable(e.to_string()))?;
        if resp.status == 404 {
            return Err(MembershipError::NotFound(format!(
                "room alias {alias} not found"
            )));
        }
        if resp.status != 200 {
            let (errcode, message) = errcode_of(&resp);
            return Err(MembershipError::Refused {
                server: server.to_owned(),
                status: resp.status,
                errcode,
                message,
            });
        }
        let room = resp
            .body
            .get("room_id")
            .and_then(Value::as_str)
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| MembershipError::BadResponse(format!("{server}: no room_id")))?;
        let servers = resp
            .body
            .get("servers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|s| OwnedServerName::try_from(s).ok())
                    .take(MAX_JOIN_CANDIDATES)
                    .collect()
            })
            .unwrap_or_default();
        Ok((room, servers))
    }

    /// Servers to ask, in order: the caller's `via`, the inviter's server (if `user` has
    /// an invite), the servers of a knock's stripped state; only when none of those
    /// exists, the servers in a room we have the state of and the room ID's server;
    /// never ourselves, no repeats.
    fn candidates(&self, user: &UserId, room: &RoomId, via: &[OwnedServerName]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |s: &str| {
            if s != self.our_name().as_str() && !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        };
        for s in via {
            push(s.as_str());
        }
        if let Ok(Some(rec)) = self.rooms.membership(room, user)
            && rec.membership == Membership::Invite
            && let Ok(Some(ev)) = self.rooms.event(&rec.event_id)
            && let Ok(sender) = UserId::parse(ev.sender())
        {
            push(sender.server_name().as_str());
        }
        // A knock on a room we have no state of: the servers of the stripped state's
        // senders (the resident answered it), e.g. to rescind the knock in a v12 room.
        if let Ok(Some(rec)) = self.rooms.membership(room, user)
            && rec.membership == Membership::Knock
            && let Ok(stripped) = self.rooms.knock_state(room, user)
        {
            for ev in &stripped {
                if let Some(sender) = ev.get("sender").and_then(Value::as_str)
                    && let Ok(sender) = UserId::parse(sender)
                {
                    push(sender.server_name().as_str());
                }
            }
        }
        // Only when nothing else names a server (a caller that names servers means those:
        // a restricted join through them may fail on purpose): the servers of a room we
        // have the state of (a restricted join no local member can vouch for goes to a
        // resident that can), then the room ID's server.
        if out.is_empty() {
            let ours = self.our_name().as_str();
            let mut fallback = self.rooms.servers_in_room(room).unwrap_or_default();
            if let Some(s) = room.server_name() {
                fallback.push(s.to_string());
            }
            for s in fallback {
                if s != ours && !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out.truncate(MAX_JOIN_CANDIDATES);
        out
    }

    /// The room a join or knock names, and the servers to try: `via` plus, for an alias,
    /// the servers the alias lookup named and the alias's own server.
    async fn resolve_target(
        &self,
        room_or_alias: &str,
        via: &[OwnedServerName],
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let mut via = via.to_vec();
        if !room_or_alias.starts_with('#') {
            let room = OwnedRoomId::try_from(room_or_alias).map_err(|_| {
                RoomError::InvalidParam(format!("invalid room id {room_or_alias:?}"))
            })?;
            return Ok((room, via));
        }
        let alias = RoomAliasId::parse(room_or_alias).map_err(|_| {
            RoomError::InvalidParam(format!("invalid room alias {room_or_alias:?}"))
        })?;
        let (room, servers) = self.resolve_remote_alias(&alias).await?;
        via.extend(servers);
        via.push(alias.server_name().to_owned());
        Ok((room, via))
    }

    /// Join `room_or_alias` for local `user` through other servers.
    pub async fn join(
        &self,
        user: &UserId,
        room_or_alias: &str,
        via: &[OwnedServerName],
        content: Option<Map<String, Value>>,
    ) -> Result<Done> {
        let (room, via) = self.resolve_target(room_or_alias, via).await?;
        let candidates = self.candidates(user, &room, &via);
        if candidates.is_empty() {
            return Err(MembershipError::NotFound(format!(
                "no server to join {room} through: give one with server_name or via"
            )));
        }
        let mut last = MembershipError::Unreachable(format!("no server could join {room}"));
        for server in &candidates {
            match self.join_via(user, &room, server, content.clone()).await {
                Ok(done) => return Ok(done),
                // The version is room-wide: another server will not help.
                Err(e @ MembershipError::IncompatibleVersion(_)) => return Err(e),
                Err(e) => {
                    tracing::info!(%room, %server, error = %e, "join through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_via(
        &self,
        user: &UserId,
        room: &RoomId,
        server: &str,
        content: Option<Map<String, Value>>,
    ) -> Result<Done> {
        let (version, signed, event_id) = self
            .make_member(user, room, server, Membership::Join, content)
            .await?;
        let rules = rules_of(&version)?;
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(room.as_str()),
            enc(event_id.as_str())
        );
        let body = Value::from(CanonicalJsonValue::Object(signed.clone()));
        let resp = self.put(server, &path, &body).await?;
        let body = resp.body;
        // A restricted join comes back with the resident's signature added.
        let join = match body.get("event") {
            Some(ev @ Value::Object(_)) => {
                let ev = to_object(ev.clone(), "send_join event")?;
                if event_id_of(&ev, &rules)
                    .map_err(|e| MembershipError::BadResponse(e.to_string()))?
                    != event_id
                {
                    return Err(MembershipError::BadResponse(format!(
                        "{server} returned another join event"
                    )));
                }
                ev
            }
            _ => signed,
        };
        let list = |field: &str| -> Result<Vec<Value>> {
            match body.get(field) {
                Some(Value::Array(a)) => Ok(a.clone()),
                _ => Err(MembershipError::BadResponse(format!(
                    "{server}'s send_join answer has no {field}"
                ))),
            }
        };
        if let Some(done) = self.join_known_room(room, server, &rules, &join).await? {
            return Ok(done);
        }
        let (state, auth_chain) = (list("state")?, list("auth_chain")?);
        if state.len() + auth_chain.len() > MAX_JOIN_EVENTS {
            return Err(MembershipError::BadResponse(format!(
                "{server}'s send_join answer has too many events"
            )));
        }
        let mut memo = KeyMemo::new();
        let state = self.verified(&rules, room, state, &mut memo).await;
        let auth_chain = self.verified(&rules, room, auth_chain, &mut memo).await;
        let create_ok = state.iter().any(|(_, ev)| {
            matches!(ev.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create")
                && match ev.get("content") {
                    Some(CanonicalJsonValue::Object(c)) => {
                        let v = match c.get("room_version") {
                            Some(CanonicalJsonValue::String(v)) => v.as_str(),
                            None => "1",
                            _ => "",
                        };
                        v == version.as_str()
                    }
                    _ => false,
                }
        });
        if !create_ok {
            return Err(MembershipError::BadResponse(format!(
                "{server}'s send_join state has no valid m.room.create of version {version}"
            )));
        }
        let sent = self
            .import(room, version, state, auth_chain, join, memo)
            .await?;
        Ok(Done {
            room_id: room.to_owned(),
            event_id: sent.event_id,
            pos: sent.pos,
        })
    }

    /// A remote join to a room another local user is still joined to (a restricted join
    /// no local member could vouch for): the returned join joins the DAG we have, like
    /// any PDU, instead of replacing the room's state with the answer's. `None` when the
    /// room is not such a room or the join cites events we lack (then the answer's state
    /// is imported).
    async fn join_known_room(
        &self,
        room: &RoomId,
        server: &str,
        rules: &ruma::room_version_rules::RoomVersionRules,
        join: &CanonicalJsonObject,
    ) -> Result<Option<Done>> {
        let ours = self.our_name().to_owned();
        let local_joined = self.rooms.room_exists(room)?
            && self
                .rooms
                .joined_members(room)?
                .iter()
                .any(|u| u.server_name() == ours);
        if !local_joined {
            return Ok(None);
        }
        let mut memo = KeyMemo::new();
        verify_pdu(&*self.keys, rules, join.clone(), &mut memo)
            .await
            .map_err(|e| MembershipError::BadResponse(format!("{server}'s join: {e}")))?;
        let keys = static_keys(&memo);
        let rooms = self.rooms.clone();
        let (origin, pdu) = (ours, join.clone());
        let received = tokio::task::spawn_blocking(move || rooms.receive_pdu(&origin, pdu, &keys))
            .await
            .map_err(|e| MembershipError::BadResponse(format!("join panicked: {e}")))??;
        match received {
            rooms::Received::Accepted { event_id, pos } => Ok(Some(Done {
                room_id: room.to_owned(),
                event_id,
                pos,
            })),
            rooms::Received::NeedsMissingEvents { .. } => Ok(None),
            rooms::Received::SoftFailed { reason, .. }
            | rooms::Received::Rejected { reason, .. } => {
                Err(MembershipError::Room(RoomError::Forbidden(format!(
                    "the join {server} accepted is not allowed by the state here: {reason}"
                ))))
            }
        }
    }

    /// Hands a verified `send_join` answer to the room engine, which stores the state and
    /// auth chain as outliers, runs the authorization rules and appends the join.
    async fn import(
        &self,
        room: &RoomId,
        version: RoomVersionId,
        state: Vec<(OwnedEventId, CanonicalJsonObject)>,
        auth_chain: Vec<(OwnedEventId, CanonicalJsonObject)>,
        join: CanonicalJsonObject,
        memo: KeyMemo,
    ) -> Result<rooms::SentEvent> {
        // The room engine checks each event again with the keys fetched here.
        let keys = static_keys(&memo);
        let rooms = self.rooms.clone();
        let room = room.to_owned();
        let state: Vec<CanonicalJsonObject> = state.into_iter().map(|(_, e)| e).collect();
        let auth_chain: Vec<CanonicalJsonObject> = auth_chain.into_iter().map(|(_, e)| e).collect();
        tokio::task::spawn_blocking(move || {
            rooms.import_join(&room, &version, join, state, auth_chain, &keys)
        })
        .await
        .map_err(|e| MembershipError::BadResponse(format!("join import panicked: {e}")))?
        .map_err(MembershipError::from)
    }

    /// Verified `(event ID, PDU)` of a `send_join` list; events of other rooms and events
    /// whose signatures fail are dropped (the import then drops what depends on them).
    async fn verified(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        room: &RoomId,
        events: Vec<Value>,
        memo: &mut KeyMemo,
    ) -> Vec<(OwnedEventId, CanonicalJsonObject)> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let Ok(obj) = to_object(ev, "event") else {
                continue;
            };
            if RoomService::pdu_room_id(&obj).as_deref() != Some(room) {
                continue;
            }
            match verify_pdu(&*self.keys, rules, obj, memo).await {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::info!(%room, error = %e, "dropping an event of a send_join answer")
                }
            }
        }
        out
    }

    /// `make_join`/`make_leave` at `server`, then the signed event and its ID.
    async fn make_member(
        &self,
        user: &UserId,
        room: &RoomId,
        server: &str,
        membership: Membership,
        content: Option<Map<String, Value>>,
    ) -> Result<(RoomVersionId, CanonicalJsonObject, OwnedEventId)> {
        let path = match membership {
            Membership::Join => {
                let mut p = format!(
                    "/_matrix/federation/v1/make_join/{}/{}",
                    enc(room.as_str()),
                    enc(user.as_str())
                );
                for (i, v) in rooms::supported_room_versions().iter().enumerate() {
                    p.push(if i == 0 { '?' } else { '&' });
                    p.push_str("ver=");
                    p.push_str(&enc(v.as_str()));
                }
                p
            }
            Membership::Knock => {
                let mut p = format!(
                    "/_matrix/federation/v1/make_knock/{}/{}",
                    enc(room.as_str()),
                    enc(user.as_str())
                );
                // Only the versions that have knocking: the resident then refuses a room
                // without it with M_INCOMPATIBLE_ROOM_VERSION.
                let versions = rooms::supported_room_versions();
                let knockable = versions
                    .iter()
                    .filter(|v| v.rules().is_some_and(|r| r.authorization.knocking));
                for (i, v) in knockable.enumerate() {
                    p.push(if i == 0 { '?' } else { '&' });
                    p.push_str("ver=");
                    p.push_str(&enc(v.as_str()));
                }
                p
            }
            _ => format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                enc(room.as_str()),
                enc(user.as_str())
            ),
        };
        let resp = self
            .client
            .request(http::Method::GET, server, &path, None)
            .await
            .map_err(|e| MembershipError::Unreachable(e.to_string()))?;
        if resp.status != 200 {
            let (errcode, message) = errcode_of(&resp);
            if errcode == "M_INCOMPATIBLE_ROOM_VERSION" {
                let v = resp
                    .body
                    .get("room_version")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                return Err(MembershipError::IncompatibleVersion(v.to_owned()));
            }
            return Err(MembershipError::Refused {
                server: server.to_owned(),
                status: resp.status,
                errcode,
                message,
            });
        }
        // Room version 1 is the default when a (very old) server omits it.
        let version_str = resp
            .body
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        let version = RoomVersionId::try_from(version_str).map_err(|_| {
            MembershipError::BadResponse(format!("bad room version {version_str:?}"))
        })?;
        if !rooms::supported_room_versions().contains(&version) {
            return Err(MembershipError::IncompatibleVersion(version.to_string()));
        }
        let template = to_object(
            resp.body.get("event").cloned().unwrap_or(Value::Null),
            "make_join event",
        )?;
        let (event_id, signed) = self
            .rooms
            .sign_member_template(&version, room, user, membership, template, content)?;
        Ok((version, signed, event_id))
    }

    async fn put(&self, server: &str, path: &str, body: &Value) -> Result<FederationResponse> {
        let resp = self
            .client
            .request(http::Method::PUT, server, path, Some(body))
            .await
            .map_err(|e: FederationError| MembershipError::Unreachable(e.to_string()))?;
        if !(200..300).contains(&resp.status) {
            let (errcode, message) = errcode_of(&resp);
            return Err(MembershipError::Refused {
                server: server.to_owned(),
                status: resp.status,
                errcode,
                message,
            });
        }
        Ok(resp)
    }

    /// Leave (or reject an invite to) a room this server has no usable state of, through
    /// the inviter's or the room's server. The leave is recorded locally once a resident
    /// accepted it.
    pub async fn leave(&self, user: &UserId, room: &RoomId, reason: Option<&str>) -> Result<Done> {
        let candidates = self.candidates(user, room, &[]);
        let mut content = Map::new();
        if let Some(r) = reason {
            content.insert("reason".into(), Value::from(r));
        }
        let mut last = MembershipError::NotFound(format!("no server to leave {room} through"));
        for server in &candidates {
            let attempt = async {
                let (version, signed, event_id) = self
                    .make_member(user, room, server, Membership::Leave, Some(content.clone()))
                    .await?;
                let path = format!(
                    "/_matrix/federation/v2/send_leave/{}/{}",
                    enc(room.as_str()),
                    enc(event_id.as_str())
                );
                let body = Value::from(CanonicalJsonValue::Object(signed.clone()));
                self.put(server, &path, &body).await?;
                Ok::<_, MembershipError>((version, signed))
            };
            match attempt.await {
                Ok((version, signed)) => {
                    let sent = self.record_leave(room, user, version, signed).await?;
                    return Ok(Done {
                        room_id: room.to_owned(),
                        event_id: sent.event_id,
                        pos: sent.pos,
                    });
                }
                Err(e) => {
                    tracing::info!(%room, %server, error = %e, "leave through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Knock on `room_or_alias` for local `user` through other servers (`make_knock` /
    /// `send_knock` at the first candidate that accepts); the knock is recorded with the
    /// resident's `knock_room_state`.
    pub async fn knock(
        &self,
        user: &UserId,
        room_or_alias: &str,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<Done> {
        let (room, via) = self.resolve_target(room_or_alias, via).await?;
        let candidates = self.candidates(user, &room, &via);
        if candidates.is_empty() {
            return Err(MembershipError::NotFound(format!(
                "no server to knock on {room} through: give one with server_name or via"
            )));
        }
        let mut content = Map::new();
        if let Some(r) = reason {
            content.insert("reason".into(), Value::from(r));
        }
        let mut last = MembershipError::Unreachable(format!("no server could knock on {room}"));
        for server in &candidates {
            match self.knock_via(user, &room, server, content.clone()).await {
                Ok(done) => return Ok(done),
                Err(e @ MembershipError::IncompatibleVersion(_)) => return Err(e),
                // A refusal by the room's rules (banned, already invited or joined, not a
                // knock room) is the room's answer: every resident would give it.
                Err(e @ MembershipError::Refused { status: 403, .. }) => return Err(e),
                Err(e) => {
                    tracing::info!(%room, %server, error = %e, "knock through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn knock_via(
        &self,
        user: &UserId,
        room: &RoomId,
        server: &str,
        content: Map<String, Value>,
    ) -> Result<Done> {
        let (version, signed, event_id) = self
            .make_member(user, room, server, Membership::Knock, Some(content))
            .await?;
        let path = format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            enc(room.as_str()),
            enc(event_id.as_str())
        );
        let body = Value::from(CanonicalJsonValue::Object(signed.clone()));
        let resp = self.put(server, &path, &body).await?;
        let stripped: Vec<Value> = match resp.body.get("knock_room_state") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let rooms = self.rooms.clone();
        let (r, u) = (room.to_owned(), user.to_owned());
        let sent = tokio::task::spawn_blocking(move || {
            rooms.record_remote_knock(&r, &u, &version, signed, stripped)
        })
        .await
        .map_err(|e| MembershipError::BadResponse(format!("knock panicked: {e}")))??;
        Ok(Done {
            room_id: room.to_owned(),
            event_id: sent.event_id,
            pos: sent.pos,
        })
    }

    /// Records a leave a resident accepted for a room we have no state of.
    async fn record_leave(
        &self,
        room: &RoomId,
        user: &UserId,
        version: RoomVersionId,
        signed: CanonicalJsonObject,
    ) -> Result<rooms::SentEvent> {
        let rooms = self.rooms.clone();
        let (room, user) = (room.to_owned(), user.to_owned());
        tokio::task::spawn_blocking(move || {
            rooms.record_remote_leave(&room, &user, &version, signed)
        })
        .await
        .map_err(|e| MembershipError::BadResponse(format!("leave panicked: {e}")))?
        .map_err(MembershipError::from)
    }

    /// Invite remote `target` to `room` (which lives here or that we are joined to).
    pub async fn invite(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<Done> {
        let server = target.server_name().to_string();
        let (version, event_id, event) = self
            .rooms
            .build_remote_invite(sender, room, target, reason)?;
        let rules = rules_of(&version)?;
        let invite_room_state: Vec<Value> = self
            .rooms
            .invite_room_state_pdus(room)?
            .into_iter()
            .map(|o| Value::from(CanonicalJsonValue::Object(o)))
            .collect();
        let body = json!({
            "room_version": version.as_str(),
            "event": Value::from(CanonicalJsonValue::Object(event)),
            "invite_room_state": invite_room_state,
        });
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            enc(room.as_str()),
            enc(event_id.as_str())
        );
        let resp = self.put(&server, &path, &body).await?;
        let returned = to_object(
            resp.body.get("event").cloned().unwrap_or(Value::Null),
            "invite answer",
        )?;
        // The invitee's server must have signed exactly our event (same reference hash).
        if event_id_of(&returned, &rules)
            .map_err(|e| MembershipError::BadResponse(e.to_string()))?
            != event_id
        {
            return Err(MembershipError::BadResponse(format!(
                "{server} returned another invite event"
            )));
        }
        let mut memo = KeyMemo::new();
        verify_server_signature(&*self.keys, &rules, &returned, &server, &mut memo)
            .await
            .map_err(|e| MembershipError::BadResponse(format!("{server}'s invite answer: {e}")))?;
        let rooms = self.rooms.clone();
        let sent = tokio::task::spawn_blocking(move || rooms.store_remote_invite(returned))
            .await
            .map_err(|e| MembershipError::BadResponse(format!("invite append panicked: {e}")))??;
        Ok(Done {
            room_id: room.to_owned(),
            event_id: sent.event_id,
            pos: sent.pos,
        })
    }
}
