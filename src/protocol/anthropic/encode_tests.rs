//! Tests of `encode.rs`.

use super::*;

/// The events written: (event name, data), checking the framing on the way.
fn events(out: &BytesMut) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    text.split_terminator("\n\n")
        .map(|e| {
            let (head, data) = e.split_once('\n').unwrap();
            let kind = head.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], kind.as_str(), "{e}");
            (kind, data)
        })
        .collect()
}

/// Event names, with the block index for block events.
fn outline(out: &BytesMut) -> Vec<String> {
    events(out)
        .into_iter()
        .map(|(k, d)| match d["index"].as_u64() {
            Some(i) => format!("{k}:{i}"),
            None => k,
        })
        .collect()
}

fn piece(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallPiece {
    ToolCallPiece {
        index,
        id: id.map(str::to_owned),
        name: name.map(str::to_owned),
        arguments: args.to_owned(),
    }
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        ..Default::default()
    }
}

#[test]
fn message_start_has_the_empty_message() {
    let mut w = MessagesWriter::new("abc".into(), "claude-x".into());
    let mut out = BytesMut::new();
    w.start(12, &mut out);
    w.start(99, &mut out);
    let e = events(&out);
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].1,
        json!({"type": "message_start", "message": {
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 0}}})
    );
    assert!(out.starts_with(b"event: message_start\ndata: {"));
    assert_eq!(w.id(), "msg_abc");
    assert_eq!(
        MessagesWriter::new("msg_x".into(), "m".into()).id(),
        "msg_x"
    );
}

#[test]
fn thinking_then_text_then_tools_with_exact_indices() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.start(5, &mut out);
    w.thinking("Let me ", &mut out);
    w.thinking("think.", &mut out);
    w.text("", &mut out);
    w.text("Checking", &mut out);
    w.text(" now.", &mut out);
    w.tool_call(&piece(0, Some("call_a"), Some("weather"), ""), &mut out);
    w.tool_call(&piece(0, None, None, "{\"city\":"), &mut out);
    w.tool_call(&piece(0, None, None, "\"Paris\"}"), &mut out);
    w.tool_call(&piece(1, Some("call_b"), Some("time"), "{}"), &mut out);
    w.finish("tool_calls", None, usage(5, 40), &mut out);
    assert_eq!(
        outline(&out),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "content_block_start:1",
            "content_block_delta:1",
            "content_block_delta:1",
            "content_block_stop:1",
            "content_block_start:2",
            "content_block_delta:2",
            "content_block_delta:2",
            "content_block_stop:2",
            "content_block_start:3",
            "content_block_delta:3",
            "content_block_stop:3",
            "message_delta",
            "message_stop",
        ]
    );
    let e = events(&out);
    assert_eq!(
        e[1].1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    assert_eq!(
        e[2].1["delta"],
        json!({"type": "thinking_delta", "thinking": "Let me "})
    );
    assert_eq!(e[5].1["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(
        e[7].1["delta"],
        json!({"type": "text_delta", "text": " now."})
    );
    assert_eq!(
        e[9].1["content_block"],
        json!({"type": "tool_use", "id": "call_a", "name": "weather", "input": {}})
    );
    assert_eq!(
        e[10].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"city\":"})
    );
    assert_eq!(e[13].1["content_block"]["id"], "call_b");
    assert_eq!(
        e[16].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 5, "output_tokens": 40}})
    );
    assert_eq!(e[17].1, json!({"type": "message_stop"}));
}

#[test]
fn tool_only_stream_starts_at_index_0() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.start(3, &mut out);
    w.text("", &mut out);
    w.tool_call(&piece(0, Some("c1"), Some("f"), "{\"a\":1}"), &mut out);
    w.finish("tool_calls", None, usage(3, 7), &mut out);
    let e = events(&out);
    assert_eq!(
        outline(&out),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(e[1].1["content_block"]["type"], "tool_use");
}

#[test]
fn tool_call_without_arguments_gets_no_input_delta() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.start(0, &mut out);
    w.tool_call(&piece(0, Some("c1"), Some("now"), ""), &mut out);
    w.tool_call(&piece(1, Some("c2"), Some("later"), ""), &mut out);
    w.finish("tool_calls", None, usage(1, 1), &mut out);
    assert_eq!(
        outline(&out),
        [
            "message_start",
            "content_block_start:0",
            "content_block_stop:0",
            "content_block_start:1",
            "content_block_stop:1",
            "message_delta",
            "message_stop"
        ]
    );
    let e = events(&out);
    assert_eq!(e[1].1["content_block"]["input"], json!({}));
}

#[test]
fn a_new_id_at_the_same_index_is_a_new_call() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.tool_call(&piece(0, Some("a"), Some("f"), "{}"), &mut out);
    w.tool_call(&piece(0, Some("a"), None, ""), &mut out);
    w.tool_call(&piece(0, Some("b"), Some("g"), "{}"), &mut out);
    w.tool_call(&piece(2, None, None, "{}"), &mut out);
    let e = events(&out);
    let starts: Vec<&Value> = e
        .iter()
        .filter(|(k, _)| k == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect();
    assert_eq!(starts.len(), 3);
    assert_eq!(starts[0]["id"], "a");
    assert_eq!(starts[1]["id"], "b");
    // Neither id nor name: an id is made up, the name stays empty.
    assert_eq!(starts[2]["id"], "toolu_1_2");
    assert_eq!(starts[2]["name"], "");
    // Content before `start` started the message with 0 input tokens.
    assert_eq!(e[0].0, "message_start");
    assert_eq!(e[0].1["message"]["usage"]["input_tokens"], 0);
}

#[test]
fn text_after_a_tool_call_opens_a_new_text_block() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.start(0, &mut out);
    w.text("a", &mut out);
    w.tool_call(&piece(0, Some("c"), Some("f"), "{}"), &mut out);
    w.text("b", &mut out);
    w.thinking("", &mut out);
    w.finish("stop", None, usage(1, 1), &mut out);
    assert_eq!(
        outline(&out),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "content_block_start:1",
            "content_block_delta:1",
            "content_block_stop:1",
            "content_block_start:2",
            "content_block_delta:2",
            "content_block_stop:2",
            "message_delta",
            "message_stop"
        ]
    );
}

#[test]
fn never_an_empty_text_block() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.start(4, &mut out);
    w.text("", &mut out);
    w.thinking("", &mut out);
    w.text("", &mut out);
    w.finish("stop", None, usage(0, 0), &mut out);
    assert_eq!(
        outline(&out),
        ["message_start", "message_delta", "message_stop"]
    );
    // No prompt count from the upstream: the one given at start.
    assert_eq!(events(&out)[1].1["usage"]["input_tokens"], 4);
}

#[test]
fn finish_maps_the_reasons() {
    let cases = [
        ("stop", None, "end_turn", Value::Null),
        ("stop", Some("END"), "stop_sequence", json!("END")),
        ("length", Some("END"), "max_tokens", Value::Null),
        ("tool_calls", None, "tool_use", Value::Null),
        ("function_call", None, "tool_use", Value::Null),
        ("content_filter", None, "refusal", Value::Null),
        ("something_new", None, "end_turn", Value::Null),
    ];
    for (openai, seq, reason, sequence) in cases {
        let mut w = MessagesWriter::new("1".into(), "m".into());
        let mut out = BytesMut::new();
        w.start(1, &mut out);
        w.text("x", &mut out);
        w.finish(openai, seq, usage(2, 3), &mut out);
        let e = events(&out);
        let delta = &e[e.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], reason, "{openai}");
        assert_eq!(delta["delta"]["stop_sequence"], sequence, "{openai}");
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 2, "output_tokens": 3})
        );
        assert!(delta["usage"].get("cache_read_input_tokens").is_none());
    }
}

#[test]
fn nothing_after_the_end() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.start(1, &mut out);
    w.finish("stop", None, usage(1, 1), &mut out);
    let len = out.len();
    w.text("late", &mut out);
    w.tool_call(&piece(0, Some("c"), Some("f"), "{}"), &mut out);
    w.ping(&mut out);
    w.finish("stop", None, usage(1, 1), &mut out);
    w.error(&GatewayError::Internal("x".into()), &mut out);
    assert_eq!(out.len(), len);
    assert!(w.is_ended());
}

#[test]
fn ping_and_error_events() {
    let mut w = MessagesWriter::new("1".into(), "m".into());
    let mut out = BytesMut::new();
    w.ping(&mut out);
    assert_eq!(&out[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    w.start(1, &mut out);
    w.text("partial", &mut out);
    out.clear();
    let err = GatewayError::UpstreamTimeout("the upstream went quiet".into());
    w.error(&err, &mut out);
    let e = events(&out);
    assert_eq!(e.len(), 1, "the open block is not closed");
    assert_eq!(e[0].0, "error");
    assert_eq!(
        e[0].1,
        json!({"type": "error", "error": {"type": "overloaded_error",
               "message": "the upstream went quiet"}})
    );
    w.text("more", &mut out);
    assert_eq!(events(&out).len(), 1);
}

#[test]
fn whole_message_with_all_block_kinds() {
    let calls = vec![
        ("call_1".to_owned(), "f".to_owned(), r#"{"a":1}"#.to_owned()),
        (String::new(), "g".to_owned(), String::new()),
        ("call_3".to_owned(), "h".to_owned(), r#"{"a":"#.to_owned()),
    ];
    let b = message(
        "chatcmpl-9",
        "claude-x",
        "Here.",
        ("Thought.", "sig-1"),
        &calls,
        "tool_calls",
        None,
        usage(10, 20),
    );
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        v,
        json!({
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "Thought.", "signature": "sig-1"},
                {"type": "text", "text": "Here."},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "toolu_chatcmpl-9_3", "name": "g", "input": {}},
                {"type": "tool_use", "id": "call_3", "name": "h", "input": {"_raw": "{\"a\":"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20}
        })
    );
}

#[test]
fn whole_message_skips_empty_parts_and_reports_the_stop_sequence() {
    let b = message(
        "msg_1",
        "m",
        "",
        ("", ""),
        &[],
        "stop",
        Some("###"),
        usage(1, 0),
    );
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["id"], "msg_1");
    assert_eq!(v["content"], json!([]));
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "###");
    let b = message(
        "1",
        "m",
        "hi",
        ("", ""),
        &[],
        "content_filter",
        None,
        usage(1, 1),
    );
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["content"], json!([{"type": "text", "text": "hi"}]));
    assert_eq!(v["stop_reason"], "refusal");
}

#[test]
fn tool_input_shapes() {
    assert_eq!(tool_input(""), json!({}));
    assert_eq!(tool_input("  "), json!({}));
    assert_eq!(tool_input(r#"{"x":[1]}"#), json!({"x": [1]}));
    assert_eq!(tool_input("[1]"), json!({"_raw": "[1]"}));
    assert_eq!(tool_input("nope"), json!({"_raw": "nope"}));
}
