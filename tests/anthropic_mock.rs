//! The mock Anthropic upstream itself (`tests/support/anthropic.rs`), spoken to directly: its
//! event sequences, message shape, validation and faults match the real Messages API.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::anthropic::{AnthropicKnobs, MockAnthropic, MOCK_KEY, SIGNATURE, TOOL_ID};

fn body(stream: bool) -> Value {
    json!({"model": "claude-mock-1", "max_tokens": 256, "stream": stream,
           "messages": [{"role": "user", "content": "Hello there"}]})
}

/// `POST {url}/messages` with the mock's key and a version header.
async fn post(mock: &MockAnthropic, body: &Value) -> reqwest::Response {
    support::http()
        .post(format!("{}/messages", mock.url()))
        .header("x-api-key", MOCK_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The SSE body as (event name, data) pairs; each data's `type` is the event name.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name, "event name and data type agree: {e}");
            (name.to_owned(), data)
        })
        .collect()
}

async fn stream_events(mock: &MockAnthropic, body: &Value) -> Vec<(String, Value)> {
    let r = post(mock, body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    events(&r.text().await.unwrap())
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// The concatenated delta field `field` of block `index`.
fn joined(events: &[(String, Value)], index: usize, field: &str) -> String {
    events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["index"] == index)
        .filter_map(|(_, d)| d["delta"][field].as_str())
        .collect()
}

async fn rejected(mock: &MockAnthropic, request: reqwest::RequestBuilder) -> (u16, Value) {
    let before = mock.count();
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(mock.count(), before + 1, "rejected requests are recorded");
    assert_eq!(body["type"], "error");
    assert!(body["error"]["message"].is_string());
    assert!(body["request_id"]
        .as_str()
        .is_some_and(|r| r.starts_with("req_")));
    (status, body)
}

async fn invalid(mock: &MockAnthropic, body: Value) -> String {
    let request = support::http()
        .post(format!("{}/messages", mock.url()))
        .header("x-api-key", MOCK_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    let (status, answer) = rejected(mock, request).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    answer["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn text_stream_has_the_real_event_order() {
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        input_tokens: 31,
        output_tokens: 9,
        cache_read_input_tokens: 5,
        ..Default::default()
    })
    .await;
    let ev = stream_events(&mock, &body(true)).await;
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let message = &ev[0].1["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_mock"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-mock-1");
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["stop_reason"], Value::Null);
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 31, "cache_read_input_tokens": 5,
               "cache_creation_input_tokens": 0, "output_tokens": 1})
    );
    assert_eq!(
        ev[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert!(ev[2..6]
        .iter()
        .all(|(_, d)| d["index"] == 0 && d["delta"]["type"] == "text_delta"));
    assert_eq!(joined(&ev, 0, "text"), support::anthropic::DEFAULT_TEXT);
    assert_eq!(
        ev[7].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 9}})
    );
    assert_eq!(mock.last().path, "/v1/messages");
    assert_eq!(mock.abandoned(), 0);
}

#[tokio::test]
async fn thinking_text_and_tool_use_stream_with_pings() {
    let input = json!({"location": "Paris, France", "unit": "celsius"});
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        thinking: Some("Let me think about the weather.".into()),
        text: "Checking.".into(),
        chunks: 2,
        tool_use: Some(("get_weather".into(), input.clone())),
        ping: true,
        ..Default::default()
    })
    .await;
    let ev = stream_events(&mock, &body(true)).await;
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "ping",
            // thinking: two thinking_delta, one signature_delta
            "content_block_start",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "ping",
            "content_block_stop",
            // text: two text_delta
            "content_block_start",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "ping",
            "content_block_stop",
            // tool_use: two input_json_delta
            "content_block_start",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let starts: Vec<&Value> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts[0]["index"], 0);
    assert_eq!(starts[0]["content_block"]["type"], "thinking");
    assert_eq!(starts[1]["index"], 1);
    assert_eq!(starts[2]["index"], 2);
    assert_eq!(
        starts[2]["content_block"],
        json!({"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {}})
    );
    assert_eq!(
        joined(&ev, 0, "thinking"),
        "Let me think about the weather."
    );
    assert_eq!(joined(&ev, 0, "signature"), SIGNATURE);
    assert_eq!(joined(&ev, 1, "text"), "Checking.");
    let pieces: Vec<&Value> = ev
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["index"] == 2)
        .map(|(_, d)| &d["delta"])
        .collect();
    assert!(pieces.len() >= 2);
    assert!(pieces.iter().all(|p| p["type"] == "input_json_delta"));
    let json: Value = serde_json::from_str(&joined(&ev, 2, "partial_json")).unwrap();
    assert_eq!(json, input);
    let delta = &ev[ev.len() - 2].1["delta"];
    assert_eq!(delta["stop_reason"], "tool_use");
}

#[tokio::test]
async fn tool_use_without_input_sends_no_input_json_delta() {
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        text: String::new(),
        tool_use: Some(("list_files".into(), json!({}))),
        ..Default::default()
    })
    .await;
    let ev = stream_events(&mock, &body(true)).await;
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[1].1["content_block"]["input"], json!({}));
    assert_eq!(ev[3].1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn non_stream_answer_is_one_message() {
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        thinking: Some("Hmm.".into()),
        tool_use: Some(("get_weather".into(), json!({"location": "Oslo"}))),
        stop_reason: "max_tokens".into(),
        cache_creation_input_tokens: 12,
        ..Default::default()
    })
    .await;
    let r = post(&mock, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let m: Value = r.json().await.unwrap();
    assert!(m["id"].as_str().unwrap().starts_with("msg_mock"));
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "claude-mock-1");
    assert_eq!(
        m["content"],
        json!([
            {"type": "thinking", "thinking": "Hmm.", "signature": SIGNATURE},
            {"type": "text", "text": support::anthropic::DEFAULT_TEXT},
            {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {"location": "Oslo"}},
        ])
    );
    assert_eq!(
        m["stop_reason"], "max_tokens",
        "an explicit stop_reason wins"
    );
    assert_eq!(m["stop_sequence"], Value::Null);
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 25, "output_tokens": 15,
               "cache_read_input_tokens": 0, "cache_creation_input_tokens": 12})
    );
}

#[tokio::test]
async fn headers_are_checked_like_the_real_api() {
    let mock = MockAnthropic::start().await;
    let url = format!("{}/messages", mock.url());
    let client = support::http();
    let (status, e) = rejected(
        &mock,
        client
            .post(&url)
            .header("anthropic-version", "2023-06-01")
            .json(&body(false)),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(e["error"]["type"], "authentication_error");
    assert_eq!(e["error"]["message"], "x-api-key header is required");
    let (status, e) = rejected(
        &mock,
        client
            .post(&url)
            .header("x-api-key", "sk-ant-wrong-secret")
            .header("anthropic-version", "2023-06-01")
            .json(&body(false)),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(e["error"]["type"], "authentication_error");
    assert!(
        !e.to_string().contains("sk-ant-wrong-secret"),
        "echoes no key"
    );
    let (status, e) = rejected(
        &mock,
        client
            .post(&url)
            .header("x-api-key", MOCK_KEY)
            .json(&body(false)),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(
        e["error"]["message"],
        "anthropic-version: header is required"
    );
    // The key can be changed while the mock runs.
    mock.set(|k| k.expected_key = "sk-ant-other".into());
    let r = post(&mock, &body(false)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(mock.count(), 4);
    assert_eq!(
        mock.received()[1].header("x-api-key").unwrap(),
        "sk-ant-wrong-secret"
    );
}

#[tokio::test]
async fn bodies_are_validated_like_the_real_api() {
    let mock = MockAnthropic::start().await;
    let with =
        |messages: Value| json!({"model": "claude-mock-1", "max_tokens": 64, "messages": messages});
    let m = invalid(
        &mock,
        with(json!([{"role": "user", "content": [{"type": "text", "text": ""}]}])),
    )
    .await;
    assert_eq!(m, "messages: text content blocks must be non-empty");
    let m = invalid(
        &mock,
        with(
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
        ),
    )
    .await;
    assert!(
        m.contains("Unexpected role \"system\"") && m.contains("top-level `system`"),
        "{m}"
    );
    let m = invalid(
        &mock,
        with(json!([{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_missing", "content": "42"}]}])),
    )
    .await;
    assert!(
        m.starts_with("messages.0.content.0: unexpected `tool_use_id`")
            && m.contains("toolu_missing"),
        "{m}"
    );
    // A tool_result answering the previous assistant's tool_use is fine.
    let r = post(
        &mock,
        &with(json!([
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3°C"}]},
        ])),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let m = invalid(
        &mock,
        with(json!([
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": "Well?"},
        ])),
    )
    .await;
    assert!(
        m.starts_with("messages.1: `tool_use` ids were found without `tool_result`"),
        "{m}"
    );
    let m = invalid(&mock, json!({"model": "claude-mock-1", "max_tokens": 0, "messages": [{"role": "user", "content": "Hi"}]})).await;
    assert!(m.starts_with("max_tokens:"), "{m}");
    let m = invalid(
        &mock,
        json!({"model": "claude-mock-1", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(m, "max_tokens: Field required");
    let m = invalid(
        &mock,
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(m, "model: Field required");
    let m = invalid(&mock, with(json!([]))).await;
    assert_eq!(m, "messages: at least one message is required");
    // OpenAI-only fields and ranges are refused, as upstream.
    let mut b = with(json!([{"role": "user", "content": "Hi"}]));
    b["stream_options"] = json!({"include_usage": true});
    assert_eq!(
        invalid(&mock, b).await,
        "stream_options: Extra inputs are not permitted"
    );
    let mut b = with(json!([{"role": "user", "content": "Hi"}]));
    b["temperature"] = json!(1.5);
    assert_eq!(
        invalid(&mock, b).await,
        "temperature: Input should be less than or equal to 1"
    );
    let m = invalid(
        &mock,
        with(json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])),
    )
    .await;
    assert!(m.contains("Input tag 'image_url'"), "{m}");
    let m = invalid(
        &mock,
        with(json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": "{\"a\":1}"}]},
        ])),
    )
    .await;
    assert!(m.contains("tool_use.input"), "{m}");
    // count_tokens answers a count for a valid body.
    let r = support::http()
        .post(format!("{}/messages/count_tokens", mock.url()))
        .header("x-api-key", MOCK_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-mock-1", "messages": [{"role": "user", "content": "Hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let count: Value = r.json().await.unwrap();
    assert!(count["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn error_event_mid_stream_ends_the_stream() {
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        error_event_after: Some(2),
        ..Default::default()
    })
    .await;
    let ev = stream_events(&mock, &body(true)).await;
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        ev[4].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    mock.set(|k| k.error_event_after = Some(0));
    let ev = stream_events(&mock, &body(true)).await;
    assert_eq!(names(&ev), ["message_start", "error"]);
    mock.set(|k| {
        k.error_event_after = None;
        k.cut_after = Some(1);
    });
    let ev = stream_events(&mock, &body(true)).await;
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "content_block_delta"
        ]
    );
    assert_eq!(mock.abandoned(), 0);
}

#[tokio::test]
async fn overloaded_answers_529_with_retry_after() {
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        status: 529,
        error_type: "overloaded_error".into(),
        retry_after: Some(7),
        ..Default::default()
    })
    .await;
    let r = post(&mock, &body(true)).await;
    assert_eq!(r.status().as_u16(), 529);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.headers()["content-type"], "application/json");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(
        e["error"],
        json!({"type": "overloaded_error", "message": "mock failure"})
    );
    mock.set(|k| {
        k.status = 429;
        k.error_type = "rate_limit_error".into();
    });
    let r = post(&mock, &body(false)).await;
    assert_eq!(r.status().as_u16(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
    mock.set(|k| k.status = 200);
    assert_eq!(post(&mock, &body(false)).await.status(), 200);
}

#[tokio::test]
async fn a_dropped_stream_counts_as_abandoned() {
    let mock = MockAnthropic::start_with(AnthropicKnobs {
        chunk_interval: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut r = post(&mock, &body(true)).await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("event: message_start"));
    drop(r);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while mock.abandoned() == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.abandoned(), 1);
}
