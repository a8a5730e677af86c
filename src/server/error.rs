//! [`ApiError`]: every failure the server reports, as an HTTP status and the JSON body
//! OpenAI clients parse (`{"error": {"message", "type", "param", "code"}}`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::Error as EngineError;

/// A request that cannot be answered, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A malformed or meaningless request (400), naming the parameter at fault.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: Some(code),
            ..Self::invalid(None, message)
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: Some("invalid_api_key"),
            ..Self::invalid(
                None,
                "missing or wrong API key: send `Authorization: Bearer <key>` with the key the server was started with",
            )
        }
    }

    pub fn busy(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: Some("queue_full"),
            retry_after: Some(retry_after),
            ..Self::invalid(None, message)
        }
    }

    pub fn timeout(seconds: u64) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "timeout_error",
            code: Some("timeout"),
            ..Self::invalid(
                None,
                format!("the request did not finish within {seconds} s (see --request-timeout)"),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..Self::invalid(None, message)
        }
    }

    /// The JSON body, for SSE error events as well as responses.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

/// Engine errors caused by what the client sent are 4xx; the rest are the server's.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::UnknownModel { .. } => Self::not_found(message, "model_not_found"),
            EngineError::ContextOverflow { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::invalid(Some("messages"), message)
            },
            EngineError::InvalidSampling(_) => Self::invalid(None, message),
            EngineError::Constraint(_) => Self::invalid(Some("response_format"), message),
            EngineError::Steering(_) => Self::invalid(Some("steer"), message),
            EngineError::Template(_) => Self::invalid(Some("messages"), message),
            EngineError::Tokenizer(_) => Self::invalid(None, message),
            _ => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}
