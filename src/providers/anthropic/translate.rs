//! Messages stream events → provider-neutral answer events, event by event.
//!
//! `message_start` gives the id and the prompt's usage; each content block (text, thinking,
//! tool_use) starts, grows by deltas and stops; `message_delta` carries the stop reason and the
//! final usage and is the terminal event; `message_stop` ends the stream. The translator knows
//! nothing of sockets and is unit-tested on recorded streams split at every byte.

use super::errors::{map_parts, status_of};
use crate::protocol::chunks::{ToolCallPiece, Usage};
use crate::protocol::sse::SseEvent;
use crate::providers::Event as Out;
use serde::Deserialize;
use serde_json::value::RawValue;

/// What a content block of the answer is, by its index in the message.
enum Block {
    Text,
    Thinking,
    /// A tool call: its ordinal among the answer's tool calls, and whether any argument text
    /// was sent for it.
    Tool {
        ordinal: u32,
        sent: bool,
    },
    /// Anything else (server tool results, redacted thinking, …): not part of the answer.
    Other,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct UsageIn {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct ContentBlockIn<'a> {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DeltaIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// One event's data: the union of what every event type carries.
#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<MessageIn>,
    #[serde(borrow, default)]
    content_block: Option<ContentBlockIn<'a>>,
    #[serde(default)]
    delta: Option<DeltaIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<ErrorIn>,
}

/// A whole (non-stream) Messages answer, or an error body.
#[derive(Deserialize)]
struct WholeIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(borrow, default)]
    content: Vec<ContentBlockIn<'a>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<ErrorIn>,
}

pub struct Translator {
    provider: String,
    /// `chatcmpl-` and the message id.
    pub id: Option<String>,
    /// The model that answered, as Anthropic names it.
    pub model: Option<String>,
    usage: UsageIn,
    blocks: Vec<(u32, Block)>,
    tools: u32,
    stop_reason: Option<String>,
    pub finished: bool,
}

/// The OpenAI finish reason of an Anthropic stop reason.
pub fn finish_reason(provider: &str, stop: Option<&str>) -> &'static str {
    match stop {
        None | Some("end_turn" | "stop_sequence" | "pause_turn") => "stop",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        Some(other) => {
            log::warn!(
                "anthropic provider {provider}: unknown stop_reason {other:?}, answered as \"stop\""
            );
            "stop"
        }
    }
}

impl Translator {
    pub fn new(provider: &str) -> Self {
        Translator {
            provider: provider.to_owned(),
            id: None,
            model: None,
            usage: UsageIn::default(),
            blocks: Vec::new(),
            tools: 0,
            stop_reason: None,
            finished: false,
        }
    }

    /// Counts that arrive later replace earlier ones (`message_delta` usage is cumulative).
    fn note_usage(&mut self, u: UsageIn) {
        let s = &mut self.usage;
        s.input_tokens = u.input_tokens.or(s.input_tokens);
        s.output_tokens = u.output_tokens.or(s.output_tokens);
        s.cache_read_input_tokens = u.cache_read_input_tokens.or(s.cache_read_input_tokens);
        s.cache_creation_input_tokens = u
            .cache_creation_input_tokens
            .or(s.cache_creation_input_tokens);
    }

    /// The usage so far, in OpenAI terms: every prompt token (cached or not) is a prompt token.
    pub fn usage(&self) -> Usage {
        let u = &self.usage;
        let cached = u.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            u.input_tokens.unwrap_or(0) + cached + u.cache_creation_input_tokens.unwrap_or(0);
        let completion = u.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: cached,
            // Claude counts thinking in `output_tokens` and reports no separate number.
            reasoning_tokens: 0,
        }
    }

    fn block(&mut self, index: Option<u32>) -> Option<&mut Block> {
        let index = index?;
        self.blocks
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| b)
    }

    fn finish(&mut self, out: &mut Vec<Out>) {
        self.finished = true;
        let reason = finish_reason(&self.provider, self.stop_reason.as_deref());
        out.push(Out::Finish {
            reason,
            usage: self.usage(),
        });
    }

    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Out>) {
        if self.finished {
            return;
        }
        let Ok(v) = serde_json::from_str::<EventIn>(&ev.data) else {
            if ev.event.as_deref() == Some("ping") {
                out.push(Out::Ping);
            }
            return;
        };
        let kind = v
            .kind
            .as_deref()
            .or(ev.event.as_deref())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                if let Some(m) = v.message {
                    self.id = m.id.map(|id| format!("chatcmpl-{id}"));
                    self.model = m.model;
                    if let Some(u) = m.usage {
                        self.note_usage(u);
                    }
                }
            }
            "content_block_start" => self.block_start(v.index, v.content_block, out),
            "content_block_delta" => self.block_delta(v.index, v.delta, out),
            "content_block_stop" => self.block_stop(v.index, out),
            "message_delta" => {
                if let Some(d) = v.delta {
                    self.stop(d.stop_reason, d.stop_sequence, out);
                }
                if let Some(u) = v.usage {
                    self.note_usage(u);
                }
                self.finish(out);
            }
            // The stream ended without its message_delta: what was said is complete as far
            // as Anthropic is concerned.
            "message_stop" => self.finish(out),
            "ping" => out.push(Out::Ping),
            "error" => self.error(v.error.unwrap_or_default(), out),
            _ => {}
        }
    }

    /// A whole Messages answer (the client did not stream): the same events its stream would
    /// have given.
    pub fn on_message(&mut self, body: &[u8], out: &mut Vec<Out>) {
        if self.finished {
            return;
        }
        let m = match serde_json::from_slice::<WholeIn>(body) {
            Ok(m) => m,
            Err(e) => {
                self.finished = true;
                out.push(Out::Error(crate::error::GatewayError::UpstreamError(
                    format!(
                        "provider {}: the answer is not a Messages object: {e}",
                        self.provider
                    ),
                )));
                return;
            }
        };
        if m.kind.as_deref() == Some("error") {
            return self.error(m.error.unwrap_or_default(), out);
        }
        self.id = m.id.map(|id| format!("chatcmpl-{id}"));
        self.model = m.model;
        for (i, b) in (0u32..).zip(m.content) {
            self.block_start(Some(i), Some(b), out);
            self.block_stop(Some(i), out);
        }
        if let Some(u) = m.usage {
            self.note_usage(u);
        }
        self.stop(m.stop_reason, m.stop_sequence, out);
        self.finish(out);
    }

    fn stop(&mut self, reason: Option<String>, sequence: Option<String>, out: &mut Vec<Out>) {
        if let (Some("stop_sequence"), Some(seq)) = (reason.as_deref(), sequence) {
            out.push(Out::StopSequence(seq));
        }
        if reason.is_some() {
            self.stop_reason = reason;
        }
    }

    fn block_stop(&mut self, index: Option<u32>, out: &mut Vec<Out>) {
        if let Some(Block::Tool { ordinal, sent }) = self.block(index) {
            if !*sent {
                // A call without arguments still has an (empty) object of them.
                *sent = true;
                let index = *ordinal;
                out.push(Out::ToolCall(ToolCallPiece {
                    index,
                    arguments: "{}".into(),
                    ..Default::default()
                }));
            }
        }
    }

    fn error(&mut self, e: ErrorIn, out: &mut Vec<Out>) {
        self.finished = true;
        let kind = e.kind.as_deref().unwrap_or("api_error");
        out.push(Out::Error(map_parts(
            &self.provider,
            status_of(kind),
            Some(kind),
            e.message
                .as_deref()
                .unwrap_or("the stream reported an error without a message"),
            None,
        )));
    }

    fn block_start(&mut self, index: Option<u32>, b: Option<ContentBlockIn>, out: &mut Vec<Out>) {
        let (Some(index), Some(b)) = (index, b) else {
            return;
        };
        let block = match b.kind.as_str() {
            "text" => {
                if let Some(t) = b.text.filter(|t| !t.is_empty()) {
                    out.push(Out::Text(t));
                }
                Block::Text
            }
            "thinking" => {
                if let Some(t) = b.thinking.filter(|t| !t.is_empty()) {
                    out.push(Out::Reasoning(t));
                }
                if let Some(sig) = b.signature.filter(|s| !s.is_empty()) {
                    out.push(Out::Signature(sig));
                }
                Block::Thinking
            }
            "tool_use" => {
                let ordinal = self.tools;
                self.tools += 1;
                // The stream starts a call with `input: {}` and sends its arguments as
                // deltas; an input given whole at the start is its arguments.
                let arguments = b
                    .input
                    .map(RawValue::get)
                    .filter(|i| {
                        let inner = i.trim().trim_start_matches('{').trim_end_matches('}');
                        !inner.trim().is_empty()
                    })
                    .map(str::to_owned)
                    .unwrap_or_default();
                let sent = !arguments.is_empty();
                out.push(Out::ToolCall(ToolCallPiece {
                    index: ordinal,
                    id: Some(b.id.unwrap_or_default()),
                    name: Some(b.name.unwrap_or_default()),
                    arguments,
                }));
                Block::Tool { ordinal, sent }
            }
            _ => Block::Other,
        };
        self.blocks.push((index, block));
    }

    fn block_delta(&mut self, index: Option<u32>, d: Option<DeltaIn>, out: &mut Vec<Out>) {
        let Some(d) = d else {
            return;
        };
        match d.kind.as_deref() {
            Some("text_delta") => {
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    out.push(Out::Text(t));
                }
            }
            Some("thinking_delta") => {
                if let Some(t) = d.thinking.filter(|t| !t.is_empty()) {
                    out.push(Out::Reasoning(t));
                }
            }
            Some("input_json_delta") => {
                let Some(json) = d.partial_json.filter(|j| !j.is_empty()) else {
                    return;
                };
                if let Some(Block::Tool { ordinal, sent }) = self.block(index) {
                    *sent = true;
                    let index = *ordinal;
                    out.push(Out::ToolCall(ToolCallPiece {
                        index,
                        arguments: json,
                        ..Default::default()
                    }));
                }
            }
            // What makes a thinking block valid when a Messages client sends it back.
            Some("signature_delta") => {
                if let Some(sig) = d.signature.filter(|s| !s.is_empty()) {
                    out.push(Out::Signature(sig));
                }
            }
            // citations_delta: not part of the neutral answer.
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
