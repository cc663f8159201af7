//! Test support: an in-process mock OpenAI upstream with fault knobs, and a helper that runs the
//! real gateway (pingora server) on free loopback ports with a given config.
#![allow(dead_code)]

pub mod anthropic;
pub mod client;
pub mod contract;
pub mod dify;
pub mod openai_ops;
pub mod process;
pub mod redis;
pub mod sdk;

#[allow(unused_imports)]
pub use client::{chat, http, Answer, Chat};
#[allow(unused_imports)]
pub use sdk::{python_with, run_sdk_script};

use ai_gateway::config::Config;
use ai_gateway::RunningGateway;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What the mock received, exactly.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The gateway's side of the connection: equal ports mean a reused connection.
    pub peer: Option<SocketAddr>,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Fault and shape knobs; change them while the mock runs.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Status of the answer; non-2xx answers carry `error_body`.
    pub status: u16,
    pub error_body: String,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Accept the request and never answer.
    pub never_answer: bool,
    /// Send the stream's headers, then nothing.
    pub stall_after_headers: bool,
    /// Answer text; split into `chunks` stream chunks.
    pub content: String,
    /// Answers given in order, one per request, before `content` answers the rest.
    pub script: Vec<String>,
    /// The answer to a request with a JSON `response_format` (a model that honours it).
    pub json_content: Option<String>,
    pub chunks: usize,
    pub chunk_interval: Duration,
    /// End the stream after this many content chunks, without finish chunk or [DONE].
    pub cut_after: Option<usize>,
    /// Abort the connection after this many content chunks (a reset mid-stream).
    pub reset_after: Option<usize>,
    /// `Retry-After` seconds on a non-200 answer.
    pub retry_after: Option<u64>,
    /// Send the stream's headers, then only SSE comment pings, forever.
    pub pings_only: bool,
    /// End a complete stream (finish chunk, usage if asked) without `data: [DONE]`.
    pub omit_done: bool,
    /// When not empty, `status` applies only to requests for these models; others get 200.
    pub fail_models: Vec<String>,
    /// Answer with this tool call (name, JSON arguments) instead of text, when the request
    /// offers tools.
    pub tool_call: Option<(String, String)>,
    /// Report no usage, even when asked (an upstream that ignores `include_usage`).
    pub omit_usage: bool,
    /// The `prompt_tokens` the usage reports.
    pub prompt_tokens: u64,
    /// Report `prompt_tokens_details.cached_tokens` in the usage.
    pub cached_tokens: Option<u64>,
    /// Report `completion_tokens_details.reasoning_tokens` in the usage.
    pub reasoning_tokens: Option<u64>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            status: 200,
            error_body: r#"{"error":{"message":"mock failure","type":"server_error","code":null}}"#
                .into(),
            latency: Duration::ZERO,
            never_answer: false,
            stall_after_headers: false,
            content: "Hello from the mock upstream, one two three.".into(),
            script: Vec::new(),
            json_content: None,
            chunks: 4,
            chunk_interval: Duration::ZERO,
            cut_after: None,
            reset_after: None,
            retry_after: None,
            pings_only: false,
            omit_done: false,
            fail_models: Vec::new(),
            tool_call: None,
            omit_usage: false,
            prompt_tokens: 11,
            cached_tokens: None,
            reasoning_tokens: None,
        }
    }
}

#[derive(Default)]
pub struct MockState {
    pub knobs: Mutex<Knobs>,
    pub received: Mutex<Vec<Recorded>>,
    /// Requests whose handling was abandoned because the caller went away.
    pub cancelled: std::sync::atomic::AtomicUsize,
    /// Streams the caller dropped before their last event (the connection was closed mid-answer).
    pub abandoned: Arc<std::sync::atomic::AtomicUsize>,
}

/// Travels with a response stream and counts it as abandoned when it is dropped before its last
/// event was handed over: the reader went away mid-stream.
pub struct StreamWatch {
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    pub finished: bool,
}

impl StreamWatch {
    pub fn new(abandoned: &Arc<std::sync::atomic::AtomicUsize>) -> StreamWatch {
        StreamWatch {
            abandoned: abandoned.clone(),
            finished: false,
        }
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.abandoned
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Counts a request as cancelled if its handler is dropped before it answers.
struct CancelWatch<'a> {
    state: &'a MockState,
    answered: bool,
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.state
                .cancelled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

pub struct MockOpenAi {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
}

impl MockOpenAi {
    pub async fn start() -> MockOpenAi {
        Self::start_with(Knobs::default()).await
    }

    pub async fn start_with(knobs: Knobs) -> MockOpenAi {
        let (state, app) = Self::app(knobs);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        MockOpenAi { addr, state }
    }

    /// The same mock behind TLS with the given server certificate.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> MockOpenAi {
        let (state, app) = Self::app(Knobs::default());
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let listener = TlsListener {
            inner,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockOpenAi { addr, state }
    }

    fn app(knobs: Knobs) -> (Arc<MockState>, Router) {
        let state = Arc::new(MockState {
            knobs: Mutex::new(knobs),
            received: Mutex::new(Vec::new()),
            cancelled: Default::default(),
            abandoned: Default::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/chat/completions", post(completions))
            .route("/v1/embeddings", post(openai_ops::embeddings))
            .route("/v1/completions", post(openai_ops::completions))
            .with_state(state.clone());
        (state, app)
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.state.knobs.lock());
    }
    pub fn received(&self) -> Vec<Recorded> {
        self.state.received.lock().clone()
    }
    pub fn count(&self) -> usize {
        self.state.received.lock().len()
    }
    /// Streams the gateway dropped before their end.
    pub fn abandoned(&self) -> usize {
        self.state
            .abandoned
            .load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn last(&self) -> Recorded {
        self.state
            .received
            .lock()
            .last()
            .cloned()
            .expect("the mock received a request")
    }
}

struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub const MOCK_CREATED: u64 = 1_700_000_000;

fn split_content(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Records a request and applies the knobs every door shares (latency, never answering, error
/// statuses): the request's JSON and the knobs, or the error answer.
async fn receive(
    state: &Arc<MockState>,
    req: axum::extract::Request,
) -> Result<(Value, Knobs), Response> {
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
        headers: parts.headers,
        body: body.clone(),
    });
    let (mut knobs, scripted) = {
        let mut k = state.knobs.lock();
        let mut now = k.clone();
        let scripted = !k.script.is_empty();
        if scripted {
            now.content = k.script.remove(0);
        }
        (now, scripted)
    };
    let mut watch = CancelWatch {
        state,
        answered: false,
    };
    if knobs.never_answer {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    tokio::time::sleep(knobs.latency).await;
    watch.answered = true;
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let asks_json = req["response_format"]["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("json"));
    if let (true, false, Some(json)) = (asks_json, scripted, knobs.json_content.clone()) {
        knobs.content = json;
    }
    let model = req["model"].as_str().unwrap_or("mock-model").to_owned();
    let failing = knobs.fail_models.is_empty() || knobs.fail_models.contains(&model);
    if knobs.status != 200 && failing {
        let mut r = Response::builder()
            .status(knobs.status)
            .header("content-type", "application/json")
            .header("set-cookie", "upstream=secret");
        if let Some(s) = knobs.retry_after {
            r = r.header("retry-after", s.to_string());
        }
        return Err(r.body(Body::from(knobs.error_body.clone())).unwrap());
    }
    Ok((req, knobs))
}

async fn completions(State(state): State<Arc<MockState>>, req: axum::extract::Request) -> Response {
    let (req, knobs) = match receive(&state, req).await {
        Ok(r) => r,
        Err(failure) => return failure,
    };
    let model = req["model"].as_str().unwrap_or("mock-model").to_owned();
    if knobs.pings_only {
        let pings = futures::stream::unfold((), move |_| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(b": ping\n\n")),
                (),
            ))
        });
        return Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(pings))
            .unwrap();
    }
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
        && !knobs.omit_usage;
    let completion_tokens = knobs.content.split_whitespace().count() as u64;
    let prompt_tokens = knobs.prompt_tokens;
    let mut usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    if let Some(n) = knobs.cached_tokens {
        usage["prompt_tokens_details"] = json!({"cached_tokens": n, "audio_tokens": 0});
    }
    if let Some(n) = knobs.reasoning_tokens {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": n, "audio_tokens": 0});
    }
    let tool_call = knobs
        .tool_call
        .clone()
        .filter(|_| req["tools"].as_array().is_some_and(|t| !t.is_empty()));
    if let Some((name, arguments)) = tool_call {
        return tool_call_answer(&model, stream, &name, &arguments, &usage);
    }
    if !stream {
        let mut answer = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": MOCK_CREATED,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": knobs.content}, "finish_reason": "stop", "logprobs": null}],
            "usage": usage,
        });
        if knobs.omit_usage {
            answer.as_object_mut().unwrap().remove("usage");
        }
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("openai-organization", "mock-org")
            .body(Body::from(answer.to_string()))
            .unwrap();
    }
    // As OpenAI does once asked for usage: `"usage": null` on every chunk but the last.
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": MOCK_CREATED, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events: Vec<Option<String>> = vec![Some(
        chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string(),
    )];
    let parts = split_content(&knobs.content, knobs.chunks);
    for (i, part) in parts.iter().enumerate() {
        if knobs.cut_after == Some(i) {
            break;
        }
        if knobs.reset_after == Some(i) {
            events.push(None);
            break;
        }
        events.push(Some(
            chunk(json!({"content": part}), Value::Null).to_string(),
        ));
    }
    let cut = knobs
        .cut_after
        .or(knobs.reset_after)
        .is_some_and(|k| k < parts.len());
    if !cut {
        events.push(Some(chunk(json!({}), json!("stop")).to_string()));
        if include_usage {
            events.push(Some(
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": MOCK_CREATED, "model": model,
                       "choices": [], "usage": usage})
                .to_string(),
            ));
        }
        if !knobs.omit_done {
            events.push(Some("[DONE]".into()));
        }
    }
    let interval = knobs.chunk_interval;
    let stall = knobs.stall_after_headers;
    let watch = StreamWatch::new(&state.abandoned);
    let stream = futures::stream::unfold(
        (events.into_iter(), stall, true, watch),
        move |(mut it, stall, first, mut watch)| async move {
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if !first {
                tokio::time::sleep(interval).await;
            }
            // `None` aborts the body: hyper resets the connection mid-stream.
            let item = match it.next()? {
                Some(ev) => Ok(Bytes::from(format!("data: {ev}\n\n"))),
                None => Err(std::io::Error::other("reset")),
            };
            watch.finished = it.len() == 0;
            Some((item, (it, stall, false, watch)))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A tool call as a `chat.completion`, or as a stream of chunks ending with `[DONE]`.
fn tool_call_answer(
    model: &str,
    stream: bool,
    name: &str,
    arguments: &str,
    usage: &Value,
) -> Response {
    let call = json!({"index": 0, "id": "call_mock_1", "type": "function",
                      "function": {"name": name, "arguments": arguments}});
    if !stream {
        let answer = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": MOCK_CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [call]},
                         "finish_reason": "tool_calls", "logprobs": null}],
            "usage": usage,
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(answer.to_string()))
            .unwrap();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": MOCK_CREATED, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let body = [
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "[DONE]".to_owned(),
    ]
    .iter()
    .map(|e| format!("data: {e}\n\n"))
    .collect::<String>();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

/// A running gateway on free loopback ports.
pub struct TestGateway {
    pub gw: RunningGateway,
    pub api: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// The metrics once they contain `needle`: per-request series are recorded in pingora's
    /// `logging` hook, just after the client already has its answer.
    pub fn metrics_with(&self, needle: &str) -> String {
        let until = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let m = self.metrics();
            if m.contains(needle) || std::time::Instant::now() > until {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
        })
        .join()
        .unwrap()
    }
}

/// Picks two free ports for a gateway's listeners.
///
/// They come from below the kernel's ephemeral range: a port from `bind(…:0)` (every mock
/// upstream, in this or a parallel test) or of an outgoing connection is never one of them, so
/// nothing can take one between this probe and the gateway's own bind. (A port taken there
/// would still accept connections, so the gateway would look started while the test talked to
/// someone else's listener.) Each is handed out once per process; the start is spread by pid.
pub fn free_ports() -> (u16, u16) {
    let (a, b) = (free_port(), free_port());
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn free_port() -> std::net::TcpListener {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_start < LOW + 1_000 {
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    }
    let span = ephemeral_start - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(probe) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return probe;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// Starts the gateway with `yaml` (without `listen`/`admin.listen`, which are added). Extra
/// files (prompts) can be written into the config's folder first with `files`.
pub fn start_gateway_with_files(yaml: &str, files: &[(&str, &str)]) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
    }
    let (api, admin) = free_ports();
    let full = if yaml.contains("admin:") {
        let with = yaml.replacen("admin:", &format!("admin:\n  listen: 127.0.0.1:{admin}"), 1);
        format!("listen: 127.0.0.1:{api}\n{with}")
    } else {
        format!("listen: 127.0.0.1:{api}\nadmin:\n  listen: 127.0.0.1:{admin}\n{yaml}")
    };
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &full).unwrap();
    let config =
        Config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{full}"));
    let gw = RunningGateway::start(config).expect("gateway starts");
    TestGateway {
        api: format!("http://{}", gw.api_addr),
        admin: format!("http://{}", gw.admin_addr),
        gw,
        dir,
    }
}

pub fn start_gateway(yaml: &str) -> TestGateway {
    start_gateway_with_files(yaml, &[])
}

/// Loads a config file from disk with its listeners moved to free ports.
pub fn start_gateway_from_file(path: &Path) -> TestGateway {
    let (api, admin) = free_ports();
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .replace(
            "${GATEWAY_LISTEN:-127.0.0.1:8080}",
            &format!("127.0.0.1:{api}"),
        )
        .replace(
            "${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9090}",
            &format!("127.0.0.1:{admin}"),
        );
    let config = Config::from_str_at(&text, path).unwrap_or_else(|e| panic!("{e}"));
    let gw = RunningGateway::start(config).expect("gateway starts");
    TestGateway {
        api: format!("http://{}", gw.api_addr),
        admin: format!("http://{}", gw.admin_addr),
        gw,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// Starts a gateway from the config file at `path` (already written, listeners included) with
/// the file watcher on, as the binary runs it.
pub fn start_watching(path: &Path, dir: tempfile::TempDir) -> TestGateway {
    let config = Config::load(path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let options = ai_gateway::Options {
        watch_config: true,
        ..Default::default()
    };
    let gw = RunningGateway::start_with(config, options).expect("gateway starts");
    TestGateway {
        api: format!("http://{}", gw.api_addr),
        admin: format!("http://{}", gw.admin_addr),
        gw,
        dir,
    }
}

/// `GET url` with a bearer key, as JSON (admin endpoints, `/v1/models`).
pub async fn get_json(url: String, key: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
