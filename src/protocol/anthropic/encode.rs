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
//! - Thinking blocks carry `"signature": ""`: the gateway has no Anthropic signature, and
//!   clients sending the block back have it dropped by the request conversion.
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
use bytes::{Bytes, BytesMut};
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

fn event_json(out: &mut BytesMut, kind: &str, data: &Value) {
    event(out, kind, data.to_string().as_bytes());
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

    fn delta(&self, delta: Value, out: &mut BytesMut) {
        let data = json!({
            "type": "content_block_delta",
            "index": self.blocks - 1,
            "delta": delta,
        });
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
        self.delta(json!({"type": "text_delta", "text": text}), out);
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
        self.delta(json!({"type": "thinking_delta", "thinking": text}), out);
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
            let delta = json!({"type": "input_json_delta", "partial_json": piece.arguments});
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
            "usage": usage_json(input_tokens, usage),
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
fn usage_json(prompt_tokens: u64, usage: Usage) -> Value {
    let cached = usage.cached_tokens.min(prompt_tokens);
    let mut u =
        json!({"input_tokens": prompt_tokens - cached, "output_tokens": usage.completion_tokens});
    if cached > 0 {
        u["cache_read_input_tokens"] = json!(cached);
    }
    u
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

/// A whole (non-stream) Anthropic `message`. `tool_calls` are `(id, name, arguments)`.
#[allow(clippy::too_many_arguments)]
pub fn message(
    id: &str,
    model: &str,
    content: &str,
    reasoning: &str,
    tool_calls: &[(String, String, String)],
    openai_reason: &str,
    stop_sequence: Option<&str>,
    usage: Usage,
) -> Bytes {
    let id = message_id(id);
    let mut blocks = Vec::with_capacity(2 + tool_calls.len());
    if !reasoning.is_empty() {
        blocks.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    if !content.is_empty() {
        blocks.push(json!({"type": "text", "text": content}));
    }
    for (call_id, name, arguments) in tool_calls {
        let call_id = if call_id.is_empty() {
            tool_id(&id, blocks.len())
        } else {
            call_id.clone()
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call_id,
            "name": name,
            "input": tool_input(arguments),
        }));
    }
    let (reason, sequence) = stop_reason(openai_reason, stop_sequence);
    let v = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_json(usage.prompt_tokens, usage),
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events written: (event name, data), checking the framing on the way.
    fn events(out: &BytesMut) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|e| {
                let (head, data) = e.split_once('\n').unwrap();
                let kind = head.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], kind.as_str(), "{e}");
                (kind, data)
            })
            .collect()
    }

    /// Event names, with the block index for block events.
    fn outline(out: &BytesMut) -> Vec<String> {
        events(out)
            .into_iter()
            .map(|(k, d)| match d["index"].as_u64() {
                Some(i) => format!("{k}:{i}"),
                None => k,
            })
            .collect()
    }

    fn piece(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallPiece {
        ToolCallPiece {
            index,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
            arguments: args.to_owned(),
        }
    }

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Default::default()
        }
    }

    #[test]
    fn message_start_has_the_empty_message() {
        let mut w = MessagesWriter::new("abc".into(), "claude-x".into());
        let mut out = BytesMut::new();
        w.start(12, &mut out);
        w.start(99, &mut out);
        let e = events(&out);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].1,
            json!({"type": "message_start", "message": {
                "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 0}}})
        );
        assert!(out.starts_with(b"event: message_start\ndata: {"));
        assert_eq!(w.id(), "msg_abc");
        assert_eq!(
            MessagesWriter::new("msg_x".into(), "m".into()).id(),
            "msg_x"
        );
    }

    #[test]
    fn thinking_then_text_then_tools_with_exact_indices() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(5, &mut out);
        w.thinking("Let me ", &mut out);
        w.thinking("think.", &mut out);
        w.text("", &mut out);
        w.text("Checking", &mut out);
        w.text(" now.", &mut out);
        w.tool_call(&piece(0, Some("call_a"), Some("weather"), ""), &mut out);
        w.tool_call(&piece(0, None, None, "{\"city\":"), &mut out);
        w.tool_call(&piece(0, None, None, "\"Paris\"}"), &mut out);
        w.tool_call(&piece(1, Some("call_b"), Some("time"), "{}"), &mut out);
        w.finish("tool_calls", None, usage(5, 40), &mut out);
        assert_eq!(
            outline(&out),
            [
                "message_start",
                "content_block_start:0",
                "content_block_delta:0",
                "content_block_delta:0",
                "content_block_stop:0",
                "content_block_start:1",
                "content_block_delta:1",
                "content_block_delta:1",
                "content_block_stop:1",
                "content_block_start:2",
                "content_block_delta:2",
                "content_block_delta:2",
                "content_block_stop:2",
                "content_block_start:3",
                "content_block_delta:3",
                "content_block_stop:3",
                "message_delta",
                "message_stop",
            ]
        );
        let e = events(&out);
        assert_eq!(
            e[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            e[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "Let me "})
        );
        assert_eq!(e[5].1["content_block"], json!({"type": "text", "text": ""}));
        assert_eq!(
            e[7].1["delta"],
            json!({"type": "text_delta", "text": " now."})
        );
        assert_eq!(
            e[9].1["content_block"],
            json!({"type": "tool_use", "id": "call_a", "name": "weather", "input": {}})
        );
        assert_eq!(
            e[10].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"city\":"})
        );
        assert_eq!(e[13].1["content_block"]["id"], "call_b");
        assert_eq!(
            e[16].1,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 5, "output_tokens": 40}})
        );
        assert_eq!(e[17].1, json!({"type": "message_stop"}));
    }

    #[test]
    fn tool_only_stream_starts_at_index_0() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(3, &mut out);
        w.text("", &mut out);
        w.tool_call(&piece(0, Some("c1"), Some("f"), "{\"a\":1}"), &mut out);
        w.finish("tool_calls", None, usage(3, 7), &mut out);
        let e = events(&out);
        assert_eq!(
            outline(&out),
            [
                "message_start",
                "content_block_start:0",
                "content_block_delta:0",
                "content_block_stop:0",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(e[1].1["content_block"]["type"], "tool_use");
    }

    #[test]
    fn tool_call_without_arguments_gets_no_input_delta() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(0, &mut out);
        w.tool_call(&piece(0, Some("c1"), Some("now"), ""), &mut out);
        w.tool_call(&piece(1, Some("c2"), Some("later"), ""), &mut out);
        w.finish("tool_calls", None, usage(1, 1), &mut out);
        assert_eq!(
            outline(&out),
            [
                "message_start",
                "content_block_start:0",
                "content_block_stop:0",
                "content_block_start:1",
                "content_block_stop:1",
                "message_delta",
                "message_stop"
            ]
        );
        let e = events(&out);
        assert_eq!(e[1].1["content_block"]["input"], json!({}));
    }

    #[test]
    fn a_new_id_at_the_same_index_is_a_new_call() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.tool_call(&piece(0, Some("a"), Some("f"), "{}"), &mut out);
        w.tool_call(&piece(0, Some("a"), None, ""), &mut out);
        w.tool_call(&piece(0, Some("b"), Some("g"), "{}"), &mut out);
        w.tool_call(&piece(2, None, None, "{}"), &mut out);
        let e = events(&out);
        let starts: Vec<&Value> = e
            .iter()
            .filter(|(k, _)| k == "content_block_start")
            .map(|(_, d)| &d["content_block"])
            .collect();
        assert_eq!(starts.len(), 3);
        assert_eq!(starts[0]["id"], "a");
        assert_eq!(starts[1]["id"], "b");
        // Neither id nor name: an id is made up, the name stays empty.
        assert_eq!(starts[2]["id"], "toolu_1_2");
        assert_eq!(starts[2]["name"], "");
        // Content before `start` started the message with 0 input tokens.
        assert_eq!(e[0].0, "message_start");
        assert_eq!(e[0].1["message"]["usage"]["input_tokens"], 0);
    }

    #[test]
    fn text_after_a_tool_call_opens_a_new_text_block() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(0, &mut out);
        w.text("a", &mut out);
        w.tool_call(&piece(0, Some("c"), Some("f"), "{}"), &mut out);
        w.text("b", &mut out);
        w.thinking("", &mut out);
        w.finish("stop", None, usage(1, 1), &mut out);
        assert_eq!(
            outline(&out),
            [
                "message_start",
                "content_block_start:0",
                "content_block_delta:0",
                "content_block_stop:0",
                "content_block_start:1",
                "content_block_delta:1",
                "content_block_stop:1",
                "content_block_start:2",
                "content_block_delta:2",
                "content_block_stop:2",
                "message_delta",
                "message_stop"
            ]
        );
    }

    #[test]
    fn never_an_empty_text_block() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(4, &mut out);
        w.text("", &mut out);
        w.thinking("", &mut out);
        w.text("", &mut out);
        w.finish("stop", None, usage(0, 0), &mut out);
        assert_eq!(
            outline(&out),
            ["message_start", "message_delta", "message_stop"]
        );
        // No prompt count from the upstream: the one given at start.
        assert_eq!(events(&out)[1].1["usage"]["input_tokens"], 4);
    }

    #[test]
    fn finish_maps_the_reasons() {
        let cases = [
            ("stop", None, "end_turn", Value::Null),
            ("stop", Some("END"), "stop_sequence", json!("END")),
            ("length", Some("END"), "max_tokens", Value::Null),
            ("tool_calls", None, "tool_use", Value::Null),
            ("function_call", None, "tool_use", Value::Null),
            ("content_filter", None, "refusal", Value::Null),
            ("something_new", None, "end_turn", Value::Null),
        ];
        for (openai, seq, reason, sequence) in cases {
            let mut w = MessagesWriter::new("1".into(), "m".into());
            let mut out = BytesMut::new();
            w.start(1, &mut out);
            w.text("x", &mut out);
            w.finish(openai, seq, usage(2, 3), &mut out);
            let e = events(&out);
            let delta = &e[e.len() - 2].1;
            assert_eq!(delta["delta"]["stop_reason"], reason, "{openai}");
            assert_eq!(delta["delta"]["stop_sequence"], sequence, "{openai}");
            assert_eq!(
                delta["usage"],
                json!({"input_tokens": 2, "output_tokens": 3})
            );
            assert!(delta["usage"].get("cache_read_input_tokens").is_none());
        }
    }

    #[test]
    fn nothing_after_the_end() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(1, &mut out);
        w.finish("stop", None, usage(1, 1), &mut out);
        let len = out.len();
        w.text("late", &mut out);
        w.tool_call(&piece(0, Some("c"), Some("f"), "{}"), &mut out);
        w.ping(&mut out);
        w.finish("stop", None, usage(1, 1), &mut out);
        w.error(&GatewayError::Internal("x".into()), &mut out);
        assert_eq!(out.len(), len);
        assert!(w.is_ended());
    }

    #[test]
    fn ping_and_error_events() {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.ping(&mut out);
        assert_eq!(&out[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        w.start(1, &mut out);
        w.text("partial", &mut out);
        out.clear();
        let err = GatewayError::UpstreamTimeout("the upstream went quiet".into());
        w.error(&err, &mut out);
        let e = events(&out);
        assert_eq!(e.len(), 1, "the open block is not closed");
        assert_eq!(e[0].0, "error");
        assert_eq!(
            e[0].1,
            json!({"type": "error", "error": {"type": "overloaded_error",
                   "message": "the upstream went quiet"}})
        );
        w.text("more", &mut out);
        assert_eq!(events(&out).len(), 1);
    }

    #[test]
    fn whole_message_with_all_block_kinds() {
        let calls = vec![
            ("call_1".to_owned(), "f".to_owned(), r#"{"a":1}"#.to_owned()),
            (String::new(), "g".to_owned(), String::new()),
            ("call_3".to_owned(), "h".to_owned(), r#"{"a":"#.to_owned()),
        ];
        let b = message(
            "chatcmpl-9",
            "claude-x",
            "Here.",
            "Thought.",
            &calls,
            "tool_calls",
            None,
            usage(10, 20),
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "msg_chatcmpl-9",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [
                    {"type": "thinking", "thinking": "Thought.", "signature": ""},
                    {"type": "text", "text": "Here."},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "toolu_chatcmpl-9_3", "name": "g", "input": {}},
                    {"type": "tool_use", "id": "call_3", "name": "h", "input": {"_raw": "{\"a\":"}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 20}
            })
        );
    }

    #[test]
    fn whole_message_skips_empty_parts_and_reports_the_stop_sequence() {
        let b = message("msg_1", "m", "", "", &[], "stop", Some("###"), usage(1, 0));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["content"], json!([]));
        assert_eq!(v["stop_reason"], "stop_sequence");
        assert_eq!(v["stop_sequence"], "###");
        let b = message("1", "m", "hi", "", &[], "content_filter", None, usage(1, 1));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["content"], json!([{"type": "text", "text": "hi"}]));
        assert_eq!(v["stop_reason"], "refusal");
    }

    #[test]
    fn tool_input_shapes() {
        assert_eq!(tool_input(""), json!({}));
        assert_eq!(tool_input("  "), json!({}));
        assert_eq!(tool_input(r#"{"x":[1]}"#), json!({"x": [1]}));
        assert_eq!(tool_input("[1]"), json!({"_raw": "[1]"}));
        assert_eq!(tool_input("nope"), json!({"_raw": "nope"}));
    }
}
