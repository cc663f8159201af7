//! Anthropic error answers (`{"type":"error","error":{"type","message"}}`) as the client sees
//! them, each carrying the failover decision it implies: a rate limit rests the target, an
//! overload or server error fails over and counts for the breaker, the client's own faults pass
//! through with their status, and a rejected key is the gateway's problem (502), never the
//! client's.

use crate::error::{sanitize, GatewayError};
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default)]
    error: Detail,
}

#[derive(Deserialize, Default)]
struct Detail {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// The HTTP status Anthropic uses for an error type: what an error event in a stream would
/// have been answered with before the stream started.
pub fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Maps an error answer received before the first byte.
pub fn map(provider: &str, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
    let b: Body = serde_json::from_slice(body).unwrap_or_default();
    let kind = if b.error.kind.is_empty() {
        None
    } else {
        Some(b.error.kind.as_str())
    };
    let message = if b.error.message.is_empty() {
        "no error message (not an Anthropic error body)"
    } else {
        b.error.message.as_str()
    };
    map_parts(provider, status, kind, message, retry_after)
}

/// Maps an error by its parts (an error answer, or an `error` event in a stream).
pub fn map_parts(
    provider: &str,
    status: u16,
    kind: Option<&str>,
    message: &str,
    retry_after: Option<u64>,
) -> GatewayError {
    let msg = sanitize(message);
    let named = kind.map_or(String::new(), |k| format!(" ({k})"));
    let mapped =
        |status: u16, error_type: &str, code: &str, retry, retry_after| GatewayError::Mapped {
            status,
            message: format!("anthropic provider {provider}{named}: {msg}"),
            error_type: error_type.to_owned(),
            code: code.to_owned(),
            param: None,
            should_retry: Some(retry),
            retry_after,
        };
    match status {
        // The target rests for Retry-After; the client sees it too if nothing else serves.
        429 => mapped(
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            true,
            Some(retry_after.unwrap_or(1)),
        ),
        529 => mapped(503, "api_error", "upstream_overloaded", true, None),
        // A key the upstream refuses is the operator's to fix: another target may serve.
        401..=403 => mapped(502, "api_error", "upstream_error", false, None),
        400..=499 => GatewayError::UpstreamClientError {
            status,
            code: Some(client_code(kind, &msg).to_owned()),
            message: msg,
            error_type: Some("invalid_request_error".into()),
            param: None,
        },
        _ => GatewayError::UpstreamError(format!(
            "anthropic provider {provider} answered {status}{named}: {msg}"
        )),
    }
}

/// The OpenAI `code` of a client fault: what OpenAI SDKs and LangChain look for where one
/// exists (a prompt over the context window), else Anthropic's own error type.
fn client_code<'a>(kind: Option<&'a str>, message: &str) -> &'a str {
    if message.starts_with("prompt is too long") {
        return "context_length_exceeded";
    }
    kind.unwrap_or("invalid_request_error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failover;
    use std::time::Duration;

    fn body(kind: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn rate_limits_rest_the_target_for_retry_after() {
        let e = map("c", 429, &body("rate_limit_error", "slow down"), Some(12));
        assert_eq!((e.status(), e.retry_after()), (429, Some(12)));
        assert_eq!(e.failover(), Failover::Limited(Duration::from_secs(12)));
        let e = map("c", 429, &body("rate_limit_error", "slow down"), None);
        assert_eq!(e.failover(), Failover::Limited(Duration::from_secs(1)));
    }

    #[test]
    fn overloads_and_server_errors_fail_over_and_count_for_the_breaker() {
        let e = map("c", 529, &body("overloaded_error", "Overloaded"), None);
        assert_eq!((e.status(), e.code()), (503, "upstream_overloaded"));
        assert_eq!(e.failover(), Failover::Broken);
        for status in [500, 502, 503, 504] {
            let e = map(
                "c",
                status,
                &body("api_error", "Internal server error"),
                None,
            );
            assert_eq!((e.status(), e.code()), (502, "upstream_error"));
            assert_eq!(e.failover(), Failover::Broken, "{status}");
        }
        let e = map("c", 502, b"<html>bad gateway</html>", None);
        assert!(e.to_string().contains("not an Anthropic error body"), "{e}");
    }

    #[test]
    fn client_faults_pass_through_with_their_status() {
        let e = map(
            "c",
            400,
            &body(
                "invalid_request_error",
                "messages.1.content: Field required",
            ),
            None,
        );
        assert_eq!((e.status(), e.code()), (400, "invalid_request_error"));
        assert_eq!(e.failover(), Failover::Final);
        assert_eq!(e.to_json()["error"]["type"], "invalid_request_error");
        assert_eq!(
            e.to_string(),
            "messages.1.content: Field required",
            "the upstream's words, sanitized"
        );
        let e = map(
            "c",
            413,
            &body("request_too_large", "Request exceeds the maximum size"),
            None,
        );
        assert_eq!((e.status(), e.code()), (413, "request_too_large"));
        assert_eq!(e.failover(), Failover::Final);
        let e = map(
            "c",
            400,
            &body(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
            ),
            None,
        );
        assert_eq!(e.code(), "context_length_exceeded");
    }

    #[test]
    fn a_refused_key_is_a_502_that_never_shows_the_key() {
        // Built at run time so the repository holds nothing shaped like a real key.
        let key = ["sk", "-ant-api03-0123456789abcdefghijklmn"].concat();
        for (status, kind) in [(401, "authentication_error"), (403, "permission_error")] {
            let e = map(
                "c",
                status,
                &body(kind, &format!("invalid x-api-key {key}")),
                None,
            );
            assert_eq!((e.status(), e.code()), (502, "upstream_error"));
            assert_eq!(e.should_retry(), Some(false));
            assert_eq!(e.failover(), Failover::Broken);
            assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        }
    }

    #[test]
    fn stream_error_types_have_their_statuses() {
        assert_eq!(status_of("overloaded_error"), 529);
        assert_eq!(status_of("rate_limit_error"), 429);
        assert_eq!(status_of("something_new"), 500);
    }
}
