//! Tests of `encode.rs`.

use super::*;
use serde_json::json;
use std::time::Duration;

/// The events written: (event name, data), checking the framing, that `type` repeats the event
/// name and that sequence numbers count from 0 without gaps.
fn events(out: &BytesMut) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    assert!(!text.contains("[DONE]"), "{text}");
    let events: Vec<(String, Value)> = text
        .split_terminator("\n\n")
        .map(|e| {
            let (head, data) = e.split_once('\n').unwrap();
            let kind = head.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], kind.as_str(), "{e}");
            (kind, data)
        })
        .collect();
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64, "{data}");
    }
    events
}

/// Event names without the `response.` prefix, with the output index for item events.
fn outline(out: &BytesMut) -> Vec<String> {
    events(out)
        .into_iter()
        .map(|(k, d)| {
            let k = k.strip_prefix("response.").unwrap_or(&k).to_owned();
            match d["output_index"].as_u64() {
                Some(i) => format!("{k}:{i}"),
                None => k,
            }
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

fn writer(stream: bool) -> ResponsesWriter {
    ResponsesWriter::new("resp_1".into(), "gpt-x".into(), 1700, Map::new(), stream)
}

/// The `response` of the last event.
fn last_response(out: &BytesMut) -> Value {
    events(out).pop().unwrap().1["response"].clone()
}

#[test]
fn text_only_stream_in_order() {
    let mut w = writer(true);
    let mut out = BytesMut::new();
    w.start(&mut out);
    w.start(&mut out);
    w.text("", &mut out);
    w.text("Hel", &mut out);
    w.text("lo", &mut out);
    w.finish("stop", usage(5, 2), &mut out);
    assert!(w.is_ended());
    assert_eq!(
        outline(&out),
        [
            "created",
            "in_progress",
            "output_item.added:0",
            "content_part.added:0",
            "output_text.delta:0",
            "output_text.delta:0",
            "output_text.done:0",
            "content_part.done:0",
            "output_item.done:0",
            "completed",
        ]
    );
    assert!(out.starts_with(b"event: response.created\ndata: {"));
    let e = events(&out);
    for (i, kind) in [(0, "response.created"), (1, "response.in_progress")] {
        let r = &e[i].1["response"];
        assert_eq!(e[i].0, kind);
        assert_eq!(r["id"], "resp_1");
        assert_eq!(r["object"], "response");
        assert_eq!(r["created_at"], 1700);
        assert_eq!(r["model"], "gpt-x");
        assert_eq!(r["status"], "in_progress");
        assert_eq!(r["output"], json!([]));
        assert!(r["usage"].is_null() && r["error"].is_null() && r["incomplete_details"].is_null());
    }
    assert_eq!(
        e[2].1,
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
               "item": {"type": "message", "id": "msg_1_0", "status": "in_progress",
                        "role": "assistant", "content": []}})
    );
    assert_eq!(
        e[3].1,
        json!({"type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_1_0",
               "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
    );
    assert_eq!(
        e[4].1,
        json!({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1_0",
               "output_index": 0, "content_index": 0, "delta": "Hel", "logprobs": []})
    );
    assert_eq!(e[6].1["text"], "Hello");
    assert_eq!(e[6].1["logprobs"], json!([]));
    assert_eq!(e[7].1["part"]["text"], "Hello");
    let message = json!({"type": "message", "id": "msg_1_0", "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}]});
    assert_eq!(e[8].1["item"], message);
    let r = &e[9].1["response"];
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"], json!([message]));
    assert!(r["incomplete_details"].is_null() && r["error"].is_null());
    assert_eq!(r["usage"]["total_tokens"], 7);
    assert_eq!(w.response(), *r);
}

#[test]
fn reasoning_text_and_two_tool_calls() {
    let mut w = writer(true);
    let mut out = BytesMut::new();
    // No `start`: the first piece starts the stream.
    w.reasoning("Let me ", &mut out);
    w.reasoning("think.", &mut out);
    w.text("Checking.", &mut out);
    w.tool_call(&piece(0, Some("call_a"), Some("weather"), ""), &mut out);
    w.tool_call(&piece(0, None, None, "{\"city\":"), &mut out);
    w.tool_call(&piece(0, None, None, "\"Paris\"}"), &mut out);
    w.tool_call(&piece(1, None, Some("now"), ""), &mut out);
    w.finish("tool_calls", usage(5, 40), &mut out);
    assert_eq!(
        outline(&out),
        [
            "created",
            "in_progress",
            "output_item.added:0",
            "content_part.added:0",
            "reasoning_text.delta:0",
            "reasoning_text.delta:0",
            "reasoning_text.done:0",
            "content_part.done:0",
            "output_item.done:0",
            "output_item.added:1",
            "content_part.added:1",
            "output_text.delta:1",
            "output_text.done:1",
            "content_part.done:1",
            "output_item.done:1",
            "output_item.added:2",
            "function_call_arguments.delta:2",
            "function_call_arguments.delta:2",
            "function_call_arguments.done:2",
            "output_item.done:2",
            "output_item.added:3",
            "function_call_arguments.done:3",
            "output_item.done:3",
            "completed",
        ]
    );
    let e = events(&out);
    assert_eq!(
        e[2].1["item"],
        json!({"type": "reasoning", "id": "rs_1_0", "summary": [], "content": []})
    );
    assert_eq!(
        e[3].1["part"],
        json!({"type": "reasoning_text", "text": ""})
    );
    assert_eq!(
        e[4].1,
        json!({"type": "response.reasoning_text.delta", "sequence_number": 4, "item_id": "rs_1_0",
               "output_index": 0, "content_index": 0, "delta": "Let me "})
    );
    assert_eq!(e[6].1["text"], "Let me think.");
    let reasoning = json!({"type": "reasoning", "id": "rs_1_0", "summary": [],
        "content": [{"type": "reasoning_text", "text": "Let me think."}]});
    assert_eq!(e[8].1["item"], reasoning);
    assert_eq!(e[9].1["item"]["id"], "msg_1_1");
    assert_eq!(
        e[15].1["item"],
        json!({"type": "function_call", "id": "fc_1_2", "call_id": "call_a", "name": "weather",
               "arguments": "", "status": "in_progress"})
    );
    assert_eq!(
        e[16].1,
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 16,
               "item_id": "fc_1_2", "output_index": 2, "delta": "{\"city\":"})
    );
    assert_eq!(
        e[18].1,
        json!({"type": "response.function_call_arguments.done", "sequence_number": 18,
               "item_id": "fc_1_2", "output_index": 2, "arguments": "{\"city\":\"Paris\"}"})
    );
    let weather = json!({"type": "function_call", "id": "fc_1_2", "call_id": "call_a",
        "name": "weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"});
    assert_eq!(e[19].1["item"], weather);
    // No id upstream: one is made up; no arguments: "{}".
    assert_eq!(e[20].1["item"]["call_id"], "call_1_3");
    assert_eq!(e[20].1["item"]["name"], "now");
    assert_eq!(e[21].1["arguments"], "{}");
    let now = json!({"type": "function_call", "id": "fc_1_3", "call_id": "call_1_3",
        "name": "now", "arguments": "{}", "status": "completed"});
    assert_eq!(e[22].1["item"], now);
    let r = &e[23].1["response"];
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"].as_array().unwrap().len(), 4);
    assert_eq!(r["output"][0], reasoning);
    assert_eq!(r["output"][1]["content"][0]["text"], "Checking.");
    assert_eq!(r["output"][2], weather);
    assert_eq!(r["output"][3], now);
}

#[test]
fn length_makes_an_incomplete_response() {
    let mut w = writer(true);
    let mut out = BytesMut::new();
    w.start(&mut out);
    w.text("Once upon a", &mut out);
    w.finish("length", usage(3, 16), &mut out);
    let e = events(&out);
    let (kind, last) = e.last().unwrap();
    assert_eq!(kind, "response.incomplete");
    let r = &last["response"];
    assert_eq!(r["status"], "incomplete");
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(r["output"][0]["status"], "incomplete");
    assert_eq!(e[e.len() - 2].1["item"]["status"], "incomplete");
    assert_eq!(r["usage"]["output_tokens"], 16);

    let mut w = writer(false);
    w.complete("", "", &[], "content_filter", usage(3, 0));
    let r = w.response();
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"], json!({"reason": "content_filter"}));
    assert_eq!(r["output"], json!([]));
}

#[test]
fn a_failure_after_the_start_ends_the_stream() {
    let mut w = writer(true);
    let mut out = BytesMut::new();
    w.start(&mut out);
    w.text("Par", &mut out);
    let err = GatewayError::UpstreamTimeout("the upstream sent nothing for 30s".into());
    w.error(&err, &mut out);
    assert!(w.is_ended());
    let before = out.len();
    w.text("tial", &mut out);
    w.tool_call(&piece(0, Some("c"), Some("f"), "{}"), &mut out);
    w.finish("stop", usage(1, 1), &mut out);
    w.error(&err, &mut out);
    assert_eq!(out.len(), before, "nothing after the failure");
    assert_eq!(
        outline(&out),
        [
            "created",
            "in_progress",
            "output_item.added:0",
            "content_part.added:0",
            "output_text.delta:0",
            "failed",
        ]
    );
    let r = last_response(&out);
    assert_eq!(r["status"], "failed");
    assert_eq!(
        r["error"],
        json!({"code": "server_error", "message": "the upstream sent nothing for 30s"})
    );
    assert!(r["usage"].is_null());
    assert_eq!(r["output"][0]["status"], "incomplete");
    assert_eq!(r["output"][0]["content"][0]["text"], "Par");
    assert_eq!(w.response(), r);

    // A failure before anything else still opens the stream the SDK expects.
    let mut w = writer(true);
    let mut out = BytesMut::new();
    let limited = GatewayError::UpstreamUnavailable {
        message: "every target is busy".into(),
        retry_after: Duration::from_secs(1),
    };
    w.error(&limited, &mut out);
    assert_eq!(outline(&out), ["created", "in_progress", "failed"]);
    assert_eq!(last_response(&out)["error"]["code"], "server_error");
    let mut w = writer(false);
    let rate = GatewayError::Mapped {
        status: 429,
        message: "slow down".into(),
        error_type: "rate_limit_error".into(),
        code: "rate_limited".into(),
        param: None,
        should_retry: None,
        retry_after: None,
    };
    w.error(&rate, &mut BytesMut::new());
    assert_eq!(w.response()["error"]["code"], "rate_limit_exceeded");
}

#[test]
fn a_whole_answer_equals_the_final_streamed_response() {
    let calls = [
        piece(0, Some("call_a"), Some("weather"), "{\"city\":\"Paris\"}"),
        piece(1, None, Some("now"), ""),
    ];
    let u = Usage {
        cached_tokens: 4,
        ..usage(10, 20)
    };
    let mut whole = writer(false);
    let mut out = BytesMut::new();
    whole.start(&mut out);
    assert!(out.is_empty());
    whole.complete("Checking.", "Hmm.", &calls, "tool_calls", u);
    assert!(whole.is_ended());

    let mut streamed = writer(true);
    let mut out = BytesMut::new();
    streamed.start(&mut out);
    streamed.reasoning("Hm", &mut out);
    streamed.reasoning("m.", &mut out);
    streamed.text("Checking.", &mut out);
    streamed.tool_call(&piece(0, Some("call_a"), Some("weather"), ""), &mut out);
    streamed.tool_call(&piece(0, None, None, "{\"city\":"), &mut out);
    streamed.tool_call(&piece(0, None, None, "\"Paris\"}"), &mut out);
    streamed.tool_call(&calls[1], &mut out);
    streamed.finish("tool_calls", u, &mut out);

    let final_streamed = last_response(&out);
    assert_eq!(whole.response(), final_streamed);
    assert_eq!(streamed.response(), final_streamed);
    let bytes: Value = serde_json::from_slice(&whole.to_bytes()).unwrap();
    assert_eq!(bytes, final_streamed);
    assert_eq!(final_streamed["output"][3]["arguments"], "{}");

    // Text only, and nothing at all.
    let mut w = writer(false);
    w.complete("hi", "", &[], "stop", usage(1, 1));
    let r = w.response();
    assert_eq!(r["output"].as_array().unwrap().len(), 1);
    assert_eq!(r["output"][0]["content"][0]["text"], "hi");
    let mut w = writer(false);
    w.complete("", "", &[], "stop", usage(1, 0));
    assert_eq!(w.response()["output"], json!([]));
    assert_eq!(w.response()["status"], "completed");
}

#[test]
fn echoed_fields_are_repeated_and_defaults_fill_the_rest() {
    let echo = json!({
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "temperature": 0.2,
        "max_output_tokens": 64,
        "metadata": {"k": "v"},
        "store": false,
        "previous_response_id": "resp_0",
        // The writer's own fields win.
        "id": "resp_evil",
        "status": "completed",
        "output": ["x"],
        "usage": {"input_tokens": 999},
    });
    let Value::Object(echo) = echo else {
        unreachable!()
    };
    let mut w = ResponsesWriter::new("abc".into(), "m".into(), 5, echo, true);
    assert_eq!(w.id(), "resp_abc");
    let mut out = BytesMut::new();
    w.start(&mut out);
    w.text("ok", &mut out);
    w.finish("stop", usage(2, 1), &mut out);
    let e = events(&out);
    for (_, data) in e
        .iter()
        .filter(|(k, _)| k == "response.created" || k == "response.completed")
    {
        let r = &data["response"];
        assert_eq!(r["id"], "resp_abc");
        assert_eq!(r["instructions"], "Be brief.");
        assert_eq!(r["tools"][0]["name"], "f");
        assert_eq!(r["tool_choice"], "required");
        assert_eq!(r["temperature"], 0.2);
        assert_eq!(r["max_output_tokens"], 64);
        assert_eq!(r["metadata"], json!({"k": "v"}));
        assert_eq!(r["store"], false);
        assert_eq!(r["previous_response_id"], "resp_0");
        // Not echoed: defaults.
        assert_eq!(r["parallel_tool_calls"], true);
        assert!(r["top_p"].is_null() && r["user"].is_null());
        assert_eq!(r["text"], json!({"format": {"type": "text"}}));
        assert_eq!(r["truncation"], "disabled");
    }
    assert_eq!(e[0].1["response"]["status"], "in_progress");
    assert_eq!(e[0].1["response"]["output"], json!([]));
    assert!(e[0].1["response"]["usage"].is_null());
    // Each key once in the written JSON.
    let text = std::str::from_utf8(&out).unwrap();
    let created = text.split("\n\n").next().unwrap();
    assert_eq!(created.matches("\"id\":").count(), 1, "{created}");
    assert_eq!(created.matches("\"status\":").count(), 1, "{created}");

    let r = writer(false).response();
    assert_eq!(r["tools"], json!([]));
    assert_eq!(r["tool_choice"], "auto");
    assert_eq!(r["metadata"], json!({}));
    assert_eq!(r["parallel_tool_calls"], true);
    assert_eq!(r["store"], true);
    assert!(r["instructions"].is_null() && r["temperature"].is_null());
    assert_eq!(r["status"], "in_progress");
}

#[test]
fn usage_shape_with_cached_tokens() {
    let mut w = writer(false);
    assert!(w.response()["usage"].is_null());
    let u = Usage {
        prompt_tokens: 100,
        completion_tokens: 20,
        total_tokens: 120,
        cached_tokens: 64,
        reasoning_tokens: 12,
    };
    w.complete("a", "", &[], "stop", u);
    assert_eq!(
        w.response()["usage"],
        json!({
            "input_tokens": 100,
            "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
            "output_tokens": 20,
            "output_tokens_details": {"reasoning_tokens": 12},
            "total_tokens": 120,
        })
    );
    // A total the upstream left out still adds up.
    let mut w = writer(false);
    let u = Usage {
        prompt_tokens: 7,
        completion_tokens: 3,
        ..Default::default()
    };
    w.complete("a", "", &[], "stop", u);
    assert_eq!(w.response()["usage"]["total_tokens"], 10);
    assert_eq!(
        w.response()["usage"]["input_tokens_details"]["cached_tokens"],
        0
    );
}

#[test]
fn a_non_stream_writer_writes_no_events() {
    let mut w = writer(false);
    let mut out = BytesMut::new();
    w.start(&mut out);
    w.reasoning("r", &mut out);
    w.text("t", &mut out);
    w.tool_call(&piece(0, Some("c"), Some("f"), "{}"), &mut out);
    w.finish("tool_calls", usage(1, 1), &mut out);
    assert!(out.is_empty());
    let r = w.response();
    assert_eq!(r["status"], "completed");
    let kinds: Vec<&str> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
}

#[test]
fn tool_calls_are_told_apart_by_index_and_id() {
    let mut w = writer(true);
    let mut out = BytesMut::new();
    // Providers that number every call 0 but give each its own id.
    w.tool_call(&piece(0, Some("a"), Some("f"), "{\"x\":"), &mut out);
    w.tool_call(&piece(0, None, None, "1}"), &mut out);
    w.tool_call(&piece(0, Some("b"), Some("g"), "{}"), &mut out);
    // A late piece of a call that is already done: kept in the final response.
    w.tool_call(&piece(0, Some("a"), None, ""), &mut out);
    // A name that arrives after the first piece.
    w.tool_call(&piece(1, Some("c"), None, ""), &mut out);
    w.tool_call(&piece(1, None, Some("h"), "{\"y\""), &mut out);
    w.tool_call(&piece(0, Some("b"), None, ""), &mut out);
    w.tool_call(&piece(1, Some("c"), None, ":2}"), &mut out);
    w.finish("tool_calls", usage(1, 1), &mut out);
    let outline = outline(&out);
    assert_eq!(
        outline
            .iter()
            .filter(|e| e.starts_with("output_item.added"))
            .count(),
        3,
        "{outline:?}"
    );
    let r = last_response(&out);
    let calls: Vec<(&str, &str, &str)> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["call_id"].as_str().unwrap(),
                i["name"].as_str().unwrap(),
                i["arguments"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("a", "f", "{\"x\":1}"),
            ("b", "g", "{}"),
            ("c", "h", "{\"y\":2}")
        ]
    );
    let e = events(&out);
    let done = e
        .iter()
        .find(|(k, d)| k == "response.output_item.done" && d["output_index"] == 2)
        .unwrap();
    assert_eq!(done.1["item"]["name"], "h");
}

#[test]
fn nothing_after_the_end() {
    let mut w = writer(true);
    let mut out = BytesMut::new();
    w.text("a", &mut out);
    w.finish("stop", usage(1, 1), &mut out);
    let len = out.len();
    w.text("b", &mut out);
    w.reasoning("c", &mut out);
    w.finish("length", usage(9, 9), &mut out);
    w.start(&mut out);
    assert_eq!(out.len(), len);
    assert_eq!(w.response()["status"], "completed");
    assert_eq!(w.response()["output"][0]["content"][0]["text"], "a");
    w.complete("x", "", &[], "stop", usage(1, 1));
    assert_eq!(w.response()["output"].as_array().unwrap().len(), 1);
}
