//! Pushers (`POST /pushers/set`, `GET /pushers`): stored per user in `Cf::Push` under
//! `"p" user app_id pushkey`, with a by-key index `"g" app_id pushkey user` for the spec's
//! `append: false` (setting a pusher removes the same app ID and push key for other users).
//!
//! Only `http` pushers are accepted (`email` needs a mailer Pulse does not have). The
//! `push-gateway` crate delivers to them ([`PushService::all_pushers`] is its view).
use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use storage::{Batch, Cf, Key, KeyReader};

use crate::{PushError, PushService, Result};

/// Longest `app_id` (the spec's limit).
pub const MAX_APP_ID_LEN: usize = 64;
/// Longest `pushkey` (the spec's limit).
pub const MAX_PUSHKEY_LEN: usize = 512;
/// Pushers per user.
pub const MAX_PUSHERS_PER_USER: usize = 100;

/// A stored pusher: the client's fields plus the device that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pusher {
    pub pushkey: String,
    pub kind: String,
    pub app_id: String,
    pub app_display_name: String,
    pub device_display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: Map<String, Value>,
    /// The device whose access token set it (a password change keeps only these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// When it was set (ms since the epoch): the gateway's `pushkey_ts` (pushers stored
    /// before this field was kept have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_ts: Option<u64>,
}

impl Pusher {
    /// The pusher as `GET /pushers` shows it.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("device_id");
            o.remove("set_ts");
        }
        v
    }
}

fn pusher_key(user: &UserId, app_id: &str, pushkey: &str) -> Key {
    Key::new()
        .str("p")
        .str(user.as_str())
        .str(app_id)
        .str(pushkey)
}
fn user_prefix(user: &UserId) -> Key {
    Key::new().str("p").str(user.as_str())
}
fn by_key_prefix(app_id: &str, pushkey: &str) -> Key {
    Key::new().str("g").str(app_id).str(pushkey)
}

fn string_field(body: &Value, name: &str) -> Result<String> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(PushError::MissingParam(format!("Missing '{name}'"))),
        Some(_) => Err(PushError::BadJson(format!("'{name}' must be a string"))),
    }
}

/// What a `POST /pushers/set` body asks for.
pub enum PusherChange {
    Set {
        pusher: Pusher,
        append: bool,
    },
    /// `kind: null`: remove the user's pusher with this app ID and push key.
    Remove {
        app_id: String,
        pushkey: String,
    },
}

/// Validate a `POST /pushers/set` body.
pub fn parse_set(body: &Value, device_id: &str) -> Result<PusherChange> {
    let app_id = string_field(body, "app_id")?;
    let pushkey = string_field(body, "pushkey")?;
    if app_id.is_empty() || app_id.len() > MAX_APP_ID_LEN {
        return Err(PushError::InvalidParam(format!(
            "'app_id' must be 1 to {MAX_APP_ID_LEN} bytes"
        )));
    }
    if pushkey.is_empty() || pushkey.len() > MAX_PUSHKEY_LEN {
        return Err(PushError::InvalidParam(format!(
            "'pushkey' must be 1 to {MAX_PUSHKEY_LEN} bytes"
        )));
    }
    let kind = match body.get("kind") {
        Some(Value::Null) => return Ok(PusherChange::Remove { app_id, pushkey }),
        _ => string_field(body, "kind")?,
    };
    if kind != "http" {
        return Err(PushError::InvalidParam(format!(
            "Unsupported pusher kind {kind:?} (this server supports \"http\")"
        )));
    }
    let data = match body.get("data") {
        Some(Value::Object(d)) => d.clone(),
        None | Some(Value::Null) => return Err(PushError::MissingParam("Missing 'data'".into())),
        Some(_) => return Err(PushError::BadJson("'data' must be an object".into())),
    };
    let url = match data.get("url") {
        Some(Value::String(u)) => u.clone(),
        _ => {
            return Err(PushError::MissingParam(
                "'url' is required in 'data' for http pushers".into(),
            ));
        }
    };
    let path_ok = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .is_some_and(|path| path.split('?').next() == Some("/_matrix/push/v1/notify"));
    if !path_ok {
        return Err(PushError::InvalidParam(
            "'url' must be an http(s) URL with the path /_matrix/push/v1/notify".into(),
        ));
    }
    let profile_tag = match body.get("profile_tag") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(PushError::BadJson("'profile_tag' must be a string".into())),
    };
    let append = match body.get("append") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => false,
        Some(_) => return Err(PushError::BadJson("'append' must be a boolean".into())),
    };
    Ok(PusherChange::Set {
        pusher: Pusher {
            pushkey,
            kind,
            app_id,
            app_display_name: string_field(body, "app_display_name")?,
            device_display_name: string_field(body, "device_display_name")?,
            profile_tag,
            lang: string_field(body, "lang")?,
            data,
            device_id: Some(device_id.to_owned()),
            set_ts: Some(storage::now_ms()),
        },
        append,
    })
}

impl PushService {
    /// The user's pushers.
    pub fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>> {
        let mut out = Vec::new();
        for (_, v) in self.db.scan_prefix(Cf::Push, user_prefix(user))? {
            if let Ok(p) = serde_json::from_slice::<Pusher>(&v) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// One pusher of the user, if set.
    pub fn pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<Option<Pusher>> {
        Ok(self
            .db
            .get_json::<Pusher>(Cf::Push, pusher_key(user, app_id, pushkey))?)
    }

    /// Every user's pushers (for delivery; pushers are few, at most
    /// [`MAX_PUSHERS_PER_USER`] a user).
    pub fn all_pushers(&self) -> Result<BTreeMap<OwnedUserId, Vec<Pusher>>> {
        let mut out: BTreeMap<OwnedUserId, Vec<Pusher>> = BTreeMap::new();
        for (k, v) in self.db.scan_prefix(Cf::Push, Key::new().str("p"))? {
            let Some(user) = KeyReader::new(&k[2..])
                .str()
                .and_then(|s| OwnedUserId::try_from(s).ok())
            else {
                continue;
            };
            if let Ok(p) = serde_json::from_slice::<Pusher>(&v) {
                out.entry(user).or_default().push(p);
            }
        }
        Ok(out)
    }

    /// Apply a `POST /pushers/set`. Removing a pusher that does not exist is not an error.
    pub fn change_pusher(&self, user: &UserId, change: PusherChange) -> Result<()> {
        let _guard = self.pusher_locks.lock(user.as_str());
        let mut batch = Batch::new();
        match change {
            PusherChange::Remove { app_id, pushkey } => {
                batch.delete(Cf::Push, pusher_key(user, &app_id, &pushkey));
                batch.delete(
                    Cf::Push,
                    by_key_prefix(&app_id, &pushkey).str(user.as_str()),
                );
            }
            PusherChange::Set { pusher, append } => {
                let key = pusher_key(user, &pusher.app_id, &pusher.pushkey);
                if !self.db.exists(Cf::Push, &key)?
                    && self.pushers(user)?.len() >= MAX_PUSHERS_PER_USER
                {
                    return Err(PushError::InvalidParam(format!(
                        "At most {MAX_PUSHERS_PER_USER} pushers per user"
                    )));
                }
                let index = by_key_prefix(&pusher.app_id, &pusher.pushkey);
                if !append {
                    // Other users' pushers with this app ID and key go (another user
                    // logged in on the same device).
                    let plen = index.as_bytes().len();
                    for (k, _) in self.db.scan_prefix(Cf::Push, &index)? {
                        let Some(other) = KeyReader::new(&k[plen..])
                            .str()
                            .and_then(|s| OwnedUserId::try_from(s).ok())
                        else {
                            continue;
                        };
                        if other != user {
                            batch.delete(Cf::Push, &k);
                            batch.delete(
                                Cf::Push,
                                pusher_key(&other, &pusher.app_id, &pusher.pushkey),
                            );
                        }
                    }
                }
                batch.put(Cf::Push, index.str(user.as_str()), Vec::new());
                batch.put_json(Cf::Push, key, &pusher);
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Remove the user's pushers set from devices other than `keep` (a password change that
    /// logs out the other devices, as the spec asks). Returns how many went.
    pub fn remove_pushers_except_device(&self, user: &UserId, keep: &str) -> Result<usize> {
        let _guard = self.pusher_locks.lock(user.as_str());
        let mut batch = Batch::new();
        let mut removed = 0;
        for p in self.pushers(user)? {
            if p.device_id.as_deref() != Some(keep) {
                batch.delete(Cf::Push, pusher_key(user, &p.app_id, &p.pushkey));
                batch.delete(
                    Cf::Push,
                    by_key_prefix(&p.app_id, &p.pushkey).str(user.as_str()),
                );
                removed += 1;
            }
        }
        self.db.write(batch)?;
        Ok(removed)
    }
}
