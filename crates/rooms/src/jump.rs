//! `/timestamp_to_event` (client `v1`, federation `v1`; MSC3030): the room's timeline
//! event closest to a point in time, in one direction.
//!
//! There is no index by `origin_server_ts`: the room is walked in topological order
//! (`Cf::Topo`, newest first), at most [`MAX_TS_SCAN`] events, which bounds the cost of
//! one request; in a room with more events, older ones are not considered (docs/decisions.md).
use ruma::{OwnedEventId, RoomId};

use crate::pdu::Pdu;
use crate::store::StoredEvent;
use crate::topo::TopoPos;
use crate::{Result, RoomService};

/// Most timeline events one lookup looks at (newest first, topological order).
pub const MAX_TS_SCAN: usize = 50_000;

/// Which side of the timestamp to look on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDirection {
    /// The first event at or after the timestamp (of equal timestamps, the topologically
    /// first).
    Forward,
    /// The last event at or before the timestamp (of equal timestamps, the topologically
    /// last).
    Backward,
}

impl TimeDirection {
    /// `f` / `b`, as the endpoints' `dir` parameter says.
    pub fn parse(s: &str) -> Option<TimeDirection> {
        match s {
            "f" => Some(TimeDirection::Forward),
            "b" => Some(TimeDirection::Backward),
            _ => None,
        }
    }
}

/// What [`RoomService::event_at_timestamp`] found.
#[derive(Debug, Clone)]
pub struct TimestampHit {
    pub event: StoredEvent,
    /// Some of its `prev_events` are not in our timeline (we joined after them, or a gap
    /// was bridged with state): another server may know an event closer to the time.
    pub next_to_gap: bool,
}

impl RoomService {
    /// The timeline event closest to `ts_ms` in `dir` that `may_see` lets through (the
    /// caller's history visibility), or `None`.
    pub fn event_at_timestamp(
        &self,
        room: &RoomId,
        ts_ms: u64,
        dir: TimeDirection,
        mut may_see: impl FnMut(&StoredEvent) -> Result<bool>,
    ) -> Result<Option<TimestampHit>> {
        const BATCH: usize = 500;
        let mut best: Option<StoredEvent> = None;
        let mut cursor = TopoPos::MAX;
        let mut scanned = 0usize;
        while scanned < MAX_TS_SCAN {
            let batch = self.paginate_topo(room, cursor, None, true, BATCH)?;
            if batch.is_empty() {
                break;
            }
            for ev in batch {
                cursor = TopoPos::before(&ev);
                scanned += 1;
                let t = ev.origin_server_ts();
                // Newest first: for equal timestamps, backwards keeps the first seen (the
                // topologically last), forwards the last seen (the topologically first).
                let better = match (dir, &best) {
                    (TimeDirection::Backward, _) if t > ts_ms => false,
                    (TimeDirection::Forward, _) if t < ts_ms => false,
                    (_, None) => true,
                    (TimeDirection::Backward, Some(b)) => t > b.origin_server_ts(),
                    (TimeDirection::Forward, Some(b)) => t <= b.origin_server_ts(),
                };
                if better && may_see(&ev)? {
                    best = Some(ev);
                }
            }
        }
        let Some(event) = best else {
            return Ok(None);
        };
        let next_to_gap = self.is_next_to_gap(&event)?;
        Ok(Some(TimestampHit { event, next_to_gap }))
    }

    /// Whether some prev event of `ev` is not in the room's DAG with state (an outlier,
    /// unknown): the history before it lives on other servers only.
    fn is_next_to_gap(&self, ev: &StoredEvent) -> Result<bool> {
        let Ok(parsed) = Pdu::parse(ev.event_id.clone(), &ev.pdu) else {
            return Ok(true);
        };
        if ev.kind() == "m.room.create" {
            return Ok(false);
        }
        let prevs: Vec<OwnedEventId> = parsed.prev_events;
        for p in &prevs {
            if self.state_at_record(p)?.is_none() {
                return Ok(true);
            }
        }
        Ok(prevs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Preset;
    use crate::tests::{setup, user};
    use serde_json::json;

    fn ts_of(svc: &RoomService, id: &ruma::EventId) -> u64 {
        svc.event(id)
            .expect("read")
            .expect("event")
            .origin_server_ts()
    }

    #[test]
    fn finds_the_closest_event_each_way_and_nothing_outside() {
        let (_d, svc) = setup();
        let alice = user("alice");
        let room = crate::tests::create(&svc, &alice, Preset::PublicChat);
        let mut sent = Vec::new();
        for b in ["a", "b", "c"] {
            // Distinct timestamps (milliseconds).
            std::thread::sleep(std::time::Duration::from_millis(3));
            let s = svc
                .send_message_event(&alice, &room, "m.room.message", json!({ "body": b }), None)
                .expect("send");
            sent.push(s.event_id);
        }
        let all = |_: &StoredEvent| Ok(true);
        let (ta, tb, tc) = (
            ts_of(&svc, &sent[0]),
            ts_of(&svc, &sent[1]),
            ts_of(&svc, &sent[2]),
        );
        assert!(ta < tb && tb < tc);
        let hit = |ts, dir| {
            svc.event_at_timestamp(&room, ts, dir, all)
                .expect("lookup")
                .map(|h| h.event.event_id)
        };
        assert_eq!(hit(tb, TimeDirection::Forward), Some(sent[1].clone()));
        assert_eq!(hit(tb + 1, TimeDirection::Forward), Some(sent[2].clone()));
        assert_eq!(hit(tb, TimeDirection::Backward), Some(sent[1].clone()));
        assert_eq!(hit(tc - 1, TimeDirection::Backward), Some(sent[1].clone()));
        assert_eq!(hit(tc + 10_000, TimeDirection::Forward), None);
        assert_eq!(hit(0, TimeDirection::Backward), None);
        // A local room with its whole history: no gap.
        let h = svc
            .event_at_timestamp(&room, tb, TimeDirection::Backward, all)
            .expect("lookup")
            .expect("hit");
        assert!(!h.next_to_gap);
        // What the caller may not see is skipped.
        let hidden = sent[2].clone();
        let got = svc
            .event_at_timestamp(&room, tc, TimeDirection::Backward, |e| {
                Ok(e.event_id != hidden)
            })
            .expect("lookup")
            .map(|h| h.event.event_id);
        assert_eq!(got, Some(sent[1].clone()));
    }
}
