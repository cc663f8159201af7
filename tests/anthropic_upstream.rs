//! Claude as an upstream (`type: anthropic`), through the real gateway against the mock
//! Messages API (`tests/support/anthropic.rs`): what the upstream receives for an OpenAI chat
//! request, how its event stream comes back (stream and non-stream), errors and failover,
//! metrics, the response cache, and the official openai Python SDK (`tests/sdk/claude_check.py`).

mod support;

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

#[tokio::test(flavor = "multi_thread")]
async fn the_call_has_the_key_in_x_api_key_the_version_and_always_streams() {
    let s = setup(AnthropicKnobs::default()).await;
    for stream in [false, true] {
        let a = ask(&s.gw, "claude", stream, user("Hello")).send().await;
        assert_eq!(a.status, 200, "stream={stream}: {}", a.text);
        assert_eq!(provider(&a), Some("claude"));
        let r = s.claude.last();
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key").as_deref(), Some(MOCK_KEY));
        assert_eq!(r.header("authorization"), None, "never a bearer key");
        assert_eq!(r.header("anthropic-version").as_deref(), Some("2023-06-01"));
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("accept").as_deref(), Some("text/event-stream"));
        assert_eq!(r.header("anthropic-beta"), None);
        let body = r.json();
        assert_eq!(body["stream"], true, "stream={stream}: {body}");
        assert_eq!(body["model"], "claude-test", "{body}");
        assert_eq!(body["max_tokens"], 4096, "the default: {body}");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
        );
        for field in ["stream_options", "n", "metadata", "tools", "tool_choice"] {
            assert!(body.get(field).is_none(), "{field} sent: {body}");
        }
    }
    assert_eq!(s.claude.count(), 2);

    // A provider's own version is the header on every call.
    let s = setup_with(AnthropicKnobs::default(), r#"version: "2023-01-01""#).await;
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        s.claude.last().header("anthropic-version").as_deref(),
        Some("2023-01-01")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn system_and_developer_messages_join_the_top_level_system_after_the_target_prompt() {
    let s = setup(AnthropicKnobs::default()).await;
    let messages = json!([
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Which cream?"},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "assistant", "content": "A rich one."},
        {"role": "system", "content": "Never name brands."},
        {"role": "user", "content": "For winter?"}
    ]);
    let a = ask(&s.gw, "claude", false, messages.clone()).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let body = sent(&s);
    assert_eq!(
        body["system"],
        format!("{PROMPT}\n\nAnswer in English.\n\nBe brief.\n\nNever name brands."),
        "{body}"
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Which cream?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A rich one."}]},
            {"role": "user", "content": [{"type": "text", "text": "For winter?"}]}
        ])
    );

    // Without a target prompt: the client's texts alone; with `replace`: the prompt alone.
    let a = ask(&s.gw, "bare", false, messages.clone()).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        sent(&s)["system"],
        "Answer in English.\n\nBe brief.\n\nNever name brands."
    );
    let a = ask(&s.gw, "replace", false, messages).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(sent(&s)["system"], PROMPT);
    // No system text at all: no `system` field.
    let a = ask(&s.gw, "bare", false, user("Hi")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(sent(&s).get("system").is_none(), "{}", sent(&s));
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_and_results_become_tool_use_and_one_user_turn_of_tool_results() {
    let s = setup(AnthropicKnobs::default()).await;
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let mut body = request(
        "bare",
        false,
        json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21 C"}]},
            {"role": "user", "content": "And which is warmer?"}
        ]),
    );
    body["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": schema}},
        {"type": "function", "function": {"name": "get_time"}}
    ]);
    body["tool_choice"] = json!("required");
    let a = chat(&s.gw).body(body.clone()).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let up = sent(&s);
    assert_eq!(
        up["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "21 C"},
                {"type": "text", "text": "And which is warmer?"}
            ]}
        ]),
        "{up}"
    );
    assert_eq!(
        up["tools"],
        json!([
            {"name": "get_weather", "description": "Weather of a city", "input_schema": schema},
            {"name": "get_time", "input_schema": {"type": "object"}}
        ])
    );
    assert_eq!(up["tool_choice"], json!({"type": "any"}));

    // The other tool choices.
    for (choice, parallel, expected) in [
        (json!("auto"), None, json!({"type": "auto"})),
        (json!("none"), None, json!({"type": "none"})),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            None,
            json!({"type": "tool", "name": "get_time"}),
        ),
        (
            Value::Null,
            Some(false),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
    ] {
        let mut b = body.clone();
        b["tool_choice"] = choice.clone();
        if let Some(p) = parallel {
            b["parallel_tool_calls"] = json!(p);
        }
        let a = chat(&s.gw).body(b).send().await;
        assert_eq!(a.status, 200, "{choice}: {}", a.text);
        assert_eq!(sent(&s)["tool_choice"], expected, "{choice}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_data_url_becomes_a_base64_source_and_an_http_url_a_url_source() {
    let s = setup(AnthropicKnobs::default()).await;
    let messages = json!([{"role": "user", "content": [
        {"type": "text", "text": "What is on these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cream.jpg"}}
    ]}]);
    let a = ask(&s.gw, "bare", false, messages).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        sent(&s)["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "What is on these?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cream.jpg"}}
        ]}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_max_tokens_and_user_are_renamed_and_params_fill_the_gaps() {
    let s = setup(AnthropicKnobs::default()).await;
    let send = |extra: Value, scenario: &'static str| {
        let mut b = request(scenario, false, user("Hi"));
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        chat(&s.gw).body(b).send()
    };

    let a = send(json!({"stop": "END", "max_tokens": 300, "user": "u-42", "temperature": 0.3, "top_k": 5, "frequency_penalty": 0.5, "seed": 7}), "claude").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let up = sent(&s);
    assert_eq!(up["stop_sequences"], json!(["END"]), "{up}");
    assert_eq!(up["max_tokens"], 300, "{up}");
    assert_eq!(up["metadata"], json!({"user_id": "u-42"}), "{up}");
    assert_eq!(up["temperature"], 0.3, "{up}");
    assert_eq!(up["top_k"], 5, "passed as sent: {up}");
    for field in ["stop", "user", "frequency_penalty", "seed"] {
        assert!(up.get(field).is_none(), "{field} sent: {up}");
    }

    let a = send(
        json!({"stop": ["END", "###"], "max_completion_tokens": 200, "max_tokens": 300}),
        "claude",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let up = sent(&s);
    assert_eq!(up["stop_sequences"], json!(["END", "###"]), "{up}");
    assert_eq!(up["max_tokens"], 200, "max_completion_tokens first: {up}");

    // The target's params when the client sets none; the client's value wins over them.
    let a = send(json!({}), "bare").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(sent(&s)["max_tokens"], 1000);
    let a = send(json!({"max_tokens": 64}), "bare").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(sent(&s)["max_tokens"], 64);

    // Messages names are refused, never sent.
    let before = s.claude.count();
    for field in ["system", "stop_sequences"] {
        let a = send(json!({ field: "x" }), "claude").await;
        assert_eq!(a.status, 400, "{field}: {}", a.text);
        assert_eq!(error_of(&a)["param"], field, "{}", a.text);
    }
    assert_eq!(s.claude.count(), before);
}

// ---------------------------------------------------------------------------------------------
// The answer the client gets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_non_stream_text_answer_is_one_chat_completion() {
    let s = setup(AnthropicKnobs::default()).await;
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(!a.is_sse(), "{:?}", a.headers);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-msg_mock_")),
        "{v}"
    );
    assert_eq!(v["model"], "claude", "the model the client asked for: {v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant", "{v}");
    assert_eq!(choice["message"]["content"], DEFAULT_TEXT, "{v}");
    assert!(
        choice["message"]
            .get("tool_calls")
            .is_none_or(Value::is_null),
        "{v}"
    );
    assert!(
        choice["message"]
            .get("reasoning_content")
            .is_none_or(Value::is_null),
        "{v}"
    );
    assert_eq!(choice["finish_reason"], "stop", "{v}");
    assert_eq!(
        v["usage"]["prompt_tokens"], 25,
        "the mock's input_tokens: {v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 15, "{v}");
    assert_eq!(v["usage"]["total_tokens"], 40, "{v}");
    assert!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"].is_null(),
        "no cached tokens: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_stream_tool_call_has_whole_arguments_and_finish_reason_tool_calls() {
    let input = json!({"city": "Paris", "unit": "celsius"});
    let s = setup(AnthropicKnobs {
        text: String::new(),
        tool_use: Some(("get_weather".into(), input.clone())),
        ..Default::default()
    })
    .await;
    let mut body = request("claude", false, user("Weather in Paris?"));
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let a = chat(&s.gw).body(body).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    let message = &v["choices"][0]["message"];
    assert!(message["content"].is_null(), "only tool calls: {v}");
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["id"], TOOL_ID, "{v}");
    assert_eq!(calls[0]["type"], "function", "{v}");
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{v}");
    let arguments = calls[0]["function"]["arguments"]
        .as_str()
        .unwrap_or_else(|| panic!("arguments are a JSON string: {v}"));
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        input,
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_with_include_usage_counts_every_prompt_token_and_the_cached_ones() {
    let s = setup(AnthropicKnobs {
        input_tokens: 25,
        cache_read_input_tokens: 100,
        cache_creation_input_tokens: 7,
        output_tokens: 15,
        ping: true,
        ..Default::default()
    })
    .await;
    let a = ask(&s.gw, "claude", true, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.is_sse(), "{:?}", a.headers);
    let data = a.sse();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        a.text
    );
    let events = a.sse_events();
    assert!(
        events.iter().all(|e| e["object"] == "chat.completion.chunk"
            && e["model"] == "claude"
            && e.get("error").is_none()),
        "{}",
        a.text
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{}", a.text);
    assert!(
        ids.iter().next().unwrap().starts_with("chatcmpl-msg_mock_"),
        "{}",
        a.text
    );
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(a.content(), DEFAULT_TEXT);
    assert_eq!(finish_reason(&a), "stop");
    let u = usage(&a);
    assert_eq!(
        u["prompt_tokens"], 132,
        "input + cache read + cache creation: {u}"
    );
    assert_eq!(u["completion_tokens"], 15, "{u}");
    assert_eq!(u["total_tokens"], 147, "{u}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 100, "{u}");

    // The same numbers for a non-stream client.
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    let u = usage(&a);
    assert_eq!(
        (
            &u["prompt_tokens"],
            &u["completion_tokens"],
            &u["prompt_tokens_details"]["cached_tokens"]
        ),
        (&json!(132), &json!(15), &json!(100)),
        "{u}"
    );
    assert_eq!(s.claude.abandoned(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_tool_call_starts_at_index_0_with_its_id_and_name_once() {
    let input = json!({"city": "Paris", "unit": "celsius"});
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    for text in ["", "Checking."] {
        let s = setup(AnthropicKnobs {
            text: text.into(),
            tool_use: Some(("get_weather".into(), input.clone())),
            ..Default::default()
        })
        .await;
        let mut body = request("claude", true, user("Weather in Paris?"));
        body["tools"] = tools.clone();
        let a = chat(&s.gw).body(body).send().await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.content(), text, "{}", a.text);
        let pieces = tool_pieces(&a);
        assert!(pieces.len() >= 2, "{}", a.text);
        assert!(
            pieces.iter().all(|p| p["index"] == 0),
            "the first call is index 0, whatever its block index: {}",
            a.text
        );
        assert_eq!(pieces[0]["id"], TOOL_ID, "{}", a.text);
        assert_eq!(pieces[0]["type"], "function", "{}", a.text);
        assert_eq!(pieces[0]["function"]["name"], "get_weather", "{}", a.text);
        assert!(
            pieces[1..]
                .iter()
                .all(|p| p.get("id").is_none() && p["function"].get("name").is_none()),
            "id and name on the first piece only: {}",
            a.text
        );
        let arguments: String = pieces
            .iter()
            .filter_map(|p| p["function"]["arguments"].as_str())
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), input);
        assert_eq!(finish_reason(&a), "tool_calls", "{}", a.text);
        assert_eq!(a.sse().last().map(String::as_str), Some("[DONE]"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_without_arguments_ends_with_an_empty_object() {
    let s = setup(AnthropicKnobs {
        text: String::new(),
        tool_use: Some(("get_time".into(), json!({}))),
        ..Default::default()
    })
    .await;
    let tools = json!([{"type": "function", "function": {"name": "get_time"}}]);
    let mut body = request("claude", true, user("What time is it?"));
    body["tools"] = tools;
    let a = chat(&s.gw).body(body.clone()).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let pieces = tool_pieces(&a);
    let arguments: String = pieces
        .iter()
        .filter_map(|p| p["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{}", "{}", a.text);
    assert_eq!(pieces[0]["function"]["name"], "get_time");

    body["stream"] = json!(false);
    body.as_object_mut().unwrap().remove("stream_options");
    let a = chat(&s.gw).body(body).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thinking_reaches_the_client_as_reasoning_content() {
    let thinking = "The client has dry skin; it is winter.";
    let s = setup(AnthropicKnobs {
        thinking: Some(thinking.into()),
        ..Default::default()
    })
    .await;
    let a = ask(&s.gw, "claude", true, user("Which cream?"))
        .send()
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let reasoning: String = a
        .sse_events()
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, thinking, "{}", a.text);
    assert_eq!(a.content(), DEFAULT_TEXT);
    assert!(
        !a.text.contains(SIGNATURE),
        "signatures are dropped: {}",
        a.text
    );

    let a = ask(&s.gw, "claude", false, user("Which cream?"))
        .send()
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"], thinking,
        "{v}"
    );
    assert_eq!(v["choices"][0]["message"]["content"], DEFAULT_TEXT, "{v}");
    assert!(!a.text.contains(SIGNATURE), "{}", a.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_reasons_become_finish_reasons() {
    let s = setup(AnthropicKnobs::default()).await;
    for (stop, finish) in [
        ("refusal", "content_filter"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("something_new_2030", "stop"),
    ] {
        s.claude.set(|k| k.stop_reason = stop.into());
        for stream in [false, true] {
            let a = ask(&s.gw, "claude", stream, user("Hello")).send().await;
            assert_eq!(a.status, 200, "{stop}: {}", a.text);
            assert_eq!(
                finish_reason(&a),
                finish,
                "{stop} stream={stream}: {}",
                a.text
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and failover
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_alone_is_a_429_and_the_target_rests() {
    let s = setup(AnthropicKnobs {
        status: 429,
        error_type: "rate_limit_error".into(),
        retry_after: Some(5),
        ..Default::default()
    })
    .await;
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(a.error_code(), "rate_limit_exceeded", "{}", a.text);
    let retry: u64 = a
        .header("retry-after")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {:?}", a.headers));
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_eq!(s.claude.count(), 1);

    // While it rests, the next request is not sent upstream at all.
    let second = ask(&s.gw, "claude", true, user("Hello")).send().await;
    assert_eq!(second.status, 429, "{}", second.text);
    assert_eq!(s.claude.count(), 1, "a resting target is not contacted");
    let admin = get_json(format!("{}/admin/providers", s.gw.admin), ADMIN_KEY).await;
    let resting = admin["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["provider"] == "claude"))
        .map(|t| t["resting_seconds"].clone());
    assert!(
        resting
            .as_ref()
            .and_then(Value::as_f64)
            .is_some_and(|r| r > 0.0 && r <= 5.0),
        "{admin}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_fails_over_to_the_backup_and_alone_is_a_503() {
    let s = setup(AnthropicKnobs {
        status: 529,
        error_type: "overloaded_error".into(),
        ..Default::default()
    })
    .await;
    for stream in [false, true] {
        let a = ask(&s.gw, "pair", stream, user("Hello")).send().await;
        assert_eq!(a.status, 200, "stream={stream}: {}", a.text);
        assert_eq!(provider(&a), Some("backup"), "stream={stream}");
        assert_eq!(a.header("x-gateway-attempts"), Some("2"));
        assert_eq!(a.content(), BACKUP_REPLY);
    }
    assert_eq!(s.claude.count(), 2);
    assert_eq!(s.backup.count(), 2);
    // Alone (last: its retries of the same target draw on the gateway's retry budget).
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(provider(&a), Some("claude"));
    assert_eq!(a.error_code(), "upstream_overloaded", "{}", a.text);
    assert_eq!(s.backup.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_request_error_passes_through_with_its_message() {
    let s = setup(AnthropicKnobs::default()).await;
    for stream in [false, true] {
        // Anthropic accepts temperature up to 1; the gateway passes 1.5 for it to judge.
        let mut body = request("pair", stream, user("Hello"));
        body["temperature"] = json!(1.5);
        let a = chat(&s.gw).body(body).send().await;
        assert_eq!(a.status, 400, "stream={stream}: {}", a.text);
        assert_eq!(provider(&a), Some("claude"));
        let e = error_of(&a);
        assert_eq!(e["type"], "invalid_request_error", "{}", a.text);
        assert_eq!(e["code"], "invalid_request_error", "{}", a.text);
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("temperature: Input should be less than or equal to 1")),
            "Anthropic's words: {}",
            a.text
        );
    }
    assert_eq!(s.claude.count(), 2);
    assert_eq!(s.backup.count(), 0, "a client error never fails over");

    // A status knob with the same type: passed the same way.
    s.claude.set(|k| {
        k.status = 400;
        k.error_type = "invalid_request_error".into();
    });
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(
        error_of(&a)["message"]
            .as_str()
            .is_some_and(|m| m.contains("mock failure")),
        "{}",
        a.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_is_a_502_that_never_shows_the_key() {
    // Built at run time so the repository holds nothing shaped like a real key.
    let wrong = ["sk", "-ant-api03-wrongkey0123456789abcdef"].concat();
    let s = setup_with(AnthropicKnobs::default(), &format!("api_key: {wrong}")).await;
    for stream in [false, true] {
        let a = ask(&s.gw, "claude", stream, user("Hello")).send().await;
        assert_eq!(a.status, 502, "stream={stream}: {}", a.text);
        assert_eq!(a.error_code(), "upstream_error", "{}", a.text);
        assert_eq!(a.header("x-should-retry"), Some("false"), "{:?}", a.headers);
        assert!(!a.text.contains(&wrong), "{}", a.text);
        assert!(!a.text.contains("wrongkey"), "{}", a.text);
        assert!(!a.text.contains(MOCK_KEY), "{}", a.text);
    }
    assert_eq!(s.claude.last().header("x-api-key"), Some(wrong.clone()));
    // The gateway's key is at fault, not the client: another target may serve.
    let a = ask(&s.gw, "pair", false, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(provider(&a), Some("backup"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_event_before_content_fails_over_to_the_backup() {
    let s = setup(AnthropicKnobs {
        error_event_after: Some(0),
        ping: true,
        ..Default::default()
    })
    .await;
    for stream in [false, true] {
        let a = ask(&s.gw, "pair", stream, user("Hello")).send().await;
        assert_eq!(a.status, 200, "stream={stream}: {}", a.text);
        assert_eq!(provider(&a), Some("backup"), "stream={stream}");
        assert_eq!(a.header("x-gateway-attempts"), Some("2"));
        assert_eq!(a.content(), BACKUP_REPLY);
        assert!(!a.text.contains("Overloaded"), "{}", a.text);
    }
    assert_eq!(s.claude.count(), 2);
    assert_eq!(s.backup.count(), 2);
    // Alone: the overload as a status.
    let a = ask(&s.gw, "claude", true, user("Hello")).send().await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.error_code(), "upstream_overloaded", "{}", a.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_event_after_content_ends_the_stream_with_an_error_and_done() {
    let s = setup(AnthropicKnobs {
        error_event_after: Some(2),
        ..Default::default()
    })
    .await;
    let a = ask(&s.gw, "pair", true, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(provider(&a), Some("claude"));
    let data = a.sse();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        a.text
    );
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(
        error["error"]["code"], "upstream_overloaded",
        "the overloaded_error event, before [DONE]: {}",
        a.text
    );
    assert!(error["error"]["message"].is_string(), "{}", a.text);
    let content = a.content();
    assert!(
        !content.is_empty() && DEFAULT_TEXT.starts_with(&content) && content != DEFAULT_TEXT,
        "{content:?}"
    );
    assert_eq!(s.backup.count(), 0, "no failover after the first content");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_arguments_that_are_not_json_are_a_400_naming_the_message() {
    let s = setup(AnthropicKnobs::default()).await;
    for arguments in ["{not json", "", "[1, 2]"] {
        let messages = json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
        ]);
        let a = ask(&s.gw, "claude", false, messages).send().await;
        assert_eq!(a.status, 400, "{arguments:?}: {}", a.text);
        let e = error_of(&a);
        assert_eq!(e["type"], "invalid_request_error", "{}", a.text);
        let named = e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("messages[1]")
            || e["param"]
                .as_str()
                .is_some_and(|p| p.starts_with("messages[1]"));
        assert!(named, "{arguments:?}: names messages[1]: {}", a.text);
    }
    assert_eq!(s.claude.count(), 0, "nothing is sent upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_name_over_64_characters_is_a_400() {
    let s = setup(AnthropicKnobs::default()).await;
    let tools = |name: &str| json!([{"type": "function", "function": {"name": name}}]);
    let mut body = request("claude", false, user("Hello"));
    body["tools"] = tools(&"t".repeat(65));
    let a = chat(&s.gw).body(body.clone()).send().await;
    assert_eq!(a.status, 400, "{}", a.text);
    let e = error_of(&a);
    assert_eq!(e["param"], "tools[0].function.name", "{}", a.text);
    assert_eq!(s.claude.count(), 0);

    body["tools"] = tools(&"t".repeat(64));
    let a = chat(&s.gw).body(body).send().await;
    assert_eq!(a.status, 200, "64 characters are fine: {}", a.text);
    assert_eq!(s.claude.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Metrics and the response cache
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn token_metrics_count_claude_usage() {
    let s = setup(AnthropicKnobs {
        input_tokens: 25,
        cache_read_input_tokens: 100,
        cache_creation_input_tokens: 7,
        output_tokens: 15,
        ..Default::default()
    })
    .await;
    let a = ask(&s.gw, "claude", false, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = ask(&s.gw, "claude", true, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let prompt =
        r#"ai_gateway_tokens_total{kind="prompt",provider="claude",scenario="claude"} 264"#;
    let completion =
        r#"ai_gateway_tokens_total{kind="completion",provider="claude",scenario="claude"} 30"#;
    let m = s.gw.metrics_with(completion);
    let m = if m.contains(prompt) {
        m
    } else {
        s.gw.metrics_with(prompt)
    };
    assert!(m.contains(prompt), "{m}");
    assert!(m.contains(completion), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_scenario_on_claude_serves_the_second_identical_request_from_the_cache() {
    let s = setup(AnthropicKnobs::default()).await;
    let cache = |a: &Answer| a.header("x-gateway-cache").unwrap_or("").to_owned();
    let first = ask(&s.gw, "cached", false, user("Which cream?"))
        .send()
        .await;
    assert_eq!(
        (first.status, cache(&first).as_str()),
        (200, "miss"),
        "{}",
        first.text
    );
    let second = ask(&s.gw, "cached", false, user("Which cream?"))
        .send()
        .await;
    assert_eq!(
        (second.status, cache(&second).as_str()),
        (200, "hit"),
        "{}",
        second.text
    );
    assert_eq!(second.content(), DEFAULT_TEXT);
    // The stored answer replays as a stream too.
    let replay = ask(&s.gw, "cached", true, user("Which cream?"))
        .send()
        .await;
    assert_eq!(cache(&replay), "hit", "{}", replay.text);
    assert_eq!(replay.content(), DEFAULT_TEXT);
    assert_eq!(s.claude.count(), 1, "one upstream call for three answers");

    // Answers with tool calls are never stored.
    s.claude
        .set(|k| k.tool_use = Some(("get_weather".into(), json!({"city": "Paris"}))));
    let mut body = request("cached", false, user("Weather in Paris?"));
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather"}}]);
    for _ in 0..2 {
        let a = chat(&s.gw).body(body.clone()).send().await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_ne!(cache(&a), "hit", "{}", a.text);
    }
    assert_eq!(s.claude.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// The official openai Python SDK
// ---------------------------------------------------------------------------------------------

fn python() -> PathBuf {
    let candidate = std::env::var_os("AI_GATEWAY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with the openai SDK at {}: run scripts/test.sh (it creates .venv), or set AI_GATEWAY_PYTHON",
        candidate.display()
    );
    candidate
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_against_a_claude_target() {
    let python = python();
    let text = MockAnthropic::start_with(AnthropicKnobs {
        input_tokens: 20,
        cache_read_input_tokens: 10,
        output_tokens: 15,
        ..Default::default()
    })
    .await;
    let tools = MockAnthropic::start_with(AnthropicKnobs {
        text: String::new(),
        tool_use: Some((
            "get_weather".into(),
            json!({"city": "Paris", "unit": "celsius"}),
        )),
        ..Default::default()
    })
    .await;
    let yaml = format!(
        r#"
clients:
  - name: svc
    api_key: sdk-client-key
providers:
  claude: {{ type: anthropic, base_url: "{text}", api_key: {MOCK_KEY} }}
  claude-tools: {{ type: anthropic, base_url: "{tools}", api_key: {MOCK_KEY} }}
scenarios:
  assistant:
    targets: [{{ provider: claude, model: claude-test }}]
  assistant-tools:
    targets: [{{ provider: claude-tools, model: claude-test }}]
"#,
        text = text.url(),
        tools = tools.url()
    );
    let gw = start_gateway(&yaml);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/claude_check.py");
    let gateway = format!("{}/v1", gw.api);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--gateway", &gateway, "--key", "sdk-client-key"])
            .args(["--model", "assistant", "--tools-model", "assistant-tools"])
            .args(["--text", DEFAULT_TEXT])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("claude sdk checks passed"), "{stdout}");
    print!("{stdout}");

    assert_eq!(text.count(), 2, "non-stream and stream");
    assert_eq!(
        tools.count(),
        3,
        "tool call non-stream, stream, stream helper"
    );
    for r in text.received().into_iter().chain(tools.received()) {
        assert_eq!(r.header("x-api-key").as_deref(), Some(MOCK_KEY));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.json()["stream"], true);
    }
    let tool_request = tools.last().json();
    assert_eq!(
        tool_request["tools"][0]["name"], "get_weather",
        "{tool_request}"
    );
}
