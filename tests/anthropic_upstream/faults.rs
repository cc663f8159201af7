//! Errors, failover, metrics, the cache and the openai SDK against a Claude target.

use super::*;

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
    // Only a stream carries error events (a whole answer reports overload as a 529 status).
    let a = ask(&s.gw, "pair", true, user("Hello")).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(provider(&a), Some("backup"));
    assert_eq!(a.header("x-gateway-attempts"), Some("2"));
    assert_eq!(a.content(), BACKUP_REPLY);
    assert!(!a.text.contains("Overloaded"), "{}", a.text);
    assert_eq!(s.claude.count(), 1);
    assert_eq!(s.backup.count(), 1);
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
    let prompt = r#"ai_gateway_tokens_total{endpoint="chat",kind="prompt",provider="claude",scenario="claude",variant=""} 264"#;
    let completion = r#"ai_gateway_tokens_total{endpoint="chat",kind="completion",provider="claude",scenario="claude",variant=""} 30"#;
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
    python_with("openai")
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
    }
    // Claude streams exactly when the SDK does.
    let streams = |m: &MockAnthropic| -> Vec<bool> {
        m.received()
            .iter()
            .map(|r| r.json()["stream"] == true)
            .collect()
    };
    assert_eq!(streams(&text), [false, true]);
    assert_eq!(streams(&tools), [false, true, true]);
    let tool_request = tools.last().json();
    assert_eq!(
        tool_request["tools"][0]["name"], "get_weather",
        "{tool_request}"
    );
}
