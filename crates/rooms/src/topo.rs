//! The room's topological order, for `/messages` and `/context`.
//!
//! The stream position says when this server learnt of an event ("what is new for this
//! client", `/sync`); it is not the room's order: a backfilled or late event gets a new,
//! high position. Pagination walks `Cf::Topo` instead: `room_id 0xFF depth pos` → event
//! id, i.e. by depth with the stream position breaking ties (as Synapse's topological
//! tokens). A [`TopoPos`] is a point *between* events: backwards pagination from it
//! yields events ordered below it, forwards pagination events at or above it.
//!
//! Tokens are `t<depth>-<pos>`. Stream tokens (`t<pos>`, and sync's `s<pos>`, which is
//! what a sync timeline's `prev_batch` is: the position just before its first event)
//! stay valid. Paging *backwards* from one walks the whole order from the top and keeps
//! the events at or before that stream position (Synapse's semantics: after a fork, a
//! late event first in the timeline must not hide the events that arrived before it but
//! sit above it in the DAG); the page's `end` is topological again. Other uses map it with
//! [`RoomService::topo_at_stream`] to the point just after the room's last event at or
//! before it.
use ruma::{OwnedEventId, RoomId};
use storage::{Batch, Cf, Key};

use crate::store::{StoredEvent, timeline_key};
use crate::{Result, RoomError, RoomService};

/// A point in a room's topological order (just before the event at `(depth, pos)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopoPos {
    pub depth: u64,
    pub pos: u64,
}

impl TopoPos {
    /// Before every event.
    pub const MIN: TopoPos = TopoPos { depth: 0, pos: 0 };
    /// After every event.
    pub const MAX: TopoPos = TopoPos {
        depth: u64::MAX,
        pos: u64::MAX,
    };

    /// Just before `ev`: paginating backwards from here starts with the event before it.
    pub fn before(ev: &StoredEvent) -> TopoPos {
        TopoPos {
            depth: ev.depth(),
            pos: ev.pos,
        }
    }

    /// Just after `ev`: paginating forwards from here starts with the event after it.
    pub fn after(ev: &StoredEvent) -> TopoPos {
        TopoPos {
            depth: ev.depth(),
            pos: ev.pos.saturating_add(1),
        }
    }

    /// The pagination token, `t<depth>-<pos>`.
    pub fn to_token(self) -> String {
        format!("t{}-{}", self.depth, self.pos)
    }

    /// Parse a `t<depth>-<pos>` token (`None` for anything else, e.g. stream tokens).
    pub fn parse_token(s: &str) -> Option<TopoPos> {
        let (depth, pos) = s.strip_prefix('t')?.split_once('-')?;
        let num = |d: &str| {
            (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .then(|| d.parse::<u64>().ok())
                .flatten()
        };
        Some(TopoPos {
            depth: num(depth)?,
            pos: num(pos)?,
        })
    }
}

pub(crate) use crate::keys::topo::key as topo_key;

fn point_key(room: &RoomId, at: TopoPos) -> Key {
    topo_key(room, at.depth, at.pos)
}

/// Index a timeline event (in the batch that writes its `Cf::Timeline` entry).
pub(crate) fn put(b: &mut Batch, room: &RoomId, depth: u64, pos: u64, event_id: &OwnedEventId) {
    b.put(
        Cf::Topo,
        topo_key(room, depth, pos),
        event_id.as_str().as_bytes().to_vec(),
    );
}

/// `Cf::Meta` marker: `Cf::Topo` holds every timeline event.
const TOPO_BUILT: &str = "rooms_topo_index_v1";

impl RoomService {
    /// Build `Cf::Topo` from `Cf::Timeline` for databases written before it existed (once;
    /// a marker in `Cf::Meta` says it is done). Runs at start-up, before any room write.
    pub(crate) fn ensure_topo_index(&self) -> Result<()> {
        if self.db.exists(Cf::Meta, TOPO_BUILT)? {
            return Ok(());
        }
        let mut b = Batch::new();
        let mut n = 0usize;
        for (k, v) in self.db.scan_prefix(Cf::Timeline, [])? {
            let Some((room, pos)) = crate::keys::timeline::parse(&k) else {
                continue;
            };
            let (Ok(room), Some(id)) = (
                ruma::OwnedRoomId::try_from(room),
                String::from_utf8(v)
                    .ok()
                    .and_then(|s| OwnedEventId::try_from(s).ok()),
            ) else {
                continue;
            };
            let Some(ev) = self.event_any(&id)? else {
                continue;
            };
            put(&mut b, &room, ev.depth(), pos, &id);
            n += 1;
            if n.is_multiple_of(1000) {
                self.db.write(std::mem::take(&mut b))?;
            }
        }
        b.put(Cf::Meta, TOPO_BUILT, Vec::new());
        self.db.write(b)?;
        if n > 0 {
            tracing::info!(events = n, "built the rooms' topological index");
        }
        Ok(())
    }

    /// The point just after the room's last timeline event at or before stream position
    /// `pos` (what a stream token meant for pagination); [`TopoPos::MIN`] if none.
    pub fn topo_at_stream(&self, room: &RoomId, pos: u64) -> Result<TopoPos> {
        let lo = timeline_key(room, 0);
        let hi = timeline_key(room, pos.saturating_add(1));
        let Some((_, id)) = self
            .db
            .scan_range(Cf::Timeline, &lo, &hi, true, 1)?
            .into_iter()
            .next()
        else {
            return Ok(TopoPos::MIN);
        };
        let id = String::from_utf8(id)
            .ok()
            .and_then(|s| OwnedEventId::try_from(s).ok())
            .ok_or_else(|| RoomError::Internal("corrupt timeline entry".into()))?;
        let ev = self.require_event(&id)?;
        Ok(TopoPos::after(&ev))
    }

    /// Paginate a room in topological order. Backwards: events below `from` and at or
    /// above `to`, newest first. Forwards: events at or above `from` and below `to`,
    /// oldest first. At most `limit`.
    pub fn paginate_topo(
        &self,
        room: &RoomId,
        from: TopoPos,
        to: Option<TopoPos>,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let (lo, hi) = if backwards {
            (to.unwrap_or(TopoPos::MIN), from)
        } else {
            (from, to.unwrap_or(TopoPos::MAX))
        };
        if lo >= hi {
            return Ok(Vec::new());
        }
        let rows = self.db.scan_range(
            Cf::Topo,
            point_key(room, lo),
            point_key(room, hi),
            backwards,
            limit,
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let id = String::from_utf8(v)
                .ok()
                .and_then(|s| OwnedEventId::try_from(s).ok())
                .ok_or_else(|| RoomError::Internal("corrupt topological index".into()))?;
            out.push(self.require_event(&id)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemberProfile as Profile;
    use crate::persist::{AppendOpts, NewEvent};
    use crate::tests::{setup, user};
    use crate::{CreateRoomRequest, Preset};
    use serde_json::json;

    fn message(body: &str) -> NewEvent {
        NewEvent {
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({ "body": body }),
            redacts: None,
        }
    }

    fn bodies(events: &[StoredEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e.content_str("body").map(str::to_owned))
            .collect()
    }

    /// A late event (built on an old prev event, so lower depth, arriving last) is
    /// paginated by its depth, not its stream position; and its visibility comes from the
    /// state before it (Bob had not joined yet), not from the state at its stream position.
    #[test]
    fn late_event_is_paginated_and_filtered_by_its_place_in_the_dag() {
        for v in crate::tests_versions::tested_versions() {
            if v == ruma::RoomVersionId::V1 {
                continue; // the late event forks the room: state resolution v1 is not implemented
            }
            let (_d, svc) = setup();
            let alice = user("alice");
            let bob = user("bob");
            let req = CreateRoomRequest {
                preset: Some(Preset::PublicChat),
                room_version: Some(v.to_string()),
                ..Default::default()
            };
            let room = svc.create_room(&alice, req).expect("create");
            svc.send_state_event(
                &alice,
                &room,
                "m.room.history_visibility",
                "",
                json!({"history_visibility": "joined"}),
            )
            .expect("visibility");
            let m1 = svc
                .send_message_event(&alice, &room, "m.room.message", json!({"body": "m1"}), None)
                .expect("m1");
            let state_after_m1 = svc
                .state_after(&svc.event(&m1.event_id).expect("e").expect("m1"))
                .expect("state");
            svc.join(&bob, room.as_str(), &Profile::default(), None)
                .expect("join");
            for b in ["m2", "m3"] {
                svc.send_message_event(&alice, &room, "m.room.message", json!({ "body": b }), None)
                    .expect("send");
            }
            // The late event: built on m1, appended last.
            let late = {
                let _guard = svc.lock_room(&room);
                let (id, obj) = svc
                    .build_event_on(
                        &v,
                        &room,
                        &alice,
                        &message("late"),
                        std::slice::from_ref(&m1.event_id),
                        |t, k| Ok(state_after_m1.get(&(t.to_owned(), k.to_owned())).cloned()),
                    )
                    .expect("build");
                svc.append(id, obj, AppendOpts::default())
                    .unwrap_or_else(|e| panic!("v{v}: late event: {e}"))
            };
            let late_ev = svc.event(&late.event_id).expect("e").expect("late");
            let m1_ev = svc.event(&m1.event_id).expect("e").expect("m1");
            assert_eq!(late_ev.depth(), m1_ev.depth() + 1);

            // Stream order puts it last; topological order right after m1's successor.
            let (stream, _) = svc
                .timeline(&room, None, u64::MAX - 1, 100)
                .expect("timeline");
            assert_eq!(bodies(&stream), ["m1", "m2", "m3", "late"], "v{v}");
            let back = svc
                .paginate_topo(&room, TopoPos::MAX, None, true, 100)
                .expect("paginate");
            let mut topo = bodies(&back);
            topo.reverse();
            assert_eq!(topo, ["m1", "late", "m2", "m3"], "v{v}");
            // Forwards from just after m1 (Bob's join, the late event, m2), continuing
            // from the last one.
            let fwd = svc
                .paginate_topo(&room, TopoPos::after(&m1_ev), None, false, 3)
                .expect("fwd");
            assert_eq!(fwd[0].kind(), "m.room.member", "v{v}");
            assert_eq!(bodies(&fwd), ["late", "m2"], "v{v}");
            let rest = svc
                .paginate_topo(&room, TopoPos::after(&fwd[2]), None, false, 10)
                .expect("rest");
            assert_eq!(bodies(&rest), ["m3"], "v{v}");
            // A stream token means "after the last event at or before that position".
            assert_eq!(
                svc.topo_at_stream(&room, m1.pos).expect("topo"),
                TopoPos::after(&m1_ev)
            );

            // Visibility: "joined", and Bob joined after m1 — the late event sits before
            // his join in the DAG, though its stream position is after it.
            assert!(!svc.visible_to(&bob, &late_ev).expect("vis"), "v{v}");
            assert!(!svc.visible_to(&bob, &m1_ev).expect("vis"), "v{v}");
            for e in &stream {
                if e.content_str("body")
                    .is_some_and(|b| b == "m2" || b == "m3")
                {
                    assert!(svc.visible_to(&bob, e).expect("vis"), "v{v}");
                }
            }
            assert!(svc.visible_to(&alice, &late_ev).expect("vis"), "v{v}");
        }
    }

    /// A database written before `Cf::Topo` existed gets the index built at start-up.
    #[test]
    fn topo_index_is_built_for_older_databases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = user("alice");
        let room = {
            let db = std::sync::Arc::new(storage::Db::open(dir.path(), false).expect("open"));
            let svc = RoomService::new(db.clone(), crate::tests::SERVER.try_into().expect("s"))
                .expect("service");
            let room = crate::tests::create(&svc, &alice, Preset::PublicChat);
            for b in ["a", "b"] {
                svc.send_message_event(&alice, &room, "m.room.message", json!({ "body": b }), None)
                    .expect("send");
            }
            // Forget the index, as an old database never had it.
            let mut batch = Batch::new();
            for (k, _) in db.scan_prefix(Cf::Topo, []).expect("scan") {
                batch.delete(Cf::Topo, k);
            }
            batch.delete(Cf::Meta, TOPO_BUILT);
            db.write(batch).expect("write");
            assert!(
                svc.paginate_topo(&room, TopoPos::MAX, None, true, 10)
                    .expect("p")
                    .is_empty()
            );
            room
        };
        let db = std::sync::Arc::new(storage::Db::open(dir.path(), false).expect("reopen"));
        let svc =
            RoomService::new(db, crate::tests::SERVER.try_into().expect("s")).expect("service");
        let all = svc
            .paginate_topo(&room, TopoPos::MAX, None, true, 100)
            .expect("paginate");
        let (stream, _) = svc
            .timeline(&room, None, u64::MAX - 1, 100)
            .expect("timeline");
        assert_eq!(all.len(), stream.len());
        assert_eq!(bodies(&all), ["b", "a"]);
    }

    #[test]
    fn tokens_round_trip_and_order() {
        let p = TopoPos { depth: 7, pos: 42 };
        assert_eq!(p.to_token(), "t7-42");
        assert_eq!(TopoPos::parse_token("t7-42"), Some(p));
        for bad in ["t42", "s42", "t-1", "t1-", "t1-x", "7-42", "t+1-2", ""] {
            assert_eq!(TopoPos::parse_token(bad), None, "{bad}");
        }
        assert!(TopoPos { depth: 1, pos: 99 } < TopoPos { depth: 2, pos: 1 });
        assert!(TopoPos::MIN < p && p < TopoPos::MAX);
    }
}
