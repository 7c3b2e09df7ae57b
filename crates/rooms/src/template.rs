//! Membership events that cross servers: templates this server builds for a remote user
//! (`make_join`/`make_leave` as the resident server), accepting the signed result back
//! (`send_join`/`send_leave`), signing a template a remote resident built for one of our
//! users, and the outbound invite (built here, counter-signed by the invitee's server).
use std::collections::BTreeSet;
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId, UserId,
};
use serde_json::Value;

use crate::create::member_content;
use crate::pdu::Pdu;
use crate::persist::{NewEvent, rules_for};
use crate::resolve::EventCache;
use crate::{Membership, Result, RoomError, RoomService, SentEvent};

/// What `send_join` answers: the state before the join, its auth chain, the join as stored.
#[derive(Debug, Clone)]
pub struct AcceptedMember {
    pub event_id: OwnedEventId,
    pub pos: u64,
    /// The accepted event (with our signature, if we added one).
    pub event: CanonicalJsonObject,
    /// Full PDUs of the state before the event.
    pub state: Vec<CanonicalJsonObject>,
    /// Full PDUs of the auth chain of `state` and of the event.
    pub auth_chain: Vec<CanonicalJsonObject>,
    /// Servers with a joined member after the event.
    pub servers_in_room: Vec<String>,
}

fn str_of<'a>(obj: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match obj.get(field) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn content_membership(obj: &CanonicalJsonObject) -> Option<&str> {
    match obj.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

impl RoomService {
    /// `make_join` / `make_leave`: an unsigned `m.room.member` template for remote `user`
    /// on the room's current forward extremities, checked against the authorization rules
    /// so a join the room forbids is refused here (403) instead of at `send_join`.
    /// `supported`: the joining server's room versions (`ver`); the room's must be among them.
    pub fn member_template(
        &self,
        room: &RoomId,
        user: &UserId,
        membership: Membership,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        if user.server_name() == self.server_name {
            return Err(RoomError::InvalidParam(format!(
                "{user} is a local user: no template is needed"
            )));
        }
        let _guard = self.lock_room(room);
        let summary = self.require_summary(room)?;
        if !supported.contains(&summary.version) {
            return Err(RoomError::UnsupportedRoomVersion(
                summary.version.to_string(),
            ));
        }
        let mut new = NewEvent::state(
            "m.room.member",
            user.as_str(),
            member_content(membership.as_str(), None, None),
        );
        if membership == Membership::Join {
            // A restricted room: we vouch for the join (`join_authorised_via_users_server`)
            // when the user is joined to an allowed room here, as for a local user.
            self.prepare_local_member(room, user, &mut new)?;
        }
        let (event_id, obj) =
            self.build_event(&summary.version, Some(&summary), room, user, &new)?;
        self.check_against_current_state(&summary.version, &event_id, &obj)?;
        let mut template = obj;
        template.remove("signatures");
        template.remove("hashes");
        template.remove("unsigned");
        // The joining server replaces `origin` with its own name; Synapse expects one.
        template.insert(
            "origin".into(),
            CanonicalJsonValue::String(user.server_name().to_string()),
        );
        Ok((summary.version, template))
    }

    /// The authorization rules for an event against its auth events and the room's current
    /// state, without storing anything.
    fn check_against_current_state(
        &self,
        version: &RoomVersionId,
        event_id: &EventId,
        obj: &CanonicalJsonObject,
    ) -> Result<()> {
        let rules = rules_for(version)?;
        let pdu = Arc::new(Pdu::parse(event_id.to_owned(), obj)?);
        let room = pdu.room_id.clone();
        let cache = EventCache::new(self);
        cache.insert(pdu.clone());
        check_state_independent_auth_rules(&rules.authorization, &*pdu, |id| cache.get(id))
            .map_err(RoomError::Forbidden)?;
        check_state_dependent_auth_rules(
            &rules.authorization,
            &*pdu,
            |t: &StateEventType, k: &str| {
                self.current_state_event_id(&room, &t.to_string(), k)
                    .ok()
                    .flatten()
                    .and_then(|id| cache.get(&id))
            },
        )
        .map_err(RoomError::Forbidden)
    }

    /// `send_join` / `send_leave` as the resident server: `pdu` is a remote user's own
    /// member event with `membership`, delivered by `origin` (the caller checked that the
    /// sender belongs to it). It goes through [`RoomService::receive_pdu`] like any remote
    /// PDU (signatures through `keys`, authorization rules); only an accepted event is
    /// answered, with the state before it and the auth chain.
    pub fn accept_remote_member(
        &self,
        origin: &ruma::ServerName,
        room: &RoomId,
        event_id: &EventId,
        pdu: CanonicalJsonObject,
        membership: Membership,
        keys: &dyn crate::KeyLookup,
    ) -> Result<AcceptedMember> {
        let version = self
            .room_version(room)?
            .ok_or_else(|| RoomError::UnknownRoom(room.to_owned()))?;
        let rules = rules_for(&version)?;
        if str_of(&pdu, "room_id") != Some(room.as_str()) {
            return Err(RoomError::InvalidParam(
                "the event's room_id is not the room in the path".into(),
            ));
        }
        if str_of(&pdu, "type") != Some("m.room.member") {
            return Err(RoomError::InvalidParam(
                "the event is not an m.room.member event".into(),
            ));
        }
        let sender = str_of(&pdu, "sender").unwrap_or_default();
        if str_of(&pdu, "state_key") != Some(sender) {
            return Err(RoomError::InvalidParam(
                "the event's state_key is not its sender".into(),
            ));
        }
        if content_membership(&pdu) != Some(membership.as_str()) {
            return Err(RoomError::InvalidParam(format!(
                "the event's membership is not {}",
                membership.as_str()
            )));
        }
        // The reference hash (v3+) or the `event_id` field (v1/v2).
        if crate::version::event_id_of(&rules, &pdu)?.as_str() != event_id.as_str() {
            return Err(RoomError::InvalidParam(
                "the event ID in the path is not the event's ID".into(),
            ));
        }
        let pdu = self.countersign_restricted_join(room, &rules, membership, pdu)?;
        let sent = match self.receive_pdu(origin, pdu, keys)? {
            crate::Received::Accepted { event_id, pos } => SentEvent { event_id, pos },
            crate::Received::SoftFailed { reason, .. }
            | crate::Received::Rejected { reason, .. } => {
                return Err(RoomError::Forbidden(format!(
                    "the {} is not allowed: {reason}",
                    membership.as_str()
                )));
            }
            crate::Received::NeedsMissingEvents { .. } => {
                return Err(RoomError::InvalidParam(
                    "the event cites events this server does not have".into(),
                ));
            }
        };
        self.member_answer(room, &sent)
    }

    /// A `send_join` naming one of our users in `join_authorised_via_users_server`: the
    /// room version makes our signature part of the event's validity, so we add it, but
    /// only after checking the join rule's allow conditions ourselves (the joining server
    /// could name any of our members). Any other event is returned unchanged.
    fn countersign_restricted_join(
        &self,
        room: &RoomId,
        rules: &ruma::room_version_rules::RoomVersionRules,
        membership: Membership,
        mut pdu: CanonicalJsonObject,
    ) -> Result<CanonicalJsonObject> {
        let via = match pdu.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get(crate::restricted::AUTHORISED_VIA) {
                Some(CanonicalJsonValue::String(v)) => Some(v.clone()),
                _ => None,
            },
            _ => None,
        };
        let Some(via) = via else {
            return Ok(pdu);
        };
        if membership != Membership::Join
            || UserId::parse(&via).map_or(true, |u| u.server_name() != self.server_name)
        {
            return Ok(pdu);
        }
        let sender = str_of(&pdu, "sender")
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| RoomError::InvalidParam("the join has no valid sender".into()))?;
        {
            let _guard = self.lock_room(room);
            let mut new = NewEvent::state(
                "m.room.member",
                sender.as_str(),
                member_content("join", None, None),
            );
            self.prepare_local_member(room, &sender, &mut new)?;
            if new.content.get(crate::restricted::AUTHORISED_VIA).is_none() {
                // Not (or no longer) a restricted join: nothing for us to vouch for.
                return Ok(pdu);
            }
        }
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            self.key.pair(),
            &mut pdu,
            &rules.redaction,
        )
        .map_err(|e| RoomError::Internal(format!("cannot countersign the join: {e}")))?;
        Ok(pdu)
    }

    fn member_answer(&self, room: &RoomId, sent: &SentEvent) -> Result<AcceptedMember> {
        let ev = self.require_event(&sent.event_id)?;
        let before = self.state_before(&sent.event_id)?;
        let cache = EventCache::new(self);
        let mut starts: Vec<OwnedEventId> = before.values().cloned().collect();
        starts.push(sent.event_id.clone());
        let chain = self.auth_chain(starts.iter(), &cache);
        let mut state = Vec::with_capacity(before.len());
        for id in before.values() {
            if let Some(e) = self.event(id)? {
                state.push(e.pdu);
            }
        }
        let mut auth_chain = Vec::with_capacity(chain.len());
        for id in &chain {
            if let Some(e) = self.event(id)? {
                auth_chain.push(e.pdu);
            }
        }
        Ok(AcceptedMember {
            event_id: sent.event_id.clone(),
            pos: sent.pos,
            event: ev.pdu,
            state,
            auth_chain,
            servers_in_room: self.servers_in_room(room)?,
        })
    }

    /// Servers with at least one joined member (ours included when we have one).
    pub fn servers_in_room(&self, room: &RoomId) -> Result<Vec<String>> {
        let set: BTreeSet<String> = self
            .joined_members(room)?
            .into_iter()
            .map(|u| u.server_name().to_string())
            .collect();
        Ok(set.into_iter().collect())
    }

    /// The joining side: sign a member template a remote resident built for our `user`,
    /// after checking it is what we asked for (spec: room, sender, state key, type,
    /// membership). Sets `origin` and `origin_server_ts`, merges `content` into the
    /// template's content, hashes, signs and computes the event ID.
    pub fn sign_member_template(
        &self,
        version: &RoomVersionId,
        room: &RoomId,
        user: &UserId,
        membership: Membership,
        mut template: CanonicalJsonObject,
        extra_content: Option<serde_json::Map<String, Value>>,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let rules = rules_for(version)?;
        let bad = |m: &str| RoomError::BadJson(format!("the resident's template {m}"));
        if str_of(&template, "room_id") != Some(room.as_str()) {
            return Err(bad("is for another room"));
        }
        if str_of(&template, "sender") != Some(user.as_str())
            || str_of(&template, "state_key") != Some(user.as_str())
        {
            return Err(bad("is for another user"));
        }
        if str_of(&template, "type") != Some("m.room.member") {
            return Err(bad("is not a member event"));
        }
        if content_membership(&template) != Some(membership.as_str()) {
            return Err(bad("has another membership"));
        }
        for field in ["prev_events", "auth_events"] {
            if !matches!(template.get(field), Some(CanonicalJsonValue::Array(_))) {
                return Err(bad(&format!("has no {field}")));
            }
        }
        if !matches!(template.get("depth"), Some(CanonicalJsonValue::Integer(_))) {
            return Err(bad("has no depth"));
        }
        template.remove("signatures");
        template.remove("hashes");
        template.remove("unsigned");
        template.remove("event_id");
        if let Some(extra) = extra_content
            && let Some(CanonicalJsonValue::Object(content)) = template.get_mut("content")
        {
            for (k, v) in extra {
                // The membership is the template's; only a resident may vouch for a join.
                if k == "membership" || k == crate::restricted::AUTHORISED_VIA {
                    continue;
                }
                if let Ok(v) = CanonicalJsonValue::try_from(v) {
                    content.insert(k, v);
                }
            }
        }
        template.insert(
            "origin".into(),
            CanonicalJsonValue::String(self.server_name.to_string()),
        );
        template.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(crate::now_ms())
                    .map_err(|_| RoomError::Internal("clock out of range".into()))?,
            ),
        );
        self.sign_pdu(&rules, template)
    }

    /// An outbound invite of remote `target`: built and signed here on the room's current
    /// state and checked against the authorization rules, but not stored; the invitee's
    /// server counter-signs it (`PUT /invite`), then [`RoomService::store_remote_invite`]
    /// stores it.
    /// Returns the room version, the event ID and the event.
    pub fn build_remote_invite(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<(RoomVersionId, OwnedEventId, CanonicalJsonObject)> {
        let _guard = self.lock_room(room);
        let summary = self.require_summary(room)?;
        let new = NewEvent::state(
            "m.room.member",
            target.as_str(),
            member_content("invite", None, reason),
        );
        let (event_id, obj) =
            self.build_event(&summary.version, Some(&summary), room, sender, &new)?;
        self.check_against_current_state(&summary.version, &event_id, &obj)?;
        Ok((summary.version, event_id, obj))
    }

    /// Store an invite built by [`RoomService::build_remote_invite`] once the invitee's
    /// server signed it (the caller checked that signature): through the remote entry
    /// point, so the authorization rules run against the state at that moment.
    pub fn store_remote_invite(&self, pdu: CanonicalJsonObject) -> Result<SentEvent> {
        let origin = self.server_name.clone();
        match self.receive_pdu(&origin, pdu, &crate::StaticKeys::default())? {
            crate::Received::Accepted { event_id, pos } => Ok(SentEvent { event_id, pos }),
            crate::Received::SoftFailed { reason, .. }
            | crate::Received::Rejected { reason, .. } => Err(RoomError::Forbidden(format!(
                "the invite is not allowed: {reason}"
            ))),
            crate::Received::NeedsMissingEvents { .. } => Err(RoomError::Internal(
                "our own invite cites unknown events".into(),
            )),
        }
    }

    /// A leave that a remote resident accepted for a room this server has no state of
    /// (rejecting a remote invite): stored as an outlier, and the user's membership becomes
    /// `leave` at a new stream position, in one write.
    pub fn record_remote_leave(
        &self,
        room: &RoomId,
        user: &UserId,
        version: &RoomVersionId,
        pdu: CanonicalJsonObject,
    ) -> Result<SentEvent> {
        let rules = rules_for(version)?;
        let hash = ruma::signatures::reference_hash(&pdu, &rules)
            .map_err(|e| RoomError::BadJson(format!("cannot hash the leave: {e}")))?;
        let event_id = OwnedEventId::try_from(format!("${hash}"))
            .map_err(|e| RoomError::Internal(format!("reference hash is not an event id: {e}")))?;
        let _guard = self.lock_room(room);
        if self.room_exists(room)? {
            return Err(RoomError::BadState(format!(
                "{room} has state here: leave it with an event in the room"
            )));
        }
        let record = crate::remote::outlier_record(&event_id, pdu, crate::EventStatus::Outlier);
        let (pos, ()) = self.db.write_with_position(|pos, b| -> Result<()> {
            b.put_json(storage::Cf::Events, event_id.as_str(), &record);
            b.delete(
                storage::Cf::Rooms,
                crate::store::invite_state_key(room, user),
            );
            b.put_json(
                storage::Cf::Memberships,
                crate::store::membership_key(user.as_str(), room),
                &crate::MembershipRecord {
                    membership: Membership::Leave,
                    pos,
                    event_id: event_id.clone(),
                    forgotten: false,
                },
            );
            Ok(())
        })?;
        if let Some(observer) = self.membership_observer.get() {
            observer.membership_changed(room, user, Some(Membership::Leave));
        }
        Ok(SentEvent { event_id, pos })
    }

    /// Full PDUs of the room's current state of the stripped-state types (create, join
    /// rules, name, …), for `invite_room_state`.
    pub fn invite_room_state_pdus(&self, room: &RoomId) -> Result<Vec<CanonicalJsonObject>> {
        let mut out = Vec::new();
        for t in crate::STRIPPED_STATE_TYPES {
            if let Some(ev) = self.current_state_event(room, t, "")? {
                out.push(ev.pdu);
            }
        }
        Ok(out)
    }

    /// Add this server's signature to an event another server built (the invitee's server
    /// signing an inbound invite). The event's hashes are left as they are.
    pub fn countersign(
        &self,
        version: &RoomVersionId,
        mut obj: CanonicalJsonObject,
    ) -> Result<CanonicalJsonObject> {
        let rules = rules_for(version)?;
        ruma::signatures::sign_event(
            self.server_name.as_str(),
            self.key.pair(),
            &mut obj,
            &rules.redaction,
        )
        .map_err(|e| RoomError::BadJson(format!("cannot sign the event: {e}")))?;
        Ok(obj)
    }

    /// The room ID of a PDU, for callers that route PDUs: its `room_id`, or for a v12
    /// create event (which has none) the room ID its reference hash defines.
    pub fn pdu_room_id(pdu: &CanonicalJsonObject) -> Option<OwnedRoomId> {
        crate::remote::room_of(pdu).ok()
    }
}
