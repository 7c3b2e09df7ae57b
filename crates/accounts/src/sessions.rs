//! Devices and access tokens: token lookup, login sessions (a device reused by ID gets a
//! fresh token and loses its old ones), device records, logout, last-seen.
use super::*;

impl AccountService {
    /// The session of an access token, if it is valid.
    pub fn authenticate(&self, access_token: &str) -> Result<Option<Session>, StorageError> {
        if access_token.is_empty() {
            return Ok(None);
        }
        let hash = keys::TokenHash::of(access_token);
        if let Some(session) = self.tokens.get(&hash) {
            return Ok(Some(session).filter(usable_as_access_token));
        }
        let generation = self.tokens.generation();
        let session: Option<Session> = self.db.get_json(Cf::Tokens, hash.as_key())?;
        if let Some(s) = &session {
            self.tokens.insert(generation, hash, s.clone());
        }
        Ok(session.filter(usable_as_access_token))
    }

    /// [`AccountService::authenticate`] answered from memory, without touching storage:
    /// `Some` for a token seen valid since the last change that could revoke it, `None`
    /// when storage must be asked.
    pub fn authenticate_cached(&self, access_token: &str) -> Option<Session> {
        if access_token.is_empty() {
            return None;
        }
        self.tokens
            .get(&keys::TokenHash::of(access_token))
            .filter(usable_as_access_token)
    }

    /// `m.login.password`: `user` is a localpart or a user ID (case-insensitive). On
    /// success creates (or reuses) a device and returns a new access token.
    pub fn login_password(
        &self,
        user: &str,
        password: &str,
        device: NewDevice,
        ip: Option<&str>,
    ) -> Result<LoggedIn> {
        check_new_device(&device)?;
        let Some(user_id) = self.resolve_user(user)? else {
            self.burn_hash_time(password)?;
            return Err(AccountError::Forbidden);
        };
        self.check_password(&user_id, password)?;
        self.create_session(&user_id, device, ip)
    }

    /// Create (or reuse) a device for an existing, active user and issue an access token,
    /// without checking any credentials (callers have done that).
    pub fn create_session(
        &self,
        user: &UserId,
        device: NewDevice,
        ip: Option<&str>,
    ) -> Result<LoggedIn> {
        check_new_device(&device)?;
        let _guard = self.write_guard();
        match self.user_record(user)? {
            None => return Err(AccountError::UnknownUser),
            Some(r) if r.deactivated => return Err(AccountError::UserDeactivated),
            Some(_) => {}
        }
        let mut batch = Batch::new();
        let (device_id, tokens) = self.add_session(&mut batch, user, device, ip)?;
        self.db.write(batch)?;
        Ok(LoggedIn {
            user_id: user.to_owned(),
            device_id,
            access_token: tokens.access_token,
            refresh: tokens.refresh,
        })
    }

    /// Add a token (and the device, if new) to `batch`. Caller holds `write_lock`.
    pub(crate) fn add_session(
        &self,
        batch: &mut Batch,
        user: &UserId,
        device: NewDevice,
        ip: Option<&str>,
    ) -> Result<(OwnedDeviceId, crate::refresh::Issued)> {
        let refreshable = device.refresh_token;
        let device_id: OwnedDeviceId = match device.device_id.filter(|d| !d.is_empty()) {
            Some(d) => d.into(),
            None => loop {
                let d = DeviceId::new();
                if !self.db.exists(Cf::Devices, keys::device(user, &d))? {
                    break d;
                }
            },
        };
        let key = keys::device(user, &device_id);
        let now = now_ms();
        let mut record = match self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? {
            Some(r) => r,
            None => DeviceRecord {
                device: Device {
                    device_id: device_id.clone(),
                    display_name: device.display_name,
                    last_seen_ip: None,
                    last_seen_ts: None,
                },
                token_hashes: Vec::new(),
            },
        };
        record.device.last_seen_ts = Some(now);
        if let Some(ip) = ip {
            record.device.last_seen_ip = Some(ip.to_owned());
        }
        // Logging in again with an existing device replaces its session: the device's
        // old tokens stop working (spec: `device_id` on `/login`).
        for old in record.token_hashes.drain(..) {
            delete_token_hash(batch, &old);
        }
        let issued = crate::refresh::issue(batch, &mut record, user, &device_id, refreshable, now);
        batch.put_json(Cf::Devices, &key, &record);
        lock(&self.seen).insert(
            (user.to_owned(), device_id.clone()),
            (now, ip.map(str::to_owned)),
        );
        Ok((device_id, issued))
    }

    pub(crate) fn device_records(
        &self,
        user: &UserId,
    ) -> Result<Vec<(Vec<u8>, DeviceRecord)>, StorageError> {
        self.db
            .scan_prefix(Cf::Devices, keys::user_prefix(user))?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice::<DeviceRecord>(&v)
                    .map(|r| (k, r))
                    .map_err(|e| StorageError::Corrupt {
                        cf: Cf::Devices.name(),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// Delete a device, its tokens and its transaction IDs into `batch`. Caller holds `write_lock`.
    pub(crate) fn delete_device_into(
        &self,
        batch: &mut Batch,
        user: &UserId,
        dev: &DeviceRecord,
    ) -> Result<(), StorageError> {
        for t in &dev.token_hashes {
            delete_token_hash(batch, t);
        }
        let key = keys::device(user, &dev.device.device_id);
        // Other crates' per-device data (send transaction IDs): their keys start with the
        // device scope, whatever follows it.
        let scope = storage::device_scope(user.as_str(), dev.device.device_id.as_str());
        for cf in Cf::DEVICE_SCOPED {
            for (k, _) in self.db.scan_prefix(cf, &scope)? {
                batch.delete(cf, k);
            }
        }
        batch.delete(Cf::Devices, &key);
        lock(&self.seen).remove(&(user.to_owned(), dev.device.device_id.clone()));
        Ok(())
    }

    /// All devices of a user, ordered by device ID.
    pub fn devices(&self, user: &UserId) -> Result<Vec<Device>, StorageError> {
        Ok(self
            .device_records(user)?
            .into_iter()
            .map(|(_, r)| r.device)
            .collect())
    }

    /// One device of a user.
    pub fn device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<Device>, StorageError> {
        Ok(self
            .db
            .get_json::<DeviceRecord>(Cf::Devices, keys::device(user, device_id))?
            .map(|r| r.device))
    }

    /// Set a device's display name (`None` leaves it unchanged). `UnknownDevice` if the
    /// user has no such device.
    pub fn update_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        if let Some(n) = &display_name
            && n.chars().count() > MAX_DEVICE_NAME_LEN
        {
            return Err(AccountError::InvalidParam(format!(
                "display_name is longer than {MAX_DEVICE_NAME_LEN} characters"
            )));
        }
        let _guard = self.write_guard();
        let key = keys::device(user, device_id);
        let Some(mut record) = self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? else {
            return Err(AccountError::UnknownDevice);
        };
        if display_name.is_some() {
            record.device.display_name = display_name;
            let mut batch = Batch::new();
            batch.put_json(Cf::Devices, &key, &record);
            self.db.write(batch)?;
        }
        Ok(())
    }

    /// Delete devices (and their tokens). Unknown device IDs are ignored. Returns the
    /// IDs that existed and were deleted.
    pub fn delete_devices(
        &self,
        user: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<OwnedDeviceId>> {
        let _guard = self.write_guard();
        let mut batch = Batch::new();
        let mut deleted = Vec::new();
        for d in device_ids {
            if let Some(record) = self
                .db
                .get_json::<DeviceRecord>(Cf::Devices, keys::device(user, d))?
                && !deleted.contains(d)
            {
                self.delete_device_into(&mut batch, user, &record)?;
                deleted.push(d.clone());
            }
        }
        self.db.write(batch)?;
        Ok(deleted)
    }

    /// Delete one device (and its tokens). Returns whether it existed.
    pub fn delete_device(&self, user: &UserId, device_id: &DeviceId) -> Result<bool> {
        Ok(!self
            .delete_devices(user, &[device_id.to_owned()])?
            .is_empty())
    }

    /// `POST /logout`: revoke this token and delete its device (with the device's other
    /// tokens). Returns false if the token was not valid.
    pub fn logout(&self, access_token: &str) -> Result<bool> {
        let Some(session) = self.authenticate(access_token)? else {
            return Ok(false);
        };
        let _guard = self.write_guard();
        let mut batch = Batch::new();
        batch.delete(Cf::Tokens, keys::TokenHash::of(access_token).as_key());
        if let Some(record) = self.db.get_json::<DeviceRecord>(
            Cf::Devices,
            keys::device(&session.user_id, &session.device_id),
        )? {
            self.delete_device_into(&mut batch, &session.user_id, &record)?;
        }
        self.db.write(batch)?;
        Ok(true)
    }

    /// `POST /logout/all`: revoke every token and delete every device of the user.
    pub fn logout_all(&self, user: &UserId) -> Result<()> {
        let _guard = self.write_guard();
        let mut batch = Batch::new();
        for (_, dev) in self.device_records(user)? {
            self.delete_device_into(&mut batch, user, &dev)?;
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Whether [`AccountService::touch_device`] would write now (cheap: memory only).
    pub fn last_seen_due(&self, user: &UserId, device_id: &DeviceId, ip: Option<&str>) -> bool {
        let now = now_ms();
        let seen = lock(&self.seen);
        !seen
            .get(&(user.to_owned(), device_id.to_owned()))
            .is_some_and(|(at, last_ip)| {
                now.saturating_sub(*at) < LAST_SEEN_INTERVAL_MS
                    && (ip.is_none() || last_ip.as_deref() == ip)
            })
    }

    /// Record that a device was used now from `ip`. Cheap: writes at most once per
    /// [`LAST_SEEN_INTERVAL_MS`] per device unless the IP changes. Unknown devices are ignored.
    pub fn touch_device(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        ip: Option<&str>,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        let cache_key = (user.to_owned(), device_id.to_owned());
        {
            let seen = lock(&self.seen);
            if let Some((at, last_ip)) = seen.get(&cache_key)
                && now.saturating_sub(*at) < LAST_SEEN_INTERVAL_MS
                && (ip.is_none() || last_ip.as_deref() == ip)
            {
                return Ok(());
            }
        }
        // Writes no token: the plain lock, so the token cache survives last-seen updates.
        let _guard = lock(&self.write_lock);
        let key = keys::device(user, device_id);
        let Some(mut record) = self.db.get_json::<DeviceRecord>(Cf::Devices, &key)? else {
            return Ok(());
        };
        record.device.last_seen_ts = Some(now);
        if let Some(ip) = ip {
            record.device.last_seen_ip = Some(ip.to_owned());
        }
        let mut batch = Batch::new();
        batch.put_json(Cf::Devices, &key, &record);
        self.db.write(batch)?;
        let mut seen = lock(&self.seen);
        if seen.len() > 100_000 {
            seen.clear();
        }
        seen.insert(cache_key, (now, ip.map(str::to_owned)));
        Ok(())
    }
}

pub(crate) fn check_new_device(device: &NewDevice) -> Result<()> {
    if let Some(d) = &device.device_id
        && d.len() > MAX_DEVICE_ID_LEN
    {
        return Err(AccountError::InvalidParam(format!(
            "device_id is longer than {MAX_DEVICE_ID_LEN} bytes"
        )));
    }
    if let Some(n) = &device.display_name
        && n.chars().count() > MAX_DEVICE_NAME_LEN
    {
        return Err(AccountError::InvalidParam(format!(
            "initial_device_display_name is longer than {MAX_DEVICE_NAME_LEN} characters"
        )));
    }
    Ok(())
}

/// Whether a stored session answers as an access token: not a refresh token, not expired.
fn usable_as_access_token(s: &Session) -> bool {
    !s.refresh && s.expires_ts.is_none_or(|t| now_ms() < t)
}

/// Delete the `Tokens` entry of a device record's token hash (hex). A malformed entry has
/// no `Tokens` key to delete.
pub(crate) fn delete_token_hash(batch: &mut Batch, hex: &str) {
    if let Some(h) = keys::TokenHash::from_hex(hex) {
        batch.delete(Cf::Tokens, h.as_key());
    }
}
