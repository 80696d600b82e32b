//! The one mapping from errors to HTTP responses.
//!
//! Every error leaves as `{"error": {"code": "...", "message": "..."}}` with
//! the right status. Client mistakes (4xx) are logged at debug level, never
//! as errors; a 5xx's details go to the log, not to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use flowcast_actors::Error as CoreError;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What is wrong, for humans; names the field or thing.
    pub message: String,
    /// Seconds after which the client may try again (`Retry-After`).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 429 for a request over one of the caller's limits; the answer says
    /// when to try again in `Retry-After` (seconds, at least 1).
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 400 with a message naming the bad field.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a thing that does not exist or is not the caller's.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401 for a missing or invalid identity.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 413 for a body over the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 422 for a JSON body of the wrong shape; the message names the field.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    }

    /// 400 for a body that is not JSON, 422 for JSON of the wrong shape.
    pub fn from_json_error(e: &serde_json::Error) -> Self {
        if e.is_data() {
            Self::invalid_body(format!("invalid body: {e}"))
        } else {
            Self::bad_request("malformed_json", format!("body is not valid JSON: {e}"))
        }
    }

    /// 503 while Redis is unreachable or the daemon drains.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidWorkflow(m) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow", m)
            }
            CoreError::InvalidInput(m) => Self::bad_request("invalid_input", m),
            CoreError::Redis(e) => {
                log::warn!("api: redis error: {e}");
                Self::unavailable("Redis is unreachable; the request was not accepted, retry later")
            }
            CoreError::ShuttingDown => {
                Self::unavailable("the daemon is shutting down; retry on another instance")
            }
            CoreError::Corrupt(m) => {
                log::error!("api: corrupt stored data: {m}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_client_error() {
            log::debug!(
                "api: {} {}: {}",
                self.status.as_u16(),
                self.code,
                self.message
            );
        }
        let mut resp = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after_s {
            resp.insert_header((actix_web::http::header::RETRY_AFTER, s.to_string()));
        }
        resp.json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

/// Maps actix's JSON extractor errors to [`ApiError`]s naming the problem.
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let e = match &err {
        J::Overflow { limit } | J::OverflowKnownLength { limit, .. } => {
            ApiError::body_too_large(*limit)
        }
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        J::Deserialize(d) => ApiError::from_json_error(d),
        other => ApiError::bad_request("bad_body", format!("could not read the body: {other}")),
    };
    e.into()
}
