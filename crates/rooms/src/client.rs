//! The client-server event format.
use ruma::{DeviceId, UserId};
use serde_json::{Map, Value, json};

use crate::store::StoredEvent;

impl StoredEvent {
    /// The event in the client format (`ClientEvent`): `event_id`, `room_id`, `sender`,
    /// `type`, `state_key`, `content`, `origin_server_ts`, `redacts`, and `unsigned` with
    /// `age`, `transaction_id` (only for the sending device), `prev_content`,
    /// `prev_sender`, `replaces_state` and `redacted_because`.
    pub fn to_client_event(
        &self,
        viewer_device: Option<(&UserId, &DeviceId)>,
        now_ms: u64,
    ) -> Value {
        self.client_event(viewer_device, Some(now_ms))
    }

    /// Stripped state (`type`, `state_key`, `content`, `sender`), as in invite state.
    pub fn to_stripped_state(&self) -> Value {
        json!({
            "type": self.kind(),
            "state_key": self.state_key().unwrap_or_default(),
            "content": self.content(),
            "sender": self.sender(),
        })
    }

    pub(crate) fn client_event(
        &self,
        viewer_device: Option<(&UserId, &DeviceId)>,
        now_ms: Option<u64>,
    ) -> Value {
        let mut o = Map::new();
        o.insert("event_id".into(), Value::from(self.event_id.as_str()));
        o.insert("room_id".into(), Value::from(self.room_id()));
        o.insert("sender".into(), Value::from(self.sender()));
        o.insert("type".into(), Value::from(self.kind()));
        if let Some(k) = self.state_key() {
            o.insert("state_key".into(), Value::from(k));
        }
        o.insert("content".into(), self.content());
        let ts = self.origin_server_ts();
        o.insert("origin_server_ts".into(), Value::from(ts));
        if let Some(r) = self.redacts() {
            o.insert("redacts".into(), Value::from(r));
        }
        let mut unsigned = Map::new();
        if let Some(now) = now_ms {
            unsigned.insert("age".into(), Value::from(now.saturating_sub(ts)));
        }
        if let (Some((user, device)), Some((txn_device, txn_id))) = (viewer_device, &self.txn)
            && user.as_str() == self.sender()
            && device == &**txn_device
        {
            unsigned.insert("transaction_id".into(), Value::from(txn_id.as_str()));
        }
        if let Some(prev) = &self.prev_state {
            unsigned.insert("prev_content".into(), prev.content.clone());
            unsigned.insert("prev_sender".into(), Value::from(prev.sender.as_str()));
            unsigned.insert("replaces_state".into(), Value::from(prev.event_id.as_str()));
        }
        if let Some(because) = &self.redacted_because {
            unsigned.insert("redacted_because".into(), because.clone());
        }
        o.insert("unsigned".into(), Value::Object(unsigned));
        Value::Object(o)
    }
}
