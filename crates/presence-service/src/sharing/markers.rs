//! Visibility markers: how a viewer's next `/sync` learns that their view of a user changed.
//!
//! When a config change or a leave changes whether V's `/sync` carries U, the service writes a
//! marker `(V, position, U)` (`Cf::Misc`, one per (V, U) pair: a newer one replaces the older)
//! with `write_with_position` and wakes exactly V. `events_since` reads V's markers in
//! `(since, now]` and, for each marked U, sends what V should see *now*: U's current presence
//! if V is in U's push audience, otherwise one final `offline` with no status message and no
//! `last_active_ago` — so V is not left showing a stale "online", and nobody else sees
//! anything. Joins need no marker: `/sync` already sends the presence of users who newly
//! share a room (from the join events).
//!
//! **Pruning** (issue 19 item 6): a marker is only read by a sync whose `since` is before it,
//! so markers older than [`MARKER_RETENTION`] are deleted (by the presence timer, every
//! [`MARKER_PRUNE_INTERVAL`]; [`PresenceService::prune_markers_before`]). A sync from a token
//! older than that gets the owners' current presence as usual but no final `offline` for an
//! owner it lost sight of — what a homeserver without markers (Synapse) does for every
//! token. Stored markers are therefore bounded by the visibility changes of one retention
//! period, not by every (viewer, owner) pair that ever flipped.
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};
use storage::{Cf, Key, KeyReader, StorageError};

use crate::PresenceService;

/// Key prefix of visibility markers: `presence_vis 0xFF viewer 0xFF pos owner 0xFF`.
const MARKER: &str = "presence_vis";
/// Key prefix of the marker index: `presence_vis_pair 0xFF viewer 0xFF owner 0xFF` → pos.
const MARKER_PAIR: &str = "presence_vis_pair";
/// Markers older than this are deleted.
pub const MARKER_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// How often the presence timer prunes markers.
pub const MARKER_PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Keys read (and deleted) per batch while pruning.
const PRUNE_CHUNK: usize = 1000;

impl PresenceService {
    /// Writes a marker for each `(viewer, owner)` whose `/sync` view changed, then wakes those
    /// viewers. Owners who never published a change are skipped: nobody was ever shown
    /// anything but "offline" for them.
    pub(super) fn mark_visibility_changed<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a UserId, &'a UserId)>,
    ) -> Result<(), StorageError> {
        // Two writers of one (viewer, owner) pair would both delete the same old marker and
        // leave two behind; callers come from sharing updates and from room membership, which
        // hold different locks.
        let _markers = self.markers.lock().unwrap_or_else(|p| p.into_inner());
        let pairs: Vec<(&UserId, &UserId)> = {
            let published = self.stream_pos.lock().unwrap_or_else(|p| p.into_inner());
            pairs
                .into_iter()
                .filter(|(viewer, owner)| viewer != owner && published.get(owner) > 0)
                .collect()
        };
        if pairs.is_empty() {
            return Ok(());
        }
        let written = self
            .db
            .write_with_position::<_, StorageError>(|pos, batch| {
                for (viewer, owner) in &pairs {
                    let pair_key = Key::new()
                        .str(MARKER_PAIR)
                        .str(viewer.as_str())
                        .str(owner.as_str());
                    if let Some(old) = self.db.get(Cf::Misc, &pair_key)?
                        && let Some(old) = storage::decode_u64(&old)
                    {
                        batch.delete(Cf::Misc, marker_key(viewer, old, owner));
                    }
                    batch.put(Cf::Misc, marker_key(viewer, pos, owner), Vec::new());
                    batch.put(Cf::Misc, pair_key, pos.to_be_bytes().to_vec());
                }
                Ok(())
            });
        let (pos, ()) = written?;
        let mut viewers: Vec<&UserId> = pairs.iter().map(|(v, _)| *v).collect();
        viewers.sort_unstable();
        viewers.dedup();
        self.waker.wake_users(&viewers, pos);
        Ok(())
    }

    /// Owners with a visibility marker for `viewer` in `(since, up_to]`.
    pub(crate) fn marked_owners(
        &self,
        viewer: &UserId,
        since: u64,
        up_to: u64,
    ) -> Result<Vec<OwnedUserId>, StorageError> {
        let prefix = Key::new().str(MARKER).str(viewer.as_str());
        let start = prefix.clone().u64(since + 1);
        let end = prefix.clone().u64(up_to.saturating_add(1));
        let skip = prefix.as_bytes().len();
        let mut out = Vec::new();
        for (k, _) in self
            .db
            .scan_range(Cf::Misc, start, end, false, usize::MAX)?
        {
            let mut r = KeyReader::new(&k[skip..]);
            let _pos = r.u64();
            if let Some(owner) = r.str().and_then(|s| OwnedUserId::try_from(s).ok()) {
                out.push(owner);
            }
        }
        Ok(out)
    }
}

impl PresenceService {
    /// Delete every visibility marker at a position before `horizon`, with its pair index
    /// entry when that still points at it. Returns how many markers were deleted. Holds the
    /// marker lock per chunk, so a concurrent marker write never sees a half-pruned pair.
    pub fn prune_markers_before(&self, horizon: u64) -> Result<usize, StorageError> {
        let prefix = Key::new().str(MARKER);
        let skip = prefix.as_bytes().len();
        let mut end = prefix.as_bytes().to_vec();
        // Every marker key starts with the prefix; 0xFF bytes end each part, so this is
        // past all of them.
        end.extend_from_slice(&[0xFF; 8]);
        let mut start = prefix.as_bytes().to_vec();
        let mut deleted = 0;
        loop {
            let _markers = self.markers.lock().unwrap_or_else(|p| p.into_inner());
            let chunk = self
                .db
                .scan_range(Cf::Misc, &start, &end, false, PRUNE_CHUNK)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            start = last.clone();
            start.push(0); // just after the last key read
            let mut batch = storage::Batch::new();
            for (k, _) in &chunk {
                let mut r = KeyReader::new(&k[skip..]);
                let (Some(viewer), Some(pos), Some(owner)) = (r.str(), r.u64(), r.str()) else {
                    continue;
                };
                if pos >= horizon {
                    continue;
                }
                batch.delete(Cf::Misc, k);
                let pair_key = Key::new().str(MARKER_PAIR).str(viewer).str(owner);
                if self
                    .db
                    .get(Cf::Misc, &pair_key)?
                    .and_then(|v| storage::decode_u64(&v))
                    == Some(pos)
                {
                    batch.delete(Cf::Misc, pair_key);
                }
                deleted += 1;
            }
            if !batch.is_empty() {
                self.db.write(batch)?;
            }
            if chunk.len() < PRUNE_CHUNK {
                break;
            }
        }
        Ok(deleted)
    }

    /// Stored marker keys (markers and their pair index), for tests and metrics.
    pub fn stored_marker_keys(&self) -> Result<usize, StorageError> {
        Ok(self.db.scan_prefix(Cf::Misc, Key::new().str(MARKER))?.len()
            + self
                .db
                .scan_prefix(Cf::Misc, Key::new().str(MARKER_PAIR))?
                .len())
    }
}

fn marker_key(viewer: &UserId, pos: u64, owner: &UserId) -> Key {
    Key::new()
        .str(MARKER)
        .str(viewer.as_str())
        .u64(pos)
        .str(owner.as_str())
}

/// The final presence a viewer who lost sight of `owner` is sent: offline, nothing else.
pub(crate) fn final_offline(owner: &UserId) -> Value {
    json!({ "type": "m.presence", "sender": owner, "content": { "presence": "offline" } })
}
