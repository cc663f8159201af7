//! Dify error answers → OpenAI statuses and codes (spec §8), with the failover decision each
//! implies carried by the resulting [`GatewayError`].

use crate::error::{sanitize, GatewayError};
use serde_json::Value;

/// Maps a Dify error (status, `code`, `message`, `params`) to the client-facing error (spec §8).
pub fn map(
    provider: &str,
    status: u16,
    code: &str,
    message: &str,
    params: Option<&str>,
) -> GatewayError {
    let msg = sanitize(message);
    let mapped =
        |status: u16, etype: &str, code: &str, retry: Option<bool>, retry_after: Option<u64>| {
            GatewayError::Mapped {
                status,
                message: format!("dify provider {provider}: {msg}"),
                error_type: etype.to_owned(),
                code: code.to_owned(),
                param: params.map(str::to_owned),
                should_retry: retry,
                retry_after,
            }
        };
    match (status, code) {
        (404, "not_found") if message.contains("Conversation") => mapped(
            404,
            "invalid_request_error",
            "conversation_not_found",
            Some(false),
            None,
        ),
        (400, "invalid_param" | "bad_request") => mapped(
            400,
            "invalid_request_error",
            "invalid_param",
            Some(false),
            None,
        ),
        (400, "conversation_completed") => mapped(
            400,
            "invalid_request_error",
            "conversation_completed",
            Some(false),
            None,
        ),
        (400, "not_chat_app" | "not_workflow_app" | "not_completion_app" | "app_unavailable")
        | (401, _)
        | (403, _) => mapped(
            502,
            "server_error",
            "upstream_misconfigured",
            Some(false),
            None,
        ),
        (400, "provider_not_initialize" | "model_currently_not_support") => mapped(
            503,
            "server_error",
            "upstream_unavailable",
            Some(false),
            None,
        ),
        (400, "provider_quota_exceeded") | (429, "rate_limit_error") => mapped(
            429,
            "insufficient_quota",
            "insufficient_quota",
            Some(false),
            None,
        ),
        (429, _) => mapped(429, "requests", "rate_limit_exceeded", Some(true), Some(1)),
        (400, "completion_request_error")
            if message.to_ascii_lowercase().contains("rate limit") =>
        {
            mapped(429, "requests", "rate_limit_exceeded", Some(true), Some(1))
        }
        (400, "completion_request_error") => {
            mapped(502, "server_error", "upstream_error", Some(true), None)
        }
        (413 | 415, _) => mapped(400, "invalid_request_error", code, Some(false), None),
        (400..=499, _) => mapped(status, "invalid_request_error", code, Some(false), None),
        _ => mapped(502, "server_error", "upstream_error", Some(true), None),
    }
}

/// Maps a Dify error body received before the first byte.
pub fn map_body(provider: &str, status: u16, body: &[u8]) -> GatewayError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["code"].as_str().unwrap_or("");
    let message = v["message"]
        .as_str()
        .unwrap_or("no error message (not a Dify error body)");
    map(provider, status, code, message, v["params"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_per_spec() {
        let e = map("d", 400, "provider_quota_exceeded", "quota", None);
        assert_eq!(
            (e.status(), e.code(), e.should_retry()),
            (429, "insufficient_quota", Some(false))
        );
        let e = map("d", 429, "too_many_requests", "busy", None);
        assert_eq!((e.status(), e.retry_after()), (429, Some(1)));
        let fake = ["app", "-0123456789abcdefghijkl"].concat();
        let e = map("d", 401, "unauthorized", &format!("bad key {fake}"), None);
        assert_eq!((e.status(), e.should_retry()), (502, Some(false)));
        assert!(!e.to_string().contains("app-0123456789"));
        let e = map(
            "d",
            400,
            "invalid_param",
            "Arg user must be provided.",
            Some("user"),
        );
        assert_eq!((e.status(), e.code()), (400, "invalid_param"));
        assert_eq!(e.to_json()["error"]["param"], "user");
        assert_eq!(
            map(
                "d",
                400,
                "completion_request_error",
                "[openai] Rate Limit Error",
                None
            )
            .status(),
            429
        );
        assert_eq!(
            map("d", 500, "internal_server_error", "x", None).status(),
            502
        );
        assert_eq!(
            map_body("d", 502, b"<html>bad gateway</html>").status(),
            502
        );
    }
}
