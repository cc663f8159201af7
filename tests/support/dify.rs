//! A mock Dify Service API that behaves like the real one for every app mode: the same routes,
//! request validation, event sequences (pings, re-sent agent thoughts, chatflow's
//! workflow_finished before message_end, failed workflows with HTTP 200, error events without a
//! task id) and fault knobs.
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Chat,
    Agent,
    Chatflow,
    Workflow,
    Completion,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Agent => "agent",
            Mode::Chatflow => "chatflow",
            Mode::Workflow => "workflow",
            Mode::Completion => "completion",
        }
    }
    pub const ALL: [Mode; 5] = [
        Mode::Chat,
        Mode::Agent,
        Mode::Chatflow,
        Mode::Workflow,
        Mode::Completion,
    ];
}

#[derive(Clone, Debug)]
pub struct DifyKnobs {
    /// Delay between events.
    pub interval: Duration,
    /// Send `event: ping` after the first content event.
    pub ping: bool,
    /// After this many content events, send an `error` event and close.
    pub error_after: Option<usize>,
    /// After this many content events, close without a terminal event.
    pub cut_after: Option<usize>,
    /// Workflows finish with `status: failed` (HTTP 200).
    pub workflow_fails: bool,
    /// Answer every generate call with this status and Dify error code before any event.
    pub fail_with: Option<(u16, &'static str, &'static str)>,
    /// How many content events an answer is split into.
    pub pieces: usize,
    /// Delay before answering a generate call at all (headers included).
    pub latency: Duration,
    /// `Retry-After` seconds on `fail_with` answers.
    pub retry_after: Option<u64>,
    /// Chat-family answers start with this thinking, as `reasoning_chunk` events (an LLM node
    /// with `reasoning_format: separated`, Dify ≥ 1.x).
    pub reasoning_chunks: Option<&'static str>,
    /// Chat-family answers start with `<think>` this `</think>` (the default "tagged" format),
    /// cut across the answer's events wherever `pieces` cuts it.
    pub think: Option<&'static str>,
    /// `message_end` usage also reports (cached prompt, reasoning completion) tokens the
    /// OpenAI way (`prompt_tokens_details`, `completion_tokens_details`).
    pub usage_details: Option<(u64, u64)>,
    /// Answers given in order, one per generate call, instead of the echo of the query.
    pub script: Vec<String>,
}

impl Default for DifyKnobs {
    fn default() -> Self {
        DifyKnobs {
            interval: Duration::ZERO,
            ping: false,
            error_after: None,
            cut_after: None,
            workflow_fails: false,
            fail_with: None,
            pieces: 3,
            latency: Duration::ZERO,
            retry_after: None,
            reasoning_chunks: None,
            think: None,
            usage_details: None,
            script: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Call {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct DifyState {
    pub apps: HashMap<String, (Mode, &'static str)>,
    pub knobs: Mutex<DifyKnobs>,
    pub calls: Mutex<Vec<Call>>,
    pub stops: Mutex<Vec<Call>>,
    pub uploads: Mutex<Vec<(String, usize)>>,
    /// conversation id → owner user.
    pub conversations: Mutex<HashMap<String, String>>,
    /// Answers produced, in order, with the message or run id.
    pub produced: Mutex<Vec<(String, String)>>,
    /// Event streams the gateway dropped before their end.
    pub abandoned: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct MockDify {
    pub addr: SocketAddr,
    pub state: Arc<DifyState>,
}

/// The app key for each mode: `app-<mode>-key`; workflow/completion read `query_input`.
pub fn key(mode: Mode) -> String {
    format!("app-{}-key", mode.name())
}

impl MockDify {
    pub async fn start() -> MockDify {
        let mut apps = HashMap::new();
        for m in Mode::ALL {
            let var = match m {
                Mode::Workflow => "requirements",
                _ => "query",
            };
            apps.insert(key(m), (m, var));
        }
        let state = Arc::new(DifyState {
            apps,
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/chat-messages", post(generate))
            .route("/v1/completion-messages", post(generate))
            .route("/v1/workflows/run", post(generate))
            .route("/v1/chat-messages/{task}/stop", post(stop))
            .route("/v1/completion-messages/{task}/stop", post(stop))
            .route("/v1/workflows/tasks/{task}/stop", post(stop))
            .route("/v1/files/upload", post(upload))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockDify { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn set(&self, f: impl FnOnce(&mut DifyKnobs)) {
        f(&mut self.state.knobs.lock());
    }
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().clone()
    }
    pub fn stops(&self) -> Vec<Call> {
        self.state.stops.lock().clone()
    }
    pub fn produced(&self) -> Vec<(String, String)> {
        self.state.produced.lock().clone()
    }
    /// Event streams the gateway dropped before their end.
    pub fn abandoned(&self) -> usize {
        self.state
            .abandoned
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"code": code, "message": message, "status": status}).to_string(),
        ))
        .unwrap()
}

fn app_of<'a>(state: &'a DifyState, headers: &HeaderMap) -> Option<&'a (Mode, &'static str)> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    state.apps.get(key)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

async fn generate(
    State(state): State<Arc<DifyState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(&(mode, query_var)) = app_of(&state, &headers) else {
        return error(401, "unauthorized", "Access token is invalid");
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "invalid_param",
            "Invalid JSON payload received or JSON payload is empty.",
        );
    };
    state.calls.lock().push(Call {
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: req.clone(),
        at: Instant::now(),
    });
    let path = uri.path();
    let route_ok = match mode {
        Mode::Chat | Mode::Agent | Mode::Chatflow => path.ends_with("/chat-messages"),
        Mode::Completion => path.ends_with("/completion-messages"),
        Mode::Workflow => path.ends_with("/workflows/run"),
    };
    if !route_ok {
        return match mode {
            Mode::Workflow => error(
                400,
                "not_workflow_app",
                "Please check if your app mode matches the right API route.",
            ),
            Mode::Completion => error(
                400,
                "app_unavailable",
                "App unavailable, please check your app configurations.",
            ),
            _ => error(
                400,
                "not_chat_app",
                "Please check if your app mode matches the right API route.",
            ),
        };
    }
    let user = req["user"].as_str().unwrap_or_default().to_owned();
    if user.is_empty() {
        return error(400, "invalid_param", "Arg user must be provided.");
    }
    if !req["inputs"].is_object() {
        return error(400, "invalid_param", "inputs is required in request body");
    }
    if req["response_mode"] != "streaming" && mode == Mode::Agent {
        return error(
            400,
            "invalid_param",
            "Agent Chat App does not support blocking mode",
        );
    }
    let (knobs, scripted) = {
        let mut k = state.knobs.lock();
        let scripted = (!k.script.is_empty()).then(|| k.script.remove(0));
        (k.clone(), scripted)
    };
    tokio::time::sleep(knobs.latency).await;
    if let Some((status, code, message)) = knobs.fail_with {
        let mut answer = error(status, code, message);
        if let Some(secs) = knobs.retry_after {
            answer
                .headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return answer;
    }
    let conversational = matches!(mode, Mode::Chat | Mode::Agent | Mode::Chatflow);
    let mut conversation = String::new();
    if conversational {
        let q = req["query"].as_str().unwrap_or_default();
        if q.is_empty() {
            return error(400, "invalid_param", "query is required");
        }
        let cid = req["conversation_id"].as_str().unwrap_or_default();
        if cid.is_empty() {
            conversation = uuid::Uuid::new_v4().to_string();
            state
                .conversations
                .lock()
                .insert(conversation.clone(), user.clone());
        } else {
            if !is_uuid(cid) {
                return error(400, "invalid_param", "conversation_id must be a valid UUID");
            }
            if state.conversations.lock().get(cid) != Some(&user) {
                return error(404, "not_found", "Conversation Not Exists.");
            }
            conversation = cid.to_owned();
        }
    }
    let query = match mode {
        Mode::Chat | Mode::Agent | Mode::Chatflow => {
            req["query"].as_str().unwrap_or_default().to_owned()
        }
        _ => req["inputs"][query_var]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let answer = format!(
        "{} says: {}",
        mode.name(),
        query
            .chars()
            .rev()
            .take(40)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    let answer = scripted.unwrap_or(answer);
    let task = uuid::Uuid::new_v4().to_string();
    let message = uuid::Uuid::new_v4().to_string();
    state
        .produced
        .lock()
        .push((answer.clone(), message.clone()));
    let events = events(mode, &knobs, &answer, &task, &message, &conversation);
    let interval = knobs.interval;
    let mut watch = super::StreamWatch::new(&state.abandoned);
    watch.finished = events.is_empty();
    let stream = futures::stream::unfold(
        (events.into_iter(), true, watch),
        move |(mut it, first, mut watch)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let ev = it.next()?;
            watch.finished = it.len() == 0;
            Some((Ok::<_, std::io::Error>(Bytes::from(ev)), (it, false, watch)))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// The event sequence a real Dify sends for `mode` (spec §3.4), with the knobs' faults.
fn events(
    mode: Mode,
    k: &DifyKnobs,
    answer: &str,
    task: &str,
    message: &str,
    conversation: &str,
) -> Vec<String> {
    let created = 1_705_398_420u64;
    let env = |mut v: Value| -> String {
        match mode {
            Mode::Workflow => {
                v["workflow_run_id"] = json!(message);
            }
            Mode::Completion => {
                v["message_id"] = json!(message);
                v["created_at"] = json!(created);
            }
            _ => {
                v["conversation_id"] = json!(conversation);
                v["message_id"] = json!(message);
                v["created_at"] = json!(created);
            }
        }
        format!("data: {v}\n\n")
    };
    let mut out = Vec::new();
    if matches!(mode, Mode::Workflow | Mode::Chatflow) {
        out.push(env(json!({"event": "workflow_started", "task_id": task, "data": {"id": message, "workflow_id": "wf", "inputs": {}, "created_at": created}})));
        out.push(env(json!({"event": "node_started", "task_id": task, "data": {"id": "n1", "node_id": "llm", "node_type": "llm", "title": "LLM", "inputs": {"prompt": "x".repeat(2000)}}})));
    }
    if mode == Mode::Agent {
        out.push(env(json!({"event": "agent_thought", "id": "th-1", "task_id": task, "position": 1, "thought": "", "observation": "", "tool": "", "tool_input": "", "message_files": []})));
    }
    let chat_family = !matches!(mode, Mode::Workflow | Mode::Completion);
    if let Some(thought) = k.reasoning_chunks.filter(|_| chat_family) {
        let pieces = split(thought, 2);
        for (i, piece) in pieces.iter().enumerate() {
            out.push(env(json!({"event": "reasoning_chunk", "task_id": task, "data": {"message_id": message, "node_id": "llm", "reasoning": piece, "is_final": i + 1 == pieces.len()}})));
        }
    }
    let tagged = match k.think.filter(|_| chat_family) {
        Some(thought) => format!("<think>{thought}</think>\n\n{answer}"),
        None => answer.to_owned(),
    };
    // A workflow whose LLM node fails streams no text before it finishes as failed.
    let parts = if mode == Mode::Workflow && k.workflow_fails {
        vec![]
    } else {
        split(&tagged, k.pieces)
    };
    for (i, part) in parts.iter().enumerate() {
        if k.cut_after == Some(i) {
            return out;
        }
        if k.error_after == Some(i) {
            out.push(env(json!({"event": "error", "status": 400, "code": "completion_request_error", "message": "[openai] Error: upstream model failed"})));
            return out;
        }
        let ev = match mode {
            Mode::Workflow => {
                json!({"event": "text_chunk", "task_id": task, "data": {"text": part, "from_variable_selector": ["llm", "text"]}})
            }
            Mode::Agent => {
                json!({"event": "agent_message", "task_id": task, "id": message, "answer": part})
            }
            _ => json!({"event": "message", "task_id": task, "id": message, "answer": part}),
        };
        out.push(env(ev));
        if i == 0 && k.ping {
            out.push("event: ping\n\n".into());
        }
        if i == 0 && mode == Mode::Agent {
            out.push(env(json!({"event": "agent_thought", "id": "th-1", "task_id": task, "position": 1, "thought": "thinking about it", "observation": "", "tool": "search", "tool_input": "{}"})));
        }
    }
    let tokens = answer.chars().count() as u64;
    match mode {
        Mode::Workflow => {
            let (status, error) = if k.workflow_fails {
                ("failed", json!("LLM node failed: quota"))
            } else {
                ("succeeded", Value::Null)
            };
            out.push(env(json!({"event": "node_finished", "task_id": task, "data": {"id": "n1", "status": status, "outputs": {"text": answer}}})));
            out.push(env(json!({"event": "workflow_finished", "task_id": task, "data": {"id": message, "status": status, "outputs": {"plan": answer}, "error": error, "total_tokens": 7 + tokens, "total_steps": 3}})));
        }
        _ => {
            if mode == Mode::Chatflow {
                out.push(env(json!({"event": "workflow_finished", "task_id": task, "data": {"id": "run", "status": "succeeded", "outputs": {"answer": answer}, "total_tokens": 7 + tokens}})));
            }
            let mut usage = json!({"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens, "total_price": "0.0001", "currency": "USD", "latency": 0.5});
            if let Some((cached, reasoning)) = k.usage_details {
                usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
                usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
            }
            out.push(env(json!({"event": "message_end", "task_id": task, "id": message, "metadata": {"usage": usage, "retriever_resources": []}, "files": []})));
            out.push(env(
                json!({"event": "tts_message_end", "task_id": task, "audio": ""}),
            ));
        }
    }
    out
}

async fn stop(
    State(state): State<Arc<DifyState>>,
    Path(task): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if app_of(&state, &headers).is_none() {
        return error(401, "unauthorized", "Access token is invalid");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.stops.lock().push(Call {
        path: uri.path().to_owned(),
        headers,
        body: json!({"task": task, "user": body["user"]}),
        at: Instant::now(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(r#"{"result":"success"}"#))
        .unwrap()
}

async fn upload(State(state): State<Arc<DifyState>>, headers: HeaderMap, body: Bytes) -> Response {
    if app_of(&state, &headers).is_none() {
        return error(401, "unauthorized", "Access token is invalid");
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = String::from_utf8_lossy(&body);
    if !ct.starts_with("multipart/form-data; boundary=")
        || !text.contains("name=\"file\"")
        || !text.contains("name=\"user\"")
    {
        return error(400, "invalid_param", "file and user are required");
    }
    state.uploads.lock().push((ct, body.len()));
    let id = uuid::Uuid::new_v4().to_string();
    Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .body(Body::from(json!({"id": id, "name": "image.png", "size": body.len(), "extension": "png", "mime_type": "image/png"}).to_string()))
        .unwrap()
}

/// A config with one Dify chat app (`chat` scenario) and state in the Redis at `redis_url`
/// (`state.timeout` as given): for the shared-state tests.
pub fn shared_state_config(redis_url: &str, dify: &MockDify, timeout: &str) -> String {
    format!(
        r#"
admin:
  api_key: adm
state: {{ backend: redis, url: "{redis_url}", timeout: {timeout} }}
providers:
  d: {{ type: dify, base_url: "{url}", api_key: {k}, app: chat }}
scenarios:
  chat:
    targets: [{{ provider: d }}]
"#,
        url = dify.url(),
        k = key(Mode::Chat)
    )
}
