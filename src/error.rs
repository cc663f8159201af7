//! The one error type of the request path. Each variant knows its HTTP status, OpenAI error
//! `code` and `type`, what routing makes of it (fail over, rest, or answer the client), and is
//! rendered once into the OpenAI error shape. Upstream text is sanitized here before it can
//! reach a client.

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

    /// 404 `model_not_found` for a model id that is neither a scenario name nor an alias.
    pub fn unknown_model(id: &str) -> Self {
        GatewayError::ModelNotFound(format!(
            "the model {id:?} does not exist: no scenario or alias has that name"
        ))
    }

    /// Replaces every occurrence of the given secrets in the error's text with `***`: an
    /// upstream may echo a key the heuristics of [`sanitize`] do not recognise.
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

    /// What routing does after an attempt failed with this error, before the client got a byte.
    pub fn failover(&self) -> Failover {
        use GatewayError::*;
        match self {
            UpstreamError(_) | UpstreamTimeout(_) | StreamIncomplete(_) => Failover::Broken,
            Mapped {
                status: 429,
                code,
                retry_after,
                ..
            } => {
                // A quota that is used up will not come back within a second.
                let default = if code == "insufficient_quota" { 60 } else { 1 };
                Failover::Limited(Duration::from_secs(retry_after.unwrap_or(default)))
            }
            Mapped { status, .. } if *status >= 500 => Failover::Broken,
            _ => Failover::Final,
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

/// What routing makes of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// The target is unhealthy (connect, timeout, 5xx, broken stream): fail over, count for
    /// the breaker.
    Broken,
    /// The target is rate limited: fail over, and it rests for the duration.
    Limited(Duration),
    /// The client's request is at fault (or the client left): no retry, no breaker count.
    Final,
    /// The target answered, but not usably (structured output still invalid after its
    /// repairs): the next target is tried; the target's health is not affected.
    Next,
}

/// Redacts anything in an upstream message that looks like a credential and bounds its length:
/// providers echo keys in auth errors ("Incorrect API key provided: sk-...").
pub fn sanitize(message: &str) -> String {
    let mut out = Vec::new();
    for word in message.split_whitespace() {
        let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let looks_secret = w.starts_with("sk-")
            || w.starts_with("app-")
            || w.starts_with("Bearer")
            || (w.len() >= 24
                && w.chars().any(|c| c.is_ascii_digit())
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        out.push(if looks_secret { "***" } else { word });
    }
    let mut s = out.join(" ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_redacts_keys_and_bounds_length() {
        let s = sanitize(
            "Incorrect API key provided: sk-abc123XYZ. You can find your key at https://x",
        );
        assert!(!s.contains("sk-abc123XYZ"), "{s}");
        assert!(s.contains("Incorrect API key provided"));
        let long = "word ".repeat(200);
        assert!(sanitize(&long).chars().count() <= 301);
        // Built at run time so the repository holds nothing shaped like a real key.
        let fake = ["app", "-0123456789abcdef0123"].concat();
        assert_eq!(sanitize(&format!("token {fake} here")), "token *** here");
    }

    #[test]
    fn failover_decisions_travel_with_the_error() {
        assert_eq!(
            GatewayError::UpstreamTimeout("t".into()).failover(),
            Failover::Broken
        );
        let limited = GatewayError::Mapped {
            status: 429,
            message: "m".into(),
            error_type: "requests".into(),
            code: "rate_limit_exceeded".into(),
            param: None,
            should_retry: Some(true),
            retry_after: Some(7),
        };
        assert_eq!(
            limited.failover(),
            Failover::Limited(Duration::from_secs(7))
        );
        assert_eq!(
            GatewayError::invalid_request("x", None).failover(),
            Failover::Final
        );
    }

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
