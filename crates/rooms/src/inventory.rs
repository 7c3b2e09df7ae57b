//! Every room this server knows, and one room's details, as a server admin sees them
//! (the admin API's room list and room view).
//!
//! The list walks `Cf::Rooms` by skipping: a room's rows all start with `room_id 0xFF`, so
//! after reading a room's summary the walk jumps to `room_id 0xFF 0xFF`, past every row of
//! that room (IDs, types and state keys are UTF-8, never `0xFF`), instead of reading its
//! whole state. The fixed-word key spaces (`public`, `creating`) are skipped the same way.
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde::Serialize;
use serde_json::Value;
use storage::Cf;

use crate::keys::rooms::RoomsKey;
use crate::{Result, RoomService};

/// One room as the admin API shows it (the fields of Synapse's room list admin tools read).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomDetails {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub canonical_alias: Option<String>,
    pub joined_members: usize,
    pub joined_local_members: usize,
    pub version: String,
    pub creator: Option<OwnedUserId>,
    pub encryption: Option<String>,
    /// Whether other servers may join (`m.federate` of the create event, default true).
    pub federatable: bool,
    /// Published in the room directory.
    pub public: bool,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    pub state_events: usize,
    pub room_type: Option<String>,
}

impl RoomService {
    /// The IDs of every room this server knows (joined, left, invited to or created
    /// here), in ID order.
    pub fn all_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let row = self.db.scan_range(Cf::Rooms, &from, [0xFF; 1], false, 1)?;
            let Some((key, _)) = row.into_iter().next() else {
                break;
            };
            // The first part of the key, whatever it is: skip every row that shares it.
            let first = key.iter().position(|b| *b == 0xFF).unwrap_or(key.len());
            if let Some(RoomsKey::Summary { room }) = RoomsKey::parse(&key)
                && let Ok(room) = OwnedRoomId::try_from(room)
            {
                out.push(room);
            }
            from = key[..first].to_vec();
            from.extend_from_slice(&[0xFF, 0xFF]);
        }
        Ok(out)
    }

    /// One room's details from its current state, `None` for an unknown room.
    pub fn room_details(&self, room: &RoomId) -> Result<Option<RoomDetails>> {
        let Some(summary) = self.summary(room)? else {
            return Ok(None);
        };
        let content = |kind: &str| -> Result<Option<Value>> {
            Ok(self
                .current_state_event(room, kind, "")?
                .and_then(|e| e.pdu.get("content").cloned())
                .map(Value::from))
        };
        let field = |kind: &str, name: &str| -> Result<Option<String>> {
            Ok(content(kind)?.and_then(|c| c.get(name).and_then(Value::as_str).map(str::to_owned)))
        };
        let create = content("m.room.create")?;
        let joined = self.joined_members(room)?;
        let own = self.server_name();
        let joined_local = joined.iter().filter(|u| u.server_name() == own).count();
        Ok(Some(RoomDetails {
            room_id: room.to_owned(),
            name: field("m.room.name", "name")?,
            topic: field("m.room.topic", "topic")?,
            avatar: field("m.room.avatar", "url")?,
            canonical_alias: field("m.room.canonical_alias", "alias")?,
            joined_members: joined.len(),
            joined_local_members: joined_local,
            version: summary.version.to_string(),
            creator: self.room_creators(room)?.into_iter().next(),
            encryption: field("m.room.encryption", "algorithm")?,
            federatable: create
                .as_ref()
                .and_then(|c| c.get("m.federate"))
                .and_then(Value::as_bool)
                .unwrap_or(true),
            public: summary.public,
            join_rules: field("m.room.join_rules", "join_rule")?,
            guest_access: field("m.room.guest_access", "guest_access")?,
            history_visibility: field("m.room.history_visibility", "history_visibility")?,
            state_events: self.current_state(room)?.len(),
            room_type: create
                .as_ref()
                .and_then(|c| c.get("type"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::{create, setup, user};
    use crate::{CreateRoomRequest, Preset};

    #[test]
    fn every_room_is_listed_once_with_its_details() {
        let (_d, svc) = setup();
        let (alice, bob) = (user("alice"), user("bob"));
        let mut made = Vec::new();
        for _ in 0..5 {
            made.push(create(&svc, &alice, Preset::PrivateChat));
        }
        let named = svc
            .create_room(
                &bob,
                CreateRoomRequest {
                    preset: Some(Preset::PublicChat),
                    name: Some("Lobby".into()),
                    topic: Some("hello".into()),
                    ..Default::default()
                },
            )
            .expect("create");
        svc.join(
            &alice,
            named.as_str(),
            &crate::MemberProfile::default(),
            None,
        )
        .expect("join");
        made.push(named.clone());
        made.sort();
        assert_eq!(svc.all_rooms().expect("list"), made);
        let d = svc.room_details(&named).expect("read").expect("known");
        assert_eq!(d.name.as_deref(), Some("Lobby"));
        assert_eq!(d.topic.as_deref(), Some("hello"));
        assert_eq!((d.joined_members, d.joined_local_members), (2, 2));
        assert_eq!(d.join_rules.as_deref(), Some("public"));
        assert_eq!(d.creator.as_ref(), Some(&bob));
        assert!(d.federatable && d.state_events >= 5);
        let unknown: ruma::OwnedRoomId = "!nope:test.local".try_into().expect("id");
        assert!(svc.room_details(&unknown).expect("read").is_none());
    }
}
