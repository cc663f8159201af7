//! What the Anthropic upstream receives for an OpenAI request.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_call_has_the_key_in_x_api_key_the_version_and_streams_when_the_client_does() {
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
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        assert_eq!(r.header("accept").as_deref(), Some(accept));
        assert_eq!(r.header("anthropic-beta"), None);
        let body = r.json();
        assert_eq!(body["stream"], stream, "{body}");
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
