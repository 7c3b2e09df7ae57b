//! The hook the federation sender hangs on: [`EventObserver`] is told about every event of a
//! *local* sender right after it is committed, and [`RoomService::local_events_after`] /
//! [`RoomService::servers_joined_after`] let it catch up on events committed while it was
//! not running (a crash between the commit and the queueing).
use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId,
};
use storage::Cf;

use crate::keys::room_stream;
use crate::store::{StoredEvent, timeline_key};
use crate::{Membership, Result, RoomError, RoomService};

/// Told about every committed event whose sender is on this server.
pub trait EventObserver: Send + Sync {
    /// `pdu` (the signed PDU, as stored) was committed at stream position `pos`. Called after
    /// the commit and after the membership observer, still under the room write lock, so calls
    /// arrive in stream order and the membership index already reflects the event.
    fn event_committed(
        &self,
        room: &RoomId,
        event_id: &EventId,
        pos: u64,
        pdu: &CanonicalJsonObject,
    );
}

/// One event found by [`RoomService::local_events_after`].
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub room_id: OwnedRoomId,
    pub event: StoredEvent,
}

impl RoomService {
    /// Register the observer of local event commits (once; later calls are ignored).
    pub fn set_event_observer(&self, observer: std::sync::Arc<dyn EventObserver>) {
        let _ = self.event_observer.set(observer);
    }

    /// Called by the append path after a commit (see [`EventObserver`]).
    pub(crate) fn notify_event_observer(
        &self,
        room: &RoomId,
        event_id: &EventId,
        pos: u64,
        pdu: &CanonicalJsonObject,
    ) {
        if let Some(o) = self.event_observer.get() {
            o.event_committed(room, event_id, pos, pdu);
        }
    }

    /// Whether an observer would want this sender's events (saves cloning the PDU otherwise).
    pub(crate) fn observes_sender(&self, sender: &ruma::UserId) -> bool {
        self.event_observer.get().is_some() && sender.server_name() == self.server_name
    }

    /// Events of local senders committed at stream positions above `after`, oldest first, at
    /// most `limit` (positions of other streams — presence, receipts — are skipped).
    /// Returns the events and the last position looked at (pass it back to continue).
    pub fn local_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<CommittedEvent>, u64)> {
        let start = room_stream::key(after.saturating_add(1));
        let end = room_stream::key(u64::MAX);
        let (events, last, _) = self.stream_events(start.as_ref(), end.as_ref(), limit, after)?;
        let own = |e: &CommittedEvent| {
            <&ruma::UserId>::try_from(e.event.sender())
                .is_ok_and(|s| s.server_name() == self.server_name)
        };
        Ok((events.into_iter().filter(own).collect(), last))
    }

    /// The timeline events at the `Cf::RoomStream` rows in `[start, end)`, at most `limit`
    /// rows, the last position read (`after` when none was) and how many rows were read.
    fn stream_events(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        after: u64,
    ) -> Result<(Vec<CommittedEvent>, u64, usize)> {
        let rows = self
            .db
            .scan_range(Cf::RoomStream, start, end, false, limit)?;
        let read = rows.len();
        let mut last = after;
        let mut out = Vec::new();
        for (k, v) in rows {
            let Some(pos) = room_stream::parse(&k) else {
                continue;
            };
            last = pos;
            let Some(room) = String::from_utf8(v)
                .ok()
                .and_then(|s| OwnedRoomId::try_from(s).ok())
            else {
                continue;
            };
            let Some(id) = self
                .db
                .get(Cf::Timeline, timeline_key(&room, pos))?
                .and_then(|id| String::from_utf8(id).ok())
                .and_then(|s| OwnedEventId::try_from(s).ok())
            else {
                continue;
            };
            if let Some(event) = self.event(&id)? {
                out.push(CommittedEvent {
                    room_id: room,
                    event,
                });
            }
        }
        Ok((out, last, read))
    }

    /// Timeline events of every sender (local and remote) at stream positions in
    /// `(after, upto]`, oldest first, at most `limit`; for indexes that follow the timeline
    /// (full-text search, relations, the user directory) and catch up after a restart.
    /// Returns the events and the last position looked at (`upto` once the range is done:
    /// pass it back to continue).
    pub fn timeline_events_between(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<CommittedEvent>, u64)> {
        if after >= upto {
            return Ok((Vec::new(), after));
        }
        let start = room_stream::key(after.saturating_add(1));
        let end = room_stream::key(upto.saturating_add(1));
        let limit = limit.max(1);
        // Rows, not events, decide whether the range is done: a row whose event is gone
        // still counts.
        let (events, last, rows) =
            self.stream_events(start.as_ref(), end.as_ref(), limit, after)?;
        Ok((events, if rows >= limit { last } else { upto }))
    }

    /// The other servers an event goes to: those with a member joined in the state after it,
    /// plus the target's server when the event makes a remote user leave (kick, ban, leave:
    /// the departing server must hear of it). Reads every member event of the room, so it is
    /// for catch-up, not the hot path (which uses the in-memory membership index).
    pub fn servers_joined_after(&self, ev: &StoredEvent) -> Result<Vec<OwnedServerName>> {
        let state = self.state_after(ev)?;
        let mut servers = BTreeSet::new();
        for ((kind, key), id) in &state {
            if kind != "m.room.member" {
                continue;
            }
            let Ok(user) = <&ruma::UserId>::try_from(key.as_str()) else {
                continue;
            };
            if user.server_name() == self.server_name || servers.contains(user.server_name()) {
                continue;
            }
            let member = self
                .event(id)?
                .ok_or_else(|| RoomError::Internal(format!("state event {id} missing")))?;
            if member.membership() == Some(Membership::Join) {
                servers.insert(user.server_name().to_owned());
            }
        }
        if let Some(target) = departing_remote_target(&ev.pdu, &self.server_name) {
            servers.insert(target);
        }
        Ok(servers.into_iter().collect())
    }
}

/// The server of a remote user an `m.room.member` PDU makes leave or bans.
pub fn departing_remote_target(
    pdu: &CanonicalJsonObject,
    local: &ruma::ServerName,
) -> Option<OwnedServerName> {
    let field = |name: &str| match pdu.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let membership = match pdu.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Membership::parse(m),
            _ => None,
        },
        _ => None,
    };
    if field("type") != Some("m.room.member")
        || !matches!(membership, Some(Membership::Leave | Membership::Ban))
    {
        return None;
    }
    let target = <&ruma::UserId>::try_from(field("state_key")?).ok()?;
    (target.server_name() != local).then(|| target.server_name().to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::Preset;
    use crate::tests::{create, setup, user};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(u64, OwnedEventId, String)>>);

    impl EventObserver for Seen {
        fn event_committed(
            &self,
            _room: &RoomId,
            event_id: &EventId,
            pos: u64,
            pdu: &CanonicalJsonObject,
        ) {
            let sender = match pdu.get("sender") {
                Some(CanonicalJsonValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            self.0
                .lock()
                .unwrap()
                .push((pos, event_id.to_owned(), sender));
        }
    }

    #[test]
    fn observer_sees_each_local_commit_in_order_and_catch_up_finds_the_same_events() {
        let (_d, svc) = setup();
        let seen = Arc::new(Seen::default());
        svc.set_event_observer(seen.clone());
        let alice = user("alice");
        let room = create(&svc, &alice, Preset::PublicChat);
        let mut sent = Vec::new();
        for body in ["one", "two"] {
            sent.push(
                svc.send_message_event(
                    &alice,
                    &room,
                    "m.room.message",
                    json!({"body": body}),
                    None,
                )
                .expect("send"),
            );
        }
        let seen = seen.0.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "stream order");
        assert!(seen.iter().all(|(_, _, s)| s == alice.as_str()));
        let tail: Vec<_> = seen[seen.len() - 2..]
            .iter()
            .map(|(p, id, _)| (*p, id.clone()))
            .collect();
        let expected: Vec<_> = sent.iter().map(|s| (s.pos, s.event_id.clone())).collect();
        assert_eq!(tail, expected);
        // Catch-up from before the room finds every event the observer saw, in pages.
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let (events, last) = svc.local_events_after(after, 2).expect("scan");
            found.extend(
                events
                    .iter()
                    .map(|e| (e.event.pos, e.event.event_id.clone())),
            );
            if last == after {
                break;
            }
            after = last;
        }
        let all: Vec<_> = seen.iter().map(|(p, id, _)| (*p, id.clone())).collect();
        assert_eq!(found, all);
        // No remote member: the events go nowhere.
        let last = svc.event(&sent[1].event_id).expect("read").expect("stored");
        assert!(svc.servers_joined_after(&last).expect("servers").is_empty());
    }

    fn member(target: &str, membership: &str) -> CanonicalJsonObject {
        match CanonicalJsonValue::try_from(json!({
            "type": "m.room.member", "state_key": target, "content": {"membership": membership}
        }))
        .expect("canonical")
        {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn departing_target_is_the_server_of_a_remote_user_who_leaves_or_is_banned() {
        let local: &ruma::ServerName = "home.org".try_into().expect("name");
        let remote = Some(OwnedServerName::try_from("remote.org").expect("name"));
        assert_eq!(
            departing_remote_target(&member("@x:remote.org", "leave"), local),
            remote
        );
        assert_eq!(
            departing_remote_target(&member("@x:remote.org", "ban"), local),
            remote
        );
        assert_eq!(
            departing_remote_target(&member("@x:remote.org", "join"), local),
            None
        );
        assert_eq!(
            departing_remote_target(&member("@x:home.org", "leave"), local),
            None
        );
        let mut message = member("@x:remote.org", "leave");
        message.insert(
            "type".into(),
            CanonicalJsonValue::String("m.room.message".into()),
        );
        assert_eq!(departing_remote_target(&message, local), None);
    }
}
