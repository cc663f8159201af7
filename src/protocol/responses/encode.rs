//! Provider-neutral answer events as an OpenAI Responses API answer.
//!
//! # Streaming
//!
//! [`ResponsesWriter`] appends Server-Sent Events (`event: <type>\ndata: <json>\n\n`) in the
//! order the Responses API sends them; every event's data carries its `type` and a
//! `sequence_number` counting from 0, and the stream ends without `data: [DONE]`:
//!
//! ```text
//! response.created · response.in_progress           (status "in_progress", output [])
//!   reasoning:     output_item.added · content_part.added (reasoning_text)
//!                  · reasoning_text.delta … · reasoning_text.done · content_part.done
//!                  · output_item.done
//!   message:       output_item.added · content_part.added (output_text)
//!                  · output_text.delta … · output_text.done · content_part.done
//!                  · output_item.done
//!   function call: output_item.added · function_call_arguments.delta …
//!                  · function_call_arguments.done · output_item.done
//! response.completed | response.incomplete | response.failed   (the whole response)
//! ```
//!
//! An output item opens whenever the kind of payload changes (reasoning, text, a tool call) and
//! is done when the next one opens or the answer ends; `output_index` counts the items from 0.
//! A new tool call (a piece with another `index`, or another `id`) opens a new `function_call`
//! item. No item opens for an empty string, so there is never an empty message.
//!
//! Choices:
//! - Reasoning is a `reasoning` item with `summary: []` and its text as one `reasoning_text`
//!   content part, announced by `content_part.added` / `.done` like a message's text (the SDK's
//!   content-part events carry `reasoning_text` parts; OpenAI's gpt-oss server sends them so).
//! - Item ids derive from the response id and the item's position (`rs_<id>_<n>`,
//!   `msg_<id>_<n>`, `fc_<id>_<n>`, `<id>` without its `resp_` prefix), so they are stable and
//!   testable. A tool call's `call_id` is the upstream tool call id, or `call_<id>_<n>` when the
//!   upstream gave none; a call without a name gets `""`. A call whose arguments never arrive
//!   has no `function_call_arguments.delta` and `"{}"` as its arguments.
//! - Text, reasoning and tool calls before [`ResponsesWriter::start`] start the stream, and
//!   anything after `finish` or `error` is ignored, so the stream stays well-formed whatever
//!   order the caller uses (an `error` before the start writes the start first too: the SDK
//!   expects `response.created` before anything else).
//! - Items are sequential: a later piece of a tool call whose item is already done (providers
//!   that interleave parallel calls) can no longer be streamed; its arguments are added to that
//!   call, so the final response (and storage) holds the whole call.
//! - Items the answer's end closes take the response's outcome as their status: `incomplete`
//!   when the response is incomplete, else `completed`; on a failure the open item stays
//!   unfinished (no done events) and is `incomplete` in the failed response.
//! - `finish`: OpenAI `length` → status `incomplete`, `incomplete_details.reason`
//!   `max_output_tokens`; `content_filter` → `incomplete`, `content_filter`; any other reason →
//!   `completed`.
//! - `error` → `response.failed` with `error: {code, message}`: `code` is one the SDK knows
//!   (`rate_limit_exceeded` for a 429, else `server_error`), the message is the gateway's (already
//!   sanitized where it came from an upstream).
//!
//! # The response object
//!
//! `{id, object: "response", created_at, status, error, incomplete_details, model, output,
//! usage, …echo}`: `usage` is null until the answer finished; `echo` holds the request fields
//! the response repeats, with defaults for those the SDK requires or OpenAI always returns
//! (`object::ECHO_DEFAULTS`); the writer's own fields win over echoed ones. `output_text` is not
//! written: the SDKs compute it from `output`.
//!
//! With `stream == false` the event methods only accumulate; [`ResponsesWriter::complete`]
//! builds a whole answer from its parts through the same path, so a non-stream response equals
//! the final response of the same answer streamed.

mod object;

use crate::error::GatewayError;
use crate::protocol::chunks::{ToolCallPiece, Usage};
use bytes::{BufMut, Bytes, BytesMut};
use object::{item_out, part_out, Item, ItemOut, Kind, PartOut, ResponseOut, State, Status};
use serde::Serialize;
use serde_json::{Map, Value};

/// `id` with the `resp_` prefix.
pub fn response_id(id: &str) -> String {
    if id.starts_with("resp_") {
        id.to_owned()
    } else {
        format!("resp_{id}")
    }
}

/// Writes the SSE events, numbering them.
#[derive(Debug)]
struct Emitter {
    stream: bool,
    sequence: u64,
}

impl Emitter {
    fn emit<B: Serialize>(&mut self, kind: &'static str, body: B, out: &mut BytesMut) {
        if !self.stream {
            return;
        }
        let data = EventOut {
            kind,
            sequence_number: self.sequence,
            body,
        };
        self.sequence += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Serializing into memory cannot fail (no I/O, string keys only).
        let _ = serde_json::to_writer(out.writer(), &data);
        out.extend_from_slice(b"\n\n");
    }
}

/// Writes one Responses API answer from provider-neutral events (see the module docs).
#[derive(Debug)]
pub struct ResponsesWriter {
    state: State,
    em: Emitter,
    /// Whether the last item is still open (its done events not written).
    open: bool,
    started: bool,
    ended: bool,
}

impl ResponsesWriter {
    /// `id` is `resp_…` (the prefix is added when missing); `echo` holds request fields the
    /// response object repeats, written into every response object as given (the writer's own
    /// fields win; `object::ECHO_DEFAULTS` lists those filled in when absent).
    pub fn new(
        id: String,
        model: String,
        created_at: u64,
        echo: Map<String, Value>,
        stream: bool,
    ) -> Self {
        ResponsesWriter {
            state: State {
                id: response_id(&id),
                model,
                created_at,
                echo: object::echo_fields(echo),
                items: Vec::new(),
                status: Status::InProgress,
                incomplete_reason: None,
                error: None,
                usage: None,
            },
            em: Emitter {
                stream,
                sequence: 0,
            },
            open: false,
            started: false,
            ended: false,
        }
    }

    /// The response id (with its `resp_` prefix).
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Whether `finish` or `error` ended the answer.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Stream only: `response.created` then `response.in_progress` (once; later calls do
    /// nothing).
    pub fn start(&mut self, out: &mut BytesMut) {
        if self.started || self.ended {
            return;
        }
        self.started = true;
        for kind in ["response.created", "response.in_progress"] {
            let body = ResponseEventOut {
                response: self.state.view(),
            };
            self.em.emit(kind, body, out);
        }
    }

    /// Whether content may be written, starting the response if need be.
    fn ready(&mut self, out: &mut BytesMut) -> bool {
        if self.ended {
            return false;
        }
        self.start(out);
        true
    }

    /// The item ids' common part: the response id without its prefix.
    fn suffix(&self) -> &str {
        let id = &self.state.id;
        id.strip_prefix("resp_").unwrap_or(id)
    }

    /// Closes the open item, then opens a new one of `kind` with its added events.
    fn open_item(&mut self, kind: Kind, out: &mut BytesMut) {
        self.close(Status::Completed, out);
        let n = self.state.items.len();
        let prefix = match kind {
            Kind::Reasoning => "rs",
            Kind::Message => "msg",
            Kind::Call { .. } => "fc",
        };
        let id = format!("{prefix}_{}_{n}", self.suffix());
        self.state.items.push(Item {
            kind,
            id,
            text: String::new(),
            status: Status::InProgress,
        });
        self.open = true;
        let item = &self.state.items[n];
        let added = ItemEventOut {
            output_index: n,
            item: item_out(item),
        };
        self.em.emit("response.output_item.added", added, out);
        if let Some(part) = part_out(item) {
            let body = PartEventOut {
                item_id: &item.id,
                output_index: n,
                content_index: 0,
                part,
            };
            self.em.emit("response.content_part.added", body, out);
        }
    }

    /// Ends the open item with `status`: its done events (full text or arguments, the part,
    /// the item).
    fn close(&mut self, status: Status, out: &mut BytesMut) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let n = self.state.items.len().saturating_sub(1);
        let Some(item) = self.state.items.last_mut() else {
            return;
        };
        item.status = status;
        if let Kind::Call { .. } = item.kind {
            if item.text.is_empty() {
                item.text.push_str("{}");
            }
        }
        let item = &*item;
        let (item_id, text) = (item.id.as_str(), item.text.as_str());
        match item.kind {
            Kind::Reasoning => {
                let body = ReasoningDoneOut {
                    item_id,
                    output_index: n,
                    content_index: 0,
                    text,
                };
                self.em.emit("response.reasoning_text.done", body, out);
            }
            Kind::Message => {
                let body = TextDoneOut {
                    item_id,
                    output_index: n,
                    content_index: 0,
                    text,
                    logprobs: [],
                };
                self.em.emit("response.output_text.done", body, out);
            }
            Kind::Call { .. } => {
                let body = ArgumentsDoneOut {
                    item_id,
                    output_index: n,
                    arguments: text,
                };
                self.em
                    .emit("response.function_call_arguments.done", body, out);
            }
        }
        if let Some(part) = part_out(item) {
            let body = PartEventOut {
                item_id,
                output_index: n,
                content_index: 0,
                part,
            };
            self.em.emit("response.content_part.done", body, out);
        }
        let done = ItemEventOut {
            output_index: n,
            item: item_out(item),
        };
        self.em.emit("response.output_item.done", done, out);
    }

    /// Whether the open item is a message (or reasoning, with `reasoning`).
    fn open_is(&self, reasoning: bool) -> bool {
        self.open
            && matches!(
                (&self.state.items.last().map(|i| &i.kind), reasoning),
                (Some(Kind::Reasoning), true) | (Some(Kind::Message), false)
            )
    }

    /// Appends `delta` to the open item and writes its delta event.
    fn push_delta(&mut self, delta: &str, out: &mut BytesMut) {
        let n = self.state.items.len() - 1;
        let item = &mut self.state.items[n];
        item.text.push_str(delta);
        let item_id = item.id.as_str();
        match item.kind {
            Kind::Reasoning => {
                let body = ReasoningDeltaOut {
                    item_id,
                    output_index: n,
                    content_index: 0,
                    delta,
                };
                self.em.emit("response.reasoning_text.delta", body, out);
            }
            Kind::Message => {
                let body = TextDeltaOut {
                    item_id,
                    output_index: n,
                    content_index: 0,
                    delta,
                    logprobs: [],
                };
                self.em.emit("response.output_text.delta", body, out);
            }
            Kind::Call { .. } => {
                let body = ArgumentsDeltaOut {
                    item_id,
                    output_index: n,
                    delta,
                };
                self.em
                    .emit("response.function_call_arguments.delta", body, out);
            }
        }
    }

    /// A piece of the answer's text.
    pub fn text(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() || !self.ready(out) {
            return;
        }
        if !self.open_is(false) {
            self.open_item(Kind::Message, out);
        }
        self.push_delta(text, out);
    }

    /// A piece of the model's reasoning.
    pub fn reasoning(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() || !self.ready(out) {
            return;
        }
        if !self.open_is(true) {
            self.open_item(Kind::Reasoning, out);
        }
        self.push_delta(text, out);
    }

    /// A piece of a tool call: the first piece of a call (another `index` or `id` than the open
    /// item's) opens its `function_call` item, arguments go out as deltas.
    pub fn tool_call(&mut self, piece: &ToolCallPiece, out: &mut BytesMut) {
        if !self.ready(out) {
            return;
        }
        let id = piece.id.as_deref().filter(|id| !id.is_empty());
        let continues = self.open
            && self
                .state
                .items
                .last()
                .is_some_and(|item| item.is_call(piece.index, id));
        if continues {
            self.fill_name(self.state.items.len() - 1, piece);
            if !piece.arguments.is_empty() {
                self.push_delta(&piece.arguments, out);
            }
            return;
        }
        // A later piece of a call that is already done (see the module docs).
        let closed = self
            .state
            .items
            .iter()
            .rposition(|item| item.is_call(piece.index, id));
        if let Some(n) = closed.filter(|_| id.is_some() || piece.name.is_none()) {
            self.fill_name(n, piece);
            let text = &mut self.state.items[n].text;
            if text == "{}" && !piece.arguments.is_empty() {
                // The placeholder of a call closed without arguments.
                text.clear();
            }
            text.push_str(&piece.arguments);
            return;
        }
        self.open_call(piece, out);
        if !piece.arguments.is_empty() {
            self.push_delta(&piece.arguments, out);
        }
    }

    /// Opens a `function_call` item for the call `piece` starts.
    fn open_call(&mut self, piece: &ToolCallPiece, out: &mut BytesMut) {
        let upstream_id = piece.id.clone().filter(|id| !id.is_empty());
        let call_id = match &upstream_id {
            Some(id) => id.clone(),
            None => format!("call_{}_{}", self.suffix(), self.state.items.len()),
        };
        let kind = Kind::Call {
            index: piece.index,
            upstream_id,
            call_id,
            name: piece.name.clone().unwrap_or_default(),
        };
        self.open_item(kind, out);
    }

    /// A name that arrives after the call's first piece.
    fn fill_name(&mut self, n: usize, piece: &ToolCallPiece) {
        if let (Kind::Call { name, .. }, Some(new)) = (&mut self.state.items[n].kind, &piece.name) {
            if name.is_empty() {
                name.clone_from(new);
            }
        }
    }

    /// Ends the answer: closes the open item, then `response.completed` (or
    /// `response.incomplete`) with the whole response and its usage. `openai_reason` is an
    /// OpenAI finish reason.
    pub fn finish(&mut self, openai_reason: &str, usage: Usage, out: &mut BytesMut) {
        if !self.ready(out) {
            return;
        }
        let (status, reason) = outcome(openai_reason);
        self.close(status, out);
        self.ended = true;
        self.state.status = status;
        self.state.incomplete_reason = reason;
        self.state.usage = Some(usage);
        let kind = match status {
            Status::Incomplete => "response.incomplete",
            _ => "response.completed",
        };
        let body = ResponseEventOut {
            response: self.state.view(),
        };
        self.em.emit(kind, body, out);
    }

    /// A failure after the start: `response.failed` (status `failed`, `error: {code,
    /// message}`), nothing after it. The open item gets no done events.
    pub fn error(&mut self, err: &GatewayError, out: &mut BytesMut) {
        if !self.ready(out) {
            return;
        }
        self.ended = true;
        if std::mem::take(&mut self.open) {
            if let Some(item) = self.state.items.last_mut() {
                item.status = Status::Incomplete;
            }
        }
        let code = match err.status() {
            429 => "rate_limit_exceeded",
            _ => "server_error",
        };
        self.state.status = Status::Failed;
        self.state.error = Some((code, err.to_string()));
        let body = ResponseEventOut {
            response: self.state.view(),
        };
        self.em.emit("response.failed", body, out);
    }

    /// A whole non-stream answer from its parts: the reasoning, the text, then one
    /// `function_call` item per whole call (pieces joined, in order). The writer was created
    /// with `stream = false`; a streaming writer would number events nobody sees.
    pub fn complete(
        &mut self,
        content: &str,
        reasoning: &str,
        tool_calls: &[ToolCallPiece],
        openai_reason: &str,
        usage: Usage,
    ) {
        // Nothing is written without a stream, so this stays empty.
        let mut out = BytesMut::new();
        if !self.ready(&mut out) {
            return;
        }
        self.reasoning(reasoning, &mut out);
        self.text(content, &mut out);
        for call in tool_calls {
            // Whole calls: each is its own item, even when two share an index and lack ids.
            self.open_call(call, &mut out);
            if !call.arguments.is_empty() {
                self.push_delta(&call.arguments, &mut out);
            }
        }
        self.finish(openai_reason, usage, &mut out);
    }

    /// The response object as it stands (after `finish` / `complete`: the final one), for the
    /// non-stream body and for storage.
    pub fn response(&self) -> Value {
        // Serializing these views cannot fail (string keys only).
        serde_json::to_value(self.state.view()).unwrap_or(Value::Null)
    }

    /// [`ResponsesWriter::response`] as JSON bytes, without building a `Value` on the way.
    pub fn to_bytes(&self) -> Bytes {
        let text_len: usize = self.state.items.iter().map(|i| i.text.len()).sum();
        let mut buf = Vec::with_capacity(512 + 2 * text_len);
        // As in `response`: cannot fail.
        let _ = serde_json::to_writer(&mut buf, &self.state.view());
        Bytes::from(buf)
    }
}

/// The response status and `incomplete_details.reason` for an OpenAI finish reason.
fn outcome(openai_reason: &str) -> (Status, Option<&'static str>) {
    match openai_reason {
        "length" => (Status::Incomplete, Some("max_output_tokens")),
        "content_filter" => (Status::Incomplete, Some("content_filter")),
        _ => (Status::Completed, None),
    }
}

// Written through typed views rather than `json!` trees: one buffer per event instead of a
// map, a key and a value allocated per field.

#[derive(Serialize)]
struct EventOut<B> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
struct ResponseEventOut<'a> {
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ItemEventOut<'a> {
    output_index: usize,
    item: ItemOut<'a>,
}

#[derive(Serialize)]
struct PartEventOut<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    part: PartOut<'a>,
}

#[derive(Serialize)]
struct TextDeltaOut<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    delta: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct TextDoneOut<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    text: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct ReasoningDeltaOut<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    delta: &'a str,
}

#[derive(Serialize)]
struct ReasoningDoneOut<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    text: &'a str,
}

#[derive(Serialize)]
struct ArgumentsDeltaOut<'a> {
    item_id: &'a str,
    output_index: usize,
    delta: &'a str,
}

#[derive(Serialize)]
struct ArgumentsDoneOut<'a> {
    item_id: &'a str,
    output_index: usize,
    arguments: &'a str,
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
