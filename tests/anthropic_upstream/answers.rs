//! Messages answers as OpenAI answers: text, tool calls, usage, thinking, stop reasons.

use super::*;

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
