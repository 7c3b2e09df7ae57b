//! Event relations (`m.relates_to`) and threads: the index behind
//! `/relations/{eventId}`, `/threads` and the bundled aggregations in
//! `unsigned.m.relations`.
//!
//! Keys in `Cf::Misc` (this module is their only reader and writer):
//!
//! | key | value |
//! | --- | --- |
//! | `"rel" 0xFF parent 0xFF pos` | [`Child`]: a relation to `parent`, by the child's stream position |
//! | `"relc" 0xFF child 0xFF` | [`ChildRef`]: where the child's row is (to drop it on redaction) |
//! | `"thr" 0xFF room 0xFF latest_pos root 0xFF` | empty: a room's threads by their latest reply |
//! | `"thl" 0xFF root 0xFF` | [`ThreadRef`]: the thread's room and latest reply position |
//! | `"relcur"` | u64 BE: the timeline position the index has seen everything up to |
//!
//! Each event's rows are written in one batch together with the cursor, so a crash
//! leaves the index consistent with its cursor. A redacted child loses its relation
//! (redaction strips `m.relates_to`): its rows are deleted and its thread's latest reply
//! recomputed.
use std::sync::Mutex;

use rooms::{RoomService, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use storage::{Batch, Cf, Db, Key, KeyReader};

use crate::{Error, Result};

const STEP: usize = 512;
pub const THREAD: &str = "m.thread";

/// One relation to a parent event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Child {
    pub event_id: String,
    pub rel_type: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: String,
    pub room_id: String,
    #[serde(default)]
    pub pos: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChildRef {
    parent: String,
    pos: u64,
    rel_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ThreadRef {
    room_id: String,
    latest_pos: u64,
}

/// The `m.relates_to` of an event: (rel_type, parent event ID).
pub fn relation_of(ev: &StoredEvent) -> Option<(String, String)> {
    let content = ev.content();
    let rel = content.get("m.relates_to")?;
    let rel_type = rel.get("rel_type")?.as_str()?;
    let parent = rel.get("event_id")?.as_str()?;
    if rel_type.is_empty() || parent.is_empty() || parent == ev.event_id.as_str() {
        return None;
    }
    Some((rel_type.to_owned(), parent.to_owned()))
}

fn rel_prefix(parent: &str) -> Key {
    Key::new().str("rel").str(parent)
}
fn child_key(child: &str) -> Key {
    Key::new().str("relc").str(child)
}
fn threads_prefix(room: &str) -> Key {
    Key::new().str("thr").str(room)
}
fn thread_key(room: &str, latest_pos: u64, root: &str) -> Key {
    threads_prefix(room).u64(latest_pos).str(root)
}
fn thread_ref_key(root: &str) -> Key {
    Key::new().str("thl").str(root)
}
fn cursor_key() -> Key {
    Key::new().str("relcur")
}

/// Which threads `/threads` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    All,
    Participated,
}

/// A thread's summary for `unsigned.m.relations.m.thread`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSummary {
    pub count: usize,
    pub latest: String,
    pub participated: bool,
}

pub struct Relations {
    catch_up: Mutex<()>,
}

impl Default for Relations {
    fn default() -> Self {
        Self::new()
    }
}

impl Relations {
    pub fn new() -> Relations {
        Relations {
            catch_up: Mutex::new(()),
        }
    }

    pub fn cursor(db: &Db) -> Result<u64> {
        Ok(db
            .get(Cf::Misc, cursor_key())?
            .and_then(|v| storage::decode_u64(&v))
            .unwrap_or(0))
    }

    /// Index every timeline event up to the current stream position.
    pub fn catch_up(&self, rooms: &RoomService) -> Result<()> {
        let _one = self.catch_up.lock().map_err(|_| Error::poisoned())?;
        let db = rooms.db();
        let upto = rooms.current_position();
        let mut cursor = Self::cursor(db)?;
        while cursor < upto {
            let (events, last) = rooms.timeline_events_between(cursor, upto, STEP)?;
            for c in &events {
                let mut b = Batch::new();
                if self.apply(db, &mut b, &c.event)? {
                    b.put(Cf::Misc, cursor_key(), c.event.pos.to_be_bytes().to_vec());
                    db.write(b)?;
                }
            }
            cursor = last;
            let mut b = Batch::new();
            b.put(Cf::Misc, cursor_key(), cursor.to_be_bytes().to_vec());
            db.write(b)?;
        }
        Ok(())
    }

    /// The rows one event adds or removes; false when it has none.
    fn apply(&self, db: &Db, b: &mut Batch, ev: &StoredEvent) -> Result<bool> {
        if let Some(target) = ev.redacts() {
            return self.drop_child(db, b, target);
        }
        let Some((rel_type, parent)) = relation_of(ev) else {
            return Ok(false);
        };
        let room = ev.room_id().into_owned();
        let child = Child {
            event_id: ev.event_id.to_string(),
            rel_type: rel_type.clone(),
            kind: ev.kind().to_owned(),
            sender: ev.sender().to_owned(),
            room_id: room.clone(),
            pos: ev.pos,
        };
        b.put_json(Cf::Misc, rel_prefix(&parent).u64(ev.pos), &child);
        b.put_json(
            Cf::Misc,
            child_key(ev.event_id.as_str()),
            &ChildRef {
                parent: parent.clone(),
                pos: ev.pos,
                rel_type: rel_type.clone(),
            },
        );
        if rel_type == THREAD {
            let old: Option<ThreadRef> = db.get_json(Cf::Misc, thread_ref_key(&parent))?;
            if let Some(old) = &old {
                if old.latest_pos >= ev.pos {
                    return Ok(true);
                }
                b.delete(Cf::Misc, thread_key(&old.room_id, old.latest_pos, &parent));
            }
            b.put(Cf::Misc, thread_key(&room, ev.pos, &parent), Vec::new());
            b.put_json(
                Cf::Misc,
                thread_ref_key(&parent),
                &ThreadRef {
                    room_id: room,
                    latest_pos: ev.pos,
                },
            );
        }
        Ok(true)
    }

    fn drop_child(&self, db: &Db, b: &mut Batch, child: &str) -> Result<bool> {
        let Some(r) = db.get_json::<ChildRef>(Cf::Misc, child_key(child))? else {
            return Ok(false);
        };
        b.delete(Cf::Misc, child_key(child));
        b.delete(Cf::Misc, rel_prefix(&r.parent).u64(r.pos));
        if r.rel_type == THREAD
            && let Some(t) = db.get_json::<ThreadRef>(Cf::Misc, thread_ref_key(&r.parent))?
            && t.latest_pos == r.pos
        {
            b.delete(Cf::Misc, thread_key(&t.room_id, t.latest_pos, &r.parent));
            let newest = self
                .children(db, &r.parent)?
                .into_iter()
                .rfind(|c| c.rel_type == THREAD && c.event_id != child);
            match newest {
                Some(c) => {
                    b.put(
                        Cf::Misc,
                        thread_key(&t.room_id, c.pos, &r.parent),
                        Vec::new(),
                    );
                    b.put_json(
                        Cf::Misc,
                        thread_ref_key(&r.parent),
                        &ThreadRef {
                            room_id: t.room_id.clone(),
                            latest_pos: c.pos,
                        },
                    );
                }
                None => b.delete(Cf::Misc, thread_ref_key(&r.parent)),
            }
        }
        Ok(true)
    }

    /// Every relation to `parent`, oldest first.
    pub fn children(&self, db: &Db, parent: &str) -> Result<Vec<Child>> {
        let prefix = rel_prefix(parent);
        let mut out = Vec::new();
        for (k, v) in db.scan_prefix(Cf::Misc, prefix.as_bytes())? {
            let mut r = KeyReader::new(&k[prefix.as_bytes().len()..]);
            let Some(pos) = r.u64() else { continue };
            let Ok(mut c) = serde_json::from_slice::<Child>(&v) else {
                continue;
            };
            c.pos = pos;
            out.push(c);
        }
        Ok(out)
    }

    /// Relations to `parent` (and, with `recurse`, relations to those, three levels
    /// deep as Synapse does), in stream order, narrowed to a relation type and event type.
    pub fn related(
        &self,
        db: &Db,
        parent: &str,
        rel_type: Option<&str>,
        kind: Option<&str>,
        recurse: bool,
    ) -> Result<Vec<Child>> {
        let mut out = Vec::new();
        let mut level = vec![parent.to_owned()];
        let depth = if recurse { 3 } else { 1 };
        for _ in 0..depth {
            let mut next = Vec::new();
            for p in &level {
                for c in self.children(db, p)? {
                    next.push(c.event_id.clone());
                    out.push(c);
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        out.retain(|c| {
            rel_type.is_none_or(|r| r == c.rel_type) && kind.is_none_or(|k| k == c.kind)
        });
        out.sort_by_key(|c| c.pos);
        out.dedup_by(|a, b| a.event_id == b.event_id);
        Ok(out)
    }

    /// The thread rooted at `root`, if it has replies.
    pub fn thread_summary(
        &self,
        db: &Db,
        root: &StoredEvent,
        viewer: &str,
    ) -> Result<Option<ThreadSummary>> {
        let replies: Vec<Child> = self
            .children(db, root.event_id.as_str())?
            .into_iter()
            .filter(|c| c.rel_type == THREAD && c.room_id == *root.room_id())
            .collect();
        let Some(latest) = replies.last() else {
            return Ok(None);
        };
        Ok(Some(ThreadSummary {
            count: replies.len(),
            latest: latest.event_id.clone(),
            participated: root.sender() == viewer || replies.iter().any(|c| c.sender == viewer),
        }))
    }

    /// A room's thread roots, the most recently replied to first: (root, latest reply
    /// position), at most `limit`, with the latest reply below `below` when given.
    pub fn threads(
        &self,
        db: &Db,
        room: &str,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>> {
        let prefix = threads_prefix(room);
        let start = prefix.clone().u64(0);
        let end = prefix.clone().u64(below.unwrap_or(u64::MAX));
        let rows = db.scan_range(Cf::Misc, start.as_bytes(), end.as_bytes(), true, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let mut r = KeyReader::new(&k[prefix.as_bytes().len()..]);
            let (Some(pos), Some(root)) = (r.u64(), r.str()) else {
                continue;
            };
            out.push((root.to_owned(), pos));
        }
        Ok(out)
    }

    /// `unsigned.m.relations` for `ev` as `viewer` sees it (`m.thread`, `m.replace`,
    /// `m.reference`), or `None` when there is nothing to bundle. Related events the
    /// viewer may not see are left out.
    pub fn aggregations(
        &self,
        rooms: &RoomService,
        ev: &StoredEvent,
        viewer: &ruma::UserId,
        now_ms: u64,
    ) -> Result<Option<Value>> {
        let db = rooms.db();
        let children = self.children(db, ev.event_id.as_str())?;
        if children.is_empty() {
            return Ok(None);
        }
        let room = ev.room_id();
        let load = |id: &str| -> Result<Option<StoredEvent>> {
            let Ok(id) = ruma::OwnedEventId::try_from(id) else {
                return Ok(None);
            };
            match rooms.event(&id)? {
                Some(e) if e.room_id() == room && rooms.visible_to(viewer, &e)? => Ok(Some(e)),
                _ => Ok(None),
            }
        };
        let mut out = Map::new();
        if let Some(t) = self.thread_summary(db, ev, viewer.as_str())?
            && let Some(latest) = load(&t.latest)?
        {
            let mut latest_json = rooms.client_event_for(&latest, viewer, None, now_ms)?;
            // The latest reply's own edit, as Synapse bundles it.
            if let Some(edit) = self.latest_edit(rooms, &latest, &load)? {
                latest_json["unsigned"]["m.relations"] = json!({
                    "m.replace": rooms.client_event_for(&edit, viewer, None, now_ms)?
                });
            }
            out.insert(
                THREAD.into(),
                json!({
                    "latest_event": latest_json,
                    "count": t.count,
                    "current_user_participated": t.participated,
                }),
            );
        }
        if let Some(edit) = self.latest_edit(rooms, ev, &load)? {
            out.insert(
                "m.replace".into(),
                rooms.client_event_for(&edit, viewer, None, now_ms)?,
            );
        }
        let mut refs = Vec::new();
        for c in children
            .iter()
            .filter(|c| c.rel_type == "m.reference" && c.room_id == *room)
        {
            if load(&c.event_id)?.is_some() {
                refs.push(json!({"event_id": c.event_id}));
            }
        }
        if !refs.is_empty() {
            out.insert("m.reference".into(), json!({ "chunk": refs }));
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }

    /// The newest valid edit of `ev`: same sender, same type, not a state event, with
    /// `m.new_content` (the spec's validity rules for `m.replace`).
    fn latest_edit(
        &self,
        rooms: &RoomService,
        ev: &StoredEvent,
        load: &dyn Fn(&str) -> Result<Option<StoredEvent>>,
    ) -> Result<Option<StoredEvent>> {
        if ev.is_state() {
            return Ok(None);
        }
        let edits = self.children(rooms.db(), ev.event_id.as_str())?;
        for c in edits
            .iter()
            .rev()
            .filter(|c| c.rel_type == "m.replace" && c.sender == ev.sender() && c.kind == ev.kind())
        {
            if let Some(e) = load(&c.event_id)?
                && !e.is_state()
                && e.content()
                    .get("m.new_content")
                    .is_some_and(Value::is_object)
            {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{setup, user};
    use rooms::Preset;

    fn send(
        rooms: &RoomService,
        u: &ruma::UserId,
        room: &ruma::RoomId,
        kind: &str,
        c: Value,
    ) -> String {
        rooms
            .send_message_event(u, room, kind, c, None)
            .expect("send")
            .event_id
            .to_string()
    }

    fn ids(c: &[Child]) -> Vec<String> {
        c.iter().map(|c| c.event_id.clone()).collect()
    }

    #[test]
    fn relations_threads_and_bundles_follow_the_timeline_and_redactions() {
        let (_d, rooms) = setup();
        let rel = Relations::new();
        let alice = user("alice");
        let room = rooms
            .create_room(
                &alice,
                rooms::CreateRoomRequest {
                    preset: Some(Preset::PublicChat),
                    ..Default::default()
                },
            )
            .expect("create");
        let root = send(
            &rooms,
            &alice,
            &room,
            "m.room.message",
            json!({"body": "root"}),
        );
        let other = send(
            &rooms,
            &alice,
            &room,
            "m.room.message",
            json!({"body": "root 2"}),
        );
        let thread = |parent: &str, body: &str| json!({"body": body, "m.relates_to": {"rel_type": THREAD, "event_id": parent}});
        let r1 = send(&rooms, &alice, &room, "m.room.message", thread(&root, "r1"));
        let dummy = send(&rooms, &alice, &room, "m.dummy", thread(&root, "d"));
        let edit = send(
            &rooms,
            &alice,
            &room,
            "m.room.message",
            json!({"body": "* e", "m.new_content": {"body": "e"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
        );
        let o1 = send(
            &rooms,
            &alice,
            &room,
            "m.room.message",
            thread(&other, "o1"),
        );
        rel.catch_up(&rooms).expect("catch up");
        let db = rooms.db();
        assert_eq!(
            ids(&rel.related(db, &root, None, None, false).expect("r")),
            vec![r1.clone(), dummy.clone(), edit.clone()]
        );
        assert_eq!(
            ids(&rel
                .related(db, &root, Some(THREAD), Some("m.room.message"), false)
                .expect("r")),
            vec![r1.clone()]
        );
        // Threads by latest reply: `other` replied to last.
        let t = rel.threads(db, room.as_str(), None, 10).expect("threads");
        assert_eq!(
            t.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
            vec![other.clone(), root.clone()]
        );
        // A new reply moves `root` to the front.
        let r2 = send(&rooms, &alice, &room, "m.room.message", thread(&root, "r2"));
        rel.catch_up(&rooms).expect("catch up");
        let t = rel.threads(db, room.as_str(), None, 10).expect("threads");
        assert_eq!(t[0].0, root);
        assert_eq!(t.len(), 2);
        // Bundles: the thread summary and the edit.
        let root_ev = rooms
            .event(&ruma::OwnedEventId::try_from(root.as_str()).expect("id"))
            .expect("read")
            .expect("stored");
        let bob = user("bob");
        let agg = rel
            .aggregations(&rooms, &root_ev, &alice, 0)
            .expect("agg")
            .expect("some");
        assert_eq!(agg["m.thread"]["count"], 3);
        assert_eq!(agg["m.thread"]["latest_event"]["event_id"], r2.as_str());
        assert_eq!(agg["m.thread"]["current_user_participated"], true);
        assert_eq!(agg["m.replace"]["event_id"], edit.as_str());
        assert!(
            !rel.thread_summary(db, &root_ev, bob.as_str())
                .expect("s")
                .expect("thread")
                .participated
        );
        // Redacting the latest reply drops it and the thread's order falls back to r2's
        // predecessor.
        rooms
            .redact(
                &alice,
                &room,
                &ruma::OwnedEventId::try_from(r2.as_str()).expect("id"),
                None,
                None,
            )
            .expect("redact");
        rel.catch_up(&rooms).expect("catch up");
        let t = rel.threads(db, room.as_str(), None, 10).expect("threads");
        assert_eq!(t[0].0, other, "root's latest reply is older than o1 again");
        assert!(!ids(&rel.related(db, &root, None, None, false).expect("r")).contains(&r2));
        let _ = o1;
        // Pagination of threads below a position.
        let below = t[0].1;
        let rest = rel
            .threads(db, room.as_str(), Some(below), 10)
            .expect("threads");
        assert_eq!(
            rest.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
            vec![root]
        );
    }
}
