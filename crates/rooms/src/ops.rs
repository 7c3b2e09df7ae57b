//! Client writes: messages, state, membership, redactions, aliases, profile updates.
use ruma::events::StateEventType;
use ruma::events::room::power_levels::UserPowerLevel;
use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId,
};
use serde_json::{Map, Value};
use storage::{Batch, Cf};

use crate::create::member_content;
use crate::persist::{AppendOpts, NewEvent};
use crate::store::{AliasRecord, alias_reverse_key, membership_key, txn_key};
use crate::{Membership, Result, RoomError, RoomService, SentEvent, UserRoom};

/// The displayname and avatar a user's `m.room.member` join event carries. Profiles themselves
/// belong to `accounts`; the caller passes the user's current one in, so the room engine does
/// not depend on the account service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberProfile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

fn txn_scope(kind: &str, room: &RoomId) -> String {
    format!("{kind} {room}")
}

impl RoomService {
    fn txn_hit(&self, key: &storage::Key) -> Result<Option<SentEvent>> {
        let Some(id) = self.db.get(Cf::Txns, key)? else {
            return Ok(None);
        };
        let id = String::from_utf8(id)
            .ok()
            .and_then(|s| OwnedEventId::try_from(s).ok())
            .ok_or_else(|| RoomError::Internal("corrupt txn entry".into()))?;
        let ev = self.require_event(&id)?;
        Ok(Some(SentEvent {
            event_id: id,
            pos: ev.pos,
        }))
    }

    /// Send a message (non-state) event. With `txn = (device, txn_id)` the call is
    /// idempotent: repeating it returns the first event.
    pub fn send_message_event(
        &self,
        sender: &UserId,
        room: &RoomId,
        kind: &str,
        content: Value,
        txn: Option<(&DeviceId, &str)>,
    ) -> Result<SentEvent> {
        if kind == "m.room.redaction"
            && let Some(target) = content.get("redacts").and_then(|r| r.as_str())
        {
            let target = OwnedEventId::try_from(target)
                .map_err(|_| RoomError::BadJson("content.redacts is not an event id".into()))?;
            let reason = content
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_owned);
            return self.redact(sender, room, &target, reason.as_deref(), txn);
        }
        let key = txn.map(|(d, t)| {
            (
                txn_key(sender, d.as_str(), &txn_scope("send", room), t),
                d.to_owned(),
                t.to_owned(),
            )
        });
        if let Some((k, _, _)) = &key
            && let Some(hit) = self.txn_hit(k)?
        {
            return Ok(hit);
        }
        let _guard = self.lock_room(room);
        if let Some((k, _, _)) = &key
            && let Some(hit) = self.txn_hit(k)?
        {
            return Ok(hit);
        }
        let new = NewEvent {
            kind: kind.to_owned(),
            state_key: None,
            content,
            redacts: None,
        };
        self.send_locked(
            room,
            sender,
            new,
            AppendOpts {
                txn: key,
                ..AppendOpts::default()
            },
        )
    }

    /// Send a state event. Sending the same content again by the same sender returns
    /// the existing event instead of a new one.
    pub fn send_state_event(
        &self,
        sender: &UserId,
        room: &RoomId,
        kind: &str,
        state_key: &str,
        content: Value,
    ) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        self.require_summary(room)?;
        if kind == "m.room.create" {
            // A room has one create event, the one that made it (the auth rules would
            // reject a second; say so as a bad request, as Synapse does, not 403).
            return Err(RoomError::InvalidParam(format!(
                "room {room} already has its m.room.create event; another cannot be sent"
            )));
        }
        if kind == "m.room.canonical_alias" {
            self.check_canonical_alias(room, &content)?;
        }
        if kind == "m.room.power_levels" {
            self.check_no_creators_in_levels(room, &content)?;
        }
        self.state_locked(sender, room, kind, state_key, content)
    }

    /// Rooms whose creators have unlimited power (v12) forbid listing a creator in the
    /// power levels' `users`: the auth rules would refuse the event, but the request is
    /// malformed rather than unauthorised, so it gets 400 (as Synapse answers), not 403.
    fn check_no_creators_in_levels(&self, room: &RoomId, content: &Value) -> Result<()> {
        let Some(users) = content.get("users").and_then(Value::as_object) else {
            return Ok(());
        };
        let summary = self.require_summary(room)?;
        let rules = crate::version::rules_for(&summary.version)?;
        if !rules.authorization.explicitly_privilege_room_creators {
            return Ok(());
        }
        if let Some(c) = self
            .creators(&summary)?
            .into_iter()
            .find(|c| users.contains_key(c.as_str()))
        {
            return Err(RoomError::InvalidParam(format!(
                "{c} is a creator of this room: creators may not be listed in the power levels' users"
            )));
        }
        Ok(())
    }

    fn state_locked(
        &self,
        sender: &UserId,
        room: &RoomId,
        kind: &str,
        state_key: &str,
        content: Value,
    ) -> Result<SentEvent> {
        if let Some(cur) = self.current_state_event(room, kind, state_key)?
            && cur.sender() == sender.as_str()
            && cur.content() == content
        {
            return Ok(SentEvent {
                event_id: cur.event_id.clone(),
                pos: cur.pos,
            });
        }
        self.send_locked(
            room,
            sender,
            NewEvent::state(kind, state_key, content),
            AppendOpts::default(),
        )
    }

    fn check_canonical_alias(&self, room: &RoomId, content: &Value) -> Result<()> {
        let mut aliases: Vec<&Value> = Vec::new();
        if let Some(a) = content.get("alias")
            && !a.is_null()
        {
            aliases.push(a);
        }
        match content.get("alt_aliases") {
            None | Some(Value::Null) => {}
            Some(Value::Array(alts)) => aliases.extend(alts.iter()),
            Some(_) => return Err(RoomError::InvalidParam("alt_aliases must be a list".into())),
        }
        for a in aliases {
            let s = a
                .as_str()
                .ok_or_else(|| RoomError::InvalidParam("aliases must be strings".into()))?;
            let alias = RoomAliasId::parse(s)
                .map_err(|_| RoomError::InvalidParam(format!("invalid alias {s:?}")))?;
            if alias.server_name() == self.server_name
                && self.resolve_alias(&alias)?.as_deref() != Some(room)
            {
                return Err(RoomError::BadAlias(format!(
                    "{s} does not point to this room"
                )));
            }
        }
        Ok(())
    }

    /// A membership change by `sender` for `target`; a repeat of the current member event
    /// (same sender, same content) returns it instead of sending a new one.
    pub(crate) fn member_locked(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        content: Value,
    ) -> Result<SentEvent> {
        self.require_summary(room)?;
        self.state_locked(sender, room, "m.room.member", target.as_str(), content)
    }

    /// Resolve `!room:server` or `#alias:server` to a known room id.
    pub fn resolve_room_or_alias(&self, room_or_alias: &str) -> Result<OwnedRoomId> {
        if room_or_alias.starts_with('#') {
            let alias = RoomAliasId::parse(room_or_alias).map_err(|_| {
                RoomError::InvalidParam(format!("invalid room alias {room_or_alias:?}"))
            })?;
            self.resolve_alias(&alias)?
                .ok_or_else(|| RoomError::NotFound(format!("room alias {alias} not found")))
        } else {
            let room = RoomId::parse(room_or_alias).map_err(|_| {
                RoomError::InvalidParam(format!("invalid room id {room_or_alias:?}"))
            })?;
            if !self.room_exists(&room)? {
                return Err(RoomError::UnknownRoom(room));
            }
            Ok(room)
        }
    }

    /// Join a room (by id or alias). `content` is the request body's extra member content
    /// (e.g. `reason`); `membership` is set to `join` and the user's displayname/avatar
    /// are filled in from `profile` unless the content sets them.
    pub fn join(
        &self,
        user: &UserId,
        room_or_alias: &str,
        profile: &MemberProfile,
        content: Option<Map<String, Value>>,
    ) -> Result<(OwnedRoomId, SentEvent)> {
        let room = self.resolve_room_or_alias(room_or_alias)?;
        let mut c = content.unwrap_or_default();
        c.remove("third_party_signed");
        c.remove(crate::restricted::AUTHORISED_VIA);
        c.insert("membership".into(), Value::from("join"));
        for (field, value) in [
            ("displayname", &profile.displayname),
            ("avatar_url", &profile.avatar_url),
        ] {
            if let Some(v) = value
                && !c.contains_key(field)
            {
                c.insert(field.into(), Value::from(v.as_str()));
            }
        }
        let _guard = self.lock_room(&room);
        let sent = self.member_locked(user, &room, user, Value::Object(c))?;
        Ok((room, sent))
    }

    /// Leave a room, or reject an invite. Leaving a room already left is a no-op.
    pub fn leave(&self, user: &UserId, room: &RoomId, reason: Option<&str>) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        self.require_summary(room)?;
        if let Some(rec) = self.membership(room, user)?
            && rec.membership == Membership::Leave
        {
            return Ok(SentEvent {
                event_id: rec.event_id,
                pos: rec.pos,
            });
        }
        self.member_locked(user, room, user, member_content("leave", None, reason))
    }

    /// Invite `target`.
    pub fn invite(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        self.member_locked(sender, room, target, member_content("invite", None, reason))
    }

    /// Kick `target` (who must be joined, invited or knocking).
    pub fn kick(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        self.require_summary(room)?;
        match self.membership_state(room, target)? {
            Some(Membership::Join | Membership::Invite | Membership::Knock) => {}
            _ => return Err(RoomError::Forbidden(format!("{target} is not in the room"))),
        }
        let content = member_content("leave", None, reason);
        self.state_locked(sender, room, "m.room.member", target.as_str(), content)
    }

    /// Ban `target`.
    pub fn ban(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        self.member_locked(sender, room, target, member_content("ban", None, reason))
    }

    /// Unban `target` (who must be banned).
    pub fn unban(
        &self,
        sender: &UserId,
        room: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        self.require_summary(room)?;
        if self.membership_state(room, target)? != Some(Membership::Ban) {
            return Err(RoomError::Forbidden(format!("{target} is not banned")));
        }
        let content = member_content("leave", None, reason);
        self.state_locked(sender, room, "m.room.member", target.as_str(), content)
    }

    /// Forget a room the user has left (or was banned from): it disappears from
    /// [`RoomService::rooms_for_user`] until the membership changes again.
    pub fn forget(&self, user: &UserId, room: &RoomId) -> Result<()> {
        let _guard = self.lock_room(room);
        let Some(mut rec) = self.membership(room, user)? else {
            return Ok(());
        };
        match rec.membership {
            Membership::Leave | Membership::Ban => {
                if !rec.forgotten {
                    rec.forgotten = true;
                    let mut b = Batch::new();
                    b.put_json(Cf::Memberships, membership_key(user.as_str(), room), &rec);
                    self.db.write(b)?;
                }
                Ok(())
            }
            _ => Err(RoomError::BadState(format!(
                "{user} is still in room {room}"
            ))),
        }
    }

    /// Redact an event. Allowed for the event's sender, or anyone with the room's
    /// `redact` power level. With `txn` the call is idempotent.
    pub fn redact(
        &self,
        sender: &UserId,
        room: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        txn: Option<(&DeviceId, &str)>,
    ) -> Result<SentEvent> {
        let key = txn.map(|(d, t)| {
            (
                txn_key(sender, d.as_str(), &txn_scope("redact", room), t),
                d.to_owned(),
                t.to_owned(),
            )
        });
        if let Some((k, _, _)) = &key
            && let Some(hit) = self.txn_hit(k)?
        {
            return Ok(hit);
        }
        let _guard = self.lock_room(room);
        if let Some((k, _, _)) = &key
            && let Some(hit) = self.txn_hit(k)?
        {
            return Ok(hit);
        }
        let summary = self.require_summary(room)?;
        if !self.is_joined(room, sender)? {
            return Err(RoomError::Forbidden(format!(
                "{sender} is not in room {room}"
            )));
        }
        let target = self
            .event(event_id)?
            .filter(|e| e.room_id() == room.as_str());
        let own = target
            .as_ref()
            .is_some_and(|t| t.sender() == sender.as_str());
        if !own {
            let pl = self.power_levels(room, &summary)?;
            if !pl.user_can_redact_event_of_other(sender) {
                return Err(RoomError::Forbidden(
                    "you may not redact other users' events".into(),
                ));
            }
        }
        let mut content = Map::new();
        if let Some(r) = reason {
            content.insert("reason".into(), Value::from(r));
        }
        let rules = crate::persist::rules_for(&summary.version)?;
        if rules.redaction.keep_room_redaction_redacts {
            content.insert("redacts".into(), Value::from(event_id.as_str()));
        }
        let new = NewEvent {
            kind: "m.room.redaction".into(),
            state_key: None,
            content: Value::Object(content),
            redacts: Some(event_id.to_owned()),
        };
        self.send_locked(
            room,
            sender,
            new,
            AppendOpts {
                txn: key,
                ..AppendOpts::default()
            },
        )
    }

    /// New `m.room.member` join events carrying the new displayname/avatar in every room
    /// the user is joined to. Returns the rooms and stream positions written.
    pub fn update_member_profile(
        &self,
        user: &UserId,
        profile: &MemberProfile,
    ) -> Result<Vec<(OwnedRoomId, u64)>, RoomError> {
        let rooms: Vec<UserRoom> = self
            .rooms_for_user(user)?
            .into_iter()
            .filter(|r| r.membership == Membership::Join)
            .collect();
        let mut out = Vec::new();
        for r in rooms {
            let _guard = self.lock_room(&r.room_id);
            let mut content =
                match self.current_state_event(&r.room_id, "m.room.member", user.as_str())? {
                    Some(ev) if ev.membership() == Some(Membership::Join) => ev.content(),
                    _ => continue,
                };
            let Some(o) = content.as_object_mut() else {
                continue;
            };
            o.remove("reason");
            for (field, value) in [
                ("displayname", &profile.displayname),
                ("avatar_url", &profile.avatar_url),
            ] {
                match value {
                    Some(v) => o.insert(field.into(), Value::from(v.as_str())),
                    None => o.remove(field),
                };
            }
            match self.member_locked(user, &r.room_id, user, content) {
                Ok(sent) if sent.pos > r.pos => out.push((r.room_id, sent.pos)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(room = %r.room_id, %user, error = %e, "profile update not sent")
                }
            }
        }
        Ok(out)
    }

    /// Point a local alias at a room. The user must be joined to the room.
    pub fn set_alias(&self, user: &UserId, alias: &RoomAliasId, room: &RoomId) -> Result<()> {
        if alias.server_name() != self.server_name {
            return Err(RoomError::InvalidParam(
                "room aliases must be on this server".into(),
            ));
        }
        let _aliases = self.lock_aliases();
        let _guard = self.lock_room(room);
        self.require_summary(room)?;
        if !self.is_joined(room, user)? {
            return Err(RoomError::Forbidden(format!(
                "{user} is not in room {room}"
            )));
        }
        if self.db.exists(Cf::Aliases, alias.as_str())? {
            return Err(RoomError::AliasInUse(alias.to_string()));
        }
        let mut b = Batch::new();
        b.put_json(
            Cf::Aliases,
            alias.as_str(),
            &AliasRecord {
                room_id: room.to_owned(),
                creator: user.to_owned(),
            },
        );
        b.put(
            Cf::Aliases,
            alias_reverse_key(room, alias.as_str()),
            Vec::new(),
        );
        self.db.write(b)?;
        Ok(())
    }

    /// The room a local alias points at.
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        Ok(self
            .db
            .get_json::<AliasRecord>(Cf::Aliases, alias.as_str())?
            .map(|r| r.room_id))
    }

    /// Delete an alias: allowed for its creator and for users who may change the room's
    /// canonical alias. If the room's `m.room.canonical_alias` names the alias, a new one
    /// without it is sent on the user's behalf when they may (returned for waking).
    pub fn delete_alias(
        &self,
        user: &UserId,
        alias: &RoomAliasId,
    ) -> Result<Option<(OwnedRoomId, SentEvent)>> {
        let _aliases = self.lock_aliases();
        let rec: AliasRecord = self
            .db
            .get_json(Cf::Aliases, alias.as_str())?
            .ok_or_else(|| RoomError::NotFound(format!("room alias {alias} not found")))?;
        let _guard = self.lock_room(&rec.room_id);
        if *rec.creator != *user {
            let allowed = match self.summary(&rec.room_id)? {
                Some(s) => {
                    let pl = self.power_levels(&rec.room_id, &s)?;
                    self.is_joined(&rec.room_id, user)?
                        && pl.user_can_send_state(user, StateEventType::RoomCanonicalAlias)
                }
                None => false,
            };
            if !allowed {
                return Err(RoomError::Forbidden("you may not delete this alias".into()));
            }
        }
        let mut b = Batch::new();
        b.delete(Cf::Aliases, alias.as_str());
        b.delete(Cf::Aliases, alias_reverse_key(&rec.room_id, alias.as_str()));
        self.db.write(b)?;

        let Some(ev) = self.current_state_event(&rec.room_id, "m.room.canonical_alias", "")? else {
            return Ok(None);
        };
        let mut content = ev.content();
        let Some(o) = content.as_object_mut() else {
            return Ok(None);
        };
        let mut changed = false;
        if o.get("alias").and_then(|a| a.as_str()) == Some(alias.as_str()) {
            o.remove("alias");
            changed = true;
        }
        if let Some(Value::Array(alts)) = o.get("alt_aliases").cloned()
            && alts.iter().any(|a| a.as_str() == Some(alias.as_str()))
        {
            let kept: Vec<Value> = alts
                .into_iter()
                .filter(|a| a.as_str() != Some(alias.as_str()))
                .collect();
            if kept.is_empty() {
                o.remove("alt_aliases");
            } else {
                o.insert("alt_aliases".into(), Value::Array(kept));
            }
            changed = true;
        }
        if !changed {
            return Ok(None);
        }
        match self.send_locked(
            &rec.room_id,
            user,
            NewEvent::state("m.room.canonical_alias", "", content),
            AppendOpts::default(),
        ) {
            Ok(sent) => Ok(Some((rec.room_id, sent))),
            Err(RoomError::Forbidden(reason)) => {
                tracing::info!(%alias, %reason, "alias deleted; canonical alias left unchanged");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The local aliases pointing at a room.
    pub fn room_aliases(&self, room: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let prefix = crate::keys::aliases::reverse_prefix(room);
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Cf::Aliases, &prefix)? {
            let alias = crate::keys::aliases::parse_reverse(&k);
            if let Some(a) = alias.and_then(|s| OwnedRoomAliasId::try_from(s).ok()) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Publish a room in (or remove it from) the room directory.
    pub fn set_room_public(&self, room: &RoomId, public: bool) -> Result<()> {
        let _guard = self.lock_room(room);
        self.set_public_locked(room, public)
    }

    /// Whether the room is published in the room directory.
    pub fn room_is_public(&self, room: &RoomId) -> Result<bool> {
        Ok(self.require_summary(room)?.public)
    }

    /// Whether `user` is joined and has the power to send state events of type `kind`.
    pub fn may_send_state(&self, room: &RoomId, user: &UserId, kind: &str) -> Result<bool> {
        let s = self.require_summary(room)?;
        if !self.is_joined(room, user)? {
            return Ok(false);
        }
        let pl = self.power_levels(room, &s)?;
        Ok(pl.user_can_send_state(user, StateEventType::from(kind)))
    }

    /// The user's power level in a room (from v12 a creator's is [`UserPowerLevel::Infinite`]).
    pub fn user_power_level(&self, room: &RoomId, user: &UserId) -> Result<UserPowerLevel> {
        let s = self.require_summary(room)?;
        Ok(self.power_levels(room, &s)?.for_user(user))
    }
}
