//! Media of other servers, cached after the first fetch, and the `multipart/mixed` answer
//! of the federation media endpoints.
//!
//! A remote item is a [`MediaRecord`] under `~remote 0xFF server 0xFF media_id 0xFF` in
//! `Cf::Media` (media IDs are alphanumeric, so the `~` prefix never meets a local one), with
//! its bytes in the same content-addressed files as local media; a remote thumbnail is a
//! record under `~remote_thumb 0xFF server 0xFF media_id 0xFF WxH-method 0xFF`. The file is
//! written before the record (as for uploads), so a record never points at a partial file.
//! Fetching is the caller's job (it needs the federation client); this module only stores.
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use storage::{Batch, Cf, Key};

use crate::{MediaRecord, MediaService, Result, ThumbnailMethod};

fn remote_key(server: &str, media_id: &str) -> Key {
    Key::new().str("~remote").str(server).str(media_id)
}

fn remote_thumb_key(server: &str, media_id: &str, w: u32, h: u32, method: ThumbnailMethod) -> Key {
    let tag = match method {
        ThumbnailMethod::Scale => "scale",
        ThumbnailMethod::Crop => "crop",
    };
    Key::new()
        .str("~remote_thumb")
        .str(server)
        .str(media_id)
        .str(&format!("{w}x{h}-{tag}"))
}

impl MediaService {
    fn read_cached(&self, key: Key) -> Result<Option<(MediaRecord, Vec<u8>)>> {
        let Some(record) = self.db.get_json::<MediaRecord>(Cf::Media, key)? else {
            return Ok(None);
        };
        match std::fs::read(self.file_path(&record.sha256)) {
            Ok(bytes) => Ok(Some((record, bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn store_cached(
        &self,
        key: Key,
        server: &str,
        content_type: &str,
        filename: Option<&str>,
        bytes: &[u8],
    ) -> Result<MediaRecord> {
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
            uploader: server.to_owned(),
            created_ms: storage::now_ms(),
        };
        let mut batch = Batch::new();
        batch.put_json(Cf::Media, key, &record);
        self.db.write(batch)?;
        Ok(record)
    }

    /// A cached item of another server.
    pub fn remote_cached(
        &self,
        server: &str,
        media_id: &str,
    ) -> Result<Option<(MediaRecord, Vec<u8>)>> {
        self.read_cached(remote_key(server, media_id))
    }

    /// Cache an item fetched from `server`.
    pub fn store_remote(
        &self,
        server: &str,
        media_id: &str,
        content_type: &str,
        filename: Option<&str>,
        bytes: &[u8],
    ) -> Result<MediaRecord> {
        self.store_cached(
            remote_key(server, media_id),
            server,
            content_type,
            filename,
            bytes,
        )
    }

    /// A cached thumbnail of another server's item.
    pub fn remote_thumbnail_cached(
        &self,
        server: &str,
        media_id: &str,
        w: u32,
        h: u32,
        method: ThumbnailMethod,
    ) -> Result<Option<(MediaRecord, Vec<u8>)>> {
        self.read_cached(remote_thumb_key(server, media_id, w, h, method))
    }

    /// Cache a thumbnail fetched from `server`.
    pub fn store_remote_thumbnail(
        &self,
        server: &str,
        media_id: &str,
        (w, h, method): (u32, u32, ThumbnailMethod),
        content_type: &str,
        bytes: &[u8],
    ) -> Result<MediaRecord> {
        self.store_cached(
            remote_thumb_key(server, media_id, w, h, method),
            server,
            content_type,
            None,
            bytes,
        )
    }
}

/// The federation media answer (`multipart/mixed`: a JSON metadata part, then the content
/// with its type and disposition). Returns the `Content-Type` header value and the body.
pub fn multipart_answer(content_type: &str, disposition: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let mut body = Vec::with_capacity(bytes.len() + 256);
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n")
            .as_bytes(),
    );
    // A header value must not break the part's header block.
    let clean = |v: &str| v.replace(['\r', '\n'], "");
    body.extend_from_slice(
        format!(
            "Content-Type: {}\r\nContent-Disposition: {}\r\n\r\n",
            clean(content_type),
            clean(disposition)
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use storage::Db;

    #[test]
    fn remote_items_and_thumbnails_are_cached_apart_from_local_media() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(&dir.path().join("db"), false).expect("db"));
        let svc = MediaService::new(db, dir.path().join("media")).expect("media");
        assert!(svc.remote_cached("b.org", "abc").expect("read").is_none());
        svc.store_remote("b.org", "abc", "text/plain", Some("a.txt"), b"remote")
            .expect("store");
        let (rec, bytes) = svc
            .remote_cached("b.org", "abc")
            .expect("read")
            .expect("found");
        assert_eq!(
            (bytes.as_slice(), rec.filename.as_deref()),
            (&b"remote"[..], Some("a.txt"))
        );
        // Not visible as local media, nor under another server's name.
        assert!(svc.download("abc").expect("read").is_none());
        assert!(svc.remote_cached("c.org", "abc").expect("read").is_none());
        let size = (32, 32, ThumbnailMethod::Scale);
        svc.store_remote_thumbnail("b.org", "abc", size, "image/png", b"thumb")
            .expect("store");
        let (_, t) = svc
            .remote_thumbnail_cached("b.org", "abc", 32, 32, ThumbnailMethod::Scale)
            .expect("read")
            .expect("found");
        assert_eq!(t, b"thumb");
        assert!(
            svc.remote_thumbnail_cached("b.org", "abc", 32, 32, ThumbnailMethod::Crop)
                .expect("read")
                .is_none()
        );
    }

    #[test]
    fn the_multipart_answer_has_a_json_part_then_the_content() {
        let (ct, body) =
            multipart_answer("image/png", "inline; filename=\"a.png\"\r\nX: y", b"PNG");
        let boundary = ct
            .strip_prefix("multipart/mixed; boundary=")
            .expect("boundary");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!(
            "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        )));
        assert!(
            text.contains("Content-Disposition: inline; filename=\"a.png\"X: y\r\n\r\nPNG\r\n")
        );
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
