//! OpenAI chat-completion chunks decoded into neutral events, for clients that speak another
//! dialect (an Anthropic `/v1/messages` client answered by an OpenAI-compatible upstream).
//! OpenAI clients never take this path: their answers are relayed byte for byte.
//!
//! The upstream is asked for `stream_options.include_usage`, so the usage chunk follows the
//! finish chunk: the terminal event is emitted at that usage chunk, or at `[DONE]`. A client
//! that does not stream is served from one whole `chat.completion` (`on_body`), decoded into
//! the same events.

use crate::error::{sanitize, GatewayError};
use crate::protocol::chunks::{ToolCallPiece, Usage};
use crate::protocol::sse::SseEvent;
use crate::providers::{Event, StreamMeta};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
struct FunctionView {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ToolCallView {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionView>,
}

#[derive(Deserialize, Default)]
struct DeltaView {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallView>>,
}

#[derive(Deserialize)]
struct ChoiceView {
    #[serde(default)]
    index: u32,
    /// `message` in a whole `chat.completion`.
    #[serde(default, alias = "message")]
    delta: Option<DeltaView>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// vLLM and compatible servers name the stop string that ended the answer.
    #[serde(default)]
    stop_reason: Option<Value>,
}

#[derive(Deserialize)]
struct UsageView {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Value>,
    #[serde(default)]
    completion_tokens_details: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkView {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    choices: Vec<ChoiceView>,
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    error: Option<Value>,
}

/// Decodes one OpenAI-shaped stream.
pub struct OpenAiStream {
    provider: String,
    id: Option<String>,
    created: Option<u64>,
    reason: Option<&'static str>,
    usage: Usage,
    ended: bool,
}

fn finish_reason(r: &str) -> &'static str {
    match r {
        "length" => "length",
        "tool_calls" | "function_call" => "tool_calls",
        "content_filter" => "content_filter",
        _ => "stop",
    }
}

impl OpenAiStream {
    pub fn new(provider: &str) -> Self {
        OpenAiStream {
            provider: provider.to_owned(),
            id: None,
            created: None,
            reason: None,
            usage: Usage::default(),
            ended: false,
        }
    }

    pub fn meta(&self) -> StreamMeta<'_> {
        StreamMeta {
            id: self.id.as_deref(),
            created: self.created,
        }
    }

    fn end(&mut self, out: &mut Vec<Event>) {
        if let Some(reason) = self.reason.take() {
            self.ended = true;
            out.push(Event::Finish {
                reason,
                usage: self.usage,
            });
        }
    }

    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        if ev.is_done() {
            if self.reason.is_none() {
                // [DONE] with no finish reason: the answer was cut short upstream.
                self.ended = true;
                out.push(Event::Error(GatewayError::StreamIncomplete(format!(
                    "provider {} ended the stream without a finish reason",
                    self.provider
                ))));
            }
            self.end(out);
            return;
        }
        if ev.data.trim().is_empty() {
            return;
        }
        let Ok(chunk) = serde_json::from_str::<ChunkView>(&ev.data) else {
            return;
        };
        if let Some(e) = chunk.error {
            return self.error(&e, out);
        }
        if self.id.is_none() {
            self.id = chunk.id;
            self.created = chunk.created;
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.choice(choice, false, out);
        }
        if let Some(u) = chunk.usage {
            self.note_usage(u);
            self.end(out);
        }
    }

    /// A whole `chat.completion` (the client did not stream).
    pub fn on_body(&mut self, body: &[u8], out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        let chunk = match serde_json::from_slice::<ChunkView>(body) {
            Ok(c) => c,
            Err(e) => {
                self.ended = true;
                out.push(Event::Error(GatewayError::UpstreamError(format!(
                    "provider {}: the answer is not a chat completion: {e}",
                    self.provider
                ))));
                return;
            }
        };
        if let Some(e) = chunk.error {
            return self.error(&e, out);
        }
        self.id = chunk.id;
        self.created = chunk.created;
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.choice(choice, true, out);
        }
        if let Some(u) = chunk.usage {
            self.note_usage(u);
        }
        if self.reason.is_none() {
            self.ended = true;
            out.push(Event::Error(GatewayError::UpstreamError(format!(
                "provider {} answered without a finish reason",
                self.provider
            ))));
        }
        self.end(out);
    }

    fn error(&mut self, e: &Value, out: &mut Vec<Event>) {
        let message = e["message"].as_str().unwrap_or("error event");
        self.ended = true;
        out.push(Event::Error(GatewayError::UpstreamError(format!(
            "provider {}: {}",
            self.provider,
            sanitize(message)
        ))));
    }

    fn note_usage(&mut self, u: UsageView) {
        let cached = u
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d["cached_tokens"].as_u64())
            .unwrap_or(0);
        let reasoning = u
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d["reasoning_tokens"].as_u64())
            .unwrap_or(0);
        self.usage = Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
        };
    }

    /// One choice's delta (or whole message: its tool calls carry no `index`, their position
    /// is it).
    fn choice(&mut self, choice: ChoiceView, whole: bool, out: &mut Vec<Event>) {
        if let Some(d) = choice.delta {
            if let Some(t) = d.reasoning_content.filter(|t| !t.is_empty()) {
                out.push(Event::Reasoning(t));
            }
            if let Some(t) = d.content.filter(|t| !t.is_empty()) {
                out.push(Event::Text(t));
            }
            if let Some(t) = d.refusal.filter(|t| !t.is_empty()) {
                out.push(Event::Text(t));
            }
            for (i, call) in (0u32..).zip(d.tool_calls.into_iter().flatten()) {
                let f = call.function.unwrap_or_default();
                out.push(Event::ToolCall(ToolCallPiece {
                    index: if whole { i } else { call.index },
                    id: call.id,
                    name: f.name,
                    arguments: f.arguments.unwrap_or_default(),
                }));
            }
        }
        if let Some(r) = choice.finish_reason {
            if let (Some(Value::String(s)), "stop") = (&choice.stop_reason, r.as_str()) {
                out.push(Event::StopSequence(s.clone()));
            }
            self.reason = Some(finish_reason(&r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sse::SseParser;

    fn decode(text: &str) -> Vec<Event> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        parser.push(text.as_bytes(), &mut events).unwrap();
        let mut d = OpenAiStream::new("p");
        let mut out = Vec::new();
        for e in &events {
            d.on_event(e, &mut out);
        }
        out
    }

    #[test]
    fn text_tools_finish_and_usage_become_events() {
        let out = decode(concat!(
            "data: {\"id\":\"c1\",\"created\":7,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"think\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert!(matches!(&out[0], Event::Reasoning(t) if t == "think"));
        assert!(matches!(&out[1], Event::Text(t) if t == "Hi"));
        assert!(
            matches!(&out[2], Event::ToolCall(p) if p.id.as_deref() == Some("call_1") && p.name.as_deref() == Some("f"))
        );
        assert!(matches!(&out[3], Event::ToolCall(p) if p.arguments == "{}" && p.id.is_none()));
        match &out[4] {
            Event::Finish { reason, usage } => {
                assert_eq!(*reason, "tool_calls");
                assert_eq!(
                    (
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.cached_tokens
                    ),
                    (5, 3, 2)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.len(), 5, "[DONE] after the finish adds nothing");
    }

    #[test]
    fn done_ends_without_usage_and_a_stop_string_is_named() {
        let out = decode(concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\",\"stop_reason\":\"END\"}]}\n\n",
            "data: [DONE]\n\n",
        ));
        assert!(matches!(&out[1], Event::StopSequence(s) if s == "END"));
        assert!(matches!(&out[2], Event::Finish { reason: "stop", .. }));
        let cut = decode(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n",
        );
        assert!(matches!(&cut[1], Event::Error(_)));
        let err = decode("data: {\"error\":{\"message\":\"overloaded\"}}\n\n");
        assert!(matches!(&err[0], Event::Error(_)));
    }

    #[test]
    fn a_whole_completion_decodes_like_its_stream() {
        let body = br#"{"id":"chatcmpl-7","created":7,"choices":[{"index":0,"message":{"role":"assistant",
            "content":"Let me look.","reasoning_content":"Think.","tool_calls":[
              {"id":"call_a","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}},
              {"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]},
            "finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":4,"completion_tokens":6,"prompt_tokens_details":{"cached_tokens":2},
                     "completion_tokens_details":{"reasoning_tokens":3}}}"#;
        let mut d = OpenAiStream::new("p");
        let mut out = Vec::new();
        d.on_body(body, &mut out);
        assert_eq!(
            format!("{out:?}"),
            concat!(
                r#"[Reasoning("Think."), Text("Let me look."), "#,
                r#"ToolCall(ToolCallPiece { index: 0, id: Some("call_a"), name: Some("f"), arguments: "{\"x\":1}" }), "#,
                r#"ToolCall(ToolCallPiece { index: 1, id: Some("call_b"), name: Some("g"), arguments: "{}" }), "#,
                r#"Finish { reason: "tool_calls", usage: Usage { prompt_tokens: 4, completion_tokens: 6, total_tokens: 10, cached_tokens: 2, reasoning_tokens: 3 } }]"#,
            )
        );
        assert_eq!(d.meta().id, Some("chatcmpl-7"));
        let mut out = Vec::new();
        OpenAiStream::new("p").on_body(br#"{"choices":[]}"#, &mut out);
        assert!(matches!(out.as_slice(), [Event::Error(_)]), "{out:?}");
    }
}
