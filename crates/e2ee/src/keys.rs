//! The key layouts of `Cf::E2ee`, one typed constructor per key space, so no other module
//! spells a prefix. Every key starts with a short space tag (a `Key` string part), then
//! typed parts; positions and sequence numbers are big-endian so scans run in order.
//!
//! | space | key | value |
//! |---|---|---|
//! | `dk`  | user, device | signed device keys (JSON) |
//! | `otk` | user, device, algorithm, seq | [`crate::otk::StoredOtk`] (upload order = seq order) |
//! | `oti` | user, device, `algorithm:key_id` | seq of that key in `otk` (duplicate check) |
//! | `otc` | user, device | next seq (u64) |
//! | `fb`  | user, device, algorithm | [`crate::otk::StoredFallback`] |
//! | `xs`  | user, kind (`master`/`self_signing`/`user_signing`) | the cross-signing key (JSON) |
//! | `sig` | target user, target key id, signer user | signatures by that signer (JSON map) |
//! | `dl`  | pos, user | empty: the user's devices or keys changed at pos |
//! | `dlv` | user | u64: position of the user's latest device-list change |
//! | `rdl` | remote user | [`crate::remote::RemoteDeviceList`]: the cached devices of a remote user |
//! | `dls` | local user | u64: stream id of the user's last `m.device_list_update` sent out |
//! | `td`  | user, device, pos, seq | a to-device message waiting for that device |
//! | `tda` | user, device | [`crate::to_device::Ack`]: delivered up to, in a response at token |
//! | `tdt` | sender, sender device, txn id | pos of the `sendToDevice` with that txn |
//! | `bv`  | user, version | [`crate::backup::BackupVersion`] |
//! | `bk`  | user, version, room, session | a backed-up room key session (JSON) |
use storage::Key;

fn space(tag: &str) -> Key {
    Key::new().str(tag)
}

pub fn device_keys(user: &str, device: &str) -> Key {
    space("dk").str(user).str(device)
}
pub fn device_keys_of_user(user: &str) -> Key {
    space("dk").str(user)
}

pub fn otk(user: &str, device: &str, algorithm: &str, seq: u64) -> Key {
    otks_of_algorithm(user, device, algorithm).u64(seq)
}
pub fn otks_of_algorithm(user: &str, device: &str, algorithm: &str) -> Key {
    otks_of_device(user, device).str(algorithm)
}
pub fn otks_of_device(user: &str, device: &str) -> Key {
    space("otk").str(user).str(device)
}
pub fn otk_index(user: &str, device: &str, full_key_id: &str) -> Key {
    otk_index_of_device(user, device).str(full_key_id)
}
pub fn otk_index_of_device(user: &str, device: &str) -> Key {
    space("oti").str(user).str(device)
}
pub fn otk_counter(user: &str, device: &str) -> Key {
    space("otc").str(user).str(device)
}

pub fn fallback(user: &str, device: &str, algorithm: &str) -> Key {
    fallbacks_of_device(user, device).str(algorithm)
}
pub fn fallbacks_of_device(user: &str, device: &str) -> Key {
    space("fb").str(user).str(device)
}

pub fn cross_signing(user: &str, kind: &str) -> Key {
    space("xs").str(user).str(kind)
}

pub fn signatures(target: &str, key_id: &str, signer: &str) -> Key {
    signatures_of_key(target, key_id).str(signer)
}
pub fn signatures_of_key(target: &str, key_id: &str) -> Key {
    space("sig").str(target).str(key_id)
}

pub fn device_list_change(pos: u64, user: &str) -> Key {
    space("dl").u64(pos).str(user)
}
pub fn device_list_from(pos: u64) -> Key {
    space("dl").u64(pos)
}
pub fn device_list_version(user: &str) -> Key {
    space("dlv").str(user)
}

pub fn remote_device_list(user: &str) -> Key {
    space("rdl").str(user)
}
pub fn device_list_sent(user: &str) -> Key {
    space("dls").str(user)
}

pub fn to_device(user: &str, device: &str, pos: u64, seq: u64) -> Key {
    to_device_inbox(user, device).u64(pos).u64(seq)
}
pub fn to_device_inbox(user: &str, device: &str) -> Key {
    space("td").str(user).str(device)
}
pub fn to_device_ack(user: &str, device: &str) -> Key {
    space("tda").str(user).str(device)
}
pub fn to_device_txn(sender: &str, device: &str, txn: &str) -> Key {
    space("tdt").str(sender).str(device).str(txn)
}

pub fn backup_version(user: &str, version: u64) -> Key {
    backup_versions(user).u64(version)
}
pub fn backup_versions(user: &str) -> Key {
    space("bv").str(user)
}
pub fn backup_key(user: &str, version: u64, room: &str, session: &str) -> Key {
    backup_keys_of_room(user, version, room).str(session)
}
pub fn backup_keys_of_room(user: &str, version: u64, room: &str) -> Key {
    backup_keys(user, version).str(room)
}
pub fn backup_keys(user: &str, version: u64) -> Key {
    space("bk").str(user).u64(version)
}

/// The smallest key greater than every key that starts with `prefix` (for range scans
/// with a bound and a limit).
pub fn prefix_end(prefix: &Key) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xFF {
            *last += 1;
            return end;
        }
        end.pop();
    }
    // Only 0xFF bytes: no finite successor; nothing sorts above this.
    vec![0xFF; prefix.as_bytes().len() + 9]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_exactly_the_prefix() {
        let p = otks_of_algorithm("@a:x", "D", "signed_curve25519");
        let end = prefix_end(&p);
        let inside = otk("@a:x", "D", "signed_curve25519", u64::MAX);
        let other_alg = otks_of_algorithm("@a:x", "D", "signed_curve25519x");
        let other_dev = otks_of_device("@a:x", "E");
        assert!(inside.as_bytes() < end.as_slice());
        assert!(p.as_bytes() <= inside.as_bytes());
        assert!(!(p.as_bytes() <= other_alg.as_bytes() && other_alg.as_bytes() < end.as_slice()));
        assert!(!(p.as_bytes() <= other_dev.as_bytes() && other_dev.as_bytes() < end.as_slice()));
    }

    #[test]
    fn device_list_changes_sort_by_position() {
        assert!(
            device_list_change(2, "@z:x").as_bytes() < device_list_change(10, "@a:x").as_bytes()
        );
    }
}
