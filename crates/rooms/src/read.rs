//! Reads for the HTTP layer and `/sync`: a user's rooms, timelines, pagination,
//! members, invite state and history visibility.
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;
use storage::Cf;

use crate::keys::rooms::RoomsKey;

use crate::store::{
    MembershipRecord, StoredEvent, log_prefix, member_prefix, timeline_key, timeline_prefix,
};
use crate::{Membership, Result, RoomError, RoomService, UserRoom};

/// Who may read a room's history and state, and up to where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomAccess {
    /// Currently joined: everything current.
    Joined,
    /// Was in the room (left, kicked, banned, or invited): state as of this stream
    /// position (their latest membership event).
    Former {
        until_pos: u64,
        membership: Membership,
    },
    /// Not a member, but the room is `world_readable`: current state, visible history.
    WorldReadable,
    /// No access.
    None,
}

/// The state types included in invite (stripped) state.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

fn parse_event_id(v: Vec<u8>) -> Result<OwnedEventId> {
    String::from_utf8(v)
        .ok()
        .and_then(|s| OwnedEventId::try_from(s).ok())
        .ok_or_else(|| RoomError::Internal("corrupt event id in index".into()))
}

impl RoomService {
    /// Every room the user has a membership in, forgotten rooms excluded.
    pub fn rooms_for_user(&self, user: &UserId) -> Result<Vec<UserRoom>> {
        Ok(self
            .rooms_for_user_with_forgotten(user)?
            .into_iter()
            .filter(|r| !r.forgotten)
            .collect())
    }

    /// The rooms that got a timeline event at a stream position in `(after, up_to]`, read
    /// from `Cf::RoomStream` (written in the batch of every timeline event), or `None` when
    /// the range holds more than `max_events` events: then the caller looks at every room
    /// (an incremental `/sync` skips the timeline read of the rooms not in the set).
    pub fn rooms_changed_between(
        &self,
        after: u64,
        up_to: u64,
        max_events: usize,
    ) -> Result<Option<std::collections::HashSet<OwnedRoomId>>> {
        use crate::keys::room_stream;
        let (lo, hi) = (
            room_stream::key(after.saturating_add(1)),
            room_stream::key(up_to.saturating_add(1)),
        );
        let rows = self.db.scan_range(
            Cf::RoomStream,
            &lo,
            &hi,
            false,
            max_events.saturating_add(1),
        )?;
        if rows.len() > max_events {
            return Ok(None);
        }
        let mut rooms = std::collections::HashSet::new();
        for (_, room) in rows {
            let room = String::from_utf8(room)
                .ok()
                .and_then(|s| OwnedRoomId::try_from(s).ok())
                .ok_or_else(|| RoomError::Internal("corrupt room stream entry".into()))?;
            rooms.insert(room);
        }
        Ok(Some(rooms))
    }

    /// Every room the user has a membership in, including forgotten ones (flagged): an
    /// incremental sync still reports a leave that happened after `since` even when the
    /// room was forgotten since.
    pub fn rooms_for_user_with_forgotten(&self, user: &UserId) -> Result<Vec<UserRoom>> {
        let prefix = crate::keys::memberships::prefix(user.as_str());
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Cf::Memberships, &prefix)? {
            let room = crate::keys::memberships::parse(&k).map(|(_, room)| room);
            let Some(room_id) = room.and_then(|s| OwnedRoomId::try_from(s).ok()) else {
                continue;
            };
            let rec: MembershipRecord = serde_json::from_slice(&v)
                .map_err(|e| RoomError::Internal(format!("corrupt membership: {e}")))?;
            out.push(UserRoom {
                room_id,
                membership: rec.membership,
                pos: rec.pos,
                event_id: rec.event_id,
                forgotten: rec.forgotten,
            });
        }
        Ok(out)
    }

    /// Rooms the user is joined to.
    pub fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .rooms_for_user(user)?
            .into_iter()
            .filter(|r| r.membership == Membership::Join)
            .map(|r| r.room_id)
            .collect())
    }

    fn load_ids(&self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let id = parse_event_id(v)?;
            out.push(self.require_event(&id)?);
        }
        Ok(out)
    }

    /// The most recent `limit` events of the room with `after_exclusive < pos <=
    /// up_to_inclusive`, oldest first; `limited` is true when older events exist in the range.
    pub fn timeline(
        &self,
        room: &RoomId,
        after_exclusive: Option<u64>,
        up_to_inclusive: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, bool)> {
        let lo = timeline_key(room, after_exclusive.map_or(0, |a| a.saturating_add(1)));
        let hi = timeline_key(room, up_to_inclusive.saturating_add(1));
        let mut rows = self
            .db
            .scan_range(Cf::Timeline, &lo, &hi, true, limit.saturating_add(1))?;
        let limited = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        Ok((self.load_ids(rows)?, limited))
    }

    /// Paginate a room's timeline. Backwards: events with `to < pos <= from`, newest
    /// first. Forwards: events with `from < pos <= to`, oldest first. At most `limit`.
    pub fn paginate(
        &self,
        room: &RoomId,
        from: u64,
        to: Option<u64>,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let rows = if backwards {
            let lo = timeline_key(room, to.map_or(0, |t| t.saturating_add(1)));
            let hi = timeline_key(room, from.saturating_add(1));
            self.db.scan_range(Cf::Timeline, &lo, &hi, true, limit)?
        } else {
            let lo = timeline_key(room, from.saturating_add(1));
            let hi = match to {
                Some(t) => timeline_key(room, t.saturating_add(1)),
                None => timeline_prefix(room).u64(u64::MAX),
            };
            self.db.scan_range(Cf::Timeline, &lo, &hi, false, limit)?
        };
        self.load_ids(rows)
    }

    /// Current memberships of a room: user → membership.
    pub fn members(&self, room: &RoomId) -> Result<Vec<(OwnedUserId, Membership)>> {
        let prefix = member_prefix(room);
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Cf::Rooms, &prefix)? {
            let user = match RoomsKey::parse(&k) {
                Some(RoomsKey::Member { user, .. }) => OwnedUserId::try_from(user).ok(),
                _ => None,
            };
            let m = std::str::from_utf8(&v).ok().and_then(Membership::parse);
            if let (Some(u), Some(m)) = (user, m) {
                out.push((u, m));
            }
        }
        Ok(out)
    }

    /// Users currently joined to the room.
    pub fn joined_members(&self, room: &RoomId) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .members(room)?
            .into_iter()
            .filter(|(_, m)| *m == Membership::Join)
            .map(|(u, _)| u)
            .collect())
    }

    /// Stripped state for an invite: create, join rules, name, avatar, canonical alias,
    /// encryption, topic, the inviter's member event and the invitee's member event.
    /// For a remote invite: the stripped state the inviting server sent, and the invite.
    pub fn invite_state(&self, room: &RoomId, invitee: &UserId) -> Result<Vec<Value>> {
        if let Some(remote) = self.remote_invite_state(room, invitee)? {
            return Ok(remote);
        }
        let mut out = self.local_stripped_state(room)?;
        if let Some(invite) = self.current_state_event(room, "m.room.member", invitee.as_str())? {
            if let Ok(inviter) = UserId::parse(invite.sender())
                && *inviter != *invitee
                && let Some(ev) =
                    self.current_state_event(room, "m.room.member", inviter.as_str())?
            {
                out.push(ev.to_stripped_state());
            }
            out.push(invite.to_stripped_state());
        }
        Ok(out)
    }

    /// The latest entry of the state log for `(kind, state_key)` strictly before `pos`.
    fn logged_state_before(
        &self,
        room: &RoomId,
        kind: &str,
        skey: &str,
        pos: u64,
    ) -> Result<Option<StoredEvent>> {
        let prefix = log_prefix(room, kind, skey);
        let rows =
            self.db
                .scan_range(Cf::Rooms, prefix.clone().u64(0), prefix.u64(pos), true, 1)?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some((_, v)) => self.event(&parse_event_id(v)?),
        }
    }

    /// The state entry `(kind, state_key)` in force just before `ev`: from the state log
    /// at its stream position, or, for an event that joined the DAG off the stream order
    /// (a fork, a late event, a gap), from the state stored before it.
    fn state_entry_before_event(
        &self,
        room: &RoomId,
        ev: &StoredEvent,
        kind: &str,
        skey: &str,
    ) -> Result<Option<StoredEvent>> {
        if !ev.off_stream {
            return self.logged_state_before(room, kind, skey, ev.pos);
        }
        match self
            .state_before(&ev.event_id)?
            .get(&(kind.to_owned(), skey.to_owned()))
        {
            Some(id) => self.event(id),
            None => Ok(None),
        }
    }

    /// A user's membership just before `ev`.
    fn membership_before_event(
        &self,
        room: &RoomId,
        user: &UserId,
        ev: &StoredEvent,
    ) -> Result<Option<Membership>> {
        Ok(self
            .state_entry_before_event(room, ev, "m.room.member", user.as_str())?
            .and_then(|e| e.membership()))
    }

    /// `history_visibility` in force for an event at stream position `pos`.
    pub fn history_visibility_at(&self, room: &RoomId, pos: u64) -> Result<String> {
        Ok(self
            .logged_state_before(room, "m.room.history_visibility", "", pos)?
            .and_then(|e| e.content_str("history_visibility").map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned()))
    }

    /// A user's membership just before stream position `pos`.
    pub fn membership_at(
        &self,
        room: &RoomId,
        user: &UserId,
        pos: u64,
    ) -> Result<Option<Membership>> {
        Ok(self
            .logged_state_before(room, "m.room.member", user.as_str(), pos)?
            .and_then(|e| e.membership()))
    }

    /// May `user` see `ev`? The spec's history visibility rules, evaluated with the state
    /// before the event (the state log at its position, or its stored state for events
    /// that arrived off the stream order):
    /// `world_readable` → yes; the user's own member events → yes; joined at the event → yes;
    /// `shared` and joined now → yes; `invited` or `shared` and invited at the event → yes.
    pub fn visible_to(&self, user: &UserId, ev: &StoredEvent) -> Result<bool> {
        if ev.kind() == "m.room.member" && ev.state_key() == Some(user.as_str()) {
            return Ok(true);
        }
        let room = RoomId::parse(ev.room_id())
            .map_err(|_| RoomError::Internal("event without room".into()))?;
        let vis = self
            .state_entry_before_event(&room, ev, "m.room.history_visibility", "")?
            .and_then(|e| e.content_str("history_visibility").map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        if vis == "world_readable" {
            return Ok(true);
        }
        let at = self.membership_before_event(&room, user, ev)?;
        if at == Some(Membership::Join) {
            return Ok(true);
        }
        match vis.as_str() {
            "shared" => Ok(self.is_joined(&room, user)? || at == Some(Membership::Invite)),
            "invited" => Ok(at == Some(Membership::Invite)),
            _ => Ok(false),
        }
    }

    /// Keep the events `user` may see.
    pub fn filter_visible(
        &self,
        user: &UserId,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if self.visible_to(user, &ev)? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// What `user` may read of a room (for state, members, aliases).
    pub fn room_access(&self, room: &RoomId, user: &UserId) -> Result<RoomAccess> {
        if !self.room_exists(room)? {
            return Err(RoomError::UnknownRoom(room.to_owned()));
        }
        if let Some(rec) = self.membership(room, user)? {
            if rec.forgotten {
                return Ok(RoomAccess::None);
            }
            match rec.membership {
                Membership::Join => return Ok(RoomAccess::Joined),
                Membership::Leave | Membership::Ban => {
                    return Ok(RoomAccess::Former {
                        until_pos: rec.pos,
                        membership: rec.membership,
                    });
                }
                Membership::Invite | Membership::Knock => {}
            }
        }
        let vis = self
            .current_state_event(room, "m.room.history_visibility", "")?
            .and_then(|e| e.content_str("history_visibility").map(str::to_owned));
        if vis.as_deref() == Some("world_readable") {
            return Ok(RoomAccess::WorldReadable);
        }
        Ok(RoomAccess::None)
    }

    /// The event in client format for `viewer`, with `unsigned.membership` (the viewer's
    /// membership at the event, MSC4115; `leave` when they had none) and, for their own
    /// device, `unsigned.transaction_id`.
    pub fn client_event_for(
        &self,
        ev: &StoredEvent,
        viewer: &UserId,
        device: Option<&ruma::DeviceId>,
        now_ms: u64,
    ) -> Result<Value> {
        let mut v = ev.to_client_event(device.map(|d| (viewer, d)), now_ms);
        let membership = if ev.kind() == "m.room.member" && ev.state_key() == Some(viewer.as_str())
        {
            ev.membership()
        } else {
            let room = RoomId::parse(ev.room_id())
                .map_err(|_| RoomError::Internal("event without room".into()))?;
            self.membership_before_event(&room, viewer, ev)?
        };
        if let Some(u) = v.get_mut("unsigned").and_then(|u| u.as_object_mut()) {
            u.insert(
                "membership".into(),
                Value::from(membership.unwrap_or(Membership::Leave).as_str()),
            );
        }
        Ok(v)
    }

    /// The latest stream position of the room (its newest event).
    pub fn room_last_pos(&self, room: &RoomId) -> Result<u64> {
        Ok(self.require_summary(room)?.last_pos)
    }

    /// The room's forward extremities (the events with no successor yet): what
    /// `earliest_events` of an outbound `/get_missing_events` names.
    pub fn forward_extremities(&self, room: &RoomId) -> Result<Vec<OwnedEventId>> {
        Ok(self.require_summary(room)?.extremities)
    }

    /// Whether the event is stored in any status (timeline, outlier, soft-failed or
    /// rejected): the federation layer does not fetch it again.
    pub fn has_event(&self, event_id: &ruma::EventId) -> Result<bool> {
        Ok(self.event_any(event_id)?.is_some())
    }
}
