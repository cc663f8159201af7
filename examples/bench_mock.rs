//! A fast, zero-delay OpenAI upstream for the bench harness (`bench/run.sh`): a fixed
//! `chat.completion` for non-stream requests and a short SSE stream for `"stream": true`, and a
//! Dify chat app (`/v1/chat-messages`) streaming one short answer, and Anthropic's Messages API
//! (`/v1/messages`) with the same answer, streamed for `"stream": true` and whole otherwise, and
//! `/v1/embeddings`: one 256-dimension float embedding (about 5 KB of JSON, relayed as bytes).
//!
//! Usage: `bench_mock <port>`

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;
const STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello!\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: [DONE]\n\n"
);

/// A Dify chat app's stream for one short answer (chat-messages, streaming).
const DIFY_STREAM: &str = concat!(
    "data: {\"event\":\"message\",\"conversation_id\":\"6f1c0a52-7b0e-4e0f-9c59-3c1d2f1d0c11\",\"message_id\":\"9da23599-e713-4b4e-a5b2-6f0e3d1c8a77\",\"created_at\":1705398420,\"task_id\":\"c3800678-a077-43df-a102-53f23ed20b88\",\"id\":\"9da23599-e713-4b4e-a5b2-6f0e3d1c8a77\",\"answer\":\"Hello! \"}\n\n",
    "data: {\"event\":\"message\",\"conversation_id\":\"6f1c0a52-7b0e-4e0f-9c59-3c1d2f1d0c11\",\"message_id\":\"9da23599-e713-4b4e-a5b2-6f0e3d1c8a77\",\"created_at\":1705398420,\"task_id\":\"c3800678-a077-43df-a102-53f23ed20b88\",\"id\":\"9da23599-e713-4b4e-a5b2-6f0e3d1c8a77\",\"answer\":\"How can I help you today?\"}\n\n",
    "data: {\"event\":\"message_end\",\"conversation_id\":\"6f1c0a52-7b0e-4e0f-9c59-3c1d2f1d0c11\",\"message_id\":\"9da23599-e713-4b4e-a5b2-6f0e3d1c8a77\",\"created_at\":1705398420,\"task_id\":\"c3800678-a077-43df-a102-53f23ed20b88\",\"id\":\"9da23599-e713-4b4e-a5b2-6f0e3d1c8a77\",\"metadata\":{\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9,\"total_tokens\":18,\"total_price\":\"0.0001\",\"currency\":\"USD\",\"latency\":0.1}},\"files\":[]}\n\n"
);

/// A Messages API stream for the same short answer.
const MESSAGES_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"bench-model\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello! \"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"How can I help you today?\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
);

/// The same answer as one Messages object.
const MESSAGE: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench-model","content":[{"type":"text","text":"Hello! How can I help you today?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":9}}"#;

/// The answer to a request that asks for JSON (`response_format`): what a validated
/// (structured output) scenario checks.
const ANSWER_JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"{\"label\":\"positive\",\"score\":0.8}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;

fn asks_json(body: &[u8]) -> bool {
    body.windows(17).any(|w| w == b"\"response_format\"")
}

fn asks_stream(body: &[u8]) -> bool {
    body.windows(13).any(|w| w == b"\"stream\":true")
}

async fn messages(body: Bytes) -> Response {
    let (ct, text) = if asks_stream(&body) {
        ("text/event-stream", MESSAGES_STREAM)
    } else {
        ("application/json", MESSAGE)
    };
    Response::builder()
        .header("content-type", ct)
        .body(Body::from(text))
        .unwrap_or_default()
}

async fn dify() -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(DIFY_STREAM))
        .unwrap_or_default()
}

async fn chat(body: Bytes) -> Response {
    let (ct, text) = if asks_stream(&body) {
        ("text/event-stream", STREAM)
    } else if asks_json(&body) {
        ("application/json", ANSWER_JSON)
    } else {
        ("application/json", ANSWER)
    };
    Response::builder()
        .header("content-type", ct)
        .body(Body::from(text))
        .unwrap_or_default()
}

/// One embedding's answer, built once: 256 floats as an OpenAI `list` of one `embedding`.
fn embedding_answer() -> &'static str {
    static ANSWER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ANSWER.get_or_init(|| {
        let floats: Vec<String> = (0..256)
            .map(|i| format!("{:.8}", ((i * 7919) % 1000) as f64 / 1000.0 - 0.5))
            .collect();
        format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[{}]}}],"model":"bench-embed","usage":{{"prompt_tokens":3,"total_tokens":3}}}}"#,
            floats.join(",")
        )
    })
}

async fn embeddings() -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(embedding_answer()))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18081);
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/chat-messages", post(dify))
        .route("/v1/messages", post(messages))
        .route("/v1/embeddings", post(embeddings));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the bench mock port");
    axum::serve(listener, app).await.expect("serve");
}
