//! Server-side key backup (`/room_keys/*`): versions with opaque `auth_data`, and room
//! key sessions (opaque `session_data`) kept by the spec's rule for which of two copies is
//! better. Every change of a version's keys bumps its `etag`; only the newest version
//! accepts writes (`M_WRONG_ROOM_KEYS_VERSION` otherwise).
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::{Batch, Cf, KeyReader};

use crate::{E2eeError, E2eeService, Result, decode, keys};

/// Sessions accepted in one `PUT /room_keys/keys`.
pub const MAX_SESSIONS_PER_PUT: usize = 10_000;
/// Sessions returned by one `GET /room_keys/keys` (the whole backup, for restore).
pub const MAX_SESSIONS_PER_GET: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupVersion {
    pub algorithm: String,
    pub auth_data: Value,
    pub etag: u64,
    /// Deleted versions keep their number (a new version never reuses one).
    pub deleted: bool,
}

/// One backed-up session as the client sends it (`KeyBackupData`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionData {
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    pub session_data: Value,
}

impl SessionData {
    /// The spec's order: verified beats unverified, then a lower first message index,
    /// then fewer forwards.
    pub fn better_than(&self, old: &SessionData) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

/// `(room_id, session_id, data)`.
pub type BackedUpSession = (String, String, SessionData);

impl E2eeService {
    fn backup_lock(&self, user: &UserId) -> std::sync::MutexGuard<'_, ()> {
        self.locks.lock(keys::backup_versions(user.as_str()))
    }

    /// The latest version (deleted ones included), for numbering.
    fn last_backup(&self, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        let prefix = keys::backup_versions(user.as_str());
        let end = keys::prefix_end(&prefix);
        let last = self.db().scan_range(Cf::E2ee, &prefix, &end, true, 1)?;
        let Some((k, v)) = last.into_iter().next() else {
            return Ok(None);
        };
        let mut r = KeyReader::new(&k);
        let (_s, _u) = (r.str(), r.str());
        r.u64().map(|n| decode(&v).map(|b| (n, b))).transpose()
    }

    /// Create a new backup version; it becomes the current one.
    pub fn create_backup(&self, user: &UserId, algorithm: &str, auth_data: &Value) -> Result<u64> {
        let _g = self.backup_lock(user);
        let version = self.last_backup(user)?.map_or(1, |(n, _)| n + 1);
        let mut b = Batch::new();
        b.put_json(
            Cf::E2ee,
            keys::backup_version(user.as_str(), version),
            &BackupVersion {
                algorithm: algorithm.to_owned(),
                auth_data: auth_data.clone(),
                etag: 0,
                deleted: false,
            },
        );
        self.db().write(b)?;
        Ok(version)
    }

    /// A version (or the current one) with its key count; `None` if none / deleted.
    pub fn backup(
        &self,
        user: &UserId,
        version: Option<u64>,
    ) -> Result<Option<(u64, BackupVersion, u64)>> {
        let found = match version {
            Some(v) => self
                .db()
                .get_json::<BackupVersion>(Cf::E2ee, keys::backup_version(user.as_str(), v))?
                .map(|b| (v, b)),
            None => self.last_backup(user)?,
        };
        match found {
            Some((v, b)) if !b.deleted => {
                let count = self.backup_count(user, v)?;
                Ok(Some((v, b, count)))
            }
            _ => Ok(None),
        }
    }

    fn backup_count(&self, user: &UserId, version: u64) -> Result<u64> {
        Ok(self
            .db()
            .scan_prefix(Cf::E2ee, keys::backup_keys(user.as_str(), version))?
            .len() as u64)
    }

    /// Replace a version's `auth_data` (the algorithm cannot change).
    pub fn update_backup(
        &self,
        user: &UserId,
        version: u64,
        algorithm: &str,
        auth_data: &Value,
    ) -> Result<()> {
        let _g = self.backup_lock(user);
        let k = keys::backup_version(user.as_str(), version);
        let Some(mut b) = self
            .db()
            .get_json::<BackupVersion>(Cf::E2ee, &k)?
            .filter(|b| !b.deleted)
        else {
            return Err(E2eeError::NotFound("Unknown backup version".into()));
        };
        if b.algorithm != algorithm {
            return Err(E2eeError::InvalidParam(
                "The algorithm of a backup cannot change".into(),
            ));
        }
        b.auth_data = auth_data.clone();
        let mut batch = Batch::new();
        batch.put_json(Cf::E2ee, k, &b);
        self.db().write(batch)?;
        Ok(())
    }

    /// Delete a version and its keys.
    pub fn delete_backup(&self, user: &UserId, version: u64) -> Result<()> {
        let _g = self.backup_lock(user);
        let k = keys::backup_version(user.as_str(), version);
        let Some(mut b) = self
            .db()
            .get_json::<BackupVersion>(Cf::E2ee, &k)?
            .filter(|b| !b.deleted)
        else {
            return Err(E2eeError::NotFound("Unknown backup version".into()));
        };
        b.deleted = true;
        b.auth_data = Value::Null;
        let mut batch = Batch::new();
        batch.put_json(Cf::E2ee, k, &b);
        for (key, _) in self
            .db()
            .scan_prefix(Cf::E2ee, keys::backup_keys(user.as_str(), version))?
        {
            batch.delete(Cf::E2ee, key);
        }
        self.db().write(batch)?;
        Ok(())
    }

    /// The current version, for writes: a different one is `WrongBackupVersion`.
    fn writable(&self, user: &UserId, version: u64) -> Result<BackupVersion> {
        let current = self.backup(user, None)?;
        match current {
            Some((v, b, _)) if v == version => Ok(b),
            other => Err(E2eeError::WrongBackupVersion {
                current: other.map(|(v, _, _)| v.to_string()),
            }),
        }
    }

    /// Store sessions (kept only where better than what is stored). Returns `(count, etag)`.
    pub fn put_room_keys(
        &self,
        user: &UserId,
        version: u64,
        sessions: &[BackedUpSession],
    ) -> Result<(u64, u64)> {
        if sessions.len() > MAX_SESSIONS_PER_PUT {
            return Err(E2eeError::TooMany(format!(
                "at most {MAX_SESSIONS_PER_PUT} sessions per request"
            )));
        }
        let _g = self.backup_lock(user);
        let mut info = self.writable(user, version)?;
        let u = user.as_str();
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, session, data) in sessions {
            let k = keys::backup_key(u, version, room, session);
            let old: Option<SessionData> = self.db().get_json(Cf::E2ee, &k)?;
            if old.as_ref().is_none_or(|o| data.better_than(o)) {
                batch.put_json(Cf::E2ee, k, data);
                changed = true;
            }
        }
        if changed {
            info.etag += 1;
            batch.put_json(Cf::E2ee, keys::backup_version(u, version), &info);
            self.db().write(batch)?;
        }
        Ok((self.backup_count(user, version)?, info.etag))
    }

    /// Sessions of a version, optionally of one room or one session.
    pub fn room_keys(
        &self,
        user: &UserId,
        version: u64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<BackedUpSession>> {
        if self.backup(user, Some(version))?.is_none() {
            return Err(E2eeError::NotFound("Unknown backup version".into()));
        }
        let u = user.as_str();
        let prefix = match (room, session) {
            (Some(r), Some(s)) => keys::backup_key(u, version, r, s),
            (Some(r), None) => keys::backup_keys_of_room(u, version, r),
            _ => keys::backup_keys(u, version),
        };
        let end = keys::prefix_end(&prefix);
        let mut out = Vec::new();
        for (k, v) in self
            .db()
            .scan_range(Cf::E2ee, &prefix, &end, false, MAX_SESSIONS_PER_GET)?
        {
            let mut r = KeyReader::new(&k);
            let (_s, _u, _v) = (r.str(), r.str(), r.u64());
            if let (Some(room), Some(session)) = (r.str(), r.str()) {
                out.push((room.to_owned(), session.to_owned(), decode(&v)?));
            }
        }
        Ok(out)
    }

    /// Delete sessions of a version (all, one room's, or one). Returns `(count, etag)`.
    pub fn delete_room_keys(
        &self,
        user: &UserId,
        version: u64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<(u64, u64)> {
        let _g = self.backup_lock(user);
        let mut info = self.writable(user, version)?;
        let u = user.as_str();
        let prefix = match (room, session) {
            (Some(r), Some(s)) => keys::backup_key(u, version, r, s),
            (Some(r), None) => keys::backup_keys_of_room(u, version, r),
            _ => keys::backup_keys(u, version),
        };
        let end = keys::prefix_end(&prefix);
        let mut batch = Batch::new();
        for (k, _) in self
            .db()
            .scan_range(Cf::E2ee, &prefix, &end, false, usize::MAX)?
        {
            batch.delete(Cf::E2ee, k);
        }
        if !batch.is_empty() {
            info.etag += 1;
            batch.put_json(Cf::E2ee, keys::backup_version(u, version), &info);
            self.db().write(batch)?;
        }
        Ok((self.backup_count(user, version)?, info.etag))
    }
}
