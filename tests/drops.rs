//! No silent drops: a request is served as asked, skipped past targets that cannot serve it, or
//! refused naming what cannot be served — never a 200 that quietly ignored `tools`, `n`,
//! `logprobs` (a JSON `response_format` is served on every target by checking the answer: see
//! `structured_output.rs`). Also: dropping by opt-in (`accept_unsupported`), tool-call
//! history rendered for Dify, `system_prompt_mode`, and LangChain + the openai SDK on top.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use support::dify::{key, MockDify, Mode};
use support::*;

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Dify-only, Dify-then-OpenAI, Dify dropping, OpenAI with a merged prompt, the built-in mock.
fn config(dify: &MockDify, openai: &MockOpenAi) -> String {
    format!(
        r#"
providers:
  dify-chat: {{ type: dify, base_url: "{d}", api_key: {k}, app: chat }}
  gpt: {{ type: openai, base_url: "{o}", api_key: sk-up }}
  builtin: {{ type: mock, reply: "demo answer" }}
scenarios:
  dify_only:
    targets: [{{ provider: dify-chat }}]
  dify_then_openai:
    strategy: failover
    targets: [{{ provider: dify-chat }}, {{ provider: gpt, model: gpt-up }}]
  dify_dropping:
    targets: [{{ provider: dify-chat, accept_unsupported: [tools, n] }}]
  merged:
    targets: [{{ provider: gpt, model: gpt-up, system_prompt: "Gateway rules.", system_prompt_mode: merge }}]
  replaced:
    targets: [{{ provider: gpt, model: gpt-up, system_prompt: "Gateway rules.", system_prompt_mode: replace }}]
  demo:
    targets: [{{ provider: builtin }}]
  demo_dropping:
    targets: [{{ provider: builtin, accept_unsupported: [tools] }}]
    cache: {{ ttl: 60s }}
"#,
        d = dify.url(),
        k = key(Mode::Chat),
        o = openai.url(),
    )
}

async fn setup() -> (MockDify, MockOpenAi, TestGateway) {
    let dify = MockDify::start().await;
    let openai = MockOpenAi::start().await;
    openai.set(|k| k.tool_call = Some(("get_weather".into(), r#"{"city":"Paris"}"#.into())));
    let gw = start_gateway(&config(&dify, &openai));
    (dify, openai, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dify_only_scenario_refuses_what_dify_cannot_serve_naming_it() {
    let (dify, _openai, gw) = setup().await;
    let cases = [
        (
            json!({"tools": weather_tool(), "tool_choice": "required"}),
            "tools",
        ),
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
    ];
    for stream in [false, true] {
        for (extra, param) in &cases {
            let mut body = json!({"model": "dify_only", "messages": user("hi"), "stream": stream});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let r = chat(&gw).body(body).send().await;
            assert_eq!(r.status, 400, "{param}: {}", r.text);
            let e = &r.json()["error"];
            assert_eq!(e["code"], "unsupported_parameter", "{}", r.text);
            assert_eq!(e["type"], "invalid_request_error");
            assert_eq!(e["param"], *param);
            let message = e["message"].as_str().unwrap();
            assert!(
                message.contains("dify_only") && message.contains("dify-chat (dify)"),
                "names the scenario and the targets considered: {message}"
            );
        }
    }
    assert!(dify.calls().is_empty(), "nothing was sent to Dify");
    // `n: 1`, `logprobs: false` and a text format ask for nothing Dify lacks.
    let r = chat(&gw)
        .body(
            json!({"model": "dify_only", "messages": user("hi"), "n": 1, "logprobs": false,
                     "response_format": {"type": "text"}}),
        )
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = gw.metrics_with(r#"outcome="unsupported""#);
    assert!(
        m.contains(
            r#"ai_gateway_upstream_attempts_total{outcome="unsupported",provider="dify-chat"} 6"#
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_request_skips_dify_and_is_answered_by_the_openai_target() {
    let (dify, openai, gw) = setup().await;
    for stream in [false, true] {
        let r = chat(&gw)
            .body(
                json!({"model": "dify_then_openai", "messages": user("Weather in Paris?"),
                         "tools": weather_tool(), "tool_choice": "required", "stream": stream}),
            )
            .send()
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-gateway-provider"), Some("gpt"));
        assert_eq!(r.header("x-gateway-attempts"), Some("1"));
        assert_eq!(r.header("x-gateway-dropped"), None);
        let call = if stream {
            let events = r.sse_events();
            events[0]["choices"][0]["delta"]["tool_calls"][0].clone()
        } else {
            r.json()["choices"][0]["message"]["tool_calls"][0].clone()
        };
        assert_eq!(call["function"]["name"], "get_weather", "{}", r.text);
        let sent = openai.last().json();
        assert_eq!(
            sent["tools"],
            weather_tool(),
            "the tools reached the upstream"
        );
        assert_eq!(sent["tool_choice"], "required");
    }
    assert!(dify.calls().is_empty());
    let m = gw.metrics_with(r#"outcome="unsupported""#);
    assert!(
        m.contains(
            r#"ai_gateway_upstream_attempts_total{outcome="unsupported",provider="dify-chat"} 2"#
        ),
        "{m}"
    );
    // A plain request still goes to Dify first.
    let r = chat(&gw)
        .body(json!({"model": "dify_then_openai", "messages": user("hi")}))
        .send()
        .await;
    assert_eq!(r.header("x-gateway-provider"), Some("dify-chat"));
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_unsupported_serves_without_the_fields_and_says_which() {
    let (dify, _openai, gw) = setup().await;
    let r = chat(&gw)
        .body(json!({"model": "dify_dropping", "messages": user("hi"), "tools": weather_tool(), "n": 2}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-dropped"), Some("tools,n"));
    assert_eq!(dify.calls().len(), 1);
    // Only what was asked for and dropped is named; what it cannot drop is still refused.
    let r = chat(&gw)
        .body(json!({"model": "dify_dropping", "messages": user("hi"), "tools": weather_tool(), "stream": true}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-dropped"), Some("tools"));
    assert!(!r.content().is_empty(), "{}", r.text);
    let r = chat(&gw)
        .body(json!({"model": "dify_dropping", "messages": user("hi"), "logprobs": true}))
        .send()
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "logprobs");

    // The built-in mock drops by opt-in too; its upstream body no longer has the tools.
    let r = chat(&gw)
        .body(json!({"model": "demo_dropping", "messages": user("hi"), "tools": weather_tool()}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-dropped"), Some("tools"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "demo answer");
    // Not cached: a hit could not say what was dropped to produce it.
    let again = chat(&gw)
        .body(json!({"model": "demo_dropping", "messages": user("hi"), "tools": weather_tool()}))
        .send()
        .await;
    assert_eq!(again.header("x-gateway-cache"), Some("miss"));
    assert_eq!(again.header("x-gateway-dropped"), Some("tools"));
    let r = chat(&gw)
        .body(json!({"model": "demo", "messages": user("hi"), "tools": weather_tool()}))
        .send()
        .await;
    assert_eq!(r.status, 400, "the mock does not pretend to call tools");
    assert_eq!(r.error_code(), "unsupported_parameter");
}

fn tool_history() -> Value {
    json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_7", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "{\"temp_c\":21}"},
        {"role": "assistant", "content": "It is 21 degrees."},
        {"role": "user", "content": "And tomorrow?"}
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_and_results_in_the_history_reach_dify_as_text() {
    let (dify, _openai, gw) = setup().await;
    let r = chat(&gw)
        .body(json!({"model": "dify_only", "messages": tool_history()}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let query = dify.calls()[0].body["query"].as_str().unwrap().to_owned();
    for part in [
        "user: Weather in Paris?",
        r#"assistant: [calls tool get_weather with arguments {"city":"Paris"}, call call_7]"#,
        r#"tool: [result of tool get_weather, call call_7] {"temp_c":21}"#,
        "assistant: It is 21 degrees.",
        "Current message:\nAnd tomorrow?",
    ] {
        assert!(
            query.contains(part),
            "{part:?} missing from the query: {query}"
        );
    }

    // Answering a tool result is a tool conversation: Dify cannot continue it.
    let waiting = tool_history().as_array().unwrap()[..4].to_vec();
    let r = chat(&gw)
        .body(json!({"model": "dify_only", "messages": waiting}))
        .send()
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["param"], "messages");
    assert_eq!(r.error_code(), "unsupported_parameter");
    let r = chat(&gw)
        .body(json!({"model": "dify_then_openai", "messages": waiting}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-provider"), Some("gpt"));
    assert_eq!(dify.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn system_prompt_mode_merges_or_replaces_the_clients_system_messages() {
    let (_dify, openai, gw) = setup().await;
    let messages =
        json!([{"role": "system", "content": "Client rules."}, {"role": "user", "content": "hi"}]);
    let r = chat(&gw)
        .body(json!({"model": "merged", "messages": messages}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = openai.last().json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Gateway rules.\n\nClient rules."}, {"role": "user", "content": "hi"}])
    );
    chat(&gw)
        .body(json!({"model": "replaced", "messages": messages}))
        .send()
        .await;
    assert_eq!(
        openai.last().json()["messages"],
        json!([{"role": "system", "content": "Gateway rules."}, {"role": "user", "content": "hi"}])
    );
}

fn python() -> PathBuf {
    python_with("openai, langchain_openai")
}

#[tokio::test(flavor = "multi_thread")]
async fn langchain_and_the_openai_sdk_see_refusals_and_tool_calls() {
    let python = python();
    let (dify, _openai, gw) = setup().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/langchain_check.py");
    let base = format!("{}/v1", gw.api);
    let stdout = run_sdk_script(
        python,
        script,
        vec!["--gateway".to_string(), base.to_string()],
    )
    .await;
    assert!(stdout.contains("ALL OK"), "{stdout}");
    assert!(dify.calls().is_empty(), "no tool request reached Dify");
}
