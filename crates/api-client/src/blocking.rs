//! The one way handlers run blocking work (RocksDB reads and writes, password hashing,
//! the `/sync` build) off the tokio workers: the blocking pool.
use crate::error::{ApiResult, MatrixError};

/// Run `f` on the blocking pool; a panic in it becomes a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(MatrixError::internal)
}
