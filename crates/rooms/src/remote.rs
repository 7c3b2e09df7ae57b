//! Events from elsewhere: the one entry point for a PDU another server sent
//! ([`RoomService::receive_pdu`]), outliers ([`RoomService::receive_outlier`]) and the
//! verification both share (size, format, signatures through a [`KeyLookup`], content
//! hash with redaction on mismatch).
use std::collections::BTreeMap;

use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, Verified};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomVersionId, ServerName,
};
use storage::{Batch, Cf};

use crate::append::{Outcome, RemoteAppend};
use crate::pdu::Pdu;
use crate::persist::{AppendOpts, rules_for};
use crate::resolve::EventCache;
use crate::store::{EventStatus, StoredEvent, entries_to_map};
use crate::{MAX_PDU_BYTES, Result, RoomError, RoomService, StateMap};

/// Most `prev_events` a received PDU may cite (Synapse's limit; bounds state resolution).
pub const MAX_PREV_EVENTS: usize = 20;

/// Most `auth_events` a received PDU may cite (the auth selection never needs more).
pub const MAX_AUTH_EVENTS: usize = 10;

/// The servers' public keys, for checking event signatures. The federation layer
/// implements it over its key cache; `rooms` never fetches keys itself, so the caller
/// makes sure the keys [`keys_needed`] names are cached before calling in.
pub trait KeyLookup {
    /// The ed25519 public key (32 raw bytes) `key_id` (e.g. `ed25519:abc`) of `server`,
    /// valid at `ts_ms` (the event's `origin_server_ts`), or `None` if unknown or
    /// not valid then.
    fn verify_key(&self, server: &ServerName, key_id: &str, ts_ms: u64) -> Option<Vec<u8>>;
}

/// A [`KeyLookup`] from a fixed map (tests, or a caller that fetched the keys up front):
/// server → key id → raw public key. Validity times are not checked.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(pub BTreeMap<OwnedServerName, BTreeMap<String, Vec<u8>>>);

impl KeyLookup for StaticKeys {
    fn verify_key(&self, server: &ServerName, key_id: &str, _ts_ms: u64) -> Option<Vec<u8>> {
        self.0.get(server).and_then(|k| k.get(key_id)).cloned()
    }
}

/// What became of a PDU given to [`RoomService::receive_pdu`]. Errors (`Err`) mean the
/// PDU was not stored at all: malformed or too large (`BadJson`, `TooLarge`), a room this
/// server does not know (`UnknownRoom`), a missing or bad signature (`Forbidden`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// In the room's timeline (new at stream position `pos`, or already there).
    Accepted { event_id: OwnedEventId, pos: u64 },
    /// Authorised by its auth events and the state before it, but not by the room's
    /// current state: kept in the DAG, never shown to clients, not a forward extremity.
    SoftFailed {
        event_id: OwnedEventId,
        reason: String,
    },
    /// Failed the authorization rules: stored (so it is not fetched again) but never
    /// served and never state. Events that cite it as an auth event are rejected too.
    Rejected {
        event_id: OwnedEventId,
        reason: String,
    },
    /// Nothing was stored: these events are unknown. Fetch the `prev_events` with
    /// `/get_missing_events` (give each to `receive_pdu`, oldest first) and the
    /// `auth_events` with `/event_auth` or `/event` (give each to
    /// [`RoomService::receive_outlier`]), then retry; or, when the prev events cannot be
    /// had, fetch `/state_ids` at the event and call [`RoomService::receive_pdu_after_gap`].
    NeedsMissingEvents {
        event_id: OwnedEventId,
        prev_events: Vec<OwnedEventId>,
        auth_events: Vec<OwnedEventId>,
    },
}

impl Received {
    pub fn event_id(&self) -> &EventId {
        match self {
            Received::Accepted { event_id, .. }
            | Received::SoftFailed { event_id, .. }
            | Received::Rejected { event_id, .. }
            | Received::NeedsMissingEvents { event_id, .. } => event_id,
        }
    }
}

/// The event id of a PDU in a room of `version`: the reference hash for v3+ (v3:
/// standard base64, v4+: URL-safe), the `event_id` field for v1 and v2.
pub fn event_id_for(version: &RoomVersionId, pdu: &CanonicalJsonObject) -> Result<OwnedEventId> {
    crate::version::event_id_of(&rules_for(version)?, pdu)
}

/// The `(server, key id)` pairs whose keys checking `pdu`'s signatures needs (the
/// servers the room version requires, with every key id each signed with), so an async
/// caller can fetch them before calling in.
pub fn keys_needed(
    version: &RoomVersionId,
    pdu: &CanonicalJsonObject,
) -> Result<Vec<(OwnedServerName, String)>> {
    let rules = rules_for(version)?;
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures)
            .map_err(|e| RoomError::BadJson(format!("cannot tell who must sign: {e}")))?;
    let Some(CanonicalJsonValue::Object(sigs)) = pdu.get("signatures") else {
        return Err(RoomError::Forbidden("PDU is not signed".into()));
    };
    let mut out = Vec::new();
    for server in servers {
        if let Some(CanonicalJsonValue::Object(keys)) = sigs.get(server.as_str()) {
            for key_id in keys.keys() {
                out.push((server.clone(), key_id.clone()));
            }
        }
    }
    Ok(out)
}

/// The room of a PDU: its `room_id`, or for a v12 create event (which has none) the room
/// ID its reference hash defines.
pub(crate) fn room_of(pdu: &CanonicalJsonObject) -> Result<OwnedRoomId> {
    match pdu.get("room_id") {
        Some(CanonicalJsonValue::String(r)) => OwnedRoomId::try_from(r.as_str())
            .map_err(|_| RoomError::BadJson("invalid room_id".into())),
        None if matches!(pdu.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create") =>
        {
            let rules = rules_for(&RoomVersionId::V12)?;
            let id = crate::version::event_id_of(&rules, pdu)?;
            crate::version::room_id_of_create_event(&id)
        }
        _ => Err(RoomError::BadJson("PDU without room_id".into())),
    }
}

impl RoomService {
    /// Check a PDU from elsewhere the way every path does: size, well-formed, signatures
    /// of the servers the room version requires (the sender's; for v1/v2 also the event
    /// id's; for restricted joins the authorising user's) with keys valid at its
    /// `origin_server_ts`, and the content hash — a PDU whose hash does not match is
    /// redacted (spec: "checks performed on receipt of a PDU", steps 1–3). Returns its
    /// event id and the (possibly redacted) PDU without `unsigned`.
    pub(crate) fn verify_remote(
        &self,
        version: &RoomVersionId,
        mut pdu: CanonicalJsonObject,
        keys: &dyn KeyLookup,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let size = serde_json::to_string(&pdu)
            .map_err(|e| RoomError::Internal(e.to_string()))?
            .len();
        if size > MAX_PDU_BYTES {
            return Err(RoomError::TooLarge(format!(
                "PDU is {size} bytes, the limit is {MAX_PDU_BYTES}"
            )));
        }
        // What other servers add on the way is not ours to keep.
        pdu.remove("unsigned");
        let rules = rules_for(version)?;
        let event_id = event_id_for(version, &pdu)?;
        let parsed = Pdu::parse(event_id.clone(), &pdu)?;
        if parsed.prev_events.len() > MAX_PREV_EVENTS || parsed.auth_events.len() > MAX_AUTH_EVENTS
        {
            return Err(RoomError::BadJson(format!(
                "{event_id} cites more than {MAX_PREV_EVENTS} prev events or {MAX_AUTH_EVENTS} auth events"
            )));
        }
        let ts = match pdu.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => return Err(RoomError::BadJson("PDU without origin_server_ts".into())),
        };
        let mut map = PublicKeyMap::new();
        for (server, key_id) in keys_needed(version, &pdu)? {
            let key = if server == self.server_name {
                self.own_verify_key(&key_id, ts)
            } else {
                keys.verify_key(&server, &key_id, ts)
            };
            if let Some(key) = key {
                map.entry(server.to_string())
                    .or_default()
                    .insert(key_id, Base64::new(key));
            }
        }
        match ruma::signatures::verify_event(&map, &pdu, &rules) {
            Ok(Verified::All) => {}
            Ok(Verified::Signatures) => {
                tracing::info!(event_id = %event_id, "content hash mismatch: storing the redacted event");
                pdu = ruma::canonical_json::redact(pdu, &rules.redaction, None)
                    .map_err(|e| RoomError::BadJson(format!("cannot redact PDU: {e}")))?;
            }
            Err(e) => {
                return Err(RoomError::Forbidden(format!(
                    "signature check failed for {event_id}: {e}"
                )));
            }
        }
        Ok((event_id, pdu))
    }

    /// This server's key `key_id` as of `ts_ms`: the current key, or an old one that had
    /// not expired then (our own events come back through federation too).
    fn own_verify_key(&self, key_id: &str, ts_ms: u64) -> Option<Vec<u8>> {
        if key_id == self.key.key_id() {
            return Some(self.public_key().to_vec());
        }
        self.key
            .old_keys()
            .iter()
            .find(|k| k.key_id == key_id && ts_ms < k.expired_ts)
            .and_then(|k| Base64::<ruma::serde::base64::Standard>::parse(&k.public_key).ok())
            .map(|b| b.as_bytes().to_vec())
    }

    /// The one entry point for a PDU from another server (`/send`, `/get_missing_events`
    /// answers, backfill): the checks on receipt of a PDU, then into the room's DAG —
    /// forks are resolved with state resolution v2. `origin` is the server that
    /// delivered it (it may relay other servers' events; each must carry its own
    /// server's signature). Idempotent: a known event answers what became of it.
    pub fn receive_pdu(
        &self,
        origin: &ServerName,
        pdu: CanonicalJsonObject,
        keys: &dyn KeyLookup,
    ) -> Result<Received> {
        self.receive(origin, pdu, keys, None)
    }

    /// [`RoomService::receive_pdu`] for an event whose prev events cannot be fetched: the
    /// gap is accepted and `state_before` (the event ids `/state_ids` reported for the
    /// event; each must already be stored, e.g. through [`RoomService::receive_outlier`])
    /// stands in for the state after the missing prev events.
    pub fn receive_pdu_after_gap(
        &self,
        origin: &ServerName,
        pdu: CanonicalJsonObject,
        state_before: &[OwnedEventId],
        keys: &dyn KeyLookup,
    ) -> Result<Received> {
        self.receive(origin, pdu, keys, Some(state_before))
    }

    fn receive(
        &self,
        origin: &ServerName,
        pdu: CanonicalJsonObject,
        keys: &dyn KeyLookup,
        gap: Option<&[OwnedEventId]>,
    ) -> Result<Received> {
        let room = room_of(&pdu)?;
        let version = self
            .summary(&room)?
            .ok_or_else(|| RoomError::UnknownRoom(room.clone()))?
            .version;
        let (event_id, pdu) = self.verify_remote(&version, pdu, keys)?;
        let _guard = self.lock_room(&room);
        if let Some(known) = self.event_any(&event_id)?
            && known.status != EventStatus::Outlier
        {
            return Ok(received_from_status(&known));
        }
        let parsed = Pdu::parse(event_id.clone(), &pdu)?;
        if parsed.room_id != room {
            return Err(RoomError::BadJson("room_id changed".into()));
        }
        let mut missing_auth = Vec::new();
        for a in parsed.auth_parents() {
            if self.event_any(a)?.is_none() {
                missing_auth.push(a.clone());
            }
        }
        let mut missing_prev = Vec::new();
        for p in &parsed.prev_events {
            if self.state_at_record(p)?.is_none() {
                missing_prev.push(p.clone());
            }
        }
        let gap_state = match gap {
            None => None,
            Some(ids) => Some(self.state_map_of(&room, ids, &mut missing_auth)?),
        };
        if !missing_auth.is_empty() || (!missing_prev.is_empty() && gap_state.is_none()) {
            if gap_state.is_some() {
                missing_prev.clear();
            }
            tracing::debug!(%origin, event_id = %event_id, ?missing_prev, ?missing_auth, "PDU needs missing events");
            return Ok(Received::NeedsMissingEvents {
                event_id,
                prev_events: missing_prev,
                auth_events: missing_auth,
            });
        }
        let remote = RemoteAppend { gap_state };
        Ok(
            match self.append_event(event_id, pdu, AppendOpts::default(), Some(&remote))? {
                Outcome::Timeline(sent) => Received::Accepted {
                    event_id: sent.event_id,
                    pos: sent.pos,
                },
                Outcome::SoftFailed(event_id, reason) => Received::SoftFailed { event_id, reason },
                Outcome::Rejected(event_id, reason) => Received::Rejected { event_id, reason },
            },
        )
    }

    /// The state map of a list of stored state events; ids not stored go to `missing`.
    fn state_map_of(
        &self,
        room: &ruma::RoomId,
        ids: &[OwnedEventId],
        missing: &mut Vec<OwnedEventId>,
    ) -> Result<StateMap> {
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            match self.event_any(id)? {
                None => missing.push(id.clone()),
                Some(ev) => {
                    if ev.room_id() != room.as_str() {
                        return Err(RoomError::BadJson(format!("{id} is in another room")));
                    }
                    if ev.status == EventStatus::Rejected {
                        continue;
                    }
                    let Some(sk) = ev.state_key() else {
                        return Err(RoomError::BadJson(format!("{id} is not a state event")));
                    };
                    entries.push((ev.kind().to_owned(), sk.to_owned(), ev.event_id.clone()));
                }
            }
        }
        Ok(entries_to_map(&entries))
    }

    /// Store a PDU as an outlier (see [`crate::EventStatus::Outlier`]): an auth event or
    /// state event fetched for another event. Its signatures, hash and the authorization
    /// rules against its own auth events are checked (failing those: stored as rejected);
    /// its auth events must be stored already (else [`Received::NeedsMissingEvents`]).
    /// `version` is the room's version (the room need not be known yet). Returns
    /// `Accepted` with `pos` 0 for a new outlier.
    pub fn receive_outlier(
        &self,
        version: &RoomVersionId,
        pdu: CanonicalJsonObject,
        keys: &dyn KeyLookup,
    ) -> Result<Received> {
        let room = room_of(&pdu)?;
        if let Some(v) = self.room_version(&room)?
            && v != *version
        {
            return Err(RoomError::BadJson(format!(
                "room {room} is version {v}, not {version}"
            )));
        }
        let (event_id, pdu) = self.verify_remote(version, pdu, keys)?;
        let _guard = self.lock_room(&room);
        if let Some(known) = self.event_any(&event_id)? {
            return Ok(received_from_status(&known));
        }
        let parsed = std::sync::Arc::new(Pdu::parse(event_id.clone(), &pdu)?);
        let mut missing = Vec::new();
        for a in parsed.auth_parents() {
            if self.event_any(a)?.is_none() {
                missing.push(a.clone());
            }
        }
        if !missing.is_empty() {
            return Ok(Received::NeedsMissingEvents {
                event_id,
                prev_events: Vec::new(),
                auth_events: missing,
            });
        }
        let cache = EventCache::new(self);
        cache.insert(parsed.clone());
        let rules = rules_for(version)?;
        let verdict = crate::import::check_against_auth_events(&rules, &parsed, &cache);
        let status = match &verdict {
            Ok(()) => EventStatus::Outlier,
            Err(_) => EventStatus::Rejected,
        };
        let mut b = Batch::new();
        b.put_json(
            Cf::Events,
            event_id.as_str(),
            &outlier_record(&event_id, pdu, status),
        );
        self.db.write(b)?;
        Ok(match verdict {
            Ok(()) => Received::Accepted { event_id, pos: 0 },
            Err(reason) => Received::Rejected { event_id, reason },
        })
    }
}

impl RoomService {
    /// An unsigned event template for a remote user, built on the room's forward
    /// extremities with `auth_events` from the current state (`make_join`, `make_leave`,
    /// `make_knock`). The resident server does not sign it; the remote server fills in
    /// hashes and signatures and sends it back through `send_*`, which goes through
    /// [`RoomService::receive_pdu`]. Returns the room version with it.
    pub fn event_template(
        &self,
        room: &ruma::RoomId,
        sender: &ruma::UserId,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let summary = self.require_summary(room)?;
        let new = crate::persist::NewEvent {
            kind: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            content,
            redacts: None,
        };
        let start = summary.extremities.len().saturating_sub(20);
        let obj = self.unsigned_event_on(
            &summary.version,
            room,
            sender,
            &new,
            &summary.extremities[start..],
            |t, k| self.current_state_event_id(room, t, k),
        )?;
        Ok((summary.version, obj))
    }

    /// Hash and sign a PDU with this server's key (a template a remote resident server
    /// made for one of our users, e.g. the join of [`RoomService::import_join`]); returns
    /// its event id and the signed PDU. Enforces the size limit.
    pub fn sign_template(
        &self,
        version: &RoomVersionId,
        template: CanonicalJsonObject,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let rules = rules_for(version)?;
        let (_, signed) = self.sign_pdu(&rules, template)?;
        Ok((event_id_for(version, &signed)?, signed))
    }

    /// The auth chain of `events`: every event reachable through `auth_events`, for
    /// `/state_ids`, `/event_auth` and `send_join` answers (sorted by event id).
    pub fn auth_chain_ids(&self, events: &[OwnedEventId]) -> Vec<OwnedEventId> {
        let cache = EventCache::new(self);
        let mut out: Vec<OwnedEventId> =
            self.auth_chain(events.iter(), &cache).into_iter().collect();
        out.sort();
        out
    }

    /// The auth chain of `events` as other servers get it (`/state`, `/state_ids`,
    /// `/event_auth`): everything reachable from `events` through `auth_events` (a starting
    /// event only where another one cites it), breadth-first, in any room version's format,
    /// with v12's implicit create event, leaving out rejected events, at most `limit`.
    pub fn auth_chain_for_federation(
        &self,
        events: &[OwnedEventId],
        limit: usize,
    ) -> Vec<OwnedEventId> {
        let cache = EventCache::new(self);
        // A starting event another one cites is part of the chain (as Synapse answers).
        let mut seen: std::collections::HashSet<OwnedEventId> = std::collections::HashSet::new();
        let mut queue: std::collections::VecDeque<OwnedEventId> = events
            .iter()
            .filter_map(|id| cache.get(id))
            .flat_map(|ev| ev.auth_parents().cloned().collect::<Vec<_>>())
            .collect();
        let mut out = Vec::new();
        while let Some(id) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(ev) = cache.get(&id) else {
                continue;
            };
            if ev.rejected {
                continue;
            }
            queue.extend(ev.auth_parents().filter(|a| !seen.contains(*a)).cloned());
            out.push(id);
        }
        out
    }
}

pub(crate) fn outlier_record(
    event_id: &OwnedEventId,
    pdu: CanonicalJsonObject,
    status: EventStatus,
) -> StoredEvent {
    StoredEvent {
        event_id: event_id.clone(),
        pos: 0,
        pdu,
        txn: None,
        redacted_because: None,
        prev_state: None,
        status,
        off_stream: false,
    }
}

fn received_from_status(ev: &StoredEvent) -> Received {
    let event_id = ev.event_id.clone();
    match ev.status {
        EventStatus::Timeline | EventStatus::Outlier => Received::Accepted {
            event_id,
            pos: ev.pos,
        },
        EventStatus::SoftFailed => Received::SoftFailed {
            event_id,
            reason: "soft-failed when it first arrived".into(),
        },
        EventStatus::Rejected => Received::Rejected {
            event_id,
            reason: "rejected when it first arrived".into(),
        },
    }
}
