//! Tests of `request.rs`.

use super::*;

/// The converted body as JSON.
fn convert(body: Value) -> Value {
    let bytes = to_openai(body.to_string().as_bytes()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The 400's `param`, after checking it is an `invalid_request`.
fn refused(body: Value) -> String {
    let err = to_openai(body.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    assert_eq!(err.code(), "invalid_request", "{err}");
    err.to_json()["error"]["param"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn base(messages: Value) -> Value {
    json!({"model": "claude-x", "max_tokens": 100, "messages": messages})
}

fn user(content: Value) -> Value {
    base(json!([{"role": "user", "content": content}]))
}

#[test]
fn minimal_request_passes_model_and_max_tokens() {
    let v = convert(user(json!("hi")));
    assert_eq!(
        v,
        json!({"model": "claude-x", "max_tokens": 100,
               "messages": [{"role": "user", "content": "hi"}]})
    );
}

#[test]
fn converted_body_is_accepted_by_chat_request_parse() {
    let body = json!({
        "model": "m", "max_tokens": 10, "stream": true,
        "system": "sys",
        "metadata": {"user_id": "u1", "scenario": "s", "session_id": "x",
                     "user_profile": {"skin": "dry"}},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
        ],
    });
    let bytes = to_openai(body.to_string().as_bytes()).unwrap();
    let req = ChatRequest::parse(&bytes, &RequestHints::default()).unwrap();
    assert_eq!(req.model.as_deref(), Some("m"));
    assert!(req.stream && req.include_usage);
    assert_eq!(req.user.as_deref(), Some("u1"));
    assert_eq!(req.scenario.as_deref(), Some("s"));
    assert_eq!(req.session.as_deref(), Some("x"));
    assert_eq!(req.user_profile["skin"], "dry");
    assert!(req.metadata.is_empty());
    assert_eq!(req.messages.len(), 5);
    assert_eq!(req.features.to_string(), "tools,images,stream");
}

#[test]
fn system_string_and_blocks() {
    let mut body = user(json!("q"));
    body["system"] = json!("be brief");
    let v = convert(body.clone());
    assert_eq!(
        v["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(v["messages"][1]["role"], "user");

    body["system"] = json!([
        {"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": ""},
        {"type": "text", "text": "two"},
        {"type": "text", "text": "three"}
    ]);
    let v = convert(body.clone());
    assert_eq!(v["messages"][0]["content"], "one\n\ntwo\n\nthree");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);

    body["system"] = json!("");
    assert_eq!(convert(body.clone())["messages"][0]["role"], "user");
    body["system"] = json!([{"type": "image", "source": {}}]);
    assert_eq!(refused(body.clone()), "system[0].type");
    body["system"] = json!(3);
    assert_eq!(refused(body), "system");
}

#[test]
fn text_blocks_become_a_string_and_empty_ones_are_skipped() {
    let v = convert(user(json!([
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": ""},
        {"type": "text", "text": "b"}
    ])));
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": "a\n\nb"}])
    );
}

#[test]
fn images_become_image_url_parts() {
    let v = convert(user(json!([
        {"type": "text", "text": "what is this?"},
        {"type": "text", "text": ""},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
    ])));
    assert_eq!(
        v["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
        ])
    );
}

#[test]
fn bad_images_are_refused() {
    let img = |source: Value| user(json!([{"type": "image", "source": source}]));
    assert_eq!(
        refused(img(json!({"type": "file", "file_id": "f"}))),
        "messages[0].content[0].source.type"
    );
    assert_eq!(
        refused(img(json!({"type": "url", "url": "file:///etc/passwd"}))),
        "messages[0].content[0].source.url"
    );
    assert_eq!(
        refused(img(
            json!({"type": "base64", "media_type": "application/pdf", "data": "x"})
        )),
        "messages[0].content[0].source.media_type"
    );
    assert_eq!(
        refused(img(json!({"type": "base64", "media_type": "image/png"}))),
        "messages[0].content[0].source.data"
    );
    assert_eq!(refused(img(json!("x"))), "messages[0].content[0].source");
    let assistant = base(json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}
    ]));
    assert_eq!(refused(assistant), "messages[1].content[0].type");
}

#[test]
fn tool_use_becomes_tool_calls_with_string_arguments() {
    let v = convert(base(json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris", "days": [1, 2]}},
            {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}
        ]}
    ])));
    let a = &v["messages"][1];
    assert_eq!(a["role"], "assistant");
    assert_eq!(a["content"], "Let me check.");
    let calls = a["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "toolu_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args = calls[0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"city": "Paris", "days": [1, 2]})
    );
    assert_eq!(calls[1]["function"]["arguments"], "{}");
}

#[test]
fn tool_use_without_text_has_null_content() {
    let v = convert(base(json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}
    ])));
    assert!(v["messages"][1]["content"].is_null());
    assert_eq!(v["messages"][1]["tool_calls"][0]["id"], "t");
    let bad = base(json!([{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}]));
    assert_eq!(refused(bad), "messages[0].content[0].input");
    let no_name = base(json!([{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "input": {}}]}]));
    assert_eq!(refused(no_name), "messages[0].content[0].name");
}

#[test]
fn tool_results_become_tool_messages_before_the_user_text() {
    let v = convert(base(json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "a", "name": "f", "input": {}},
            {"type": "tool_use", "id": "b", "name": "g", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "here you go"},
            {"type": "tool_result", "tool_use_id": "a", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "b", "content": [
                {"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]}
        ]}
    ])));
    let m = v["messages"].as_array().unwrap();
    assert_eq!(m.len(), 5);
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "a", "content": "sunny"})
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "b", "content": "line 1\n\nline 2"})
    );
    assert_eq!(m[4], json!({"role": "user", "content": "here you go"}));
}

#[test]
fn tool_result_only_turn_has_no_user_message() {
    let v = convert(base(json!([
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]}
    ])));
    let m = v["messages"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[1],
        json!({"role": "tool", "tool_call_id": "a", "content": ""})
    );
}

#[test]
fn tool_result_errors_are_prefixed() {
    let v = convert(user(json!([
        {"type": "tool_result", "tool_use_id": "a", "content": "no such file", "is_error": true},
        {"type": "tool_result", "tool_use_id": "b", "content": "ok", "is_error": false}
    ])));
    assert_eq!(v["messages"][0]["content"], "Error: no such file");
    assert_eq!(v["messages"][1]["content"], "ok");
    assert_eq!(
        refused(user(json!([
            {"type": "tool_result", "tool_use_id": "a", "content": "x", "is_error": "yes"}
        ]))),
        "messages[0].content[0].is_error"
    );
}

#[test]
fn tool_result_with_an_image_is_refused() {
    let body = user(
        json!([{"type": "tool_result", "tool_use_id": "a", "content": [
            {"type": "text", "text": "screenshot"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
        ]}]),
    );
    assert_eq!(refused(body), "messages[0].content[0].content[1].type");
}

#[test]
fn blocks_in_the_wrong_role_are_refused() {
    assert_eq!(
        refused(user(
            json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}])
        )),
        "messages[0].content[0].type"
    );
    let body = base(json!([{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]));
    assert_eq!(refused(body), "messages[0].content[0].type");
    assert_eq!(
        refused(user(
            json!([{"type": "thinking", "thinking": "x", "signature": "s"}])
        )),
        "messages[0].content[0].type"
    );
}

#[test]
fn thinking_history_is_dropped_and_an_empty_assistant_turn_omitted() {
    let v = convert(base(json!([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "thinking", "thinking": "t", "signature": "s"}]},
        {"role": "user", "content": "b"}
    ])));
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    );
}

#[test]
fn unsupported_blocks_are_refused_by_position() {
    let pdf = json!({"type": "document", "source": {"type": "base64",
                     "media_type": "application/pdf", "data": "JVBERi0"}});
    let body = base(json!([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "read"}, pdf]}
    ]));
    let err = to_openai(body.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("document"), "{err}");
    assert_eq!(refused(body), "messages[2].content[1].type");

    for kind in [
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "container_upload",
        "whatever_next",
    ] {
        let body = user(json!([{"type": kind}]));
        assert_eq!(refused(body), "messages[0].content[0].type", "{kind}");
    }
    let assistant = base(json!([{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]));
    assert_eq!(refused(assistant), "messages[0].content[0].type");
}

#[test]
fn malformed_messages_are_refused_with_their_param() {
    assert_eq!(
        refused(json!({"max_tokens": 1, "messages": []})),
        "messages"
    );
    assert_eq!(refused(json!({"max_tokens": 1})), "messages");
    assert_eq!(
        refused(json!({"max_tokens": 1, "messages": {}})),
        "messages"
    );
    assert_eq!(refused(base(json!(["x"]))), "messages[0]");
    assert_eq!(
        refused(base(json!([{"role": "system", "content": "x"}]))),
        "messages[0].role"
    );
    assert_eq!(
        refused(base(json!([{"role": "user"}]))),
        "messages[0].content"
    );
    assert_eq!(
        refused(base(json!([{"role": "user", "content": 5}]))),
        "messages[0].content"
    );
    assert_eq!(refused(user(json!([1]))), "messages[0].content[0]");
    assert_eq!(
        refused(user(json!([{"text": "x"}]))),
        "messages[0].content[0].type"
    );
    assert_eq!(
        refused(user(json!([{"type": "text"}]))),
        "messages[0].content[0].text"
    );
    assert_eq!(
        refused(user(json!([{"type": "text", "text": ""}]))),
        "messages"
    );
    assert_eq!(refused(json!({"model": 1})), "model");
}

#[test]
fn bad_json_and_non_objects() {
    let err = to_openai(b"{nope").unwrap_err();
    assert_eq!(err.code(), "invalid_json");
    let err = to_openai(b"[1]").unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(to_openai(b"").is_err());
}

#[test]
fn max_tokens_is_required_and_positive() {
    let mut body = user(json!("x"));
    body.as_object_mut().unwrap().remove("max_tokens");
    let err = to_openai(body.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("max_tokens"));
    assert_eq!(refused(body.clone()), "max_tokens");
    for bad in [json!(0), json!(-1), json!(1.5), json!("10")] {
        body["max_tokens"] = bad;
        assert_eq!(refused(body.clone()), "max_tokens");
    }
}

#[test]
fn tools_become_functions() {
    let mut body = user(json!("x"));
    body["tools"] = json!([
        {"name": "get_weather", "description": "Weather for a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
         "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "now", "input_schema": {"type": "object"}}
    ]);
    let v = convert(body);
    assert_eq!(
        v["tools"],
        json!([
            {"type": "function", "function": {"name": "get_weather",
             "description": "Weather for a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
        ])
    );
    assert!(v.get("tool_choice").is_none());
    assert!(v.get("parallel_tool_calls").is_none());
}

#[test]
fn server_tools_and_bad_tools_are_refused() {
    let mut body = user(json!("x"));
    body["tools"] = json!([
        {"name": "f", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    ]);
    let err = to_openai(body.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("web_search_20250305"), "{err}");
    assert_eq!(refused(body.clone()), "tools[1].type");
    body["tools"] = json!([{"type": "bash_20250124", "name": "bash"}]);
    assert_eq!(refused(body.clone()), "tools[0].type");
    body["tools"] = json!([{"name": "f"}]);
    assert_eq!(refused(body.clone()), "tools[0].input_schema");
    body["tools"] = json!([{"input_schema": {}}]);
    assert_eq!(refused(body.clone()), "tools[0].name");
    body["tools"] = json!({});
    assert_eq!(refused(body), "tools");
}

#[test]
fn tool_choice_mappings() {
    let with = |choice: Value| {
        let mut body = user(json!("x"));
        body["tools"] = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        body["tool_choice"] = choice;
        body
    };
    assert_eq!(
        convert(with(json!({"type": "auto"})))["tool_choice"],
        "auto"
    );
    assert_eq!(
        convert(with(json!({"type": "any"})))["tool_choice"],
        "required"
    );
    assert_eq!(
        convert(with(json!({"type": "none"})))["tool_choice"],
        "none"
    );
    assert_eq!(
        convert(with(json!({"type": "tool", "name": "f"})))["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    let v = convert(with(
        json!({"type": "auto", "disable_parallel_tool_use": true}),
    ));
    assert_eq!(v["parallel_tool_calls"], false);
    let v = convert(with(
        json!({"type": "any", "disable_parallel_tool_use": false}),
    ));
    assert!(v.get("parallel_tool_calls").is_none());

    assert_eq!(refused(with(json!({"type": "tool"}))), "tool_choice.name");
    assert_eq!(refused(with(json!({"type": "some"}))), "tool_choice.type");
    assert_eq!(refused(with(json!("auto"))), "tool_choice");

    // Without tools, a tool choice has nothing to choose from.
    let mut body = user(json!("x"));
    body["tool_choice"] = json!({"type": "auto"});
    assert!(convert(body).get("tool_choice").is_none());
}

#[test]
fn sampling_stop_stream_and_dropped_fields() {
    let mut body = user(json!("x"));
    body["temperature"] = json!(0.5);
    body["top_p"] = json!(0.9);
    body["top_k"] = json!(40);
    body["stop_sequences"] = json!(["\n\nHuman:", "END"]);
    body["stream"] = json!(true);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    body["service_tier"] = json!("auto");
    body["mcp_servers"] = json!([]);
    let v = convert(body.clone());
    assert_eq!(v["temperature"], 0.5);
    assert_eq!(v["top_p"], 0.9);
    assert_eq!(v["stop"], json!(["\n\nHuman:", "END"]));
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
    for dropped in [
        "top_k",
        "thinking",
        "service_tier",
        "mcp_servers",
        "stop_sequences",
    ] {
        assert!(v.get(dropped).is_none(), "{dropped}");
    }

    body["stream"] = json!(false);
    body["stop_sequences"] = json!([]);
    let v = convert(body.clone());
    assert_eq!(v["stream"], false);
    assert!(v.get("stream_options").is_none());
    assert!(v.get("stop").is_none());

    body["stop_sequences"] = json!(["a", 1]);
    assert_eq!(refused(body.clone()), "stop_sequences[1]");
    body["stop_sequences"] = json!("a");
    assert_eq!(refused(body.clone()), "stop_sequences");
    body["stop_sequences"] = Value::Null;
    body["stream"] = json!("yes");
    assert_eq!(refused(body.clone()), "stream");
    body["stream"] = Value::Null;
    body["temperature"] = json!("hot");
    assert_eq!(refused(body), "temperature");
}

#[test]
fn metadata_user_id_and_gateway_keys() {
    let mut body = user(json!("x"));
    body["metadata"] = json!({"user_id": "u-1", "scenario": "support",
        "session_id": "s-1", "user_profile": {"tier": "gold"}, "other": 1});
    let v = convert(body.clone());
    assert_eq!(v["user"], "u-1");
    assert_eq!(
        v["metadata"],
        json!({"scenario": "support", "session_id": "s-1", "user_profile": {"tier": "gold"}})
    );
    body["metadata"] = json!({"user_id": "u-1"});
    let v = convert(body.clone());
    assert!(v.get("metadata").is_none());
    body["metadata"] = json!({"user_id": 7});
    assert_eq!(refused(body.clone()), "metadata.user_id");
    body["metadata"] = json!([]);
    assert_eq!(refused(body), "metadata");
}

#[test]
fn estimate_counts_like_the_limits_do() {
    let body = json!({
        "model": "m",
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    });
    // No max_tokens: count_tokens requests have none.
    let n = estimate_input_tokens(body.to_string().as_bytes()).unwrap();
    let expected =
        3 + 4 + limits::count_tokens("You are terse.") + 4 + limits::count_tokens("hello world");
    assert_eq!(n, expected);

    let mut bigger = body.clone();
    bigger["messages"][0]["content"][0]["text"] = json!("hello world, and much more text");
    assert!(estimate_input_tokens(bigger.to_string().as_bytes()).unwrap() > n);

    let pdf = json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]});
    assert!(estimate_input_tokens(pdf.to_string().as_bytes()).is_err());
    let bad_scenario = json!({"metadata": {"scenario": 1},
        "messages": [{"role": "user", "content": "x"}]});
    let err = estimate_input_tokens(bad_scenario.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.to_json()["error"]["param"], json!("metadata.scenario"));
}

#[test]
fn never_panics_on_odd_input() {
    let odd = [
        "null",
        "1",
        "\"s\"",
        "{}",
        r#"{"messages":null,"max_tokens":1}"#,
        r#"{"messages":[null],"max_tokens":1}"#,
        r#"{"messages":[{"role":null,"content":null}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image"}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":3}}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"ht"}}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"é"}}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"tool_result"}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":[null]}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":7}]}],"max_tokens":1}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"tools":[null]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"tools":[{"type":5}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"tools":[{"name":"f","description":1,"input_schema":{}}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"system":[null]}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1e400}"#,
        r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551616}"#,
    ];
    for body in odd {
        let err = to_openai(body.as_bytes()).unwrap_err();
        assert!(
            matches!(err.status(), 400),
            "{body}: {} {err}",
            err.status()
        );
        let _ = estimate_input_tokens(body.as_bytes());
    }
    let deep = "[".repeat(10_000);
    assert!(to_openai(deep.as_bytes()).is_err());
}
