//! `createRoom`: the spec's event sequence for a new room.
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use storage::Cf;

use crate::keys::rooms::{RoomsKey, creating as creating_key};
use crate::persist::{AppendOpts, MembershipSink, NewEvent};
use crate::store::{
    AliasRecord, alias_reverse_key, membership_key, public_key, summary_key, timeline_prefix,
};
use crate::{MemberProfile, Result, RoomError, RoomService};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    PrivateChat,
    PublicChat,
    TrustedPrivateChat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    #[default]
    Private,
}

/// One `initial_state` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct InitialStateEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Map<String, Value>,
}

/// The body of `POST /createRoom` (deserialise it straight from the request), plus the
/// creator's profile for their member event.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRoomRequest {
    #[serde(default)]
    pub preset: Option<Preset>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<String>,
    /// Accepted and ignored: no identity server support.
    #[serde(default)]
    pub invite_3pid: Vec<Value>,
    #[serde(default)]
    pub is_direct: bool,
    #[serde(default)]
    pub initial_state: Vec<InitialStateEvent>,
    #[serde(default)]
    pub creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    pub power_level_content_override: Option<Map<String, Value>>,
    #[serde(default)]
    pub room_version: Option<String>,
    #[serde(default)]
    pub room_alias_name: Option<String>,
    /// Not part of the request body: the creator's displayname/avatar for their member event.
    #[serde(skip)]
    pub creator_profile: MemberProfile,
}

pub(crate) fn member_content(
    membership: &str,
    profile: Option<&MemberProfile>,
    reason: Option<&str>,
) -> Value {
    let mut c = Map::new();
    c.insert("membership".into(), Value::from(membership));
    if let Some(p) = profile {
        if let Some(d) = &p.displayname {
            c.insert("displayname".into(), Value::from(d.as_str()));
        }
        if let Some(a) = &p.avatar_url {
            c.insert("avatar_url".into(), Value::from(a.as_str()));
        }
    }
    if let Some(r) = reason {
        c.insert("reason".into(), Value::from(r));
    }
    Value::Object(c)
}

/// The default power levels. Until v11 the creator (and a trusted chat's invitees) get
/// 100 in `users`; from v12 creators have infinite power and may not be listed, and
/// upgrading the room (`m.room.tombstone`) takes 150, above any non-creator admin (as
/// Synapse does).
fn default_power_levels(
    creator: &UserId,
    ops: &[OwnedUserId],
    privileged_creators: bool,
) -> Map<String, Value> {
    let mut users = Map::new();
    if !privileged_creators {
        users.insert(creator.to_string(), json!(100));
        for u in ops {
            users.insert(u.to_string(), json!(100));
        }
    }
    let tombstone = if privileged_creators { 150 } else { 100 };
    let v = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": tombstone,
            "m.room.server_acl": 100,
            "m.room.encryption": 100
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Validate a `room_alias_name` and turn it into a local alias.
pub(crate) fn local_alias(server: &ruma::ServerName, name: &str) -> Result<OwnedRoomAliasId> {
    if name.is_empty()
        || name.contains(':')
        || name.contains('#')
        || name.chars().any(char::is_whitespace)
    {
        return Err(RoomError::InvalidParam(format!(
            "invalid room alias name {name:?}"
        )));
    }
    OwnedRoomAliasId::try_from(format!("#{name}:{server}"))
        .map_err(|e| RoomError::InvalidParam(format!("invalid room alias name {name:?}: {e}")))
}

impl RoomService {
    /// Create a room per `POST /createRoom`: `m.room.create`, the creator's join, power
    /// levels (default + `power_level_content_override`), canonical alias, the preset's
    /// join rules / history visibility / guest access, `initial_state`, name, topic,
    /// then invites. Each event is its own positioned write, but the room joins its users'
    /// room lists only once all are written (see below).
    pub fn create_room(&self, creator: &UserId, req: CreateRoomRequest) -> Result<OwnedRoomId> {
        let version = match &req.room_version {
            Some(v) => crate::parse_room_version(v)?,
            None => self.default_version().clone(),
        };
        let rules = crate::version::rules_for(&version)?;
        let privileged_creators = rules.authorization.explicitly_privilege_room_creators;
        let mut invites = Vec::new();
        for i in &req.invite {
            let u = crate::owned_user(i)
                .ok_or_else(|| RoomError::InvalidParam(format!("invalid user id {i:?}")))?;
            if !invites.contains(&u) && *u != *creator {
                invites.push(u);
            }
        }
        let alias = match &req.room_alias_name {
            Some(n) => Some(local_alias(&self.server_name, n)?),
            None => None,
        };
        let visibility = req.visibility.unwrap_or_default();
        let preset = req.preset.unwrap_or(match visibility {
            Visibility::Public => Preset::PublicChat,
            Visibility::Private => Preset::PrivateChat,
        });
        let mut initial_state = req.initial_state.clone();
        for ev in &initial_state {
            if ev.kind == "m.room.create" {
                return Err(RoomError::BadJson(
                    "initial_state may not contain m.room.create".into(),
                ));
            }
        }

        // Only a createRoom that claims an alias waits for other alias changes.
        let _aliases = alias.is_some().then(|| self.lock_aliases());
        if let Some(a) = &alias
            && self.db.exists(Cf::Aliases, a.as_str())?
        {
            return Err(RoomError::AliasInUse(a.to_string()));
        }
        // v12: the room ID is the create event's reference hash, known once it is built.
        let derived_room_id = crate::version::room_id_from_create_event(&rules);
        let mut room_id = loop {
            let id = crate::version::random_room_id(&self.server_name);
            if !self.room_exists(&id)? {
                break id;
            }
        };
        // A trusted private chat makes its invitees room admins: in v12, additional
        // creators; before, 100 in the power levels.
        let ops: &[OwnedUserId] = if preset == Preset::TrustedPrivateChat {
            &invites
        } else {
            &[]
        };
        let create = crate::version::create_content(
            &version,
            &rules,
            creator,
            req.creation_content.clone().unwrap_or_default(),
            if privileged_creators { ops } else { &[] },
        )?;
        let new = NewEvent::state("m.room.create", "", Value::Object(create));
        let (mut create_id, mut create_obj) =
            self.build_event(&version, None, &room_id, creator, &new)?;
        let mut tries = 0;
        let _guard = loop {
            if derived_room_id {
                room_id = crate::version::room_id_of_create_event(&create_id)?;
            }
            let guard = self.lock_room(&room_id);
            if !self.room_exists(&room_id)? {
                break guard;
            }
            // v12: an identical create event in the same millisecond (the same user
            // creating the same room twice) names the same room; the next millisecond's
            // event does not.
            tries += 1;
            if !derived_room_id || tries > 5 {
                return Err(RoomError::Internal(format!(
                    "room {room_id} already exists"
                )));
            }
            drop(guard);
            std::thread::sleep(std::time::Duration::from_millis(1));
            (create_id, create_obj) = self.build_event(&version, None, &room_id, creator, &new)?;
        };
        let creators: Vec<String> = std::iter::once(creator.to_string())
            .chain(if privileged_creators {
                ops.iter().map(|u| u.to_string()).collect::<Vec<_>>()
            } else {
                Vec::new()
            })
            .collect();

        // Memberships are held back until every event is written: a half-built room is in
        // nobody's room list, and a failure removes the room (its summary and alias) again.
        let sink = MembershipSink::default();
        let opts = || AppendOpts {
            defer_memberships: Some(sink.clone()),
            ..AppendOpts::default()
        };
        let built = (|| -> Result<()> {
            // 1. m.room.create, with the marker that says the room is being built (so a
            // crash before the end is cleaned up at the next start).
            let marker_room = room_id.clone();
            let marker = Box::new(move |_pos: u64, b: &mut storage::Batch| {
                b.put(Cf::Rooms, creating_key(&marker_room), Vec::new());
            });
            self.append(
                create_id,
                create_obj,
                AppendOpts {
                    extra: Some(marker),
                    ..opts()
                },
            )?;

            // 2. the creator joins
            let content = member_content("join", Some(&req.creator_profile), None);
            self.send_locked(
                &room_id,
                creator,
                NewEvent::state("m.room.member", creator.as_str(), content),
                opts(),
            )?;

            // 3. power levels
            let mut pl = match initial_state
                .iter()
                .position(|e| e.kind == "m.room.power_levels" && e.state_key.is_empty())
            {
                Some(i) => initial_state.remove(i).content,
                None => {
                    let mut pl = default_power_levels(creator, ops, privileged_creators);
                    // The private presets let every member invite (Synapse's preset
                    // override `{"invite": 0}`; Complement's invite tests rely on it).
                    if matches!(preset, Preset::PrivateChat | Preset::TrustedPrivateChat) {
                        pl.insert("invite".into(), json!(0));
                    }
                    pl
                }
            };
            if let Some(over) = &req.power_level_content_override {
                for (k, v) in over {
                    pl.insert(k.clone(), v.clone());
                }
            }
            if privileged_creators
                && let Some(Value::Object(users)) = pl.get("users")
                && let Some(c) = creators.iter().find(|c| users.contains_key(c.as_str()))
            {
                return Err(RoomError::BadJson(format!(
                    "room version {version}: creator {c} has unlimited power and may not be \
                     listed in the power levels' users"
                )));
            }
            self.send_locked(
                &room_id,
                creator,
                NewEvent::state("m.room.power_levels", "", Value::Object(pl)),
                opts(),
            )?;

            // 4. canonical alias, reserving the alias in the same write
            if let Some(a) = &alias {
                let rec = AliasRecord {
                    room_id: room_id.clone(),
                    creator: creator.to_owned(),
                };
                let (alias_s, room_s) = (a.to_string(), room_id.clone());
                let extra = Box::new(move |_pos: u64, b: &mut storage::Batch| {
                    b.put_json(Cf::Aliases, alias_s.as_str(), &rec);
                    b.put(
                        Cf::Aliases,
                        alias_reverse_key(&room_s, &alias_s),
                        Vec::new(),
                    );
                });
                let content = json!({ "alias": a.as_str() });
                self.send_locked(
                    &room_id,
                    creator,
                    NewEvent::state("m.room.canonical_alias", "", content),
                    AppendOpts {
                        extra: Some(extra),
                        ..opts()
                    },
                )?;
            }

            // 5. the preset's state, unless initial_state sets it
            let overridden = |t: &str| {
                initial_state
                    .iter()
                    .any(|e| e.kind == t && e.state_key.is_empty())
            };
            let (join_rule, guest) = match preset {
                Preset::PublicChat => ("public", None),
                Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", Some("can_join")),
            };
            let mut preset_events = vec![
                NewEvent::state("m.room.join_rules", "", json!({ "join_rule": join_rule })),
                NewEvent::state(
                    "m.room.history_visibility",
                    "",
                    json!({ "history_visibility": "shared" }),
                ),
            ];
            if let Some(g) = guest {
                preset_events.push(NewEvent::state(
                    "m.room.guest_access",
                    "",
                    json!({ "guest_access": g }),
                ));
            }
            for ev in preset_events {
                if !overridden(&ev.kind) {
                    self.send_locked(&room_id, creator, ev, opts())?;
                }
            }

            // 6. initial_state
            for ev in initial_state {
                let new = NewEvent::state(&ev.kind, &ev.state_key, Value::Object(ev.content));
                self.send_locked(&room_id, creator, new, opts())?;
            }

            // 7. name, topic
            if let Some(name) = &req.name {
                self.send_locked(
                    &room_id,
                    creator,
                    NewEvent::state("m.room.name", "", json!({ "name": name })),
                    opts(),
                )?;
            }
            if let Some(topic) = &req.topic {
                let content = json!({ "topic": topic, "m.topic": { "m.text": [{ "mimetype": "text/plain", "body": topic }] } });
                self.send_locked(
                    &room_id,
                    creator,
                    NewEvent::state("m.room.topic", "", content),
                    opts(),
                )?;
            }

            // 8. invites
            for u in &invites {
                let mut content = member_content("invite", None, None);
                if req.is_direct
                    && let Some(o) = content.as_object_mut()
                {
                    o.insert("is_direct".into(), Value::Bool(true));
                }
                self.send_locked(
                    &room_id,
                    creator,
                    NewEvent::state("m.room.member", u.as_str(), content),
                    opts(),
                )?;
            }
            Ok(())
        })();
        if let Err(e) = built {
            if let Err(cleanup) = self.purge_half_built_room(&room_id) {
                // The marker stays, so the next start tries again.
                tracing::error!(room = %room_id, error = %cleanup, "half-built room not removed");
            }
            return Err(e);
        }
        let deferred = sink.take();
        let mut b = storage::Batch::new();
        b.delete(Cf::Rooms, creating_key(&room_id));
        for (user, rec) in &deferred {
            match rec {
                Some(rec) => b.put_json(Cf::Memberships, membership_key(user, &room_id), rec),
                None => b.delete(Cf::Memberships, membership_key(user, &room_id)),
            }
        }
        self.db.write(b)?;
        if let Some(observer) = self.membership_observer.get() {
            for (user, rec) in &deferred {
                if let Ok(user) = <&UserId>::try_from(user.as_str()) {
                    observer.membership_changed(&room_id, user, rec.as_ref().map(|r| r.membership));
                }
            }
        }

        if visibility == Visibility::Public {
            self.set_public_locked(&room_id, true)?;
        }
        Ok(room_id)
    }

    /// Remove every row a createRoom that failed half way wrote for `room`, in one
    /// batch: its events (and their state records), timeline and topological index
    /// entries, stream entries, the room's own `Cf::Rooms` keys (summary, state,
    /// memberships, state log, the building marker) and its aliases. Nobody's room list
    /// ever held the room (memberships are written only at the end), so nothing else
    /// points at it.
    pub(crate) fn purge_half_built_room(&self, room: &RoomId) -> Result<()> {
        let mut b = storage::Batch::new();
        for (k, v) in self.db.scan_prefix(Cf::Timeline, timeline_prefix(room))? {
            if let Some((_, pos)) = crate::keys::timeline::parse(&k) {
                b.delete(Cf::RoomStream, crate::keys::room_stream::key(pos));
            }
            if let Ok(id) = String::from_utf8(v) {
                b.delete(Cf::Events, id.as_str());
                b.delete(Cf::StateAt, id.as_str());
            }
            b.delete(Cf::Timeline, k);
        }
        for (k, _) in self
            .db
            .scan_prefix(Cf::Topo, crate::keys::topo::prefix(room))?
        {
            b.delete(Cf::Topo, k);
        }
        for (k, _) in self.db.scan_prefix(Cf::Rooms, summary_key(room))? {
            b.delete(Cf::Rooms, k);
        }
        let reverse = crate::keys::aliases::reverse_prefix(room);
        for (k, _) in self.db.scan_prefix(Cf::Aliases, &reverse)? {
            if let Some(alias) = crate::keys::aliases::parse_reverse(&k) {
                b.delete(Cf::Aliases, crate::keys::aliases::record(alias));
            }
            b.delete(Cf::Aliases, k);
        }
        b.delete(Cf::Rooms, creating_key(room));
        self.db.write(b)?;
        Ok(())
    }

    /// At start-up: remove rooms whose creation never finished (the process died half
    /// way through createRoom).
    pub(crate) fn purge_unfinished_rooms(&self) -> Result<()> {
        let prefix = crate::keys::rooms::creating_prefix();
        for (k, _) in self.db.scan_prefix(Cf::Rooms, &prefix)? {
            let Some(room) = (match RoomsKey::parse(&k) {
                Some(RoomsKey::Creating { room }) => ruma::OwnedRoomId::try_from(room).ok(),
                _ => None,
            }) else {
                continue;
            };
            tracing::warn!(room = %room, "removing a room whose creation did not finish");
            self.purge_half_built_room(&room)?;
        }
        Ok(())
    }

    pub(crate) fn set_public_locked(&self, room: &RoomId, public: bool) -> Result<()> {
        let mut s = self.require_summary(room)?;
        if s.public != public {
            s.public = public;
            let mut b = storage::Batch::new();
            b.put_json(Cf::Rooms, summary_key(room), &s);
            if public {
                b.put(Cf::Rooms, public_key(room), Vec::new());
            } else {
                b.delete(Cf::Rooms, public_key(room));
            }
            self.db.write(b)?;
        }
        Ok(())
    }

    /// Rooms published in the room directory.
    pub fn public_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        let prefix = crate::keys::rooms::public_prefix();
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Cf::Rooms, &prefix)? {
            if let Some(RoomsKey::Public { room }) = RoomsKey::parse(&k)
                && let Ok(room) = OwnedRoomId::try_from(room)
            {
                out.push(room);
            }
        }
        Ok(out)
    }
}
