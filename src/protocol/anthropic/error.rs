//! Gateway errors in the Anthropic error shape:
//! `{"type":"error","error":{"type":"<error type>","message":"<text>"}}`.
//!
//! The error `type` follows from the HTTP status as the Anthropic API documents it (400
//! `invalid_request_error`, 401 `authentication_error`, 403 `permission_error`, 404
//! `not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`, 500 `api_error`, 529
//! `overloaded_error`); the gateway's own 503/504 (no upstream available, upstream timeout) are
//! `overloaded_error` too, as both tell the client to come back later. The message is the one
//! the gateway's OpenAI error body carries (already sanitized where it came from an upstream).

use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::json;

/// The Anthropic error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        500 | 502 => "api_error",
        503 | 504 | 529 => "overloaded_error",
        // 400 and every other 4xx.
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The Anthropic error body for `err` (the HTTP status stays `err.status()`).
pub fn body(err: &GatewayError) -> Bytes {
    // `GatewayError::to_json` renders `error.message` from the error's `Display`.
    let v = json!({
        "type": "error",
        "error": {
            "type": error_type(err.status()),
            "message": err.to_string(),
        },
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    #[test]
    fn types_follow_the_status() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (501, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "overloaded_error"),
            (529, "overloaded_error"),
            (599, "api_error"),
        ];
        for (status, kind) in cases {
            assert_eq!(error_type(status), kind, "{status}");
        }
    }

    fn parsed(err: &GatewayError) -> Value {
        serde_json::from_slice(&body(err)).unwrap()
    }

    #[test]
    fn body_has_the_anthropic_shape_and_the_gateway_message() {
        let err = GatewayError::invalid_request("`max_tokens` is required", Some("max_tokens"));
        let v = parsed(&err);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], err.to_json()["error"]["message"]);
        assert_eq!(v["error"]["message"], "`max_tokens` is required");
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(v["error"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn body_types_for_gateway_errors() {
        let cases: Vec<(GatewayError, &str)> = vec![
            (
                GatewayError::InvalidJson("x".into()),
                "invalid_request_error",
            ),
            (GatewayError::InvalidApiKey, "authentication_error"),
            (
                GatewayError::ScenarioForbidden("s".into()),
                "permission_error",
            ),
            (GatewayError::ModelNotFound("m".into()), "not_found_error"),
            (
                GatewayError::RequestTooLarge { limit: 10 },
                "request_too_large",
            ),
            (
                GatewayError::Mapped {
                    status: 429,
                    message: "slow down".into(),
                    error_type: "requests".into(),
                    code: "rate_limit_exceeded".into(),
                    param: None,
                    should_retry: Some(true),
                    retry_after: Some(1),
                },
                "rate_limit_error",
            ),
            (GatewayError::Internal("boom".into()), "api_error"),
            (GatewayError::UpstreamError("bad".into()), "api_error"),
            (
                GatewayError::UpstreamUnavailable {
                    message: "none".into(),
                    retry_after: Duration::from_secs(1),
                },
                "overloaded_error",
            ),
            (
                GatewayError::UpstreamTimeout("t".into()),
                "overloaded_error",
            ),
            (GatewayError::ShuttingDown, "overloaded_error"),
        ];
        for (err, kind) in cases {
            let v = parsed(&err);
            assert_eq!(v["error"]["type"], kind, "{err:?}");
            assert_eq!(v["error"]["message"], err.to_string());
        }
    }
}
