//! The API's error answers: `{"error": {"code": …, "message": …}}` with the status the contract
//! assigns to each kind, never 200.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imreport_domain::Error as DomainError;
use imreport_store::StoreError;

pub const CODE_INVALID: u32 = 899003;
pub const CODE_NO_AUTH: u32 = 899007;
pub const CODE_BAD_AUTH: u32 = 899008;
pub const CODE_BUSY: u32 = 899030;
pub const CODE_INTERNAL: u32 = 899000;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, CODE_INVALID, message)
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            CODE_INVALID,
            "no such endpoint; see the API documentation for the routes under /v2 and /ingest/v1",
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            CODE_INVALID,
            "method not allowed: history and statistics take GET, ingest takes POST",
        )
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            CODE_INTERNAL,
            "internal error; it has been logged",
        )
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(m) => ApiError::invalid(m),
            DomainError::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, CODE_INVALID, m)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Overloaded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CODE_BUSY,
                "the server is busy: the ingest queue is full; retry after the Retry-After delay",
            ),
            StoreError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CODE_BUSY,
                "the server is shutting down; retry on another server or shortly",
            ),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "the database is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    CODE_BUSY,
                    "the database is unavailable right now; retry after the Retry-After delay: nothing of this request was stored",
                )
            }
            StoreError::DiskFull(why) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                CODE_BUSY,
                format!(
                    "the server cannot store more data right now ({why}); retry later: nothing of this request was stored"
                ),
            ),
            StoreError::Invalid(e) => e.into(),
            StoreError::AppExists(_) | StoreError::AppNotFound(_) => {
                ApiError::invalid(e.to_string())
            }
            StoreError::Locked(_)
            | StoreError::NotReady(_)
            | StoreError::Engine(_)
            | StoreError::Postgres(_)
            | StoreError::PartitionGone(_)
            | StoreError::Io { .. }
            | StoreError::Corrupt(_)
            | StoreError::Config(_)
            | StoreError::Internal(_) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp =
            (self.status, crate::json_body(body.to_string().into_bytes())).into_response();
        let h = resp.headers_mut();
        if self.code == CODE_NO_AUTH {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"imreport\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
