//! A mock Anthropic Messages API that behaves like the real one: `x-api-key` and
//! `anthropic-version` checks, the request validation a real upstream applies (roles, empty text
//! blocks, tool_use/tool_result pairing, ranges Anthropic narrows, fields it does not know), error
//! bodies `{"type":"error","error":{…},"request_id":…}`, the streamed event sequence
//! (message_start, ping, per-block start/deltas/stop, message_delta, message_stop) with thinking,
//! text and tool_use blocks, and fault knobs (statuses, `error` events, cut and reset streams).
#![allow(dead_code)]

use super::{Recorded, StreamWatch};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "anthropic_validate.rs"]
mod validate;
use validate::validate;

/// The key the mock accepts unless `expected_key` is changed.
pub const MOCK_KEY: &str = "sk-ant-test";
/// The `anthropic-version` values the mock accepts.
pub const VERSIONS: [&str; 2] = ["2023-06-01", "2023-01-01"];
/// The id of the tool_use block the mock answers with.
pub const TOOL_ID: &str = "toolu_mock_1";
/// The signature of the thinking block the mock answers with.
pub const SIGNATURE: &str = "EqQBCkYIARgCKkBtb2NrLXNpZ25hdHVyZQ==";
pub const DEFAULT_TEXT: &str = "Hello from the mock Anthropic upstream, one two three.";

/// Fault and shape knobs; change them while the mock runs (`MockAnthropic::set`).
#[derive(Clone, Debug)]
pub struct AnthropicKnobs {
    /// Status of the answer to a valid request; non-200 answers carry
    /// `{"type":"error","error":{"type": error_type,"message":"mock failure"},"request_id":…}`.
    pub status: u16,
    /// `error.type` of a non-200 answer: `api_error`, `rate_limit_error`, `overloaded_error`, …
    pub error_type: String,
    /// `retry-after` seconds on a non-200 answer.
    pub retry_after: Option<u64>,
    /// Delay before the response head (every answer, errors included).
    pub latency: Duration,
    /// Accept the request and never answer.
    pub never_answer: bool,
    /// Answer text; `""` = no text block.
    pub text: String,
    /// How many `text_delta` events the text is split into (thinking too: that many
    /// `thinking_delta`; tool input: `max(chunks, 2)` `input_json_delta` pieces).
    pub chunks: usize,
    /// Delay before each content delta of a stream.
    pub chunk_interval: Duration,
    /// A thinking block (thinking_delta pieces, then one signature_delta) before the text.
    pub thinking: Option<String>,
    /// A tool_use block (name, input) after the text; an empty input `{}` streams no
    /// input_json_delta at all.
    pub tool_use: Option<(String, Value)>,
    /// `end_turn` by default; a tool_use answer reports `tool_use` unless this is set to
    /// something other than `end_turn`.
    pub stop_reason: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    /// A `ping` event after message_start and between consecutive content deltas.
    pub ping: bool,
    /// Stream: after this many content deltas send an `error` event (overloaded_error) and end
    /// (0 = before any content block).
    pub error_event_after: Option<usize>,
    /// Stream: end the body after this many content deltas, without message_delta/message_stop.
    pub cut_after: Option<usize>,
    /// Stream: abort the connection after this many content deltas (a reset mid-stream).
    pub reset_after: Option<usize>,
    /// `x-api-key` the mock requires; anything else is a 401 authentication_error.
    pub expected_key: String,
    /// When not empty, `status` applies only to requests for these models; others get 200.
    pub fail_models: Vec<String>,
    /// When not empty, other models are a 404 not_found_error `model: <name>`.
    pub known_models: Vec<String>,
}

impl Default for AnthropicKnobs {
    fn default() -> Self {
        AnthropicKnobs {
            status: 200,
            error_type: "api_error".into(),
            retry_after: None,
            latency: Duration::ZERO,
            never_answer: false,
            text: DEFAULT_TEXT.into(),
            chunks: 4,
            chunk_interval: Duration::ZERO,
            thinking: None,
            tool_use: None,
            stop_reason: "end_turn".into(),
            input_tokens: 25,
            output_tokens: 15,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            ping: false,
            error_event_after: None,
            cut_after: None,
            reset_after: None,
            expected_key: MOCK_KEY.into(),
            fail_models: Vec::new(),
            known_models: Vec::new(),
        }
    }
}

#[derive(Default)]
pub struct AnthropicState {
    pub knobs: Mutex<AnthropicKnobs>,
    /// Every request, rejected ones included.
    pub received: Mutex<Vec<Recorded>>,
    /// Requests whose handling was dropped before an answer (the caller went away).
    pub cancelled: AtomicUsize,
    /// Streams the caller dropped before their last event.
    pub abandoned: Arc<AtomicUsize>,
    served: AtomicUsize,
}

pub struct MockAnthropic {
    pub addr: SocketAddr,
    pub state: Arc<AnthropicState>,
}

impl MockAnthropic {
    pub async fn start() -> MockAnthropic {
        Self::start_with(AnthropicKnobs::default()).await
    }

    pub async fn start_with(knobs: AnthropicKnobs) -> MockAnthropic {
        let state = Arc::new(AnthropicState {
            knobs: Mutex::new(knobs),
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .fallback(not_found)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        MockAnthropic { addr, state }
    }

    /// `http://127.0.0.1:PORT/v1`; messages are POSTed to `{url}/messages`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn set(&self, f: impl FnOnce(&mut AnthropicKnobs)) {
        f(&mut self.state.knobs.lock());
    }
    pub fn received(&self) -> Vec<Recorded> {
        self.state.received.lock().clone()
    }
    pub fn count(&self) -> usize {
        self.state.received.lock().len()
    }
    pub fn last(&self) -> Recorded {
        self.state
            .received
            .lock()
            .last()
            .cloned()
            .expect("the mock received a request")
    }
    /// Streams the caller dropped before their last event.
    pub fn abandoned(&self) -> usize {
        self.state.abandoned.load(Ordering::SeqCst)
    }
    /// Requests dropped by the caller before they were answered at all.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }
}

/// Counts a request as cancelled if its handler is dropped before it answers.
struct CancelWatch<'a> {
    state: &'a AnthropicState,
    answered: bool,
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Records the request; returns its headers, body and a fresh request id.
async fn record(state: &AnthropicState, req: axum::extract::Request) -> (HeaderMap, Bytes, String) {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    state.received.lock().push(Recorded {
        peer,
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let n = state.served.fetch_add(1, Ordering::SeqCst) + 1;
    (parts.headers, body, format!("req_mock_{n:04}"))
}

/// An Anthropic error answer; `x-should-retry` as the real API sets it.
fn error(status: u16, kind: &str, message: &str, request_id: &str) -> Response {
    let retry = matches!(status, 408 | 409 | 429) || status >= 500;
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", request_id)
        .header("x-should-retry", if retry { "true" } else { "false" })
        .body(Body::from(
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
                .to_string(),
        ))
        .unwrap()
}

fn invalid(message: &str, request_id: &str) -> Response {
    error(400, "invalid_request_error", message, request_id)
}

/// The key and version checks, in the real API's order.
fn check_headers(
    headers: &HeaderMap,
    knobs: &AnthropicKnobs,
) -> Result<(), (u16, &'static str, String)> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    };
    match header("x-api-key") {
        None => {
            return Err((
                401,
                "authentication_error",
                "x-api-key header is required".into(),
            ))
        }
        Some(k) if k != knobs.expected_key => {
            return Err((401, "authentication_error", "invalid x-api-key".into()))
        }
        Some(_) => {}
    }
    match header("anthropic-version") {
        None => Err((
            400,
            "invalid_request_error",
            "anthropic-version: header is required".into(),
        )),
        Some(v) if !VERSIONS.contains(&v.as_str()) => Err((
            400,
            "invalid_request_error",
            format!("anthropic-version: \"{v}\" is not a valid version"),
        )),
        Some(_) => Ok(()),
    }
}

async fn not_found(
    State(state): State<Arc<AnthropicState>>,
    req: axum::extract::Request,
) -> Response {
    let (_, _, rid) = record(&state, req).await;
    error(404, "not_found_error", "Not Found", &rid)
}

async fn count_tokens(
    State(state): State<Arc<AnthropicState>>,
    req: axum::extract::Request,
) -> Response {
    let (headers, body, rid) = record(&state, req).await;
    let knobs = state.knobs.lock().clone();
    if let Err((status, kind, message)) = check_headers(&headers, &knobs) {
        return error(status, kind, &message, &rid);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return invalid(
            "There was an issue with the formatting or the content of your request body.",
            &rid,
        );
    };
    if let Err(message) = validate(&req, Endpoint::CountTokens) {
        return invalid(&message, &rid);
    }
    let messages = req["messages"].as_array().map_or(0, Vec::len);
    let chars = text_chars(&req["system"])
        + req["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| text_chars(&m["content"]))
            .sum::<usize>();
    let tokens = (chars.div_ceil(4) + 3 * messages).max(1);
    Response::builder()
        .header("content-type", "application/json")
        .header("request-id", rid)
        .body(Body::from(json!({"input_tokens": tokens}).to_string()))
        .unwrap()
}

/// Characters of text in a content value (string, blocks, nested tool results).
fn text_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| text_chars(&b["text"]) + text_chars(&b["content"]))
            .sum(),
        _ => 0,
    }
}

async fn messages(
    State(state): State<Arc<AnthropicState>>,
    req: axum::extract::Request,
) -> Response {
    let (headers, body, rid) = record(&state, req).await;
    let knobs = state.knobs.lock().clone();
    let mut watch = CancelWatch {
        state: &state,
        answered: false,
    };
    if knobs.never_answer {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    tokio::time::sleep(knobs.latency).await;
    watch.answered = true;
    if let Err((status, kind, message)) = check_headers(&headers, &knobs) {
        return error(status, kind, &message, &rid);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return invalid(
            "There was an issue with the formatting or the content of your request body.",
            &rid,
        );
    };
    if let Err(message) = validate(&req, Endpoint::Messages) {
        return invalid(&message, &rid);
    }
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    if !knobs.known_models.is_empty() && !knobs.known_models.contains(&model) {
        return error(404, "not_found_error", &format!("model: {model}"), &rid);
    }
    let failing = knobs.fail_models.is_empty() || knobs.fail_models.contains(&model);
    if knobs.status != 200 && failing {
        let mut answer = error(knobs.status, &knobs.error_type, "mock failure", &rid);
        if let Some(secs) = knobs.retry_after {
            answer
                .headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return answer;
    }
    let id = format!("msg_mock_{}", &rid["req_mock_".len()..]);
    let blocks = blocks(&knobs);
    let stop_reason = if knobs.tool_use.is_some() && knobs.stop_reason == "end_turn" {
        "tool_use".to_owned()
    } else {
        knobs.stop_reason.clone()
    };
    if req["stream"].as_bool() != Some(true) {
        let content: Vec<Value> = blocks.iter().map(Block::whole).collect();
        let answer = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {
                "input_tokens": knobs.input_tokens,
                "output_tokens": knobs.output_tokens,
                "cache_read_input_tokens": knobs.cache_read_input_tokens,
                "cache_creation_input_tokens": knobs.cache_creation_input_tokens,
            },
        });
        return Response::builder()
            .header("content-type", "application/json")
            .header("request-id", rid)
            .body(Body::from(answer.to_string()))
            .unwrap();
    }
    let items = stream_items(&knobs, &blocks, &id, &model, &stop_reason);
    let interval = knobs.chunk_interval;
    let mut watch = StreamWatch::new(&state.abandoned);
    watch.finished = items.is_empty();
    let stream = futures::stream::unfold(
        (items.into_iter(), watch),
        move |(mut it, mut watch)| async move {
            let item = match it.next()? {
                Item::Event { text, delta } => {
                    if delta {
                        tokio::time::sleep(interval).await;
                    }
                    Ok(Bytes::from(text))
                }
                // Aborts the body: hyper resets the connection mid-stream.
                Item::Abort => Err(std::io::Error::other("reset")),
            };
            watch.finished = it.len() == 0;
            Some((item, (it, watch)))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", rid)
        .body(Body::from_stream(stream))
        .unwrap()
}

/// One content block of the answer.
enum Block {
    Thinking(String),
    Text(String),
    ToolUse(String, Value),
}

impl Block {
    /// The block as in a non-stream message.
    fn whole(&self) -> Value {
        match self {
            Block::Thinking(t) => {
                json!({"type": "thinking", "thinking": t, "signature": SIGNATURE})
            }
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse(name, input) => {
                json!({"type": "tool_use", "id": TOOL_ID, "name": name, "input": input})
            }
        }
    }
    /// The block as in its content_block_start event.
    fn start(&self) -> Value {
        match self {
            Block::Thinking(_) => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::Text(_) => json!({"type": "text", "text": ""}),
            Block::ToolUse(name, _) => {
                json!({"type": "tool_use", "id": TOOL_ID, "name": name, "input": {}})
            }
        }
    }
    /// The block's content_block_delta payloads.
    fn deltas(&self, chunks: usize) -> Vec<Value> {
        match self {
            Block::Thinking(t) => {
                let mut out: Vec<Value> = split(t, chunks)
                    .into_iter()
                    .map(|p| json!({"type": "thinking_delta", "thinking": p}))
                    .collect();
                out.push(json!({"type": "signature_delta", "signature": SIGNATURE}));
                out
            }
            Block::Text(t) => split(t, chunks)
                .into_iter()
                .map(|p| json!({"type": "text_delta", "text": p}))
                .collect(),
            Block::ToolUse(_, input) => {
                if input.as_object().is_some_and(Map::is_empty) {
                    return Vec::new();
                }
                split(&input.to_string(), chunks.max(2))
                    .into_iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect()
            }
        }
    }
}

fn blocks(k: &AnthropicKnobs) -> Vec<Block> {
    let mut out = Vec::new();
    if let Some(t) = &k.thinking {
        out.push(Block::Thinking(t.clone()));
    }
    if !k.text.is_empty() {
        out.push(Block::Text(k.text.clone()));
    }
    if let Some((name, input)) = &k.tool_use {
        let input = if input.is_null() {
            json!({})
        } else {
            input.clone()
        };
        out.push(Block::ToolUse(name.clone(), input));
    }
    out
}

/// `text` in `n` pieces of (nearly) equal length, split on characters.
fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

enum Item {
    /// One SSE event; `delta` ones wait `chunk_interval` first.
    Event {
        text: String,
        delta: bool,
    },
    Abort,
}

fn event(name: &str, data: Value) -> Item {
    Item::Event {
        text: format!("event: {name}\ndata: {data}\n\n"),
        delta: name == "content_block_delta",
    }
}

/// The stream's events with the knobs' faults applied.
fn stream_items(
    k: &AnthropicKnobs,
    blocks: &[Block],
    id: &str,
    model: &str,
    stop_reason: &str,
) -> Vec<Item> {
    let mut out = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {
                "input_tokens": k.input_tokens,
                "cache_creation_input_tokens": k.cache_creation_input_tokens,
                "cache_read_input_tokens": k.cache_read_input_tokens,
                "output_tokens": 1,
            },
        }}),
    )];
    let ping = || event("ping", json!({"type": "ping"}));
    if k.ping {
        out.push(ping());
    }
    // After `sent` content deltas: true when a fault ends the stream here.
    let fault = |out: &mut Vec<Item>, sent: usize| -> bool {
        if k.error_event_after == Some(sent) {
            out.push(event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return true;
        }
        if k.reset_after == Some(sent) {
            out.push(Item::Abort);
            return true;
        }
        k.cut_after == Some(sent)
    };
    if fault(&mut out, 0) {
        return out;
    }
    let deltas: Vec<Vec<Value>> = blocks.iter().map(|b| b.deltas(k.chunks)).collect();
    let total: usize = deltas.iter().map(Vec::len).sum();
    let mut sent = 0;
    for (index, (block, deltas)) in blocks.iter().zip(deltas).enumerate() {
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block.start()}),
        ));
        for delta in deltas {
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
            sent += 1;
            if fault(&mut out, sent) {
                return out;
            }
            if k.ping && sent < total {
                out.push(ping());
            }
        }
        out.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    out.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": k.output_tokens}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Messages,
    CountTokens,
}
