//! Users and passwords: localpart rules, registration, password checks (in the hashing
//! pool), password changes, deactivation.
use super::*;
use crate::sessions::check_new_device;

impl AccountService {
    /// Validate a requested localpart and return it case-folded to lower case.
    ///
    /// Rules (spec: user identifiers): after lower-casing only `a-z 0-9 . _ = - / +`,
    /// not empty, and the full `@localpart:server` at most 255 bytes.
    pub fn validate_localpart(&self, localpart: &str) -> Result<String> {
        let lower = localpart.to_lowercase();
        if lower.is_empty() {
            return Err(AccountError::InvalidUsername(
                "the username must not be empty".into(),
            ));
        }
        if let Some(bad) = lower
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(AccountError::InvalidUsername(format!(
                "the username may only contain a-z, 0-9 and ._=-/+ (found {bad:?})"
            )));
        }
        if lower.len() + self.server_name.as_str().len() + 2 > MAX_USER_ID_LEN {
            return Err(AccountError::InvalidUsername(format!(
                "the user ID must be at most {MAX_USER_ID_LEN} bytes"
            )));
        }
        Ok(lower)
    }

    /// The local user ID for an already validated (lower-case) localpart.
    pub(crate) fn user_id_for(&self, localpart: &str) -> Result<OwnedUserId> {
        OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| AccountError::InvalidUsername(e.to_string()))
    }

    /// Check that a localpart could be registered now: valid, and not taken (a
    /// deactivated account keeps its ID). Returns the user ID it would get.
    pub fn check_username_available(&self, localpart: &str) -> Result<OwnedUserId> {
        let localpart = self.validate_localpart(localpart)?;
        let user_id = self.user_id_for(&localpart)?;
        if self.db.exists(Cf::Users, keys::user(&user_id))? {
            return Err(AccountError::UserInUse);
        }
        Ok(user_id)
    }

    /// A random, currently unused localpart (for registrations without a username).
    pub fn generate_localpart(&self) -> Result<String> {
        loop {
            let lp = random_string(12).to_lowercase();
            match self.check_username_available(&lp) {
                Ok(_) => return Ok(lp),
                Err(AccountError::UserInUse) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Create a user. `localpart` is validated and case-folded; `password` is hashed with
    /// argon2id (`None`: no password login possible). The profile starts with the
    /// localpart as display name. With `login`, also creates a device (from `device`) and
    /// an access token. Everything is written in one batch.
    pub fn register(
        &self,
        localpart: &str,
        password: Option<&str>,
        device: NewDevice,
        admin: bool,
        login: bool,
    ) -> Result<Registered> {
        let user_id = self.check_username_available(localpart)?;
        if let Some(p) = password {
            check_password_len(p)?;
        }
        if login {
            check_new_device(&device)?;
        }
        let password_hash = password
            .map(|p| self.hashing_slot(|| self.hashing.hash(p)))
            .transpose()?
            .transpose()
            .map_err(AccountError::Hashing)?;
        let _guard = self.write_guard();
        if self.db.exists(Cf::Users, keys::user(&user_id))? {
            return Err(AccountError::UserInUse);
        }
        let record = UserRecord {
            password_hash,
            admin,
            deactivated: false,
            created_ts: now_ms(),
            profile: Profile {
                displayname: Some(user_id.localpart().to_owned()),
                avatar_url: None,
            },
        };
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, keys::user(&user_id), &record);
        let (device_id, access_token, refresh) = if login {
            let (d, t) = self.add_session(&mut batch, &user_id, device, None)?;
            (Some(d), Some(t.access_token), t.refresh)
        } else {
            (None, None, None)
        };
        self.db.write(batch)?;
        tracing::info!(%user_id, admin, "registered user");
        Ok(Registered {
            user_id,
            device_id,
            access_token,
            refresh,
        })
    }

    pub(crate) fn user_record(&self, user: &UserId) -> Result<Option<UserRecord>, StorageError> {
        self.db.get_json(Cf::Users, keys::user(user))
    }

    /// Whether a local user with this ID exists (deactivated users still exist).
    pub fn user_exists(&self, user: &UserId) -> Result<bool, StorageError> {
        self.db.exists(Cf::Users, keys::user(user))
    }

    /// Whether the user is a server admin (false for unknown users).
    pub fn is_admin(&self, user: &UserId) -> Result<bool, StorageError> {
        Ok(self
            .user_record(user)?
            .is_some_and(|r| r.admin && !r.deactivated))
    }

    /// Whether the user has been deactivated (false for unknown users).
    pub fn is_deactivated(&self, user: &UserId) -> Result<bool, StorageError> {
        Ok(self.user_record(user)?.is_some_and(|r| r.deactivated))
    }

    /// Turn what a client typed to log in (a localpart or a full user ID, any case)
    /// into an existing local user ID. `None` if it is not a known local user.
    pub fn resolve_user(&self, user: &str) -> Result<Option<OwnedUserId>, StorageError> {
        let localpart = if let Some(rest) = user.strip_prefix('@') {
            let Some((lp, server)) = rest.split_once(':') else {
                return Ok(None);
            };
            if server != self.server_name.as_str() {
                return Ok(None);
            }
            lp
        } else {
            user
        };
        let Ok(localpart) = self.validate_localpart(localpart) else {
            return Ok(None);
        };
        let Ok(user_id) = self.user_id_for(&localpart) else {
            return Ok(None);
        };
        Ok(self.user_exists(&user_id)?.then_some(user_id))
    }

    /// Spend about as long as a real verification (in a pool slot, so unknown users cost
    /// time but no more memory than the pool allows). `HashingBusy` when no slot is free.
    pub(crate) fn burn_hash_time(&self, password: &str) -> Result<()> {
        self.hashing_slot(|| {
            let dummy = self
                .dummy_hash
                .get_or_init(|| self.hashing.hash("pulse-dummy-password").ok());
            if let Some(h) = dummy {
                let _ = PasswordHashing::verify(password, h);
            }
        })
    }

    /// Check a user's password: `Forbidden` for an unknown user, no password or a wrong
    /// one; `UserDeactivated` for a deactivated account.
    pub fn check_password(&self, user: &UserId, password: &str) -> Result<()> {
        let Some(record) = self.user_record(user)? else {
            self.burn_hash_time(password)?;
            return Err(AccountError::Forbidden);
        };
        if record.deactivated {
            return Err(AccountError::UserDeactivated);
        }
        match &record.password_hash {
            Some(_) if password.len() > MAX_PASSWORD_LEN => Err(AccountError::Forbidden),
            Some(h) => {
                if self.hashing_slot(|| PasswordHashing::verify(password, h))? {
                    Ok(())
                } else {
                    Err(AccountError::Forbidden)
                }
            }
            None => {
                self.burn_hash_time(password)?;
                Err(AccountError::Forbidden)
            }
        }
    }

    /// Change a password. With `logout_devices`, every other device of the user is
    /// deleted and every other access token revoked; the device and token of
    /// `keep_token` (the request's own, if any) survive.
    pub fn change_password(
        &self,
        user: &UserId,
        new_password: &str,
        logout_devices: bool,
        keep_token: Option<&str>,
    ) -> Result<()> {
        check_password_len(new_password)?;
        if new_password.is_empty() {
            return Err(AccountError::InvalidParam(
                "the new password must not be empty".into(),
            ));
        }
        let hash = self
            .hashing_slot(|| self.hashing.hash(new_password))?
            .map_err(AccountError::Hashing)?;
        let _guard = self.write_guard();
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        if record.deactivated {
            return Err(AccountError::UserDeactivated);
        }
        record.password_hash = Some(hash);
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, keys::user(user), &record);
        if logout_devices {
            let keep = match keep_token {
                Some(t) => self.authenticate(t)?.filter(|s| s.user_id == user),
                None => None,
            };
            for (key, mut dev) in self.device_records(user)? {
                match (&keep, keep_token) {
                    (Some(s), Some(t)) if s.device_id == dev.device.device_id => {
                        let keep = keys::TokenHash::of(t).to_hex();
                        for other in dev.token_hashes.iter().filter(|x| **x != keep) {
                            crate::sessions::delete_token_hash(&mut batch, other);
                        }
                        dev.token_hashes.retain(|x| *x == keep);
                        batch.put_json(Cf::Devices, &key, &dev);
                    }
                    _ => self.delete_device_into(&mut batch, user, &dev)?,
                }
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Deactivate an account: it can never log in again (the password hash is dropped),
    /// all devices and tokens are deleted, and the user ID stays reserved. Idempotent.
    pub fn deactivate(&self, user: &UserId) -> Result<()> {
        let _guard = self.write_guard();
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        record.deactivated = true;
        record.admin = false;
        record.password_hash = None;
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, keys::user(user), &record);
        for (_, dev) in self.device_records(user)? {
            self.delete_device_into(&mut batch, user, &dev)?;
        }
        self.db.write(batch)?;
        tracing::info!(%user, "deactivated user");
        Ok(())
    }
}

pub(crate) fn check_password_len(password: &str) -> Result<()> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AccountError::InvalidParam(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}
