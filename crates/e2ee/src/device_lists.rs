//! The device-list stream: "user U's devices or keys changed at position P".
//!
//! Every change (device keys uploaded or replaced, cross-signing keys, a device deleted, a
//! remote server's `m.device_list_update`) is written with a stream position, in the same
//! batch as the data it describes, so a reader that sees the change also sees the data.
//! Readers ask "who changed in `(from, to]`"; filtering to the users a viewer shares a
//! room with is the caller's job (it knows rooms).
use std::collections::BTreeSet;

use ruma::{OwnedUserId, UserId};
use storage::{Batch, Cf, KeyReader};

use crate::{E2eeService, Result, keys};

/// Entries read at most for one `(from, to]` query; a client that was away for longer
/// than that many changes gets the newest ones (and should re-query all keys anyway).
pub const MAX_CHANGES_SCANNED: usize = 50_000;

/// Record in `batch` that `user`'s device list changed at `pos`.
pub(crate) fn log_change(batch: &mut Batch, pos: u64, user: &str) {
    batch.put(Cf::E2ee, keys::device_list_change(pos, user), Vec::new());
    batch.put(
        Cf::E2ee,
        keys::device_list_version(user),
        pos.to_be_bytes().to_vec(),
    );
}

impl E2eeService {
    /// Record a change of `user`'s device list that has no data of its own here (a remote
    /// user's `m.device_list_update`, a new login). Returns its stream position.
    pub fn mark_device_list_changed(&self, user: &UserId) -> Result<u64> {
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            log_change(b, pos, user.as_str());
            Ok::<_, crate::E2eeError>(())
        })?;
        Ok(pos)
    }

    /// Users whose device list changed at a position in `(from, to]`.
    pub fn device_list_changes(&self, from: u64, to: u64) -> Result<BTreeSet<OwnedUserId>> {
        let mut out = BTreeSet::new();
        if to <= from {
            return Ok(out);
        }
        let start = keys::device_list_from(from.saturating_add(1));
        let end = keys::device_list_from(to.saturating_add(1));
        for (k, _) in self
            .db()
            .scan_range(Cf::E2ee, &start, &end, false, MAX_CHANGES_SCANNED)?
        {
            let mut r = KeyReader::new(&k);
            let _space = r.str();
            let _pos = r.u64();
            if let Some(u) = r.str().and_then(|u| OwnedUserId::try_from(u).ok()) {
                out.insert(u);
            }
        }
        Ok(out)
    }

    /// Position of `user`'s latest device-list change (0: never), used as the
    /// `stream_id` of `m.device_list_update` and `/user/devices`.
    pub fn device_list_version(&self, user: &UserId) -> Result<u64> {
        Ok(self
            .db()
            .get(Cf::E2ee, keys::device_list_version(user.as_str()))?
            .and_then(|v| storage::decode_u64(&v))
            .unwrap_or(0))
    }
}
