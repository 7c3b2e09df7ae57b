//! Access tokens and refresh tokens (spec v1.3 "Refreshing access tokens").
//!
//! A client that logs in or registers with `refresh_token: true` gets an access token that
//! expires after [`REFRESHABLE_TOKEN_LIFETIME_MS`] and a refresh token that does not.
//! `POST /refresh` trades the refresh token for a new pair on the same device (so the
//! device's transaction IDs, keys and to-device inbox carry over). Both kinds live in
//! `Tokens` by their SHA-256 like every token, listed in the device record so deleting
//! the device revokes them; a refresh token is never accepted as an access token.
//!
//! The old refresh token is revoked by the refresh itself (a client that loses the answer
//! must log in again — simpler than the spec's "until the new token is first used", and
//! never leaves two live refresh tokens). The old access token keeps working until it
//! expires; expired ones are dropped from the device at the next refresh or login.
use ruma::{DeviceId, OwnedDeviceId, UserId};
use storage::{Batch, Cf};

use crate::sessions::delete_token_hash;
use crate::{
    AccountError, AccountService, DeviceRecord, LoggedIn, Result, Session, TOKEN_LEN, keys, now_ms,
    random_string,
};

/// How long an access token issued with a refresh token works (Synapse's default
/// `refreshable_access_token_lifetime`, 5 minutes).
pub const REFRESHABLE_TOKEN_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// What one login, registration or refresh hands out.
pub(crate) struct Issued {
    pub access_token: String,
    /// The refresh token and the access token's lifetime in ms.
    pub refresh: Option<(String, u64)>,
}

fn put_token(batch: &mut Batch, record: &mut DeviceRecord, token: &str, session: &Session) {
    let hash = keys::TokenHash::of(token);
    record.token_hashes.push(hash.to_hex());
    batch.put_json(Cf::Tokens, hash.as_key(), session);
}

/// Issue an access token (and with `refreshable` a refresh token) for `device` into
/// `batch`, listing them in `record`. The caller writes `record`.
pub(crate) fn issue(
    batch: &mut Batch,
    record: &mut DeviceRecord,
    user: &UserId,
    device: &DeviceId,
    refreshable: bool,
    now: u64,
) -> Issued {
    let access_token = random_string(TOKEN_LEN);
    let session = |expires_ts, refresh| Session {
        user_id: user.to_owned(),
        device_id: device.to_owned(),
        expires_ts,
        refresh,
    };
    if !refreshable {
        put_token(batch, record, &access_token, &session(None, false));
        return Issued {
            access_token,
            refresh: None,
        };
    }
    let refresh_token = random_string(TOKEN_LEN);
    let expires = now + REFRESHABLE_TOKEN_LIFETIME_MS;
    put_token(batch, record, &access_token, &session(Some(expires), false));
    put_token(batch, record, &refresh_token, &session(None, true));
    Issued {
        access_token,
        refresh: Some((refresh_token, REFRESHABLE_TOKEN_LIFETIME_MS)),
    }
}

impl AccountService {
    /// `POST /refresh`: a new access token and refresh token for the refresh token's
    /// device; the old refresh token stops working. `UnknownToken` for a token that is not
    /// a live refresh token.
    pub fn refresh(&self, refresh_token: &str) -> Result<LoggedIn> {
        let hash = keys::TokenHash::of(refresh_token);
        // Deletes a token: the write guard also empties the token cache.
        let _guard = self.write_guard();
        let Some(old) = self.db.get_json::<Session>(Cf::Tokens, hash.as_key())? else {
            return Err(AccountError::UnknownToken);
        };
        if !old.refresh {
            return Err(AccountError::UnknownToken);
        }
        let key = keys::device(&old.user_id, &old.device_id);
        let Some(mut record) = self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? else {
            return Err(AccountError::UnknownToken);
        };
        let now = now_ms();
        let mut batch = Batch::new();
        // Drop the used refresh token and every expired access token of the device.
        let mut kept = Vec::with_capacity(record.token_hashes.len());
        for hex in std::mem::take(&mut record.token_hashes) {
            let live = hex != hash.to_hex()
                && keys::TokenHash::from_hex(&hex).is_some_and(|h| {
                    self.db
                        .get_json::<Session>(Cf::Tokens, h.as_key())
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.expires_ts.is_none_or(|t| now < t))
                });
            if live {
                kept.push(hex);
            } else {
                delete_token_hash(&mut batch, &hex);
            }
        }
        record.token_hashes = kept;
        let device_id: OwnedDeviceId = old.device_id.clone();
        let issued = issue(&mut batch, &mut record, &old.user_id, &device_id, true, now);
        batch.put_json(Cf::Devices, &key, &record);
        self.db.write(batch)?;
        Ok(LoggedIn {
            user_id: old.user_id,
            device_id,
            access_token: issued.access_token,
            refresh: issued.refresh,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{AccountError, AccountService, NewDevice, PasswordHashing};
    use std::sync::Arc;

    #[test]
    fn refresh_tokens_rotate_on_one_device_and_are_no_access_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(storage::Db::open(dir.path(), false).expect("open"));
        let name = ruma::ServerName::parse("x").expect("name");
        let s = AccountService::new(db, name, PasswordHashing::insecure_fast());
        s.register("alice", Some("pw"), NewDevice::default(), false, false)
            .expect("register");
        let device = NewDevice {
            refresh_token: true,
            ..Default::default()
        };
        let first = s
            .login_password("alice", "pw", device, None)
            .expect("login");
        let (refresh1, lifetime) = first.refresh.clone().expect("a refresh token");
        assert_eq!(lifetime, super::REFRESHABLE_TOKEN_LIFETIME_MS);
        assert!(s.authenticate(&first.access_token).expect("read").is_some());
        assert!(
            s.authenticate(&refresh1).expect("read").is_none(),
            "not an access token"
        );
        assert!(matches!(
            s.refresh(&first.access_token),
            Err(AccountError::UnknownToken)
        ));
        let second = s.refresh(&refresh1).expect("refresh");
        assert_eq!(second.device_id, first.device_id);
        assert!(
            s.authenticate(&second.access_token)
                .expect("read")
                .is_some()
        );
        let (refresh2, _) = second.refresh.clone().expect("a new refresh token");
        assert!(
            matches!(s.refresh(&refresh1), Err(AccountError::UnknownToken)),
            "used once"
        );
        // Logging out the device revokes its refresh token too.
        assert!(s.logout(&second.access_token).expect("logout"));
        assert!(matches!(
            s.refresh(&refresh2),
            Err(AccountError::UnknownToken)
        ));
        // A login without refresh_token: no expiry, no refresh token.
        let plain = s
            .login_password("alice", "pw", NewDevice::default(), None)
            .expect("login");
        assert!(plain.refresh.is_none());
    }
}
