//! Every key of the column families `accounts` owns, built and parsed here and nowhere
//! else (the layouts are in the table of the crate docs).
//!
//! Parts are [`storage::Key`] strings (`0xFF`-terminated; user IDs, device IDs, room IDs,
//! event types and filter IDs are UTF-8 and never contain `0xFF`) and big-endian
//! positions. `Users` keys are the raw user ID, without a separator. `Tokens` keys are
//! the 32 bytes of [`TokenHash`]: the access token itself is never stored.
use ruma::{DeviceId, OwnedRoomId, RoomId, UserId};
use sha2::{Digest, Sha256};
use storage::{Key, KeyReader};

/// The SHA-256 of an access token: what `Tokens` is keyed by and what a device record
/// lists (as hex). Tokens are 32+ random alphanumerics, so no salt or slow hash is needed:
/// the hash only keeps a copied database (or its backups) from handing out sessions.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
    /// The `Tokens` key.
    pub fn as_key(&self) -> &[u8] {
        &self.0
    }
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// `Users`: the raw user ID.
pub(crate) fn user(user: &UserId) -> &[u8] {
    user.as_str().as_bytes()
}

/// `Users`: the user ID of a key.
pub(crate) fn parse_user(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()
}

/// `Devices`: `user_id 0xFF device_id 0xFF`.
pub(crate) fn device(user: &UserId, device: &DeviceId) -> Key {
    Key::new().str(user.as_str()).str(device.as_str())
}

/// `Devices`, `AccountData`, `AccountDataLog`, `Filters`: every key of one user.
pub(crate) fn user_prefix(user: &UserId) -> Key {
    Key::new().str(user.as_str())
}

/// The end of [`user_prefix`]'s range in the families whose next part is a string: parts
/// are UTF-8, never `0xFF`, and an empty part (global account data) gives
/// `user 0xFF 0xFF type`, so `user 0xFF 0xFF 0xFF` is past every key of the user.
pub(crate) fn user_range_end(user: &UserId) -> Vec<u8> {
    let mut end = user_prefix(user).into_bytes();
    end.extend([0xFF, 0xFF]);
    end
}

/// `AccountData`: `user_id 0xFF room_id-or-empty 0xFF type 0xFF`.
pub(crate) fn account_data(user: &UserId, room: Option<&RoomId>, event_type: &str) -> Key {
    user_prefix(user)
        .str(room.map(RoomId::as_str).unwrap_or(""))
        .str(event_type)
}

/// `AccountData`: (room, type) of a key; `Err` for a malformed key or room ID.
pub(crate) fn parse_account_data(key: &[u8]) -> Result<(Option<OwnedRoomId>, &str), ()> {
    let mut r = KeyReader::new(key);
    r.str().ok_or(())?;
    let room = r.str().ok_or(())?;
    let event_type = r.str().ok_or(())?;
    let room = match room {
        "" => None,
        r => Some(OwnedRoomId::try_from(r).map_err(|_| ())?),
    };
    Ok((room, event_type))
}

/// `AccountDataLog`: `user_id 0xFF pos`.
pub(crate) fn account_data_log(user: &UserId, pos: u64) -> Key {
    user_prefix(user).u64(pos)
}

/// `AccountDataLog`: the position of a key.
pub(crate) fn parse_account_data_log(key: &[u8]) -> Option<u64> {
    let mut r = KeyReader::new(key);
    r.str()?;
    r.u64()
}

/// `Filters`: `user_id 0xFF filter_id 0xFF`.
pub(crate) fn filter(user: &UserId, filter_id: &str) -> Key {
    user_prefix(user).str(filter_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> ruma::OwnedUserId {
        ruma::OwnedUserId::try_from("@alice:x").expect("user id")
    }

    #[test]
    fn token_hash_is_sha256_and_round_trips_as_hex() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert_ne!(TokenHash::of("abd"), h);
    }

    #[test]
    fn account_data_keys_round_trip_and_stay_in_the_user_range() {
        let room = ruma::OwnedRoomId::try_from("!r:x").expect("room id");
        let u = alice();
        let global = account_data(&u, None, "m.push_rules");
        let per_room = account_data(&u, Some(&room), "m.tag");
        assert_eq!(
            parse_account_data(global.as_bytes()),
            Ok((None, "m.push_rules"))
        );
        assert_eq!(
            parse_account_data(per_room.as_bytes()),
            Ok((Some(room), "m.tag"))
        );
        let (lo, hi) = (user_prefix(&u).into_bytes(), user_range_end(&u));
        for k in [global.as_bytes(), per_room.as_bytes()] {
            assert!(lo.as_slice() <= k && k < hi.as_slice());
        }
        // Another user whose ID extends this one's is outside the range.
        let other = ruma::OwnedUserId::try_from("@alice:xy").expect("user id");
        assert!(!account_data(&other, None, "t").as_bytes().starts_with(&lo));
        assert_eq!(
            parse_account_data_log(account_data_log(&u, 42).as_bytes()),
            Some(42)
        );
    }
}
