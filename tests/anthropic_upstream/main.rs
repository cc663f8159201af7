//! Claude as an upstream (`type: anthropic`), through the real gateway against the mock
//! Messages API (`tests/support/anthropic.rs`): what the upstream receives for an OpenAI chat
//! request, how its event stream comes back (stream and non-stream), errors and failover,
//! metrics, the response cache, and the official openai Python SDK (`tests/sdk/claude_check.py`).

#[path = "../support/mod.rs"]
mod support;

mod answers;
mod faults;
mod requests;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use support::anthropic::{
    AnthropicKnobs, MockAnthropic, DEFAULT_TEXT, MOCK_KEY, SIGNATURE, TOOL_ID,
};
use support::*;

const ADMIN_KEY: &str = "adminkey";
const PROMPT: &str = "You are the skin-care assistant.";
const BACKUP_REPLY: &str = "The backup target answers instead.";

/// A Claude upstream, a healthy OpenAI-compatible `backup` and a gateway with these scenarios:
/// - `claude`: Claude alone (model `claude-test`, system prompt `PROMPT`);
/// - `bare`: Claude alone, no system prompt, `params: { max_tokens: 1000 }`;
/// - `replace`: like `claude` with `system_prompt_mode: replace`;
/// - `pair`: Claude first, `backup` second;
/// - `cached`: Claude alone with a response cache.
struct Setup {
    claude: MockAnthropic,
    backup: MockOpenAi,
    gw: TestGateway,
}

async fn setup(knobs: AnthropicKnobs) -> Setup {
    setup_with(knobs, "").await
}

/// `provider` holds extra fields of the Claude provider block (`api_key: …` replaces the key).
async fn setup_with(knobs: AnthropicKnobs, provider: &str) -> Setup {
    let claude = MockAnthropic::start_with(knobs).await;
    let backup = MockOpenAi::start_with(Knobs {
        content: BACKUP_REPLY.into(),
        ..Default::default()
    })
    .await;
    let key = if provider.contains("api_key") {
        String::new()
    } else {
        format!(", api_key: {MOCK_KEY}")
    };
    let extra = if provider.is_empty() {
        String::new()
    } else {
        format!(", {provider}")
    };
    let yaml = format!(
        r#"
admin:
  api_key: {ADMIN_KEY}
providers:
  claude: {{ type: anthropic, base_url: "{claude}"{key}{extra} }}
  backup: {{ type: openai, base_url: "{backup}", api_key: sk-backup }}
scenarios:
  claude:
    targets: [{{ provider: claude, model: claude-test, system_prompt: "{PROMPT}" }}]
  bare:
    targets: [{{ provider: claude, model: claude-test, params: {{ max_tokens: 1000 }} }}]
  replace:
    targets: [{{ provider: claude, model: claude-test, system_prompt: "{PROMPT}", system_prompt_mode: replace }}]
  pair:
    targets:
      - {{ provider: claude, model: claude-test }}
      - {{ provider: backup, model: backup-model }}
  cached:
    cache: {{ ttl: 600s }}
    targets: [{{ provider: claude, model: claude-test }}]
"#,
        claude = claude.url(),
        backup = backup.url()
    );
    let gw = start_gateway(&yaml);
    Setup { claude, backup, gw }
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// A request to `scenario` with `messages`, stream or not (streams ask for usage).
fn ask(gw: &TestGateway, scenario: &str, stream: bool, messages: Value) -> Chat {
    chat(gw).body(request(scenario, stream, messages))
}

fn request(scenario: &str, stream: bool, messages: Value) -> Value {
    let mut body = json!({"model": scenario, "stream": stream, "messages": messages});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn provider(a: &Answer) -> Option<&str> {
    a.header("x-gateway-provider")
}

/// The JSON error of an OpenAI-shaped error answer.
fn error_of(a: &Answer) -> Value {
    assert!(
        !a.is_sse(),
        "an error before the stream is JSON: {:?}",
        a.headers
    );
    let e = a.json()["error"].clone();
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
    e
}

/// The upstream's last request body.
fn sent(s: &Setup) -> Value {
    s.claude.last().json()
}

/// A stream's tool call pieces, in order.
fn tool_pieces(a: &Answer) -> Vec<Value> {
    a.sse_events()
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .flatten()
        .collect()
}

/// The finish reason of a stream or a completion.
fn finish_reason(a: &Answer) -> Value {
    if a.is_sse() {
        a.sse_events()
            .iter()
            .find_map(|e| {
                let f = &e["choices"][0]["finish_reason"];
                (!f.is_null()).then(|| f.clone())
            })
            .unwrap_or(Value::Null)
    } else {
        a.json()["choices"][0]["finish_reason"].clone()
    }
}

/// The usage chunk of a stream (the last event), or the completion's usage.
fn usage(a: &Answer) -> Value {
    if a.is_sse() {
        let events = a.sse_events();
        let with: Vec<&Value> = events.iter().filter(|e| e["usage"].is_object()).collect();
        assert_eq!(with.len(), 1, "one usage chunk: {}", a.text);
        assert_eq!(with[0], events.last().unwrap(), "usage last: {}", a.text);
        with[0]["usage"].clone()
    } else {
        a.json()["usage"].clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The request Claude receives
// ---------------------------------------------------------------------------------------------
