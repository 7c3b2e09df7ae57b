//! Every key of the column families `rooms` owns, one module per family, built and parsed
//! here (layouts in the crate docs; no other crate builds these byte strings).
//!
//! Parts are [`storage::Key`] strings (`0xFF`-terminated: IDs, event types and state keys
//! are UTF-8 and never contain `0xFF`) and big-endian `u64`s. `Events` and `StateAt` are
//! keyed by the raw event ID and `Aliases` records by the raw alias (see [`aliases`]).
//!
//! Room IDs start with `!`, aliases with `#`, user IDs with `@`, so the fixed-word key
//! spaces that share a family with them (`"public"`, `"creating"` in `Rooms`, `"fed"` in
//! `Txns`) never collide with them.
use ruma::{EventId, RoomId, UserId};
use storage::{Key, KeyReader};

/// `Cf::Rooms`: several key spaces, told apart by [`rooms::RoomsKey::parse`].
pub mod rooms {
    use super::*;

    const PUBLIC: &str = "public";
    const CREATING: &str = "creating";
    const STATE: &str = "s";
    const MEMBER: &str = "m";
    const LOG: &str = "l";
    const PENDING_REDACTION: &str = "r";
    const INVITE_STATE: &str = "i";

    /// `room_id 0xFF` → room summary. Also the prefix of every other key of the room.
    pub fn summary(room: &RoomId) -> Key {
        Key::new().str(room.as_str())
    }
    /// `room_id 0xFF "s" 0xFF type 0xFF state_key 0xFF` → current state event id.
    pub fn state(room: &RoomId, kind: &str, state_key: &str) -> Key {
        state_type_prefix(room, kind).str(state_key)
    }
    pub fn state_prefix(room: &RoomId) -> Key {
        summary(room).str(STATE)
    }
    pub fn state_type_prefix(room: &RoomId, kind: &str) -> Key {
        state_prefix(room).str(kind)
    }
    /// `room_id 0xFF "m" 0xFF user_id 0xFF` → current membership string.
    pub fn member(room: &RoomId, user: &str) -> Key {
        member_prefix(room).str(user)
    }
    pub fn member_prefix(room: &RoomId) -> Key {
        summary(room).str(MEMBER)
    }
    /// `room_id 0xFF "l" 0xFF type 0xFF state_key 0xFF` — followed by the big-endian
    /// position — → event id: the log of one state entry's changes.
    pub fn state_log_prefix(room: &RoomId, kind: &str, state_key: &str) -> Key {
        summary(room).str(LOG).str(kind).str(state_key)
    }
    pub fn state_log(room: &RoomId, kind: &str, state_key: &str, pos: u64) -> Key {
        state_log_prefix(room, kind, state_key).u64(pos)
    }
    /// `room_id 0xFF "r" 0xFF target_event_id 0xFF` → a redaction that arrived before its
    /// target (applied, if allowed, when the target arrives).
    pub fn pending_redaction(room: &RoomId, target: &EventId) -> Key {
        summary(room).str(PENDING_REDACTION).str(target.as_str())
    }
    /// `room_id 0xFF "i" 0xFF user_id 0xFF` → stripped state of a remote invite.
    pub fn invite_state(room: &RoomId, user: &UserId) -> Key {
        summary(room).str(INVITE_STATE).str(user.as_str())
    }
    /// `"public" 0xFF room_id 0xFF` → empty: the room directory.
    pub fn public(room: &RoomId) -> Key {
        public_prefix().str(room.as_str())
    }
    pub fn public_prefix() -> Key {
        Key::new().str(PUBLIC)
    }
    /// `"creating" 0xFF room_id 0xFF` → empty: a room createRoom is still building.
    pub fn creating(room: &RoomId) -> Key {
        creating_prefix().str(room.as_str())
    }
    pub fn creating_prefix() -> Key {
        Key::new().str(CREATING)
    }

    /// A `Cf::Rooms` key, parsed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum RoomsKey<'a> {
        Summary {
            room: &'a str,
        },
        State {
            room: &'a str,
            kind: &'a str,
            state_key: &'a str,
        },
        Member {
            room: &'a str,
            user: &'a str,
        },
        StateLog {
            room: &'a str,
            kind: &'a str,
            state_key: &'a str,
            pos: u64,
        },
        PendingRedaction {
            room: &'a str,
            target: &'a str,
        },
        InviteState {
            room: &'a str,
            user: &'a str,
        },
        Public {
            room: &'a str,
        },
        Creating {
            room: &'a str,
        },
    }

    impl<'a> RoomsKey<'a> {
        /// `None` for a key none of the builders above makes.
        pub fn parse(key: &'a [u8]) -> Option<Self> {
            let mut r = KeyReader::new(key);
            let first = r.str()?;
            let done = |r: &KeyReader| r.is_empty();
            let parsed = match first {
                PUBLIC => RoomsKey::Public { room: r.str()? },
                CREATING => RoomsKey::Creating { room: r.str()? },
                room if done(&r) => RoomsKey::Summary { room },
                room => match r.str()? {
                    STATE => RoomsKey::State {
                        room,
                        kind: r.str()?,
                        state_key: r.str()?,
                    },
                    MEMBER => RoomsKey::Member {
                        room,
                        user: r.str()?,
                    },
                    LOG => RoomsKey::StateLog {
                        room,
                        kind: r.str()?,
                        state_key: r.str()?,
                        pos: r.u64()?,
                    },
                    PENDING_REDACTION => RoomsKey::PendingRedaction {
                        room,
                        target: r.str()?,
                    },
                    INVITE_STATE => RoomsKey::InviteState {
                        room,
                        user: r.str()?,
                    },
                    _ => return None,
                },
            };
            done(&r).then_some(parsed)
        }
    }
}

/// `Cf::Timeline`: `room_id 0xFF pos` → event id.
pub mod timeline {
    use super::*;

    pub fn prefix(room: &RoomId) -> Key {
        Key::new().str(room.as_str())
    }
    pub fn key(room: &RoomId, pos: u64) -> Key {
        prefix(room).u64(pos)
    }
    /// (room, pos) of a key.
    pub fn parse(key: &[u8]) -> Option<(&str, u64)> {
        let mut r = KeyReader::new(key);
        let parsed = (r.str()?, r.u64()?);
        r.is_empty().then_some(parsed)
    }
}

/// `Cf::Topo`: `room_id 0xFF depth pos` → event id (topological order).
pub mod topo {
    use super::*;

    pub fn prefix(room: &RoomId) -> Key {
        Key::new().str(room.as_str())
    }
    pub fn key(room: &RoomId, depth: u64, pos: u64) -> Key {
        prefix(room).u64(depth).u64(pos)
    }
    /// (room, depth, pos) of a key.
    pub fn parse(key: &[u8]) -> Option<(&str, u64, u64)> {
        let mut r = KeyReader::new(key);
        let parsed = (r.str()?, r.u64()?, r.u64()?);
        r.is_empty().then_some(parsed)
    }
}

/// `Cf::RoomStream`: `pos` → room id: which room an event at a stream position is in
/// (every timeline event has one), for incremental `/sync` and federation catch-up.
pub mod room_stream {
    use super::*;

    pub fn key(pos: u64) -> Key {
        Key::new().u64(pos)
    }
    pub fn parse(key: &[u8]) -> Option<u64> {
        let mut r = KeyReader::new(key);
        let pos = r.u64()?;
        r.is_empty().then_some(pos)
    }
}

/// `Cf::Memberships`: `user_id 0xFF room_id 0xFF` → membership record.
pub mod memberships {
    use super::*;

    pub fn prefix(user: &str) -> Key {
        Key::new().str(user)
    }
    pub fn key(user: &str, room: &RoomId) -> Key {
        prefix(user).str(room.as_str())
    }
    /// (user, room) of a key.
    pub fn parse(key: &[u8]) -> Option<(&str, &str)> {
        let mut r = KeyReader::new(key);
        let parsed = (r.str()?, r.str()?);
        r.is_empty().then_some(parsed)
    }
}

/// `Cf::Aliases`: `alias` (raw) → alias record; `room_id 0xFF alias 0xFF` → empty (the
/// reverse index).
pub mod aliases {
    use super::*;

    pub fn record(alias: &str) -> &[u8] {
        alias.as_bytes()
    }
    pub fn reverse_prefix(room: &RoomId) -> Key {
        Key::new().str(room.as_str())
    }
    pub fn reverse(room: &RoomId, alias: &str) -> Key {
        reverse_prefix(room).str(alias)
    }
    /// The alias of a reverse-index key.
    pub fn parse_reverse(key: &[u8]) -> Option<&str> {
        let mut r = KeyReader::new(key);
        r.str()?;
        let alias = r.str()?;
        r.is_empty().then_some(alias)
    }
}

/// `Cf::Txns`: client send idempotency under the device's [`storage::device_scope`]
/// (deleted with the device by `accounts`), federation transactions under `"fed"`.
pub mod txns {
    use super::*;

    const FEDERATION: &str = "fed";

    /// `user_id 0xFF device_id 0xFF scope 0xFF txn_id 0xFF` → event id.
    pub fn client(user: &UserId, device: &str, scope: &str, txn: &str) -> Key {
        storage::device_scope(user.as_str(), device)
            .str(scope)
            .str(txn)
    }
    /// `"fed" 0xFF origin 0xFF txn_id 0xFF` → federation transaction record.
    pub fn federation(origin: &str, txn: &str) -> Key {
        federation_prefix().str(origin).str(txn)
    }
    pub fn federation_prefix() -> Key {
        Key::new().str(FEDERATION)
    }
    /// Whether a key is a federation transaction's.
    pub fn is_federation(key: &[u8]) -> bool {
        KeyReader::new(key).str() == Some(FEDERATION)
    }
}

#[cfg(test)]
mod tests {
    use super::rooms::RoomsKey;
    use super::*;

    #[test]
    fn every_rooms_key_parses_back_to_what_built_it() {
        let room = <&RoomId>::try_from("!r:x").expect("room");
        let user = <&UserId>::try_from("@u:x").expect("user");
        let ev = <&EventId>::try_from("$e").expect("event");
        let cases = [
            (rooms::summary(room), RoomsKey::Summary { room: "!r:x" }),
            (
                rooms::state(room, "m.room.name", ""),
                RoomsKey::State {
                    room: "!r:x",
                    kind: "m.room.name",
                    state_key: "",
                },
            ),
            (
                rooms::member(room, "@u:x"),
                RoomsKey::Member {
                    room: "!r:x",
                    user: "@u:x",
                },
            ),
            (
                rooms::state_log(room, "m.room.member", "@u:x", 7),
                RoomsKey::StateLog {
                    room: "!r:x",
                    kind: "m.room.member",
                    state_key: "@u:x",
                    pos: 7,
                },
            ),
            (
                rooms::pending_redaction(room, ev),
                RoomsKey::PendingRedaction {
                    room: "!r:x",
                    target: "$e",
                },
            ),
            (
                rooms::invite_state(room, user),
                RoomsKey::InviteState {
                    room: "!r:x",
                    user: "@u:x",
                },
            ),
            (rooms::public(room), RoomsKey::Public { room: "!r:x" }),
            (rooms::creating(room), RoomsKey::Creating { room: "!r:x" }),
        ];
        for (key, want) in cases {
            assert_eq!(RoomsKey::parse(key.as_bytes()), Some(want));
        }
        assert_eq!(RoomsKey::parse(b"!r:x\xFFz\xFFq\xFF"), None);
        assert_eq!(RoomsKey::parse(b"!r:x\xFFs\xFFonly-type\xFF"), None);
    }

    #[test]
    fn a_rooms_prefixes_hold_only_its_own_keys_of_that_space() {
        let a = <&RoomId>::try_from("!a:x").expect("room");
        let ab = <&RoomId>::try_from("!a:xb").expect("room");
        // A room whose ID extends another's stays outside its prefixes.
        assert!(
            !rooms::state(ab, "t", "")
                .as_bytes()
                .starts_with(rooms::summary(a).as_bytes())
        );
        // State and member keys of one room never fall under each other's prefix.
        let state = rooms::state(a, "m.room.member", "@u:x");
        let member = rooms::member(a, "@u:x");
        assert!(
            !state
                .as_bytes()
                .starts_with(rooms::member_prefix(a).as_bytes())
        );
        assert!(
            !member
                .as_bytes()
                .starts_with(rooms::state_prefix(a).as_bytes())
        );
        assert!(
            !rooms::state_log(a, "m.room.member", "@u:x", 1)
                .as_bytes()
                .starts_with(rooms::state_prefix(a).as_bytes())
        );
    }

    #[test]
    fn other_families_round_trip() {
        let room = <&RoomId>::try_from("!r:x").expect("room");
        let user = <&UserId>::try_from("@u:x").expect("user");
        assert_eq!(
            timeline::parse(timeline::key(room, 9).as_bytes()),
            Some(("!r:x", 9))
        );
        assert_eq!(
            topo::parse(topo::key(room, 3, 9).as_bytes()),
            Some(("!r:x", 3, 9))
        );
        assert_eq!(room_stream::parse(room_stream::key(5).as_bytes()), Some(5));
        assert_eq!(
            memberships::parse(memberships::key("@u:x", room).as_bytes()),
            Some(("@u:x", "!r:x"))
        );
        assert_eq!(
            aliases::parse_reverse(aliases::reverse(room, "#a:x").as_bytes()),
            Some("#a:x")
        );
        let client = txns::client(user, "DEV", "send !r:x", "t1");
        assert!(
            client
                .as_bytes()
                .starts_with(storage::device_scope("@u:x", "DEV").as_bytes())
        );
        assert!(!txns::is_federation(client.as_bytes()));
        assert!(txns::is_federation(txns::federation("o", "t").as_bytes()));
    }
}
