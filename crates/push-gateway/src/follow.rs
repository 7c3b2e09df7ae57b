//! Turning new events into queued pushes: the follower reads the room stream after its
//! cursor (events of every sender, local and federated), and for each event and each local
//! member with an `http` pusher asks the push service whether the event notifies that user
//! (the same evaluation and stored notification `/sync`'s counts use). Each pusher of a
//! notified user gets a queue entry.
//!
//! Events committed before the first start (or before a pusher was set) are never pushed:
//! the cursor starts at the stream's current position.
use std::collections::{BTreeMap, HashMap};

use ruma::{OwnedRoomId, OwnedUserId};
use storage::Batch;

use crate::queue::{self, PusherId, Queued};
use crate::{Gateway, Result};

/// Events read per step (and per write batch).
const STEP: usize = 200;

impl Gateway {
    /// Queue the pushes of every event after the cursor. Returns how many were queued.
    /// Blocking (storage I/O); one caller at a time (the delivery loop).
    pub fn follow(&self) -> Result<usize> {
        let upto = self.rooms.current_position();
        let Some(mut cursor) = queue::cursor(&self.db)? else {
            let mut batch = Batch::new();
            queue::put_cursor(&mut batch, upto);
            self.db.write(batch)?;
            return Ok(0);
        };
        if cursor >= upto {
            return Ok(0);
        }
        let pushers: BTreeMap<OwnedUserId, Vec<push::Pusher>> = self
            .push
            .all_pushers()?
            .into_iter()
            .filter_map(|(user, ps)| {
                let http: Vec<_> = ps.into_iter().filter(|p| p.kind == "http").collect();
                (!http.is_empty()).then_some((user, http))
            })
            .collect();
        // Room → the users with pushers joined to it (as of now: a user who joined within
        // the batch is caught by the evaluation's own membership check).
        let mut audience: HashMap<OwnedRoomId, Vec<OwnedUserId>> = HashMap::new();
        for user in pushers.keys() {
            for room in self.rooms.joined_rooms(user)? {
                audience.entry(room).or_default().push(user.clone());
            }
        }
        let mut queued = 0;
        tracing::debug!(
            cursor,
            upto,
            pushers = pushers.len(),
            rooms = audience.len(),
            "push follower"
        );
        while cursor < upto {
            let (events, last) = self.rooms.timeline_events_between(cursor, upto, STEP)?;
            let mut batch = Batch::new();
            for c in &events {
                let Some(users) = audience.get(&c.room_id) else {
                    continue;
                };
                for user in users {
                    if c.event.sender() == user.as_str() {
                        continue;
                    }
                    self.push.catch_up(user, &c.room_id, c.event.pos)?;
                    if self
                        .push
                        .notification_at(user, &c.room_id, c.event.pos)?
                        .is_none()
                    {
                        continue;
                    }
                    let entry = Queued {
                        room_id: c.room_id.clone(),
                        event_id: c.event.event_id.clone(),
                        attempts: 0,
                    };
                    for p in pushers.get(user).into_iter().flatten() {
                        let id = PusherId {
                            user: user.clone(),
                            app_id: p.app_id.clone(),
                            pushkey: p.pushkey.clone(),
                        };
                        queue::put(&mut batch, &id, c.event.pos, &entry);
                        queued += 1;
                    }
                }
            }
            queue::put_cursor(&mut batch, last);
            self.db.write(batch)?;
            cursor = last;
        }
        Ok(queued)
    }
}
