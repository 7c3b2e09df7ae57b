//! `POST /_pulse/admin/v1/backup {"dir": "/abs/path"}`: a consistent copy of the running
//! server (database checkpoint and media files) written to a new directory, without
//! stopping it (`pulse backup DIR` calls this). The copy itself is the binary's job
//! ([`Backups`], installed at start); this endpoint checks the request and runs it off the
//! async workers.
use std::path::{Path, PathBuf};

use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::AdminAuth;
use crate::AppStateRef;
use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::JsonBody;

/// Writes a backup of the whole server (installed by the server binary).
pub trait Backups: Send + Sync {
    /// Write a consistent backup to `dir`, a new directory (absolute; its parent exists).
    /// Returns what the backup holds (e.g. its stream position). Blocking.
    fn backup(&self, dir: &Path) -> Result<Value, String>;
}

#[derive(Deserialize)]
pub(super) struct BackupBody {
    dir: PathBuf,
}

pub(super) async fn backup(
    admin: AdminAuth,
    state: AppStateRef,
    JsonBody(body): JsonBody<BackupBody>,
) -> ApiResult<Json<Value>> {
    let Some(backups) = state.backups.get().cloned() else {
        return Err(MatrixError::unrecognized(axum::http::StatusCode::NOT_FOUND));
    };
    let dir = body.dir;
    if !dir.is_absolute() {
        return Err(MatrixError::invalid_param("dir must be an absolute path"));
    }
    if dir.exists() {
        return Err(MatrixError::invalid_param(
            "dir already exists: a backup goes into a new directory",
        ));
    }
    tracing::info!(admin = %admin.0.user_id, dir = %dir.display(), "backup started");
    let result = blocking(move || backups.backup(&dir)).await?;
    match result {
        Ok(summary) => Ok(Json(summary)),
        Err(e) => Err(MatrixError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            format!("The backup failed: {e}"),
        )),
    }
}
