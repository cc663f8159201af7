//! The Responses request conversion on request shapes the openai SDK and Codex send.

use super::*;

fn chat(body: Value) -> (Value, Converted) {
    let mut c = convert(body.to_string().as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&c.chat_body(Vec::new()).unwrap()).unwrap();
    (v, c)
}

fn refused(body: Value) -> (String, String) {
    match convert(body.to_string().as_bytes()) {
        Err(e) => {
            let v: Value = serde_json::from_slice(&e.body()).unwrap();
            (
                v["error"]["param"].as_str().unwrap_or_default().to_owned(),
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
        Ok(_) => panic!("accepted: {body}"),
    }
}

#[test]
fn a_string_input_with_instructions() {
    let (v, c) = chat(
        json!({"model": "gpt-x", "instructions": "Be brief.", "input": "Hi",
        "max_output_tokens": 50, "temperature": 0.2, "user": "u1"}),
    );
    assert_eq!(
        v,
        json!({"model": "gpt-x", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_completion_tokens": 50, "stream": false, "temperature": 0.2, "user": "u1"})
    );
    assert!(c.store && !c.stream && c.previous_response_id.is_none());
    assert_eq!(
        c.input_messages,
        vec![json!({"role": "user", "content": "Hi"})]
    );
    assert_eq!(c.echo["instructions"], "Be brief.");
    assert_eq!(c.echo["max_output_tokens"], 50);
}

#[test]
fn items_become_messages_and_a_function_call_round_trip() {
    let (v, c) = chat(json!({"model": "m", "stream": true, "store": false,
        "previous_response_id": "resp_1",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        ],
        "tools": [{"type": "function", "name": "weather", "description": "d",
                   "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content"]}));
    assert_eq!(
        v["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        ])
    );
    assert_eq!(
        v["tools"],
        json!([{"type": "function", "function": {"name": "weather", "description": "d",
            "parameters": {"type": "object"}, "strict": true}}])
    );
    assert_eq!(
        v["tool_choice"],
        json!({"type": "function", "function": {"name": "weather"}})
    );
    assert_eq!(
        v["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(v["reasoning_effort"], "low");
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
    for gateway_only in [
        "store",
        "previous_response_id",
        "include",
        "reasoning",
        "text",
    ] {
        assert!(v.get(gateway_only).is_none(), "{gateway_only}: {v}");
    }
    assert!(!c.store && c.stream);
    assert_eq!(c.previous_response_id.as_deref(), Some("resp_1"));
    assert_eq!(c.input_messages.len(), 4);
}

#[test]
fn json_object_format_and_a_bare_function_call_turn() {
    let (v, _) = chat(json!({"input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"}],
        "text": {"format": {"type": "json_object"}, "verbosity": "low"}}));
    assert_eq!(v["messages"][0]["role"], "assistant");
    assert!(v["messages"][0]["content"].is_null());
    assert_eq!(v["response_format"], json!({"type": "json_object"}));
    assert_eq!(v["verbosity"], "low");
    assert!(v.get("model").is_none());
}

#[test]
fn what_cannot_be_served_is_refused_by_name() {
    for (body, param) in [
        (
            json!({"input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": []}]}),
            "tools[0].type",
        ),
        (json!({"input": "x", "background": true}), "background"),
        (json!({"input": "x", "prompt": {"id": "pmpt_1"}}), "prompt"),
        (
            json!({"input": "x", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"input": [{"type": "input_file", "file_id": "f"}]}),
            "input[0].type",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "input[0].content[0].image_url",
        ),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
        (
            json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
            "input[0].call_id",
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
            "text.format.schema",
        ),
        (
            json!({"input": "x", "a_field_from_the_future": 1}),
            "a_field_from_the_future",
        ),
        (json!({"input": []}), "input"),
        (json!({"model": "m"}), "input"),
        (
            json!({"input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"input": "x", "tool_choice": {"type": "web_search"}}),
            "tool_choice",
        ),
    ] {
        let (got, message) = refused(body.clone());
        assert_eq!(got, param, "{body}: {message}");
        assert!(!message.is_empty());
    }
}

#[test]
fn a_continued_response_puts_its_history_after_the_instructions() {
    let mut c = convert(br#"{"instructions":"Sys.","input":"Second?"}"#).unwrap();
    let history = vec![
        json!({"role": "user", "content": "First?"}),
        json!({"role": "assistant", "content": "One."}),
    ];
    let v: Value = serde_json::from_slice(&c.chat_body(history).unwrap()).unwrap();
    let roles: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(v["messages"][3]["content"], "Second?");
}
