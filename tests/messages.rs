//! `POST /v1/messages`: the Anthropic Messages API as a front door, routed to OpenAI-compatible,
//! Dify, Anthropic and built-in targets — exact event order, Anthropic error shapes, tools both
//! ways, count_tokens, cache hits in Anthropic shape — and the official `anthropic` SDK.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use support::anthropic::{AnthropicKnobs, MockAnthropic, MOCK_KEY, SIGNATURE};
use support::client::{http, sse_events as events};
use support::dify::{key, MockDify, Mode};
use support::*;

struct Setup {
    openai: MockOpenAi,
    claude: MockAnthropic,
    dify: MockDify,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let openai = MockOpenAi::start().await;
    let claude = MockAnthropic::start_with(AnthropicKnobs {
        text: "Claude says hello.".into(),
        ..Default::default()
    })
    .await;
    let dify = MockDify::start().await;
    let yaml = format!(
        r#"
clients:
  - name: app
    api_key: client-key
providers:
  gpt: {{ type: openai, base_url: "{o}", api_key: sk-up }}
  claude: {{ type: anthropic, base_url: "{c}", api_key: {MOCK_KEY}, beta: [prompt-caching-2024-07-31] }}
  dify-chat: {{ type: dify, base_url: "{d}", api_key: {k}, app: chat }}
  builtin: {{ type: mock, reply: "built-in answer" }}
scenarios:
  via_openai:
    models: [gpt-alias]
    targets: [{{ provider: gpt, model: gpt-up }}]
  via_claude:
    targets: [{{ provider: claude, model: claude-up }}]
  via_dify:
    targets: [{{ provider: dify-chat }}]
  cached:
    targets: [{{ provider: builtin }}]
    cache: {{ ttl: 60s }}
"#,
        o = openai.url(),
        c = claude.url(),
        d = dify.url(),
        k = key(Mode::Chat),
    );
    let gw = start_gateway(&yaml);
    Setup {
        openai,
        claude,
        dify,
        gw,
    }
}

async fn post(
    gw: &TestGateway,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = http()
        .post(format!("{}{path}", gw.api))
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 100, "stream": stream,
           "messages": [{"role": "user", "content": "Hello there"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_target_kind_answers_in_anthropic_shape() {
    let s = setup().await;
    for model in ["via_openai", "gpt-alias", "via_claude", "via_dify"] {
        let (status, headers, body) =
            post(&s.gw, "/v1/messages", Some("client-key"), ask(model, false)).await;
        assert_eq!(status, 200, "{model}: {body}");
        let m: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(m["type"], "message", "{model}: {body}");
        assert_eq!(m["role"], "assistant");
        assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{body}");
        assert_eq!(m["content"][0]["type"], "text");
        assert!(!m["content"][0]["text"].as_str().unwrap().is_empty());
        assert_eq!(m["stop_reason"], "end_turn");
        assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 0, "{body}");
        assert!(headers.get("x-gateway-provider").is_some());

        let (status, headers, body) =
            post(&s.gw, "/v1/messages", Some("client-key"), ask(model, true)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let ev = events(&body);
        let names: Vec<&str> = ev
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "ping")
            .collect();
        assert_eq!(names[0], "message_start", "{model}: {body}");
        assert_eq!(names[1], "content_block_start");
        assert!(
            names[2..names.len() - 3]
                .iter()
                .all(|n| *n == "content_block_delta"),
            "{names:?}"
        );
        assert_eq!(
            &names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert!(!body.contains("[DONE]"));
        let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert!(
            delta["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{body}"
        );
    }
    // The OpenAI upstream streams (with usage) when the client does, and answers whole when it
    // does not: both are decoded into the client's shape.
    let sent = s.openai.received();
    let sent: Vec<Value> = sent[sent.len() - 2..].iter().map(|r| r.json()).collect();
    assert_eq!(sent[0]["stream"], false, "{:?}", sent[0]);
    assert_eq!(sent[0].get("stream_options"), None);
    assert_eq!(sent[1]["stream"], true);
    assert_eq!(sent[1]["stream_options"]["include_usage"], true);
    assert_eq!(sent[1]["max_tokens"], 100);
    assert!(s.claude.count() >= 2 && !s.dify.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_cross_both_ways_from_an_openai_upstream() {
    let s = setup().await;
    s.openai
        .set(|k| k.tool_call = Some(("get_weather".into(), r#"{"city":"Paris"}"#.into())));
    let body = json!({"model": "via_openai", "max_tokens": 100,
        "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let (status, _, text) = post(&s.gw, "/v1/messages", Some("client-key"), body.clone()).await;
    assert_eq!(status, 200, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["content"][0]["type"], "tool_use");
    assert_eq!(m["content"][0]["name"], "get_weather");
    assert_eq!(m["content"][0]["input"], json!({"city": "Paris"}));
    let sent = s.openai.last().json();
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["tools"][0]["function"]["parameters"]["type"], "object");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, _, text) = post(&s.gw, "/v1/messages", Some("client-key"), streamed).await;
    let ev = events(&text);
    let start = ev.iter().find(|(n, _)| n == "content_block_start").unwrap();
    assert_eq!(
        start.1["index"], 0,
        "a tool-only answer starts at block 0: {text}"
    );
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    let json: String = ev
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"city": "Paris"})
    );

    // The round trip: tool_use + tool_result reach the upstream as tool_calls + a tool message.
    let round = json!({"model": "via_openai", "max_tokens": 100, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"}]}]});
    let (status, _, text) = post(&s.gw, "/v1/messages", Some("client-key"), round).await;
    assert_eq!(status, 200, "{text}");
    let sent = s.openai.last().json();
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "toolu_1", "content": "21C"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_in_anthropic_shape() {
    let s = setup().await;
    let check = |status: u16, body: &str, code: u16, kind: &str| {
        assert_eq!(status, code, "{body}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "error", "{body}");
        assert_eq!(v["error"]["type"], kind, "{body}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    };
    let (st, _, b) = post(
        &s.gw,
        "/v1/messages",
        Some("wrong"),
        ask("via_openai", false),
    )
    .await;
    check(st, &b, 401, "authentication_error");
    let (st, _, b) = post(&s.gw, "/v1/messages", None, ask("via_openai", false)).await;
    check(st, &b, 401, "authentication_error");
    // A bearer token works as well as x-api-key.
    let r = http()
        .post(format!("{}/v1/messages", s.gw.api))
        .bearer_auth("client-key")
        .json(&ask("via_openai", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _, b) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("no-such-model", false),
    )
    .await;
    check(st, &b, 404, "not_found_error");
    let no_max = json!({"model": "via_openai", "messages": [{"role": "user", "content": "x"}]});
    let (st, _, b) = post(&s.gw, "/v1/messages", Some("client-key"), no_max).await;
    check(st, &b, 400, "invalid_request_error");
    let pdf = json!({"model": "via_openai", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"}}]}]});
    let (st, _, b) = post(&s.gw, "/v1/messages", Some("client-key"), pdf).await;
    check(st, &b, 400, "invalid_request_error");
    assert!(b.contains("document"), "names what is not translated: {b}");
    // An upstream outage is Anthropic's overloaded_error / api_error, not OpenAI's shape.
    s.openai.set(|k| k.status = 503);
    let (st, _, b) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("via_openai", false),
    )
    .await;
    assert!(st >= 500, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["type"], "error", "{b}");
    s.openai.set(|k| k.status = 200);
    // A failure after the stream started is an error event, then the end (no [DONE]).
    s.claude.set(|k| k.error_event_after = Some(2));
    let (st, _, b) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("via_claude", true),
    )
    .await;
    assert_eq!(st, 200);
    let ev = events(&b);
    assert_eq!(ev.last().unwrap().0, "error", "{b}");
    assert_eq!(ev.last().unwrap().1["type"], "error");
    assert!(!b.contains("[DONE]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_cache_and_metrics_work_for_messages() {
    let s = setup().await;
    let (st, _, b) = post(&s.gw, "/v1/messages/count_tokens", Some("client-key"),
        json!({"model": "via_openai", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]})).await;
    assert_eq!(st, 200, "{b}");
    let n = serde_json::from_str::<Value>(&b).unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    assert!(n > 0);
    assert_eq!(s.openai.count(), 0, "count_tokens calls no upstream");

    let (_, h1, first) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("cached", false),
    )
    .await;
    let (_, h2, second) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("cached", false),
    )
    .await;
    assert_eq!(h1["x-gateway-cache"], "miss");
    assert_eq!(h2["x-gateway-cache"], "hit");
    let (a, b): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_eq!(b["type"], "message", "{second}");
    assert_eq!(a["content"], b["content"]);
    let (_, h3, streamed) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("cached", true),
    )
    .await;
    assert_eq!(h3["x-gateway-cache"], "hit");
    let names: Vec<String> = events(&streamed).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    let m = s.gw.metrics_with(r#"scenario="cached""#);
    assert!(
        m.contains(r#"scenario="cached""#) && m.contains("ai_gateway_requests_total"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claude_target_gets_the_clients_own_request_and_allowed_betas() {
    let s = setup().await;
    let body = json!({"model": "via_claude", "max_tokens": 2048, "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "u-1", "session_id": "sess"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}]}]});
    let r = http()
        .post(format!("{}/v1/messages", s.gw.api))
        .header("x-api-key", "client-key")
        .header(
            "anthropic-beta",
            "prompt-caching-2024-07-31,not-allowed-beta",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = s.claude.last();
    let v = sent.json();
    assert_eq!(v["model"], "claude-up");
    assert_eq!(
        v["top_k"], 5,
        "nothing the gateway does not own is translated away"
    );
    assert_eq!(v["thinking"]["budget_tokens"], 1024);
    assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(
        v["messages"][0]["content"][0]["cache_control"]["type"],
        "ephemeral"
    );
    assert_eq!(
        v["metadata"],
        json!({"user_id": "u-1"}),
        "the gateway's own keys are stripped"
    );
    assert_eq!(v["stream"], false, "a whole answer, as the client asked");
    assert_eq!(
        sent.header("anthropic-beta").as_deref(),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(sent.header("x-api-key").as_deref(), Some(MOCK_KEY));
    assert!(sent.header("authorization").is_none());
}

/// Claude's thinking signature reaches a Messages client, whole and streamed: without it the
/// client could not send the thinking block back on its next turn.
#[tokio::test(flavor = "multi_thread")]
async fn thinking_keeps_its_signature_for_a_messages_client() {
    let s = setup().await;
    s.claude.set(|k| k.thinking = Some("Let me think.".into()));
    let (status, _, body) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("via_claude", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        m["content"][0],
        json!({"type": "thinking", "thinking": "Let me think.", "signature": SIGNATURE}),
        "{body}"
    );
    assert_eq!(m["content"][1]["text"], "Claude says hello.");

    let (status, _, body) = post(
        &s.gw,
        "/v1/messages",
        Some("client-key"),
        ask("via_claude", true),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    let signatures: Vec<&Value> = ev
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "signature_delta")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(signatures.len(), 1, "{body}");
    assert_eq!(signatures[0]["index"], 0);
    assert_eq!(signatures[0]["delta"]["signature"], SIGNATURE);
    // Both calls reached Claude as the client asked them.
    let sent = s.claude.received();
    let streams: Vec<Value> = sent[sent.len() - 2..]
        .iter()
        .map(|r| r.json()["stream"].clone())
        .collect();
    assert_eq!(streams, [json!(false), json!(true)]);
}

fn python() -> PathBuf {
    python_with("anthropic")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_python_sdk_works_unmodified() {
    let python = python();
    let s = setup().await;
    s.openai
        .set(|k| k.tool_call = Some(("get_weather".into(), r#"{"city":"Paris"}"#.into())));
    s.claude.set(|k| k.tool_use = None);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/anthropic_check.py");
    let base = s.gw.api.clone();
    let stdout = run_sdk_script(
        python,
        script,
        vec!["--gateway".to_string(), base.to_string()],
    )
    .await;
    assert!(stdout.contains("ALL OK"), "{stdout}");
}
