//! The one error type every handler returns: a Matrix error body `{errcode, error, ...}`
//! with the right HTTP status. Handlers never panic; anything unexpected becomes
//! 500 `M_UNKNOWN` and is logged.
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct MatrixError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    /// Extra top-level fields, e.g. `retry_after_ms`, or a UIA `flows` body.
    pub extra: Map<String, Value>,
}

pub type ApiResult<T> = Result<T, MatrixError>;

impl MatrixError {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        MatrixError {
            status,
            errcode,
            message: message.into(),
            extra: Map::new(),
        }
    }
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
    pub fn bad_json(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", m)
    }
    pub fn not_json(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", m)
    }
    pub fn invalid_param(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m)
    }
    pub fn missing_param(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", m)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }
    pub fn unknown_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown or expired access token",
        )
        .with("soft_logout", Value::Bool(false))
    }
    pub fn unrecognized(status: StatusCode) -> Self {
        Self::new(status, "M_UNRECOGNIZED", "Unrecognized request")
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", m)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with("retry_after_ms", Value::from(retry_after_ms))
    }
    pub fn internal(context: impl std::fmt::Display) -> Self {
        tracing::error!(%context, "internal error");
        // A full disk is the one internal error a client should be told about plainly
        // (issue 19 item 4): the write was not stored, and retrying later may work.
        let context = context.to_string();
        if context.contains("No space left on device") || context.contains("NoSpace") {
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "The server's storage is full: this change was not saved. Try again later.",
            );
        }
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "Internal server error",
        )
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("errcode".into(), Value::from(self.errcode));
        body.insert("error".into(), Value::from(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

impl From<storage::StorageError> for MatrixError {
    fn from(e: storage::StorageError) -> Self {
        MatrixError::internal(e)
    }
}
