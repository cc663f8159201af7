//! The translator on recorded Messages streams (shapes as Anthropic documents and sends them).

use super::*;
use crate::error::Failover;
use crate::protocol::sse::SseParser;

/// Extended thinking, text and a tool call in block 2 (the first tool call: index 0).
const THINK_TEXT_TOOL: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01Aq9w938a90dw8q\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":2}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"The user wants Paris weather.\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me check \"}}\n\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"the weather in Paris, 巴黎.\"}}\r\n\r\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Par\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"is\\\"}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// Two parallel calls from block 0, the second without arguments.
const TOOLS_ONLY: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"lookup\",\"input\":{}}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":1}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_b\",\"name\":\"now\",\"input\":{}}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":40}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

fn stream(stop_reason: &str, usage: &str) -> String {
    format!(
        concat!(
            "event: message_start\n",
            "data: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_03\",\"model\":\"claude-sonnet-4-5\",\"usage\":{{\"input_tokens\":20,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}}}}\n\n",
            "event: content_block_start\n",
            "data: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n",
            "event: content_block_delta\n",
            "data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hi\"}}}}\n\n",
            "event: content_block_stop\n",
            "data: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n",
            "event: message_delta\n",
            "data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{stop}\",\"stop_sequence\":null}},\"usage\":{usage}}}\n\n",
            "event: message_stop\n",
            "data: {{\"type\":\"message_stop\"}}\n\n",
        ),
        stop = stop_reason,
        usage = usage,
    )
}

fn run(pieces: &[&[u8]]) -> (Vec<Out>, Translator) {
    let mut tr = Translator::new("claude");
    let mut p = SseParser::default();
    let mut events = Vec::new();
    let mut outs = Vec::new();
    for piece in pieces {
        p.push(piece, &mut events).unwrap();
        for ev in events.drain(..) {
            tr.on_event(&ev, &mut outs);
        }
    }
    (outs, tr)
}

/// The same events whether the stream arrives whole, cut at any byte, or byte by byte.
fn same_at_every_split(text: &str) -> String {
    let bytes = text.as_bytes();
    let whole = format!("{:?}", run(&[bytes]).0);
    for cut in 0..=bytes.len() {
        let split = format!("{:?}", run(&[&bytes[..cut], &bytes[cut..]]).0);
        assert_eq!(split, whole, "cut at byte {cut}");
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(format!("{:?}", run(&singles).0), whole);
    whole
}

#[test]
fn thinking_text_and_a_tool_call() {
    let out = same_at_every_split(THINK_TEXT_TOOL);
    assert_eq!(
        out,
        concat!(
            r#"[Reasoning("The user wants Paris weather."), Signature("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"), "#,
            r#"Ping, Text("Let me check "), Text("the weather in Paris, 巴黎."), "#,
            r#"ToolCall(ToolCallPiece { index: 0, id: Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6"), name: Some("get_weather"), arguments: "" }), "#,
            r#"ToolCall(ToolCallPiece { index: 0, id: None, name: None, arguments: "{\"location\": \"Par" }), "#,
            r#"ToolCall(ToolCallPiece { index: 0, id: None, name: None, arguments: "is\"}" }), "#,
            r#"Finish { reason: "tool_calls", usage: Usage { prompt_tokens: 472, completion_tokens: 89, total_tokens: 561, cached_tokens: 0, reasoning_tokens: 0 } }]"#,
        )
    );
    let (_, tr) = run(&[THINK_TEXT_TOOL.as_bytes()]);
    assert_eq!(tr.id.as_deref(), Some("chatcmpl-msg_01Aq9w938a90dw8q"));
    assert_eq!(tr.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert!(tr.finished);
}

#[test]
fn tool_calls_from_block_zero_and_a_call_without_arguments() {
    let out = same_at_every_split(TOOLS_ONLY);
    assert_eq!(
        out,
        concat!(
            r#"[ToolCall(ToolCallPiece { index: 0, id: Some("toolu_a"), name: Some("lookup"), arguments: "" }), "#,
            r#"ToolCall(ToolCallPiece { index: 0, id: None, name: None, arguments: "{\"q\":1}" }), "#,
            r#"ToolCall(ToolCallPiece { index: 1, id: Some("toolu_b"), name: Some("now"), arguments: "" }), "#,
            r#"ToolCall(ToolCallPiece { index: 1, id: None, name: None, arguments: "{}" }), "#,
            r#"Finish { reason: "tool_calls", usage: Usage { prompt_tokens: 30, completion_tokens: 40, total_tokens: 70, cached_tokens: 0, reasoning_tokens: 0 } }]"#,
        )
    );
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    let reason = |stop: &str| -> String {
        let (out, _) = run(&[stream(stop, r#"{"output_tokens":5}"#).as_bytes()]);
        match out.last() {
            Some(Out::Finish { reason, .. }) => (*reason).to_owned(),
            other => panic!("{other:?}"),
        }
    };
    for (stop, want) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("a_reason_from_the_future", "stop"),
    ] {
        assert_eq!(reason(stop), want, "{stop}");
    }
}

#[test]
fn usage_counts_cached_prompt_tokens() {
    let (out, tr) = run(&[stream("end_turn", r#"{"output_tokens":50}"#).as_bytes()]);
    assert_eq!(
        format!("{out:?}"),
        r#"[Text("Hi"), Finish { reason: "stop", usage: Usage { prompt_tokens: 1320, completion_tokens: 50, total_tokens: 1370, cached_tokens: 1000, reasoning_tokens: 0 } }]"#
    );
    assert_eq!(tr.usage().cached_tokens, 1000);
    // Newer APIs repeat the input counts in message_delta; the later counts win.
    let (out, _) = run(&[stream(
        "end_turn",
        r#"{"input_tokens":25,"cache_read_input_tokens":1000,"cache_creation_input_tokens":0,"output_tokens":7}"#,
    )
    .as_bytes()]);
    assert!(
        format!("{out:?}").contains(
            "Usage { prompt_tokens: 1025, completion_tokens: 7, total_tokens: 1032, cached_tokens: 1000, reasoning_tokens: 0 }"
        ),
        "{out:?}"
    );
}

#[test]
fn an_error_event_fails_over_like_a_5xx_and_ends_the_answer() {
    let text = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_04\",\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n",
        "event: error\n",
        "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"late\"}}\n\n",
    );
    let (out, tr) = run(&[text.as_bytes()]);
    let [Out::Error(e)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(e.failover(), Failover::Broken);
    assert_eq!((e.status(), e.code()), (503, "upstream_overloaded"));
    assert!(e.to_string().contains("Overloaded"), "{e}");
    assert!(tr.finished, "nothing after the error counts");
    // A rate limit reported in the stream rests the target as a 429 answer would.
    let limited = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow\"}}\n\n";
    let (out, _) = run(&[limited.as_bytes()]);
    let [Out::Error(e)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(matches!(e.failover(), Failover::Limited(_)), "{e:?}");
}

#[test]
fn message_stop_ends_an_answer_without_message_delta_and_pings_pass() {
    let text = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_05\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ok\"}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let (out, _) = run(&[text.as_bytes()]);
    assert_eq!(
        format!("{out:?}"),
        r#"[Ping, Text("ok"), Finish { reason: "stop", usage: Usage { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4, cached_tokens: 0, reasoning_tokens: 0 } }]"#
    );
}

#[test]
fn a_stop_sequence_is_named_before_the_finish() {
    let text = stream("stop_sequence", r#"{"output_tokens":5}"#)
        .replace(r#""stop_sequence":null"#, r#""stop_sequence":"STOP""#);
    let (out, _) = run(&[text.as_bytes()]);
    let names: Vec<String> = out.iter().map(|o| format!("{o:?}")).collect();
    assert_eq!(names[1], r#"StopSequence("STOP")"#, "{names:?}");
    assert!(
        names[2].starts_with(r#"Finish { reason: "stop""#),
        "{names:?}"
    );
}

/// A whole message gives the events its stream would: signed thinking, text, a tool call given
/// whole and one without input, the stop sequence, usage with cache reads.
#[test]
fn a_whole_message_decodes_like_its_stream() {
    let body = br#"{"id":"msg_06","type":"message","role":"assistant","model":"claude-x",
        "content":[{"type":"thinking","thinking":"Hmm.","signature":"sig-6"},
                   {"type":"text","text":"Sure."},
                   {"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}},
                   {"type":"tool_use","id":"toolu_2","name":"g","input":{}}],
        "stop_reason":"stop_sequence","stop_sequence":"END",
        "usage":{"input_tokens":5,"cache_read_input_tokens":10,"output_tokens":7}}"#;
    let mut tr = Translator::new("claude");
    let mut out = Vec::new();
    tr.on_message(body, &mut out);
    assert_eq!(
        format!("{out:?}"),
        concat!(
            r#"[Reasoning("Hmm."), Signature("sig-6"), Text("Sure."), "#,
            r#"ToolCall(ToolCallPiece { index: 0, id: Some("toolu_1"), name: Some("f"), arguments: "{\"a\":1}" }), "#,
            r#"ToolCall(ToolCallPiece { index: 1, id: Some("toolu_2"), name: Some("g"), arguments: "" }), "#,
            r#"ToolCall(ToolCallPiece { index: 1, id: None, name: None, arguments: "{}" }), "#,
            r#"StopSequence("END"), "#,
            r#"Finish { reason: "stop", usage: Usage { prompt_tokens: 15, completion_tokens: 7, total_tokens: 22, cached_tokens: 10, reasoning_tokens: 0 } }]"#,
        )
    );
    assert_eq!(tr.id.as_deref(), Some("chatcmpl-msg_06"));
    // An error body, and a body that is not a message, end the answer with an error.
    for (body, code) in [
        (
            &br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#[..],
            "upstream_overloaded",
        ),
        (&b"<html>"[..], "upstream_error"),
    ] {
        let mut out = Vec::new();
        Translator::new("claude").on_message(body, &mut out);
        let [Out::Error(e)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(e.code(), code);
    }
}
