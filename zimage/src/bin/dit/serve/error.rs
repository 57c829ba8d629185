//! Errors as OpenAI's API returns them: `{"error": {"message", "type", "param", "code"}}`
//! with the matching HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// One failed request.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `rate_limit_error` or `server_error`.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// A request the client must change: 400, naming the field when there is one.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: param.map(str::to_owned),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    pub fn model_not_found(id: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model `{id}` does not exist: this server runs one model"),
            )
            .code("model_not_found")
        }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not answer {method}"),
        )
        .code("method_not_allowed")
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )
        .code("request_too_large")
    }

    pub fn queue_full(queue: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("the queue is full ({queue} requests waiting): retry later"),
        )
        .code("queue_full")
    }

    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
        .code("shutting_down")
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The error object, as the body of a response or an `error` event.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A refused request body: 400, or 404 for another model.
impl From<zimage::api::BodyError> for ApiError {
    fn from(error: zimage::api::BodyError) -> ApiError {
        match error {
            zimage::api::BodyError::ModelNotFound(id) => ApiError::model_not_found(&id),
            invalid => ApiError::invalid(invalid.param(), invalid.to_string()),
        }
    }
}

/// A pipeline error: the request's fault (400) or the server's (500).
impl From<zimage::Error> for ApiError {
    fn from(error: zimage::Error) -> ApiError {
        match error {
            zimage::Error::Input(message) => ApiError::invalid(None, message),
            other => ApiError::internal(other.to_string()),
        }
    }
}
