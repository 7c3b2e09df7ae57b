//! Asynchronous uploads (spec v1.7, `POST /_matrix/media/v1/create` then
//! `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`).
//!
//! A reservation is a [`PendingUpload`] under two keys in `Cf::Media`, written in one batch:
//! `~pending 0xFF media_id 0xFF` (the record) and `~pending_by 0xFF user 0xFF media_id 0xFF`
//! (so counting one user's reservations reads only theirs). Media IDs are alphanumeric, so
//! the `~` prefix never meets a media record's key. Completing an upload writes the file,
//! then in one batch the [`MediaRecord`] and the deletion of both reservation keys: a crash in
//! between leaves either a reservation or a finished upload, never both.
//!
//! Reservations expire (`unused_expires_at`, 24 h by default); an expired one is treated as
//! unknown and removed when its user next reserves. A user holds at most
//! [`PendingLimits::max_per_user`] unexpired reservations (Synapse's
//! `max_pending_media_uploads` model), beyond which `create` is refused with 429.
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{Batch, Cf, Key, KeyReader};

use crate::{MediaRecord, MediaService, Result};

/// One reserved, not yet uploaded media ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub uploader: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// How many reservations a user may hold and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    pub max_per_user: usize,
    pub lifetime_ms: u64,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            max_per_user: 10,
            lifetime_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// What `create` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    Created {
        media_id: String,
        expires_ms: u64,
    },
    /// The user already holds the maximum number of unexpired reservations; the earliest
    /// of them expires in `retry_after_ms`.
    TooMany {
        retry_after_ms: u64,
    },
}

/// What an asynchronous `PUT` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    Stored,
    /// No such reservation (never made, or expired).
    Unknown,
    /// Reserved by somebody else (403).
    NotYours,
    /// Content was already uploaded to this ID (409 `M_CANNOT_OVERWRITE_MEDIA`).
    AlreadyUploaded,
}

/// Where a media ID stands, for downloads that may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaState {
    Uploaded,
    Pending,
    Unknown,
}

fn pending_key(media_id: &str) -> Key {
    Key::new().str("~pending").str(media_id)
}

fn by_user_key(user: &str, media_id: &str) -> Key {
    Key::new().str("~pending_by").str(user).str(media_id)
}

impl MediaService {
    /// Reserve a media ID for `uploader` (expired reservations of theirs are swept first).
    pub fn reserve(&self, uploader: &str, limits: PendingLimits) -> Result<Reserved> {
        let now = storage::now_ms();
        let _guard = self.pending_lock.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = Key::new().str("~pending_by").str(uploader);
        let mut live = 0usize;
        let mut next_expiry = u64::MAX;
        let mut sweep = Batch::new();
        for (key, value) in self.db.scan_prefix(Cf::Media, &prefix)? {
            let expires = serde_json::from_slice::<PendingUpload>(&value)
                .map(|p| p.expires_ms)
                .unwrap_or(0);
            if expires <= now {
                let mut r = KeyReader::new(&key);
                let (_, _, id) = (r.str(), r.str(), r.str());
                if let Some(id) = id {
                    sweep.delete(Cf::Media, pending_key(id));
                }
                sweep.delete(Cf::Media, &key);
            } else {
                live += 1;
                next_expiry = next_expiry.min(expires);
            }
        }
        if live >= limits.max_per_user {
            if !sweep.is_empty() {
                self.db.write(sweep)?;
            }
            return Ok(Reserved::TooMany {
                retry_after_ms: next_expiry.saturating_sub(now),
            });
        }
        let media_id = Alphanumeric.sample_string(&mut rand::rng(), 24);
        let record = PendingUpload {
            uploader: uploader.to_owned(),
            created_ms: now,
            expires_ms: now.saturating_add(limits.lifetime_ms),
        };
        let mut batch = sweep;
        batch.put_json(Cf::Media, pending_key(&media_id), &record);
        batch.put_json(Cf::Media, by_user_key(uploader, &media_id), &record);
        self.db.write(batch)?;
        Ok(Reserved::Created {
            media_id,
            expires_ms: record.expires_ms,
        })
    }

    /// Upload the content of a reserved media ID.
    pub fn complete(
        &self,
        media_id: &str,
        uploader: &str,
        bytes: &[u8],
        content_type: &str,
        filename: Option<&str>,
    ) -> Result<Completed> {
        // One completion at a time: two PUTs racing for one ID must not both store it.
        let _guard = self.pending_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.db.exists(Cf::Media, media_id.as_bytes())? {
            return Ok(Completed::AlreadyUploaded);
        }
        let Some(pending) = self
            .db
            .get_json::<PendingUpload>(Cf::Media, pending_key(media_id))?
        else {
            return Ok(Completed::Unknown);
        };
        if pending.expires_ms <= storage::now_ms() {
            return Ok(Completed::Unknown);
        }
        if pending.uploader != uploader {
            return Ok(Completed::NotYours);
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let path = self.file_path(&sha256);
        if !path.exists() {
            Self::write_atomic(&path, bytes)?;
        }
        let record = MediaRecord {
            content_type: content_type.to_owned(),
            filename: filename.map(str::to_owned),
            size: bytes.len() as u64,
            sha256,
            uploader: uploader.to_owned(),
            created_ms: storage::now_ms(),
        };
        let mut batch = Batch::new();
        batch.put_json(Cf::Media, media_id.as_bytes(), &record);
        batch.delete(Cf::Media, pending_key(media_id));
        batch.delete(Cf::Media, by_user_key(uploader, media_id));
        self.db.write(batch)?;
        drop(_guard);
        self.uploaded.notify_waiters();
        Ok(Completed::Stored)
    }

    /// Whether `media_id` has content, is reserved and unexpired, or is unknown.
    pub fn state(&self, media_id: &str) -> Result<MediaState> {
        if self.db.exists(Cf::Media, media_id.as_bytes())? {
            return Ok(MediaState::Uploaded);
        }
        match self
            .db
            .get_json::<PendingUpload>(Cf::Media, pending_key(media_id))?
        {
            Some(p) if p.expires_ms > storage::now_ms() => Ok(MediaState::Pending),
            _ => Ok(MediaState::Unknown),
        }
    }

    /// Woken whenever an asynchronous upload completes. Create the `notified()` future
    /// *before* checking [`MediaService::state`], so a completion in between is not missed.
    pub fn uploads_completed(&self) -> &tokio::sync::Notify {
        &self.uploaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use storage::Db;

    fn service() -> (tempfile::TempDir, MediaService) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(&dir.path().join("db"), false).expect("db"));
        let svc = MediaService::new(db, dir.path().join("media")).expect("media");
        (dir, svc)
    }

    fn created(r: Reserved) -> String {
        match r {
            Reserved::Created { media_id, .. } => media_id,
            Reserved::TooMany { .. } => panic!("refused"),
        }
    }

    #[test]
    fn a_reservation_is_pending_until_its_owner_uploads_once() {
        let (_dir, svc) = service();
        let id = created(
            svc.reserve("@a:x", PendingLimits::default())
                .expect("reserve"),
        );
        assert_eq!(svc.state(&id).expect("state"), MediaState::Pending);
        assert!(svc.download(&id).expect("read").is_none());
        assert_eq!(
            svc.complete(&id, "@b:x", b"hi", "text/plain", None)
                .expect("put"),
            Completed::NotYours
        );
        assert_eq!(
            svc.complete(&id, "@a:x", b"hi", "text/plain", Some("a.txt"))
                .expect("put"),
            Completed::Stored
        );
        assert_eq!(svc.state(&id).expect("state"), MediaState::Uploaded);
        let (rec, bytes) = svc.download(&id).expect("read").expect("found");
        assert_eq!(
            (bytes.as_slice(), rec.filename.as_deref()),
            (&b"hi"[..], Some("a.txt"))
        );
        assert_eq!(
            svc.complete(&id, "@a:x", b"again", "text/plain", None)
                .expect("put"),
            Completed::AlreadyUploaded
        );
        assert_eq!(
            svc.complete("nope", "@a:x", b"x", "text/plain", None)
                .expect("put"),
            Completed::Unknown
        );
        assert_eq!(svc.state("nope").expect("state"), MediaState::Unknown);
    }

    #[test]
    fn reservations_are_bounded_per_user_and_expired_ones_do_not_count() {
        let (_dir, svc) = service();
        let limits = PendingLimits {
            max_per_user: 2,
            lifetime_ms: 60_000,
        };
        created(svc.reserve("@a:x", limits).expect("reserve"));
        created(svc.reserve("@a:x", limits).expect("reserve"));
        match svc.reserve("@a:x", limits).expect("reserve") {
            Reserved::TooMany { retry_after_ms } => assert!(retry_after_ms <= 60_000),
            other => panic!("not refused: {other:?}"),
        }
        // Another user has their own allowance.
        created(svc.reserve("@b:x", limits).expect("reserve"));
        // Reservations that expire at once never block, and are swept.
        let instant = PendingLimits {
            max_per_user: 1,
            lifetime_ms: 0,
        };
        let gone = created(svc.reserve("@c:x", instant).expect("reserve"));
        assert_eq!(svc.state(&gone).expect("state"), MediaState::Unknown);
        assert_eq!(
            svc.complete(&gone, "@c:x", b"x", "text/plain", None)
                .expect("put"),
            Completed::Unknown
        );
        created(svc.reserve("@c:x", instant).expect("reserve"));
        let left = svc
            .db
            .scan_prefix(Cf::Media, Key::new().str("~pending_by").str("@c:x"))
            .expect("scan");
        assert_eq!(left.len(), 1, "the expired reservation was swept");
    }

    #[test]
    fn completing_an_upload_wakes_waiters() {
        let (_dir, svc) = service();
        let id = created(
            svc.reserve("@a:x", PendingLimits::default())
                .expect("reserve"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let notified = svc.uploads_completed().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            svc.complete(&id, "@a:x", b"x", "text/plain", None)
                .expect("put");
            notified.await;
        });
    }
}
