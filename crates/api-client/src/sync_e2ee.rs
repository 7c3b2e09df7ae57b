//! The end-to-end encryption part of a `/sync` response: `to_device`, `device_lists`,
//! `device_one_time_keys_count` and `device_unused_fallback_key_types`. Built after the
//! rooms, from the same `(since, now]`; to-device messages and device-list changes count
//! as content (a long-poll returns for them), key counts do not.
use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Auth;

#[derive(Default)]
pub(crate) struct E2eeSync {
    to_device: Vec<Value>,
    changed: Vec<String>,
    left: Vec<String>,
    otk_counts: BTreeMap<String, u64>,
    unused_fallback: Vec<String>,
}

impl E2eeSync {
    pub(crate) fn has_content(&self) -> bool {
        !self.to_device.is_empty() || !self.changed.is_empty() || !self.left.is_empty()
    }

    /// Put the sections into a response body.
    pub(crate) fn write_into(self, body: &mut Value) {
        body["to_device"] = json!({ "events": self.to_device });
        body["device_lists"] = json!({ "changed": self.changed, "left": self.left });
        body["device_one_time_keys_count"] = json!(self.otk_counts);
        body["device_unused_fallback_key_types"] = json!(self.unused_fallback);
        // The name before MSC2732 was merged; older clients still read it.
        body["org.matrix.msc2732.device_unused_fallback_key_types"] = json!(self.unused_fallback);
    }
}

pub(crate) fn build(
    state: &AppState,
    auth: &Auth,
    since: Option<u64>,
    now: u64,
) -> ApiResult<E2eeSync> {
    let (user, device) = (&*auth.user_id, &*auth.device_id);
    let to_device = state
        .e2ee
        .to_device_for_sync(user, device, since, now)?
        .iter()
        .map(e2ee::to_device::ToDeviceMessage::to_event)
        .collect();
    let (changed, left) = match since {
        Some(s) => {
            let (c, l) = crate::device_lists::device_list_delta(state, user, s, now)?;
            (
                c.into_iter().map(String::from).collect(),
                l.into_iter().map(String::from).collect(),
            )
        }
        // An initial sync has no device-list changes: the client queries everyone.
        None => (Vec::new(), Vec::new()),
    };
    Ok(E2eeSync {
        to_device,
        changed,
        left,
        otk_counts: state.e2ee.one_time_key_counts(user, device)?,
        unused_fallback: state.e2ee.unused_fallback_key_types(user, device)?,
    })
}
