//! To-device messages: a per-device inbox on the stream.
//!
//! `PUT /sendToDevice/{type}/{txnId}` stores one message per target device in one
//! positioned write, together with the sender's transaction ID (a repeated txn ID is
//! answered without storing anything again). `/sync` hands a device its oldest messages
//! (at most [`MAX_PER_SYNC`]) and records *which* it handed out in the response with
//! token T ([`Ack`]); a later sync whose `since` is at least T acknowledges them and they
//! are deleted. A client that retries with an older token gets them again (duplicates are
//! allowed by the spec; losing one is not).
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storage::{Batch, Cf, KeyReader};

use crate::{E2eeError, E2eeService, Result, decode, keys};

/// Messages in one sync response per device.
pub const MAX_PER_SYNC: usize = 100;
/// Target devices in one `sendToDevice` request.
pub const MAX_TARGETS: usize = 10_000;
/// Entries one acknowledgement deletes at most (it covers at most one response, [`MAX_PER_SYNC`]).
pub const MAX_WAITING: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToDeviceMessage {
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Value,
}

impl ToDeviceMessage {
    pub fn to_event(&self) -> Value {
        json!({ "sender": self.sender, "type": self.kind, "content": self.content })
    }
}

/// What the last sync response of a device delivered: messages up to `(pos, seq)`, in
/// the response whose `next_batch` was `token`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub token: u64,
    pub pos: u64,
    pub seq: u64,
}

impl E2eeService {
    /// Store messages for local devices, once per `(sender, sender_device, txn_id)`.
    /// Returns the position written, or `None` when the txn ID was seen before (or there
    /// was nothing to store).
    pub fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        txn_id: Option<&str>,
        kind: &str,
        messages: &[(OwnedUserId, OwnedDeviceId, Value)],
    ) -> Result<Option<u64>> {
        if messages.len() > MAX_TARGETS {
            return Err(E2eeError::TooMany(format!(
                "at most {MAX_TARGETS} target devices per request"
            )));
        }
        let txn_key = txn_id.map(|t| keys::to_device_txn(sender.as_str(), sender_device, t));
        let _guard = txn_key.as_ref().map(|k| self.locks.lock(k));
        if let Some(k) = &txn_key
            && self.db().exists(Cf::E2ee, k)?
        {
            return Ok(None);
        }
        if messages.is_empty() && txn_key.is_none() {
            return Ok(None);
        }
        let (pos, ()) = self.db().write_with_position(|pos, b| {
            for (seq, (user, device, content)) in messages.iter().enumerate() {
                let msg = ToDeviceMessage {
                    sender: sender.to_string(),
                    kind: kind.to_owned(),
                    content: content.clone(),
                };
                b.put_json(
                    Cf::E2ee,
                    keys::to_device(user.as_str(), device.as_str(), pos, seq as u64),
                    &msg,
                );
            }
            if let Some(k) = &txn_key {
                b.put(Cf::E2ee, k, pos.to_be_bytes().to_vec());
            }
            Ok::<_, E2eeError>(())
        })?;
        Ok(Some(pos))
    }

    /// Messages for one device in a sync response with `next_batch` `now`, after
    /// acknowledging (deleting) what a response at or before `since` delivered.
    pub fn to_device_for_sync(
        &self,
        user: &UserId,
        device: &DeviceId,
        since: Option<u64>,
        now: u64,
    ) -> Result<Vec<ToDeviceMessage>> {
        let (u, d) = (user.as_str(), device.as_str());
        let ack_key = keys::to_device_ack(u, d);
        let _guard = self.locks.lock(&ack_key);
        let ack: Option<Ack> = self.db().get_json(Cf::E2ee, &ack_key)?;
        let inbox = keys::to_device_inbox(u, d);
        let end = keys::prefix_end(&inbox);
        let mut batch = Batch::new();
        let mut acked_up_to = None;
        if let (Some(ack), Some(since)) = (ack, since)
            && since >= ack.token
        {
            let upper = keys::to_device(u, d, ack.pos, ack.seq).into_bytes();
            for (k, _) in self
                .db()
                .scan_range(Cf::E2ee, &inbox, &upper, false, MAX_WAITING)?
            {
                batch.delete(Cf::E2ee, k);
            }
            batch.delete(Cf::E2ee, keys::to_device(u, d, ack.pos, ack.seq));
            batch.delete(Cf::E2ee, &ack_key);
            acked_up_to = Some(keys::to_device(u, d, ack.pos, ack.seq).into_bytes());
        }
        // Read past what is being deleted.
        let start = match &acked_up_to {
            Some(k) => {
                let mut s = k.clone();
                s.push(0);
                s
            }
            None => inbox.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for (k, v) in self
            .db()
            .scan_range(Cf::E2ee, &start, &end, false, MAX_PER_SYNC)?
        {
            let mut r = KeyReader::new(&k);
            let (_s, _u, _d) = (r.str(), r.str(), r.str());
            let (Some(pos), Some(seq)) = (r.u64(), r.u64()) else {
                continue;
            };
            if pos > now {
                break;
            }
            out.push(decode::<ToDeviceMessage>(&v)?);
            last = Some((pos, seq));
        }
        if let Some((pos, seq)) = last {
            batch.put_json(
                Cf::E2ee,
                &ack_key,
                &Ack {
                    token: now,
                    pos,
                    seq,
                },
            );
        }
        self.db().write(batch)?;
        Ok(out)
    }

    /// Messages waiting for a device (delivered or not yet acknowledged).
    pub fn to_device_waiting(&self, user: &UserId, device: &DeviceId) -> Result<usize> {
        Ok(self
            .db()
            .scan_prefix(
                Cf::E2ee,
                keys::to_device_inbox(user.as_str(), device.as_str()),
            )?
            .len())
    }
}
