//! The one error type of the request path. Each variant knows its HTTP status, OpenAI error
//! `code` and `type`, and is rendered once into the OpenAI error shape.

use bytes::Bytes;
use serde_json::json;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("invalid or missing API key; send `Authorization: Bearer <key>`")]
    InvalidApiKey,
    #[error("this API key may not use scenario {0:?}")]
    ScenarioForbidden(String),
    #[error("the admin API is disabled: set admin.api_key in gateway.yaml")]
    AdminDisabled,
    #[error("{0}")]
    ModelNotFound(String),
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    RequestTooLarge { limit: usize },
    #[error("{0}")]
    UpstreamError(String),
    /// A stream that stopped before its terminal event (after bytes went downstream).
    #[error("{0}")]
    StreamIncomplete(String),
    #[error("{message}")]
    UpstreamUnavailable {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    UpstreamTimeout(String),
    /// An upstream 4xx that is the client's fault: status and message are passed through.
    #[error("{message}")]
    UpstreamClientError {
        status: u16,
        message: String,
        error_type: Option<String>,
        param: Option<String>,
        code: Option<String>,
    },
    /// An upstream error translated to an OpenAI status/type/code (Dify's mapping table).
    #[error("{message}")]
    Mapped {
        status: u16,
        message: String,
        error_type: String,
        code: String,
        param: Option<String>,
        should_retry: Option<bool>,
        retry_after: Option<u64>,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// The shutdown grace period ended while this answer was still open.
    #[error("the gateway is shutting down and ended this answer at its grace deadline")]
    ShuttingDown,
}

impl GatewayError {
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    /// Replaces every occurrence of the given secrets in the error's text with `***`: an
    /// upstream may echo a key the heuristics of `forward::sanitize` do not recognise.
    pub fn scrub(&mut self, secrets: &[&str]) {
        use GatewayError::*;
        let text = match self {
            InvalidJson(m) | ModelNotFound(m) | UpstreamError(m) | StreamIncomplete(m)
            | UpstreamTimeout(m) | Internal(m) => m,
            InvalidRequest { message, .. }
            | UpstreamUnavailable { message, .. }
            | UpstreamClientError { message, .. }
            | Mapped { message, .. } => message,
            _ => return,
        };
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            if text.contains(*s) {
                *text = text.replace(*s, "***");
            }
        }
    }

    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            InvalidJson(_) | InvalidRequest { .. } => 400,
            InvalidApiKey => 401,
            ScenarioForbidden(_) | AdminDisabled => 403,
            ModelNotFound(_) | NotFound { .. } => 404,
            MethodNotAllowed { .. } => 405,
            RequestTooLarge { .. } => 413,
            UpstreamError(_) | StreamIncomplete(_) => 502,
            UpstreamUnavailable { .. } | ShuttingDown => 503,
            UpstreamTimeout(_) => 504,
            UpstreamClientError { status, .. } | Mapped { status, .. } => *status,
            Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &str {
        use GatewayError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidRequest { .. } => "invalid_request",
            InvalidApiKey => "invalid_api_key",
            ScenarioForbidden(_) => "scenario_forbidden",
            AdminDisabled => "admin_disabled",
            ModelNotFound(_) => "model_not_found",
            NotFound { .. } => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            RequestTooLarge { .. } => "request_too_large",
            UpstreamError(_) => "upstream_error",
            StreamIncomplete(_) => "stream_incomplete",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout(_) => "upstream_timeout",
            UpstreamClientError { code, .. } => code.as_deref().unwrap_or("upstream_client_error"),
            Mapped { code, .. } => code,
            Internal(_) => "internal_error",
            ShuttingDown => "shutting_down",
        }
    }

    fn error_type(&self) -> &str {
        use GatewayError::*;
        match self {
            InvalidApiKey => "authentication_error",
            ScenarioForbidden(_) | AdminDisabled => "permission_error",
            UpstreamError(_)
            | StreamIncomplete(_)
            | UpstreamUnavailable { .. }
            | UpstreamTimeout(_)
            | ShuttingDown
            | Internal(_) => "api_error",
            UpstreamClientError { error_type, .. } => {
                error_type.as_deref().unwrap_or("invalid_request_error")
            }
            Mapped { error_type, .. } => error_type,
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. }
            | GatewayError::UpstreamClientError { param, .. }
            | GatewayError::Mapped { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// Seconds for a `Retry-After` header, where the error has one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::UpstreamUnavailable { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            GatewayError::Mapped { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the client should retry (OpenAI SDKs read `x-should-retry`).
    pub fn should_retry(&self) -> Option<bool> {
        if let GatewayError::Mapped { should_retry, .. } = self {
            return *should_retry;
        }
        match self.status() {
            429 | 502 | 503 | 504 => Some(true),
            400..=499 => Some(false),
            _ => None,
        }
    }

    /// The `{"error": {...}}` object, as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    pub fn body(&self) -> Bytes {
        Bytes::from(self.to_json().to_string())
    }

    /// The same error as one SSE event, for failures after a stream has started.
    pub fn sse_event(&self) -> Bytes {
        Bytes::from(format!("data: {}\n\n", self.to_json()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = GatewayError::RequestTooLarge { limit: 10 };
        let v = e.to_json();
        assert_eq!(e.status(), 413);
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["message"].as_str().unwrap().contains("10 bytes"));
    }

    #[test]
    fn sse_error_is_one_event() {
        let e = GatewayError::UpstreamTimeout("idle".into());
        let s = e.sse_event();
        assert!(s.starts_with(b"data: {\"error\""));
        assert!(s.ends_with(b"\n\n"));
    }
}
