//! # media — the media repository: uploads, downloads, thumbnails
//!
//! [`MediaService`] keeps uploaded files on disk under `<data_dir>/media`, addressed by the
//! SHA-256 of their content (`ab/cdef…`: the same bytes uploaded twice are stored once), and
//! their metadata in `Cf::Media` (`media_id` → [`MediaRecord`]: content type, file name,
//! size, hash, uploader). A file is written to a temporary name and renamed into place
//! before its record is stored, so a record never points at a partial file.
//!
//! Thumbnails (`scale`: fit inside the box, `crop`: fill it) are made with the `image` crate
//! from PNG, JPEG, GIF and WebP uploads, encoded as PNG and cached on disk beside the
//! originals (`thumbnails/<hash>-<w>x<h>-<method>.png`). Other types get 400 from the API
//! layer, as the spec allows.
//!
//! Asynchronous uploads (a media ID reserved first, its content `PUT` later) are in
//! [`pending`].
//!
//! Media of other servers is cached in [`remote`] once fetched (by the API layer, over
//! federation), which also builds the federation endpoints' `multipart/mixed` answer.
//!
//! URL previews' parsing and cache are in [`preview`] (the fetching is the API layer's).
//!
//! Not done: quotas per user, deleting media, evicting the remote cache.
//!
//! All methods do file and storage I/O: call them from the blocking pool.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{Batch, Cf, Db, StorageError};

pub mod headers;
pub mod pending;
pub use headers::{disposition, inline_safe};
pub mod preview;
pub mod remote;
pub use pending::{Completed, MediaState, PendingLimits, PendingUpload, Reserved};

/// Largest width or height of a thumbnail, and of an image a thumbnail is made from (a
/// decompression bomb is refused before it is decoded in full).
pub const MAX_THUMBNAIL_SIDE: u32 = 1_600;
pub const MAX_SOURCE_PIXELS: u64 = 40_000_000;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("media file i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The upload is not an image this server can thumbnail (400).
    #[error("{0}")]
    NotAnImage(String),
}

pub type Result<T, E = MediaError> = std::result::Result<T, E>;

/// What is stored about one piece of media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub size: u64,
    /// SHA-256 of the content, hex: where the file is.
    pub sha256: String,
    pub uploader: String,
    pub created_ms: u64,
}

/// `scale` (fit inside) or `crop` (fill exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Scale,
    Crop,
}

pub struct MediaService {
    db: Arc<Db>,
    dir: PathBuf,
    /// Serialises reserving and completing asynchronous uploads.
    pending_lock: std::sync::Mutex<()>,
    /// Woken when an asynchronous upload completes (downloads waiting for it).
    uploaded: tokio::sync::Notify,
}

impl MediaService {
    /// Media under `dir` (created if missing).
    pub fn new(db: Arc<Db>, dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(dir.join("thumbnails"))?;
        Ok(MediaService {
            db,
            dir,
            pending_lock: std::sync::Mutex::new(()),
            uploaded: tokio::sync::Notify::new(),
        })
    }

    fn file_path(&self, sha256: &str) -> PathBuf {
        let (a, b) = sha256.split_at(2.min(sha256.len()));
        self.dir.join(a).join(b)
    }

    /// Write `bytes` to `path` atomically (a temporary file renamed into place).
    fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".tmp-{}",
            Alphanumeric.sample_string(&mut rand::rng(), 16)
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Store an upload; returns its new media ID.
    pub fn upload(
        &self,
        bytes: &[u8],
        content_type: &str,
        filename: Option<&str>,
        uploader: &str,
    ) -> Result<String> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let path = self.file_path(&sha256);
        if !path.exists() {
            Self::write_atomic(&path, bytes)?;
        }
        let media_id = Alphanumeric.sample_string(&mut rand::rng(), 24);
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
        self.db.write(batch)?;
        Ok(media_id)
    }

    /// A local media item's record and content (`None`: unknown ID or the file is gone).
    pub fn download(&self, media_id: &str) -> Result<Option<(MediaRecord, Vec<u8>)>> {
        let Some(record) = self
            .db
            .get_json::<MediaRecord>(Cf::Media, media_id.as_bytes())?
        else {
            return Ok(None);
        };
        match std::fs::read(self.file_path(&record.sha256)) {
            Ok(bytes) => Ok(Some((record, bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(media_id, "media record without its file");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A PNG thumbnail of a local image, at most `width`×`height` (capped at
    /// [`MAX_THUMBNAIL_SIDE`]), made once and cached. `None`: unknown media.
    pub fn thumbnail(
        &self,
        media_id: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
    ) -> Result<Option<Vec<u8>>> {
        let Some(record) = self
            .db
            .get_json::<MediaRecord>(Cf::Media, media_id.as_bytes())?
        else {
            return Ok(None);
        };
        let (w, h) = (
            width.clamp(1, MAX_THUMBNAIL_SIDE),
            height.clamp(1, MAX_THUMBNAIL_SIDE),
        );
        let tag = match method {
            ThumbnailMethod::Scale => "scale",
            ThumbnailMethod::Crop => "crop",
        };
        let cached = self
            .dir
            .join("thumbnails")
            .join(format!("{}-{w}x{h}-{tag}.png", record.sha256));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(Some(bytes));
        }
        let Some((_, source)) = self.download(media_id)? else {
            return Ok(None);
        };
        let png = make_thumbnail(&source, w, h, method)?;
        Self::write_atomic(&cached, &png)?;
        Ok(Some(png))
    }
}

/// Decode `source`, scale or crop it to `w`×`h`, encode as PNG.
pub fn make_thumbnail(source: &[u8], w: u32, h: u32, method: ThumbnailMethod) -> Result<Vec<u8>> {
    let not_image = |e: image::ImageError| MediaError::NotAnImage(format!("cannot thumbnail: {e}"));
    let reader = image::ImageReader::new(std::io::Cursor::new(source))
        .with_guessed_format()
        .map_err(MediaError::Io)?;
    let (sw, sh) = reader.into_dimensions().map_err(not_image)?;
    if u64::from(sw) * u64::from(sh) > MAX_SOURCE_PIXELS {
        return Err(MediaError::NotAnImage(format!(
            "image too large to thumbnail ({sw}x{sh})"
        )));
    }
    let img = image::load_from_memory(source).map_err(not_image)?;
    let thumb = match method {
        // Never upscale: a small image is its own thumbnail.
        ThumbnailMethod::Scale if sw <= w && sh <= h => img,
        ThumbnailMethod::Scale => img.thumbnail(w, h),
        ThumbnailMethod::Crop => img.resize_to_fill(w, h, image::imageops::FilterType::Triangle),
    };
    let mut out = std::io::Cursor::new(Vec::new());
    thumb
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(not_image)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    fn service() -> (tempfile::TempDir, MediaService) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(&dir.path().join("db"), false).expect("db"));
        let svc = MediaService::new(db, dir.path().join("media")).expect("media");
        (dir, svc)
    }

    #[test]
    fn uploads_round_trip_and_identical_content_is_stored_once() {
        let (dir, svc) = service();
        let a = svc
            .upload(b"hello", "text/plain", Some("a.txt"), "@u:x")
            .expect("upload");
        let b = svc
            .upload(b"hello", "text/plain", None, "@u:x")
            .expect("upload");
        assert_ne!(a, b);
        let (rec, bytes) = svc.download(&a).expect("read").expect("found");
        assert_eq!(bytes, b"hello");
        assert_eq!(rec.filename.as_deref(), Some("a.txt"));
        assert_eq!(rec.size, 5);
        assert!(svc.download("nope").expect("read").is_none());
        let files = std::fs::read_dir(dir.path().join("media"))
            .expect("dir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "thumbnails"))
            .count();
        assert_eq!(files, 1, "one content-addressed file");
    }

    #[test]
    fn thumbnails_scale_and_crop_and_refuse_non_images() {
        let (_dir, svc) = service();
        let id = svc
            .upload(&png(200, 100), "image/png", None, "@u:x")
            .expect("upload");
        let scaled = svc
            .thumbnail(&id, 50, 50, ThumbnailMethod::Scale)
            .expect("thumb")
            .expect("found");
        let img = image::load_from_memory(&scaled).expect("png");
        assert_eq!((img.width(), img.height()), (50, 25));
        let cropped = svc
            .thumbnail(&id, 40, 40, ThumbnailMethod::Crop)
            .expect("thumb")
            .expect("found");
        let img = image::load_from_memory(&cropped).expect("png");
        assert_eq!((img.width(), img.height()), (40, 40));
        // Cached: the same bytes again.
        assert_eq!(
            svc.thumbnail(&id, 50, 50, ThumbnailMethod::Scale)
                .expect("thumb")
                .expect("found"),
            scaled
        );
        let text = svc
            .upload(b"not an image", "text/plain", None, "@u:x")
            .expect("upload");
        assert!(matches!(
            svc.thumbnail(&text, 10, 10, ThumbnailMethod::Scale),
            Err(MediaError::NotAnImage(_))
        ));
    }
}
