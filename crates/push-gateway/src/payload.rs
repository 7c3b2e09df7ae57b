//! The body of `POST /_matrix/push/v1/notify` (Push Gateway API, "Notification").
//!
//! The full format carries the event (`event_id`, `room_id`, `type`, `sender`, `content`,
//! the sender's display name and the room's name, `user_is_target` and `membership` for
//! member events), `prio`, `counts` and `devices`; a pusher whose `data.format` is
//! `"event_id_only"` gets only the IDs, `prio`, `counts` and `devices` (for gateways that
//! fetch the event themselves and must not see its content, e.g. encrypted-only ones).
//!
//! `devices[].data` is the pusher's `data` without `url` (the gateway does not need its own
//! address), and `tweaks` are the `set_tweak` actions of the rule that matched. `prio` is
//! `high` for highlights, sounds and encrypted events (whose real importance the server
//! cannot see), `low` otherwise, as Synapse does. `counts.unread` is the number of rooms with
//! unread notifications (Synapse's default badge).
use push::{NotifRecord, Pusher};
use rooms::StoredEvent;
use serde_json::{Map, Value, json};

/// What the payload is built from, read from storage by the caller.
pub struct Parts<'a> {
    pub event: &'a StoredEvent,
    pub record: Option<&'a NotifRecord>,
    pub pusher: &'a Pusher,
    pub user: &'a str,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub unread: u64,
}

/// The rule's tweaks as an object (`{"sound": "default", "highlight": true}`).
pub fn tweaks(record: Option<&NotifRecord>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(record) = record else {
        return out;
    };
    for action in &record.actions {
        let Ok(v) = serde_json::to_value(action) else {
            continue;
        };
        let Some(name) = v.get("set_tweak").and_then(Value::as_str) else {
            continue;
        };
        // `highlight` without a value means true (spec, "Tweaks").
        let value = v.get("value").cloned().unwrap_or(Value::Bool(true));
        out.insert(name.to_owned(), value);
    }
    out
}

/// The `notification` object the gateway receives, wrapped as `{"notification": …}`.
pub fn build(p: &Parts<'_>) -> Value {
    let tweaks = tweaks(p.record);
    let encrypted = p.event.kind() == "m.room.encrypted";
    let loud = tweaks.get("highlight").and_then(Value::as_bool) == Some(true)
        || tweaks.contains_key("sound");
    let prio = if loud || encrypted { "high" } else { "low" };
    let mut data = p.pusher.data.clone();
    data.remove("url");
    let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
    let device = json!({
        "app_id": p.pusher.app_id,
        "pushkey": p.pusher.pushkey,
        // Seconds, as the spec's `pushkey_ts` is.
        "pushkey_ts": p.pusher.set_ts.unwrap_or(0) / 1000,
        "data": data,
        "tweaks": tweaks,
    });
    let mut n = Map::new();
    n.insert("event_id".into(), json!(p.event.event_id));
    n.insert("room_id".into(), json!(p.event.room_id()));
    n.insert("prio".into(), json!(prio));
    n.insert(
        "counts".into(),
        // `missed_calls` is left out: Pulse does not track calls, and the spec makes
        // every count optional.
        json!({"unread": p.unread}),
    );
    n.insert("devices".into(), json!([device]));
    if !event_id_only {
        n.insert("type".into(), json!(p.event.kind()));
        n.insert("sender".into(), json!(p.event.sender()));
        n.insert("content".into(), p.event.content());
        if let Some(name) = &p.sender_display_name {
            n.insert("sender_display_name".into(), json!(name));
        }
        if let Some(name) = &p.room_name {
            n.insert("room_name".into(), json!(name));
        }
        if p.event.kind() == "m.room.member" {
            n.insert(
                "user_is_target".into(),
                json!(p.event.state_key() == Some(p.user)),
            );
            if let Some(m) = p.event.content_str("membership") {
                n.insert("membership".into(), json!(m));
            }
        }
    }
    json!({ "notification": n })
}
