//! Room upgrades (`POST /rooms/{roomId}/upgrade`), as the spec's "server behaviour" lists
//! them and Synapse does them:
//!
//! 1. the upgrader must be joined and allowed to send `m.room.tombstone`;
//! 2. a new room of `new_version` is created by the upgrader, its create event carrying
//!    `predecessor` (the old room's ID, and for rooms before v12 the last event's ID) and
//!    the old create event's other content (e.g. `type`), v12's `additional_creators`
//!    from the request;
//! 3. the state the spec names is copied (server ACLs, encryption, name, avatar, topic,
//!    guest access, history visibility, join rules, power levels) and the old room's bans;
//!    power levels keep every level, but from v12 (MSC4289) the new room's creators are
//!    taken out of `users` (they have unlimited power); before v12 the upgrader gets the
//!    level needed to send the copied state while the room is built, and their own level
//!    is restored afterwards;
//! 4. local members of a room that is not public are invited (they could not join
//!    otherwise); the room's directory listing moves;
//! 5. the old room gets the tombstone, and its `events_default` and `invite` levels are
//!    raised to at least 50 so ordinary members stop talking there;
//! 6. local aliases move to the new room, the canonical alias with them.
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};
use storage::{Batch, Cf};

use crate::create::{CreateRoomRequest, InitialStateEvent, Preset, Visibility};
use crate::ops::MemberProfile;
use crate::persist::rules_for;
use crate::store::{AliasRecord, alias_reverse_key};
use crate::{Membership, Result, RoomError, RoomService};

/// The state (with empty state key) copied into the replacement room.
pub const UPGRADE_COPIED_STATE: [&str; 9] = [
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.power_levels",
];

/// Most bans copied into the replacement room (each is an event of the new room).
const MAX_COPIED_BANS: usize = 1000;

/// What an upgrade did: the new room, and who must be woken (the stream position of the
/// last write in each room).
#[derive(Debug, Clone)]
pub struct Upgraded {
    pub new_room: OwnedRoomId,
    pub new_room_pos: u64,
    pub old_room_pos: u64,
    /// Local users invited to the new room.
    pub invited: Vec<OwnedUserId>,
}

/// The power level fields that name the level needed for an action.
const LEVEL_FIELDS: [&str; 7] = [
    "ban",
    "kick",
    "redact",
    "invite",
    "events_default",
    "state_default",
    "users_default",
];

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// The highest level any action of `pl` needs (at least 100).
fn highest_needed(pl: &Map<String, Value>) -> i64 {
    let mut max = 100;
    for f in LEVEL_FIELDS {
        if let Some(v) = pl.get(f).and_then(int_of) {
            max = max.max(v);
        }
    }
    for key in ["events", "notifications"] {
        if let Some(Value::Object(m)) = pl.get(key) {
            for v in m.values().filter_map(int_of) {
                max = max.max(v);
            }
        }
    }
    max
}

impl RoomService {
    /// Upgrade `room` to `new_version` for `user` (see the module documentation).
    pub fn upgrade_room(
        &self,
        user: &UserId,
        room: &RoomId,
        new_version: &str,
        additional_creators: Vec<OwnedUserId>,
        profile: MemberProfile,
    ) -> Result<Upgraded> {
        let version = crate::parse_room_version(new_version)?;
        let rules = rules_for(&version)?;
        let privileged = rules.authorization.explicitly_privilege_room_creators;
        let summary = self.require_summary(room)?;
        if !self.may_send_state(room, user, "m.room.tombstone")? {
            return Err(RoomError::Forbidden(format!(
                "{user} may not upgrade {room} (sending m.room.tombstone needs more power)"
            )));
        }
        if !additional_creators.is_empty() && !rules.authorization.additional_room_creators {
            return Err(RoomError::InvalidParam(format!(
                "room version {version} has no additional_creators"
            )));
        }

        // The create event: the old content without what is the new room's own.
        let old_create = self.require_event(&summary.create_event)?;
        let mut creation = match old_create.content() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for k in [
            "creator",
            "room_version",
            "predecessor",
            "additional_creators",
        ] {
            creation.remove(k);
        }
        let mut predecessor = json!({ "room_id": room.as_str() });
        if !privileged && let Some(last) = self.last_timeline_event_id(room)? {
            predecessor["event_id"] = Value::from(last.as_str());
        }
        creation.insert("predecessor".into(), predecessor);
        if !additional_creators.is_empty() {
            creation.insert(
                "additional_creators".into(),
                Value::from(
                    additional_creators
                        .iter()
                        .map(|u| u.as_str())
                        .collect::<Vec<_>>(),
                ),
            );
        }

        // The copied state.
        let old_rules = rules_for(&summary.version)?;
        let old_creators = if old_rules.authorization.explicitly_privilege_room_creators {
            self.creators(&summary)?
        } else {
            Vec::new()
        };
        let mut initial_state = Vec::new();
        let mut real_pl: Option<Map<String, Value>> = None;
        let mut join_rule = "invite".to_owned();
        for kind in UPGRADE_COPIED_STATE {
            let Some(ev) = self.current_state_event(room, kind, "")? else {
                continue;
            };
            let Value::Object(mut content) = ev.content() else {
                continue;
            };
            if kind == "m.room.join_rules"
                && let Some(r) = content.get("join_rule").and_then(Value::as_str)
            {
                join_rule = r.to_owned();
            }
            let original_pl = content.clone();
            if kind == "m.room.power_levels" {
                if !matches!(content.get("users"), Some(Value::Object(_))) {
                    content.insert("users".into(), Value::Object(Map::new()));
                }
                let needed = highest_needed(&content);
                if let Some(Value::Object(users)) = content.get_mut("users") {
                    if privileged {
                        users.remove(user.as_str());
                        for c in &additional_creators {
                            users.remove(c.as_str());
                        }
                    } else {
                        let own = users.get(user.as_str()).and_then(int_of);
                        if own.is_none_or(|o| o < needed) {
                            // A creator of the old (v12) room had unlimited power: they
                            // keep the highest level; anyone else gets theirs back later.
                            let was_creator = old_creators.iter().any(|c| **c == *user);
                            if !was_creator {
                                real_pl = Some(original_pl.clone());
                            }
                            users.insert(user.to_string(), Value::from(needed));
                        }
                    }
                }
            }
            initial_state.push(InitialStateEvent {
                kind: kind.to_owned(),
                state_key: String::new(),
                content,
            });
        }
        let mut bans = Vec::new();
        for (member, m) in self.members(room)? {
            if m == Membership::Ban && bans.len() < MAX_COPIED_BANS {
                bans.push(member);
            }
        }
        let invite: Vec<String> = if join_rule == "public" {
            Vec::new()
        } else {
            self.members(room)?
                .into_iter()
                .filter(|(u, m)| {
                    *m == Membership::Join && u.server_name() == self.server_name && **u != *user
                })
                .map(|(u, _)| u.to_string())
                .collect()
        };
        let public = summary.public;
        let req = CreateRoomRequest {
            preset: Some(if join_rule == "public" {
                Preset::PublicChat
            } else {
                Preset::PrivateChat
            }),
            visibility: Some(if public {
                Visibility::Public
            } else {
                Visibility::Private
            }),
            invite: invite.clone(),
            initial_state,
            creation_content: Some(creation),
            room_version: Some(version.to_string()),
            creator_profile: profile,
            ..CreateRoomRequest::default()
        };
        let new_room = self.create_room(user, req)?;
        if let Some(pl) = real_pl {
            self.send_state_event(
                user,
                &new_room,
                "m.room.power_levels",
                "",
                Value::Object(pl),
            )?;
        }
        for banned in &bans {
            self.send_state_event(
                user,
                &new_room,
                "m.room.member",
                banned.as_str(),
                json!({ "membership": "ban" }),
            )?;
        }

        // The old room: the tombstone, then quieter power levels.
        self.send_state_event(
            user,
            room,
            "m.room.tombstone",
            "",
            json!({ "body": "This room has been replaced", "replacement_room": new_room.as_str() }),
        )?;
        if let Some(ev) = self.current_state_event(room, "m.room.power_levels", "")?
            && let Value::Object(mut pl) = ev.content()
        {
            let users_default = pl.get("users_default").and_then(int_of).unwrap_or(0);
            let restricted = 50.max(users_default + 1);
            let mut changed = false;
            for f in ["events_default", "invite"] {
                if pl.get(f).and_then(int_of).unwrap_or(0) < restricted {
                    pl.insert(f.into(), Value::from(restricted));
                    changed = true;
                }
            }
            if changed
                && let Err(e) =
                    self.send_state_event(user, room, "m.room.power_levels", "", Value::Object(pl))
            {
                tracing::info!(%room, error = %e, "upgraded room's power levels left as they were");
            }
        }
        if public {
            self.set_room_public(room, false)?;
        }
        self.move_aliases(user, room, &new_room)?;
        Ok(Upgraded {
            new_room_pos: self.room_last_pos(&new_room)?,
            old_room_pos: self.room_last_pos(room)?,
            new_room,
            invited: invite
                .iter()
                .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
                .collect(),
        })
    }

    /// The ID of the room's latest timeline event.
    fn last_timeline_event_id(&self, room: &RoomId) -> Result<Option<ruma::OwnedEventId>> {
        let pos = self.room_last_pos(room)?;
        Ok(self
            .timeline(room, None, pos, 1)?
            .0
            .into_iter()
            .last()
            .map(|e| e.event_id))
    }

    /// Local aliases of `old` now point at `new`; the canonical alias event moves along
    /// (sent in the new room, emptied in the old one).
    fn move_aliases(&self, user: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
        {
            let _aliases = self.lock_aliases();
            let mut b = Batch::new();
            for alias in self.room_aliases(old)? {
                let Some(rec) = self
                    .db
                    .get_json::<AliasRecord>(Cf::Aliases, alias.as_str())?
                else {
                    continue;
                };
                b.put_json(
                    Cf::Aliases,
                    alias.as_str(),
                    &AliasRecord {
                        room_id: new.to_owned(),
                        creator: rec.creator,
                    },
                );
                b.delete(Cf::Aliases, alias_reverse_key(old, alias.as_str()));
                b.put(
                    Cf::Aliases,
                    alias_reverse_key(new, alias.as_str()),
                    Vec::new(),
                );
            }
            self.db.write(b)?;
        }
        let Some(ev) = self.current_state_event(old, "m.room.canonical_alias", "")? else {
            return Ok(());
        };
        let content = ev.content();
        if content.as_object().is_none_or(|o| o.is_empty()) {
            return Ok(());
        }
        // Remote aliases cannot be checked here; keep only local ones that moved.
        let mut moved = Map::new();
        let local_moved = |a: &str| {
            ruma::RoomAliasId::parse(a).is_ok_and(|a| {
                a.server_name() == self.server_name
                    && self.resolve_alias(&a).ok().flatten().as_deref() == Some(new)
            })
        };
        if let Some(a) = content.get("alias").and_then(Value::as_str)
            && local_moved(a)
        {
            moved.insert("alias".into(), Value::from(a));
        }
        if let Some(Value::Array(alts)) = content.get("alt_aliases") {
            let kept: Vec<Value> = alts
                .iter()
                .filter(|a| a.as_str().is_some_and(local_moved))
                .cloned()
                .collect();
            if !kept.is_empty() {
                moved.insert("alt_aliases".into(), Value::Array(kept));
            }
        }
        if !moved.is_empty() {
            self.send_state_event(
                user,
                new,
                "m.room.canonical_alias",
                "",
                Value::Object(moved),
            )?;
        }
        if let Err(e) = self.send_state_event(user, old, "m.room.canonical_alias", "", json!({})) {
            tracing::info!(room = %old, error = %e, "old canonical alias left in place");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_needed_level_reads_every_field() {
        let pl = json!({"ban": 50, "state_default": "120", "events": {"m.room.tombstone": 150}});
        assert_eq!(highest_needed(pl.as_object().unwrap()), 150);
        assert_eq!(highest_needed(&Map::new()), 100);
    }
}
