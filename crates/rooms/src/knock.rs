//! Knocking (room versions 7+): a local user's knock on a room this server takes part in
//! ([`RoomService::knock`], an ordinary member event the authorization rules judge), and
//! the knocking server's record of a knock a remote resident accepted
//! ([`RoomService::record_remote_knock`]): the knock is stored as an outlier with the
//! stripped state the resident returned (`knock_room_state`), under the same key as a
//! remote invite's stripped state, and the user's membership becomes `knock`, so `/sync`
//! shows the room in `rooms.knock` ([`RoomService::knock_state`]). A later invite, leave
//! or join replaces both.
use ruma::{CanonicalJsonObject, RoomId, RoomVersionId, UserId};
use serde_json::Value;
use storage::Cf;

use crate::create::member_content;
use crate::ops::MemberProfile;
use crate::persist::rules_for;
use crate::store::{EventStatus, invite_state_key, membership_key};
use crate::{Membership, MembershipRecord, Result, RoomError, RoomService};
use crate::{STRIPPED_STATE_TYPES, SentEvent};

impl RoomService {
    /// A local user knocks on `room` (which this server has the state of). The room's
    /// version must allow knocking; the join rule and the user's current membership are
    /// the authorization rules' (a ban, invite or join forbids a knock: 403).
    pub fn knock(
        &self,
        user: &UserId,
        room: &RoomId,
        reason: Option<&str>,
        profile: &MemberProfile,
    ) -> Result<SentEvent> {
        let _guard = self.lock_room(room);
        let summary = self.require_summary(room)?;
        if !rules_for(&summary.version)?.authorization.knocking {
            return Err(RoomError::Forbidden(format!(
                "room version {} does not support knocking",
                summary.version
            )));
        }
        self.member_locked(
            user,
            room,
            user,
            member_content("knock", Some(profile), reason),
        )
    }

    /// The knocking server's side of `send_knock`: `pdu` is our user's signed knock that a
    /// resident accepted, `knock_room_state` the stripped state it answered (filtered and
    /// bounded here). For a room this server has no state of; else the knock is an
    /// ordinary event of the room, given to the DAG.
    pub fn record_remote_knock(
        &self,
        room: &RoomId,
        user: &UserId,
        version: &RoomVersionId,
        pdu: CanonicalJsonObject,
        knock_room_state: Vec<Value>,
    ) -> Result<SentEvent> {
        if self.room_exists(room)? {
            // A stale copy of the room (no local member left): the knock joins its DAG
            // like any event, if the state here allows it.
            let origin = self.server_name.clone();
            return match self.receive_pdu(&origin, pdu, &crate::StaticKeys::default())? {
                crate::Received::Accepted { event_id, pos } => Ok(SentEvent { event_id, pos }),
                crate::Received::SoftFailed { reason, .. }
                | crate::Received::Rejected { reason, .. } => Err(RoomError::Forbidden(format!(
                    "the knock is not allowed here: {reason}"
                ))),
                crate::Received::NeedsMissingEvents { .. } => Err(RoomError::BadState(format!(
                    "the knock cites events of {room} this server does not have"
                ))),
            };
        }
        let event_id = crate::remote::event_id_for(version, &pdu)?;
        let record = crate::remote::outlier_record(&event_id, pdu, EventStatus::Outlier);
        let mut stripped = crate::stripped::sanitize_remote(room, knock_room_state);
        stripped.push(record.to_stripped_state());
        let _guard = self.lock_room(room);
        if self.room_exists(room)? {
            return Err(RoomError::BadState(format!(
                "{room} has state here: knock with an event in the room"
            )));
        }
        let (pos, ()) = self.db.write_with_position(|pos, b| -> Result<()> {
            b.put_json(Cf::Events, event_id.as_str(), &record);
            b.put_json(Cf::Rooms, invite_state_key(room, user), &stripped);
            b.put_json(
                Cf::Memberships,
                membership_key(user.as_str(), room),
                &MembershipRecord {
                    membership: Membership::Knock,
                    pos,
                    event_id: event_id.clone(),
                    forgotten: false,
                },
            );
            Ok(())
        })?;
        if let Some(observer) = self.membership_observer.get() {
            observer.membership_changed(room, user, Some(Membership::Knock));
        }
        Ok(SentEvent { event_id, pos })
    }

    /// Stripped state for `rooms.knock.*.knock_state` of `user`: what the resident sent
    /// with a remote knock, or, for a room this server has the state of, the current
    /// stripped-state events and the knock itself.
    pub fn knock_state(&self, room: &RoomId, user: &UserId) -> Result<Vec<Value>> {
        if !self.room_exists(room)? {
            return Ok(self
                .db
                .get_json(Cf::Rooms, invite_state_key(room, user))?
                .unwrap_or_default());
        }
        let mut out = self.local_stripped_state(room)?;
        if let Some(ev) = self.current_state_event(room, "m.room.member", user.as_str())? {
            out.push(ev.to_stripped_state());
        }
        Ok(out)
    }

    /// The stripped state a resident answers `send_knock` with: the current state of the
    /// stripped-state types (`knock_room_state`), the create event as its full PDU
    /// (MSC4311: the knocking server can check it against the room ID).
    pub fn knock_room_state(&self, room: &RoomId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for t in STRIPPED_STATE_TYPES {
            if let Some(ev) = self.current_state_event(room, t, "")? {
                out.push(if t == "m.room.create" {
                    Value::from(ruma::CanonicalJsonValue::Object(ev.pdu.clone()))
                } else {
                    ev.to_stripped_state()
                });
            }
        }
        Ok(out)
    }
}
