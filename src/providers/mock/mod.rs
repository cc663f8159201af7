//! The built-in `type: mock` provider: an OpenAI-compatible upstream inside the gateway. It
//! answers deterministically without network — the configured `reply`, or an echo of the last
//! user message — streamed or not, with usage, and with fault knobs (latency, delay between
//! chunks, a failure rate with a status and `Retry-After`, a stream cut after N chunks).
//!
//! It receives the same request body an OpenAI upstream would (built by the OpenAI provider)
//! and answers through [`Memory`], so its answers take the real path: the passthrough relay,
//! deadlines, failover, breaker, cache and metrics. A first run with no keys, demos and benches
//! need no separate mock process.

use super::{BuildCx, Deadlines, Operation, Provider, UpstreamCall};
use crate::config::{MockSettings, Provider as ProviderConfig, Target};
use crate::error::GatewayError;
use crate::protocol::{ChatRequest, Feature, Features};
use crate::upstream::{Auth, Conn, Memory, OpenError, Upstream};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Characters per streamed content chunk.
const CHUNK_CHARS: usize = 8;

pub struct Mock<'a> {
    pub p: &'a ProviderConfig,
    pub settings: &'a MockSettings,
}

impl Provider for Mock<'_> {
    fn supports(&self, op: Operation) -> bool {
        matches!(op, Operation::Chat)
    }

    /// Text answers, streamed or not: a request asking for tools, a format, several choices,
    /// log probabilities or media is refused rather than answered with an echo.
    fn features(&self) -> Features {
        Features::of(&[Feature::Stream])
    }

    fn auth(&self) -> Auth<'_> {
        Auth::None
    }

    async fn build<'a>(
        &'a self,
        cx: &'a BuildCx<'a>,
        target: &'a Target,
        req: &'a ChatRequest,
    ) -> Result<UpstreamCall, GatewayError> {
        let system = super::render_system_prompt(cx.config, target, req, cx.vars)?;
        // A mock target without a model answers as the model the client named.
        let model = target
            .model
            .as_deref()
            .or(req.model.as_deref())
            .unwrap_or("mock");
        let body =
            super::openai::build_body_with_model(target, req, system.as_deref(), model, cx.drop);
        Ok(UpstreamCall {
            headers: Vec::new(),
            path: String::new(),
            body: Bytes::from(body),
            stream: req.stream,
            decoder: None,
        })
    }

    async fn open<'a>(
        &'a self,
        _: &'a Upstream,
        _: &'a Target,
        call: &'a UpstreamCall,
        _: &'a str,
        deadlines: Deadlines,
    ) -> Result<Conn, OpenError> {
        let s = self.settings;
        let head_at = Instant::now() + s.latency;
        if head_at > deadlines.head {
            tokio::time::sleep_until(deadlines.head.into()).await;
            return Err(OpenError::Timeout);
        }
        if !s.latency.is_zero() {
            tokio::time::sleep_until(head_at.into()).await;
        }
        Ok(Conn::Memory(answer(s, &call.body)))
    }

    fn map_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
        super::openai::errors::map(&self.p.name, status, body, retry_after)
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What the mock reads of the OpenAI request it receives.
#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A rough, deterministic token count (about four characters a token).
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The whole answer to `body`, as an upstream would send it.
fn answer(s: &MockSettings, body: &[u8]) -> Memory {
    if s.fail_rate > 0.0 && fastrand::f64() < s.fail_rate {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(secs) = s.retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        let error = json!({"error": {
            "message": format!("mock provider failure (fail_rate {})", s.fail_rate),
            "type": if s.status == 429 { "rate_limit_error" } else if s.status < 500 { "invalid_request_error" } else { "server_error" },
            "param": null,
            "code": if s.status == 429 { "rate_limit_exceeded" } else { "mock_failure" },
        }});
        let pieces = VecDeque::from([Bytes::from(error.to_string())]);
        return Memory::new(s.status, headers, pieces, s.chunk_delay);
    }
    let req: Request = serde_json::from_slice(body).unwrap_or(Request {
        model: String::new(),
        messages: Vec::new(),
        stream: false,
        stream_options: None,
    });
    let reply = s.reply.clone().unwrap_or_else(|| {
        req.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| text_of(&m.content))
            .unwrap_or_default()
    });
    let prompt: u64 = req
        .messages
        .iter()
        .map(|m| tokens(&text_of(&m.content)))
        .sum();
    let completion = tokens(&reply);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let id = format!("chatcmpl-mock-{}", uuid::Uuid::new_v4().simple());
    let created = now();
    let model = if req.model.is_empty() {
        "mock"
    } else {
        req.model.as_str()
    };
    if !req.stream {
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        });
        let headers = vec![("content-type", "application/json".to_owned())];
        return Memory::new(
            200,
            headers,
            VecDeque::from([Bytes::from(body.to_string())]),
            s.chunk_delay,
        );
    }
    let event = |v: serde_json::Value| Bytes::from(format!("data: {v}\n\n"));
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        event(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    let mut pieces = VecDeque::new();
    pieces.push_back(chunk(
        json!({"role": "assistant", "content": ""}),
        json!(null),
    ));
    let chars: Vec<char> = reply.chars().collect();
    for (i, part) in chars.chunks(CHUNK_CHARS).enumerate() {
        if s.cut_after == Some(i) {
            return Memory::new(200, sse_headers(), pieces, s.chunk_delay);
        }
        pieces.push_back(chunk(
            json!({"content": part.iter().collect::<String>()}),
            json!(null),
        ));
    }
    pieces.push_back(chunk(json!({}), json!("stop")));
    if req.stream_options.is_some_and(|o| o.include_usage) {
        pieces.push_back(event(
            json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                      "model": model, "choices": [], "usage": usage}),
        ));
    }
    pieces.push_back(Bytes::from_static(crate::protocol::SSE_DONE));
    Memory::new(200, sse_headers(), pieces, s.chunk_delay)
}

fn sse_headers() -> Vec<(&'static str, String)> {
    vec![("content-type", "text/event-stream".to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> MockSettings {
        MockSettings {
            reply: None,
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fail_rate: 0.0,
            status: 500,
            retry_after: None,
            cut_after: None,
        }
    }

    async fn body_of(mut m: Memory) -> String {
        let mut out = Vec::new();
        while let Some(b) = m.next().await {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_streamed_or_whole() {
        let req = br#"{"model":"m","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":"echo me please"}]}"#;
        let m = answer(&settings(), req);
        assert_eq!(m.status, 200);
        let v: serde_json::Value = serde_json::from_str(&body_of(m).await).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo me please");
        assert_eq!(v["model"], "m");
        assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
        let req = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"echo me please"}]}"#;
        let text = body_of(answer(&settings(), req)).await;
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"usage\":{"));
        let mut cut = settings();
        cut.cut_after = Some(1);
        let text = body_of(answer(&cut, req)).await;
        assert!(!text.contains("[DONE]") && !text.contains("\"stop\""));
    }

    #[tokio::test]
    async fn fails_as_configured() {
        let mut s = settings();
        s.fail_rate = 1.0;
        s.status = 429;
        s.retry_after = Some(3);
        let m = answer(&s, b"{}");
        assert_eq!((m.status, m.header("retry-after")), (429, Some("3")));
        assert!(body_of(m).await.contains("rate_limit_exceeded"));
    }
}
