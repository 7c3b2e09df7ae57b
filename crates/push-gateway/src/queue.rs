//! The durable queue of pushes in `Cf::PushQueue`, one queue per pusher.
//!
//! * `"cursor"` → the stream position up to which events have been turned into pushes;
//! * `"q" user app_id pushkey pos` → a [`Queued`] push of the event at stream position `pos`.
//!
//! The follower writes the pushes of a batch of events and the new cursor in one write
//! batch, so a crash either loses neither or queues the batch again (the same keys: a push
//! is queued at most once per pusher and event). An entry goes once the gateway answered,
//! or was given up on; until then it survives restarts.
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use storage::{Batch, Cf, Db, Key, KeyReader, StorageError};

/// A push waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
}

/// Which pusher a queue belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PusherId {
    pub user: OwnedUserId,
    pub app_id: String,
    pub pushkey: String,
}

/// One entry read back: its position (the key's last part) and the push.
#[derive(Debug, Clone)]
pub struct Entry {
    pub pos: u64,
    pub push: Queued,
}

fn cursor_key() -> Key {
    Key::new().str("cursor")
}
fn queue_prefix(user: &UserId, app_id: &str, pushkey: &str) -> Key {
    Key::new()
        .str("q")
        .str(user.as_str())
        .str(app_id)
        .str(pushkey)
}
fn end_of(prefix: &Key) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    end.extend_from_slice(&[0xFF; 9]);
    end
}

/// The follower's cursor, if it has one.
pub fn cursor(db: &Db) -> Result<Option<u64>, StorageError> {
    Ok(db
        .get(Cf::PushQueue, cursor_key())?
        .and_then(|v| storage::decode_u64(&v)))
}

/// Add the cursor to `batch`.
pub fn put_cursor(batch: &mut Batch, pos: u64) {
    batch.put(Cf::PushQueue, cursor_key(), pos.to_be_bytes().to_vec());
}

/// Add a push of the event at `pos` for `pusher` to `batch`.
pub fn put(batch: &mut Batch, pusher: &PusherId, pos: u64, push: &Queued) {
    let key = queue_prefix(&pusher.user, &pusher.app_id, &pusher.pushkey).u64(pos);
    batch.put_json(Cf::PushQueue, key, push);
}

/// Remove one entry.
pub fn remove(db: &Db, pusher: &PusherId, pos: u64) -> Result<(), StorageError> {
    let mut batch = Batch::new();
    batch.delete(
        Cf::PushQueue,
        queue_prefix(&pusher.user, &pusher.app_id, &pusher.pushkey).u64(pos),
    );
    db.write(batch)
}

/// Store an entry again (its attempt count changed).
pub fn update(db: &Db, pusher: &PusherId, entry: &Entry) -> Result<(), StorageError> {
    let mut batch = Batch::new();
    put(&mut batch, pusher, entry.pos, &entry.push);
    db.write(batch)
}

/// Remove every entry of a pusher (it is gone, rejected, or given up on). Returns how many.
pub fn clear(db: &Db, pusher: &PusherId) -> Result<usize, StorageError> {
    let prefix = queue_prefix(&pusher.user, &pusher.app_id, &pusher.pushkey);
    let mut batch = Batch::new();
    let mut n = 0;
    for (k, _) in db.scan_prefix(Cf::PushQueue, &prefix)? {
        batch.delete(Cf::PushQueue, k);
        n += 1;
    }
    db.write(batch)?;
    Ok(n)
}

/// The oldest entries of one pusher, at most `limit`, in stream order.
pub fn pending(db: &Db, pusher: &PusherId, limit: usize) -> Result<Vec<Entry>, StorageError> {
    let prefix = queue_prefix(&pusher.user, &pusher.app_id, &pusher.pushkey);
    let plen = prefix.as_bytes().len();
    let rows = db.scan_range(Cf::PushQueue, &prefix, end_of(&prefix), false, limit)?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, v)| {
            let pos = KeyReader::new(&k[plen..]).u64()?;
            let push = serde_json::from_slice(&v).ok()?;
            Some(Entry { pos, push })
        })
        .collect())
}

/// The pushers that have something queued, at most `limit` of them (one seek per pusher:
/// a long queue does not hide the others).
pub fn pushers_with_pending(db: &Db, limit: usize) -> Result<Vec<PusherId>, StorageError> {
    let prefix = Key::new().str("q");
    let end = end_of(&prefix);
    let mut start = prefix.as_bytes().to_vec();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((k, _)) = db
            .scan_range(Cf::PushQueue, &start, &end, false, 1)?
            .into_iter()
            .next()
        else {
            break;
        };
        let mut r = KeyReader::new(&k[prefix.as_bytes().len()..]);
        let (Some(user), Some(app_id), Some(pushkey)) = (r.str(), r.str(), r.str()) else {
            // Not a queue key: step past it.
            start = k;
            start.push(0);
            continue;
        };
        let Ok(user) = OwnedUserId::try_from(user) else {
            start = k;
            start.push(0);
            continue;
        };
        start = end_of(&queue_prefix(&user, app_id, pushkey));
        out.push(PusherId {
            user,
            app_id: app_id.to_owned(),
            pushkey: pushkey.to_owned(),
        });
    }
    Ok(out)
}
