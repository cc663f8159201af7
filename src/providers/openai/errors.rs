//! An OpenAI-compatible upstream's error answer, as the client sees it: the client's own faults
//! pass through with their status, rate limits keep their `Retry-After`, the rest is a 502.

use crate::error::{sanitize, GatewayError};
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// (message, type, param, code) of an upstream error body, where it has that shape.
type Fields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn fields(body: &[u8]) -> Fields {
    let b: Body = serde_json::from_slice(body).unwrap_or_default();
    let s = |x: Option<&serde_json::Value>| x.and_then(|v| v.as_str()).map(str::to_owned);
    let e = b.error.as_ref();
    let message = s(e.and_then(|e| e.get("message")))
        .or(b.message)
        .or_else(|| s(e));
    (
        message,
        s(e.and_then(|e| e.get("type"))),
        s(e.and_then(|e| e.get("param"))),
        s(e.and_then(|e| e.get("code"))).or_else(|| s(b.code.as_ref())),
    )
}

pub fn map(provider: &str, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
    let (message, etype, param, code) = fields(body);
    let message = sanitize(message.as_deref().unwrap_or("no error message"));
    if status == 429 {
        // A rate-limited target rests for Retry-After; the client sees it too if nothing else
        // serves.
        return GatewayError::Mapped {
            status,
            message: format!("provider {provider} is rate limited: {message}"),
            error_type: etype.unwrap_or_else(|| "rate_limit_error".into()),
            code: code.unwrap_or_else(|| "rate_limit_exceeded".into()),
            param,
            should_retry: Some(true),
            retry_after: Some(retry_after.unwrap_or(1)),
        };
    }
    if !(400..500).contains(&status) {
        return GatewayError::UpstreamError(format!(
            "provider {provider} answered {status}: {message}"
        ));
    }
    GatewayError::UpstreamClientError {
        status,
        message,
        error_type: etype,
        param,
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_gateway_errors() {
        let e = map(
            "o",
            400,
            br#"{"error":{"message":"context too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            None,
        );
        assert_eq!((e.status(), e.code()), (400, "context_length_exceeded"));
        assert_eq!(e.to_json()["error"]["param"], "messages");
        let e = map("o", 429, b"{}", Some(9));
        assert_eq!((e.status(), e.retry_after()), (429, Some(9)));
        let e = map("o", 503, b"<html>", None);
        assert_eq!((e.status(), e.code()), (502, "upstream_error"));
        assert!(e.to_string().contains("no error message"));
        let e = map("o", 400, br#"{"message":"flat","code":"x"}"#, None);
        assert_eq!((e.to_string().as_str(), e.code()), ("flat", "x"));
    }
}
