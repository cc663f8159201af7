//! Provider-neutral answer events as an Anthropic Messages answer.
//!
//! # Streaming
//!
//! [`MessagesWriter`] appends Server-Sent Events (`event: <type>\ndata: <json>\n\n`) in the
//! order the Anthropic API sends them:
//!
//! ```text
//! message_start
//!   content_block_start (index 0) · content_block_delta … · content_block_stop (index 0)
//!   content_block_start (index 1) · …
//! message_delta (stop_reason, stop_sequence, usage)
//! message_stop
//! ```
//!
//! A content block is opened whenever the kind of payload changes (thinking, text, a tool call)
//! and closed when the next one opens or the answer finishes; indices count the blocks from 0.
//! A new tool call (a piece with another `index`, or another `id`) opens a new `tool_use` block.
//! No block is opened for an empty string, so an answer never holds an empty text block. A tool
//! call whose arguments never arrive gets no `input_json_delta`, so its input stays `{}`.
//!
//! Choices:
//! - Text, thinking and tool calls before [`MessagesWriter::start`] start the message with 0
//!   input tokens, and anything after `finish` or `error` is ignored, so the stream stays
//!   well-formed whatever order the caller uses. Pings may come before the start (SDKs skip
//!   them), which lets a keep-alive go out while the first token is awaited.
//! - `message_delta.usage.input_tokens` is the upstream's prompt count, or the count given to
//!   `start` when the upstream reported none; tokens read from the prompt cache are
//!   `cache_read_input_tokens` and not part of `input_tokens`, as in Anthropic's own usage.
//! - Thinking blocks start with `"signature": ""`; an Anthropic upstream's signature follows as
//!   a `signature_delta` (or fills `signature` in a whole message), so a client can send the
//!   block back to Claude. Other upstreams have none, and a block sent back without one is
//!   dropped by the request conversion.
//! - Anthropic blocks are sequential: a later piece of an already closed tool call (providers
//!   that interleave parallel calls) cannot be appended to it and opens a new block.
//! - A tool call without an id gets `toolu_<message id>_<block index>`; one without a name gets
//!   `""`.
//!
//! # Whole answers
//!
//! [`message`] builds the non-stream `message` object: a thinking block (when there is
//! reasoning), a text block (when there is text), then one `tool_use` block per call. A call's
//! `input` is its arguments parsed as a JSON object; empty arguments give `{}`; arguments that
//! are not a JSON object (truncated by `max_tokens`, say) are kept as `{"_raw": "<text>"}`
//! rather than lost, so the client's tool code sees what the model wrote.
//!
//! # Stop reasons
//!
//! OpenAI `stop` → `end_turn` (`stop_sequence` when the matched sequence is known), `length` →
//! `max_tokens`, `tool_calls` / `function_call` → `tool_use`, `content_filter` → `refusal`,
//! anything else → `end_turn`.
//!
//! Message ids carry the `msg_` prefix (added when the given id lacks it).

use super::error;
use crate::error::GatewayError;
use crate::protocol::chunks::{ToolCallPiece, Usage};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::{json, Value};

/// The Anthropic `stop_reason` for an OpenAI `finish_reason`, and the `stop_sequence` to report
/// with it (only for a stop on a known sequence).
pub fn stop_reason<'a>(
    openai_reason: &str,
    stop_sequence: Option<&'a str>,
) -> (&'static str, Option<&'a str>) {
    match openai_reason {
        "stop" => match stop_sequence {
            Some(seq) => ("stop_sequence", Some(seq)),
            None => ("end_turn", None),
        },
        "length" => ("max_tokens", None),
        "tool_calls" | "function_call" => ("tool_use", None),
        "content_filter" => ("refusal", None),
        _ => ("end_turn", None),
    }
}

/// `id` with the `msg_` prefix.
pub fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

/// The id of a tool call that came without one.
fn tool_id(message_id: &str, index: usize) -> String {
    let suffix = message_id.strip_prefix("msg_").unwrap_or(message_id);
    format!("toolu_{suffix}_{index}")
}

/// Appends one SSE event.
fn event(out: &mut BytesMut, kind: &str, data: &[u8]) {
    out.reserve(kind.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

fn event_json(out: &mut BytesMut, kind: &str, data: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serializing into memory cannot fail (no I/O, string keys only).
    let _ = serde_json::to_writer(out.writer(), data);
    out.extend_from_slice(b"\n\n");
}

/// The content block currently open.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call: its OpenAI `index` and its id.
    Tool {
        index: u32,
        id: String,
    },
}

/// Writes one streamed Anthropic answer from provider-neutral events.
#[derive(Debug)]
pub struct MessagesWriter {
    id: String,
    model: String,
    input_tokens: u64,
    /// Blocks opened so far; the open one, if any, has index `blocks - 1`.
    blocks: usize,
    open: Option<Block>,
    started: bool,
    ended: bool,
}

impl MessagesWriter {
    pub fn new(id: String, model: String) -> Self {
        MessagesWriter {
            id: message_id(&id),
            model,
            input_tokens: 0,
            blocks: 0,
            open: None,
            started: false,
            ended: false,
        }
    }

    /// The message id (with its `msg_` prefix).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `finish` or `error` ended the answer.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// `message_start`: the message with no content yet (once; later calls do nothing).
    pub fn start(&mut self, input_tokens: u64, out: &mut BytesMut) {
        if self.started || self.ended {
            return;
        }
        self.started = true;
        self.input_tokens = input_tokens;
        let data = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 0},
            },
        });
        event_json(out, "message_start", &data);
    }

    /// Whether content may be written, starting the message if need be.
    fn ready(&mut self, out: &mut BytesMut) -> bool {
        if self.ended {
            return false;
        }
        if !self.started {
            self.start(0, out);
        }
        true
    }

    /// Closes the open block, then opens `block` with its `content_block_start`.
    fn open_block(&mut self, block: Block, content_block: Value, out: &mut BytesMut) {
        self.close(out);
        let data = json!({
            "type": "content_block_start",
            "index": self.blocks,
            "content_block": content_block,
        });
        self.blocks += 1;
        self.open = Some(block);
        event_json(out, "content_block_start", &data);
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open.take().is_some() {
            let data = json!({"type": "content_block_stop", "index": self.blocks - 1});
            event_json(out, "content_block_stop", &data);
        }
    }

    fn delta(&self, delta: DeltaOut<'_>, out: &mut BytesMut) {
        let data = DeltaEventOut {
            kind: "content_block_delta",
            index: self.blocks - 1,
            delta,
        };
        event_json(out, "content_block_delta", &data);
    }

    /// A piece of the answer's text.
    pub fn text(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() || !self.ready(out) {
            return;
        }
        if self.open != Some(Block::Text) {
            self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
        }
        self.delta(DeltaOut::Text { text }, out);
    }

    /// A piece of the model's reasoning.
    pub fn thinking(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() || !self.ready(out) {
            return;
        }
        if self.open != Some(Block::Thinking) {
            let block = json!({"type": "thinking", "thinking": "", "signature": ""});
            self.open_block(Block::Thinking, block, out);
        }
        self.delta(DeltaOut::Thinking { thinking: text }, out);
    }

    /// The thinking block's signature (a block opens for it when none is open).
    pub fn signature(&mut self, sig: &str, out: &mut BytesMut) {
        if sig.is_empty() || !self.ready(out) {
            return;
        }
        if self.open != Some(Block::Thinking) {
            let block = json!({"type": "thinking", "thinking": "", "signature": ""});
            self.open_block(Block::Thinking, block, out);
        }
        self.delta(DeltaOut::Signature { signature: sig }, out);
    }

    /// A piece of a tool call: the first piece of a call (another `index` or `id` than the
    /// open block's) opens its `tool_use` block, arguments go out as `input_json_delta`.
    pub fn tool_call(&mut self, piece: &ToolCallPiece, out: &mut BytesMut) {
        if !self.ready(out) {
            return;
        }
        let continues = match &self.open {
            Some(Block::Tool { index, id }) => {
                *index == piece.index && piece.id.as_ref().is_none_or(|p| p.is_empty() || p == id)
            }
            _ => false,
        };
        if !continues {
            let id = match &piece.id {
                Some(id) if !id.is_empty() => id.clone(),
                _ => tool_id(&self.id, self.blocks),
            };
            let name = piece.name.clone().unwrap_or_default();
            let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
            self.open_block(
                Block::Tool {
                    index: piece.index,
                    id,
                },
                block,
                out,
            );
        }
        if !piece.arguments.is_empty() {
            let delta = DeltaOut::InputJson {
                partial_json: &piece.arguments,
            };
            self.delta(delta, out);
        }
    }

    /// A keep-alive.
    pub fn ping(&mut self, out: &mut BytesMut) {
        if !self.ended {
            event(out, "ping", br#"{"type":"ping"}"#);
        }
    }

    /// Ends the answer: closes the open block, then `message_delta` and `message_stop`.
    pub fn finish(
        &mut self,
        openai_reason: &str,
        stop_sequence: Option<&str>,
        usage: Usage,
        out: &mut BytesMut,
    ) {
        if !self.ready(out) {
            return;
        }
        self.close(out);
        self.ended = true;
        let (reason, sequence) = stop_reason(openai_reason, stop_sequence);
        let input_tokens = if usage.prompt_tokens > 0 {
            usage.prompt_tokens
        } else {
            self.input_tokens
        };
        let data = json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage_out(input_tokens, usage),
        });
        event_json(out, "message_delta", &data);
        event(out, "message_stop", br#"{"type":"message_stop"}"#);
    }

    /// Ends the answer with an `error` event (no block is closed, no `message_stop` follows).
    pub fn error(&mut self, err: &GatewayError, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.ended = true;
        event(out, "error", &error::body(err));
    }
}

/// Anthropic usage: `input_tokens` excludes what was read from the prompt cache, which is
/// `cache_read_input_tokens` (written only when there was some).
#[derive(Serialize)]
struct UsageOut {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_read_input_tokens: Option<u64>,
}

fn usage_out(prompt_tokens: u64, usage: Usage) -> UsageOut {
    let cached = usage.cached_tokens.min(prompt_tokens);
    UsageOut {
        input_tokens: prompt_tokens - cached,
        output_tokens: usage.completion_tokens,
        cache_read_input_tokens: (cached > 0).then_some(cached),
    }
}

// Written through typed views rather than `json!` trees: one buffer per object instead of a
// map, a key and a value allocated per field.

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    Text {
        text: &'a str,
    },
    ToolUse {
        id: String,
        name: &'a str,
        input: Value,
    },
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct DeltaEventOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaOut<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

/// A tool call's `input`: its arguments as a JSON object (see the module docs).
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw": arguments}),
    }
}

/// A whole (non-stream) Anthropic `message`. `thinking` is the reasoning and its signature;
/// `tool_calls` are `(id, name, arguments)`.
#[allow(clippy::too_many_arguments)]
pub fn message(
    id: &str,
    model: &str,
    content: &str,
    (reasoning, signature): (&str, &str),
    tool_calls: &[(String, String, String)],
    openai_reason: &str,
    stop_sequence: Option<&str>,
    usage: Usage,
) -> Bytes {
    let id = message_id(id);
    let mut blocks = Vec::with_capacity(2 + tool_calls.len());
    if !reasoning.is_empty() || !signature.is_empty() {
        blocks.push(BlockOut::Thinking {
            thinking: reasoning,
            signature,
        });
    }
    if !content.is_empty() {
        blocks.push(BlockOut::Text { text: content });
    }
    for (call_id, name, arguments) in tool_calls {
        let call_id = if call_id.is_empty() {
            tool_id(&id, blocks.len())
        } else {
            call_id.clone()
        };
        blocks.push(BlockOut::ToolUse {
            id: call_id,
            name,
            input: tool_input(arguments),
        });
    }
    let (reason, sequence) = stop_reason(openai_reason, stop_sequence);
    let v = MessageOut {
        id: &id,
        kind: "message",
        role: "assistant",
        model,
        content: blocks,
        stop_reason: reason,
        stop_sequence: sequence,
        usage: usage_out(usage.prompt_tokens, usage),
    };
    let mut buf = Vec::with_capacity(256 + content.len() + reasoning.len());
    // Serializing into a Vec cannot fail (no I/O, string keys only).
    let _ = serde_json::to_writer(&mut buf, &v);
    Bytes::from(buf)
}

/// A stored answer replayed in Anthropic's shape: one `message`, or its events.
pub fn replay(a: &crate::protocol::Answer, id: &str, stream: bool) -> Bytes {
    if !stream {
        return message(
            id,
            &a.model,
            &a.content,
            (&a.reasoning, ""),
            &[],
            &a.finish_reason,
            None,
            a.usage,
        );
    }
    let mut w = MessagesWriter::new(id.to_owned(), a.model.clone());
    let mut out = BytesMut::new();
    w.start(a.usage.prompt_tokens, &mut out);
    if !a.reasoning.is_empty() {
        w.thinking(&a.reasoning, &mut out);
    }
    if !a.content.is_empty() {
        w.text(&a.content, &mut out);
    }
    w.finish(&a.finish_reason, None, a.usage, &mut out);
    out.freeze()
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
