//! Online backups and restores.
//!
//! * The running server writes a backup when an admin asks (`POST /_pulse/admin/v1/backup`,
//!   [`ServerBackups`]): a RocksDB checkpoint of the live database in `DIR/db` (consistent:
//!   every write acknowledged before the call is in it), then the media files in
//!   `DIR/media` (content-addressed and never rewritten, so copying them after the
//!   checkpoint gives every file it refers to), then `DIR/pulse-backup.json` — written last,
//!   so a directory without it is an unfinished backup and `restore` refuses it. The search
//!   indexes are left out: they are rebuilt from the room stream at start.
//! * `pulse backup DIR` asks the running server for one (admin token in `PULSE_ADMIN_TOKEN`,
//!   never on the command line where `ps` shows it).
//! * `pulse restore DIR` (server stopped) copies a finished backup into an empty data
//!   directory and opens it once to check it.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::Config;

/// The manifest of a finished backup.
const MANIFEST: &str = "pulse-backup.json";

/// Backups of the running server (the admin API's [`api_client::admin_api::Backups`]).
pub struct ServerBackups {
    pub db: Arc<storage::Db>,
    pub data_dir: PathBuf,
    pub server_name: String,
}

impl api_client::admin_api::Backups for ServerBackups {
    fn backup(&self, dir: &Path) -> Result<Value, String> {
        let parent = dir
            .parent()
            .ok_or("a backup cannot be the root directory")?;
        let parent = parent
            .canonicalize()
            .map_err(|e| format!("{}: {e}", parent.display()))?;
        let data = self
            .data_dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", self.data_dir.display()))?;
        if parent.starts_with(&data) {
            return Err("a backup cannot go inside the data directory".into());
        }
        std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let started = std::time::Instant::now();
        let position = self
            .db
            .checkpoint(&dir.join("db"))
            .map_err(|e| format!("database checkpoint: {e}"))?;
        let media = self.data_dir.join("media");
        let files = if media.exists() {
            copy_tree(&media, &dir.join("media"), true).map_err(|e| format!("media files: {e}"))?
        } else {
            0
        };
        let manifest = json!({
            "server_name": self.server_name,
            "position": position,
            "created_ts": storage::now_ms(),
            "media_files": files,
            "pulse_version": env!("CARGO_PKG_VERSION"),
        });
        write_manifest(dir, &manifest)?;
        tracing::info!(dir = %dir.display(), position, files, ms = started.elapsed().as_millis() as u64, "backup written");
        Ok(manifest)
    }
}

fn write_manifest(dir: &Path, manifest: &Value) -> Result<(), String> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, manifest.to_string()).map_err(|e| format!("manifest: {e}"))?;
    let f = std::fs::File::open(&tmp).map_err(|e| format!("manifest: {e}"))?;
    f.sync_all().map_err(|e| format!("manifest: {e}"))?;
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| format!("manifest: {e}"))
}

/// Copy a directory tree; with `link`, hard links where the filesystem allows (only for
/// files never rewritten in place: media, not RocksDB's MANIFEST or WAL). Returns the
/// number of files.
fn copy_tree(from: &Path, to: &Path, link: bool) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut files = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files += copy_tree(&src, &dst, link)?;
        } else if kind.is_file() {
            // An upload still being written has a temporary name and is not referred to yet.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if !link || std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)?;
            }
            files += 1;
        }
    }
    Ok(files)
}

/// `pulse backup DIR`: ask the running server (at `url`, or its first plain listener) for a
/// backup into `dir`.
pub fn request_backup(config: &Config, dir: &Path, url: Option<String>) -> Result<String, String> {
    let token = std::env::var("PULSE_ADMIN_TOKEN")
        .map_err(|_| "set PULSE_ADMIN_TOKEN to a server admin's access token")?;
    let dir = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(dir)
    };
    let url = match url {
        Some(u) => u,
        None => {
            let l = config
                .listeners
                .iter()
                .find(|l| l.tls.is_none())
                .ok_or("no plain HTTP listener in the configuration: pass --url")?;
            let mut addr = l.bind;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/_pulse/admin/v1/backup",
                url.trim_end_matches('/')
            ))
            .bearer_auth(token)
            .json(&json!({ "dir": dir }))
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(format!("backup written to {}: {body}", dir.display()))
        } else {
            Err(format!("the server refused the backup ({status}): {body}"))
        }
    })
}

/// `pulse restore DIR`: copy a finished backup into the configured data directory, which
/// must be empty or missing (the server must be stopped).
pub fn restore(config: &Config, dir: &Path) -> Result<String, String> {
    let manifest: Value = std::fs::read(dir.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            format!(
                "{} is not a finished Pulse backup (no {MANIFEST})",
                dir.display()
            )
        })?;
    if manifest["server_name"].as_str() != Some(config.server_name.as_str()) {
        return Err(format!(
            "the backup is of server {}, the configuration is for {}",
            manifest["server_name"], config.server_name
        ));
    }
    let data = &config.data_dir;
    if data.exists()
        && std::fs::read_dir(data)
            .map_err(|e| format!("{}: {e}", data.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "the data directory {} is not empty: restore into a new one",
            data.display()
        ));
    }
    copy_tree(&dir.join("db"), data, false).map_err(|e| format!("database files: {e}"))?;
    if dir.join("media").exists() {
        copy_tree(&dir.join("media"), &data.join("media"), true)
            .map_err(|e| format!("media files: {e}"))?;
    }
    let db = storage::Db::open_migrating(data, true, accounts::MIGRATIONS)
        .map_err(|e| format!("the restored database does not open: {e}"))?;
    let position = db.current_position();
    drop(db);
    Ok(format!(
        "restored {} into {} (stream position {position})",
        dir.display(),
        data.display()
    ))
}
