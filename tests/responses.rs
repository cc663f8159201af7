//! `POST /v1/responses` (and `GET`/`DELETE /v1/responses/{id}`): the OpenAI Responses API as a
//! front door over OpenAI-compatible, Dify and Anthropic targets — what the upstream receives,
//! the event stream's order, stored continuation (a Dify target keeps its conversation), scoping
//! of stored responses to their client, expiry, errors — and the official `openai` SDK.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::anthropic::{AnthropicKnobs, MockAnthropic, MOCK_KEY};
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
    setup_with("").await
}

async fn setup_with(extra: &str) -> Setup {
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
  - name: other
    api_key: other-key
providers:
  gpt: {{ type: openai, base_url: "{o}", api_key: sk-up }}
  claude: {{ type: anthropic, base_url: "{c}", api_key: {MOCK_KEY} }}
  dify-chat: {{ type: dify, base_url: "{d}", api_key: {k}, app: chat }}
scenarios:
  via_openai:
    targets: [{{ provider: gpt, model: gpt-up }}]
  via_claude:
    targets: [{{ provider: claude, model: claude-up }}]
  via_dify:
    targets: [{{ provider: dify-chat }}]
  cached:
    targets: [{{ provider: gpt, model: gpt-up }}]
    cache: {{ ttl: 60s }}
{extra}
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

async fn post(gw: &TestGateway, key: &str, body: Value) -> (u16, String) {
    let r = http()
        .post(format!("{}/v1/responses", gw.api))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(gw: &TestGateway, key: &str, id: &str) -> (u16, String) {
    let r = http()
        .get(format!("{}/v1/responses/{id}", gw.api))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_gets_a_chat_request_and_the_client_a_response() {
    let s = setup().await;
    // `text.format` asks for JSON: the gateway checks the answer is.
    s.openai.set(|k| k.content = r#"{"a":"hello"}"#.into());
    let (status, body) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "instructions": "Be brief.", "input": "Hello there",
            "max_output_tokens": 64, "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "out",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true}},
            "metadata": {"team": "clinic"}, "store": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = s.openai.last().json();
    assert_eq!(sent["model"], "gpt-up");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    );
    assert_eq!(sent["max_completion_tokens"], 64);
    assert_eq!(sent["reasoning_effort"], "low");
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "out");
    for gateway_only in [
        "store",
        "previous_response_id",
        "instructions",
        "input",
        "text",
    ] {
        assert!(sent.get(gateway_only).is_none(), "{gateway_only}: {sent}");
    }
    let r: Value = serde_json::from_str(&body).unwrap();
    assert!(r["id"].as_str().unwrap().starts_with("resp_"), "{r}");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "via_openai");
    assert_eq!(r["instructions"], "Be brief.", "echoed: {r}");
    assert_eq!(r["metadata"], json!({"team": "clinic"}));
    let message = r["output"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["text"], r#"{"a":"hello"}"#);
    assert!(r["usage"]["output_tokens"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["usage"]["total_tokens"].as_u64().unwrap(),
        r["usage"]["input_tokens"].as_u64().unwrap()
            + r["usage"]["output_tokens"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_has_the_documented_event_order_on_every_target_kind() {
    let s = setup().await;
    for model in ["via_openai", "via_dify", "via_claude"] {
        let (status, body) = post(
            &s.gw,
            "client-key",
            json!({"model": model, "input": "Hello there", "stream": true}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert!(!body.contains("[DONE]"), "{body}");
        let ev = events(&body);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ],
            "{model}: {names:?}"
        );
        assert_eq!(
            &names[names.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{model}: {names:?}"
        );
        assert!(names[4..names.len() - 4]
            .iter()
            .all(|n| *n == "response.output_text.delta"));
        for (i, (name, data)) in ev.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i, "{model}: {data}");
        }
        let done = &ev.last().unwrap().1["response"];
        let text: String = ev
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(done["output"][0]["content"][0]["text"], text.as_str());
        assert!(
            done["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{done}"
        );
    }
    // The OpenAI upstream streamed with usage asked for.
    let sent = s.openai.last().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn continuing_replays_the_history_and_keeps_the_dify_conversation() {
    let s = setup().await;
    // OpenAI target: the earlier turn is sent again before the new input.
    let (_, one) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "My name is Ada."}),
    )
    .await;
    let one: Value = serde_json::from_str(&one).unwrap();
    let (status, two) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "What is my name?", "instructions": "Be kind.",
            "previous_response_id": one["id"]}),
    )
    .await;
    assert_eq!(status, 200, "{two}");
    let two: Value = serde_json::from_str(&two).unwrap();
    assert_eq!(two["previous_response_id"], one["id"]);
    let sent = s.openai.last().json();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello from the mock upstream, one two three."},
            {"role": "user", "content": "What is my name?"},
        ])
    );
    // A third turn continues the second (the whole chain).
    let (status, _) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "And again?", "previous_response_id": two["id"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.openai.last().json()["messages"].as_array().unwrap().len(),
        5
    );

    // Dify target: turn 2 continues Dify's own conversation and sends only the new turn.
    let (_, one) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_dify", "input": "My name is Ada."}),
    )
    .await;
    let one: Value = serde_json::from_str(&one).unwrap();
    let (status, _) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_dify", "input": "What is my name?", "previous_response_id": one["id"]}),
    )
    .await;
    assert_eq!(status, 200);
    let calls = s.dify.calls();
    let (first, second) = (&calls[calls.len() - 2].body, &calls[calls.len() - 1].body);
    assert_eq!(first["conversation_id"], "", "a new conversation: {first}");
    // The mock answers a conversation id only to the user who started it (else 404): this one
    // is the conversation turn 1 started.
    let conversation = second["conversation_id"].as_str().unwrap_or_default();
    assert_eq!(conversation.len(), 36, "{second}");
    assert_eq!(second["query"], "What is my name?");
    // A response that continues nothing starts its own conversation.
    let (_, _) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_dify", "input": "Hi"}),
    )
    .await;
    let calls = s.dify.calls();
    assert_eq!(calls[calls.len() - 1].body["conversation_id"], "");
    assert!(s.claude.count() == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_responses_belong_to_their_client_and_expire() {
    let s = setup_with("responses: { ttl: 1s }").await;
    let (_, one) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "Hi"}),
    )
    .await;
    let one: Value = serde_json::from_str(&one).unwrap();
    let id = one["id"].as_str().unwrap();
    let (status, got) = get(&s.gw, "client-key", id).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), one);

    // Another client: unknown, both to continue and to read.
    let (status, body) = post(
        &s.gw,
        "other-key",
        json!({"model": "via_openai", "input": "Hi", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert_eq!(get(&s.gw, "other-key", id).await.0, 404);

    // store: false is never kept.
    let (_, unstored) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "Hi", "store": false}),
    )
    .await;
    let unstored: Value = serde_json::from_str(&unstored).unwrap();
    assert_eq!(
        get(&s.gw, "client-key", unstored["id"].as_str().unwrap())
            .await
            .0,
        404
    );

    // Past responses.ttl without use: gone.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "Hi", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&s.gw, "client-key", id).await;
    assert_eq!(status, 404, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_requests_are_refused_in_openai_shape() {
    let s = setup().await;
    for (body, param) in [
        (
            json!({"model": "via_openai", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "via_openai", "input": "x", "background": true}),
            "background",
        ),
        (json!({"model": "via_openai"}), "input"),
        (
            json!({"model": "via_openai", "input": "x", "previous_response_id": "resp_nope"}),
            "previous_response_id",
        ),
    ] {
        let (status, text) = post(&s.gw, "client-key", body.clone()).await;
        assert_eq!(status, 400, "{body}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{text}");
        assert_eq!(e["error"]["param"], param, "{text}");
    }
    assert_eq!(s.openai.count(), 0, "nothing reached the upstream");
    let (status, _) = post(
        &s.gw,
        "wrong-key",
        json!({"model": "via_openai", "input": "x"}),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_the_start_is_response_failed() {
    let s = setup().await;
    s.openai.set(|k| {
        k.chunks = 4;
        k.cut_after = Some(2);
    });
    let (status, body) = post(
        &s.gw,
        "client-key",
        json!({"model": "via_openai", "input": "Hello", "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&body);
    let (name, data) = ev.last().unwrap();
    assert_eq!(name, "response.failed", "{body}");
    assert_eq!(data["response"]["status"], "failed");
    assert!(data["response"]["error"]["message"].as_str().unwrap().len() > 3);
    assert!(!ev.iter().any(|(n, _)| n == "response.completed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_python_sdk_works_unmodified() {
    let python = python_with("openai");
    let s = setup().await;
    s.openai.set(|k| {
        k.tool_call = Some(("get_weather".into(), r#"{"city":"Paris"}"#.into()));
        // The structured-output call gets JSON, as from a model that honours the format.
        k.json_content = Some(r#"{"label":"positive"}"#.into());
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/responses_check.py");
    let base = format!("{}/v1", s.gw.api);
    let stdout = run_sdk_script(
        python,
        script,
        vec!["--gateway".to_string(), base.to_string()],
    )
    .await;
    assert!(stdout.contains("responses sdk checks passed"), "{stdout}");
    // The Dify chain: turn 2 went to the conversation turn 1 started.
    let calls = s.dify.calls();
    let chat_calls: Vec<&Value> = calls
        .iter()
        .filter(|c| c.path.ends_with("/chat-messages"))
        .map(|c| &c.body)
        .collect();
    let continued: Vec<&&Value> = chat_calls
        .iter()
        .filter(|b| b["conversation_id"].as_str().is_some_and(|c| !c.is_empty()))
        .collect();
    assert_eq!(continued.len(), 1, "{chat_calls:?}");
    assert_eq!(continued[0]["query"], "What is my name?");
    print!("{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unstored_response_is_cached_and_replayed_as_a_response() {
    let s = setup().await;
    let ask = |stream: bool| json!({"model": "cached", "input": "Same question", "store": false, "stream": stream});
    let send = |body: Value| {
        http()
            .post(format!("{}/v1/responses", s.gw.api))
            .bearer_auth("client-key")
            .json(&body)
            .send()
    };
    let first = send(ask(false)).await.unwrap();
    assert_eq!(first.headers()["x-gateway-cache"], "miss");
    let first: Value = first.json().await.unwrap();
    let hit = send(ask(false)).await.unwrap();
    assert_eq!(hit.headers()["x-gateway-cache"], "hit");
    let hit: Value = hit.json().await.unwrap();
    assert_eq!(hit["object"], "response");
    assert_ne!(hit["id"], first["id"], "every response has its own id");
    assert_eq!(
        hit["output"][0]["content"][0]["text"],
        first["output"][0]["content"][0]["text"]
    );
    assert_eq!(hit["status"], "completed");
    // The same entry replayed as a stream.
    let streamed = send(ask(true)).await.unwrap();
    assert_eq!(streamed.headers()["x-gateway-cache"], "hit");
    let ev = events(&streamed.text().await.unwrap());
    assert_eq!(ev.first().unwrap().0, "response.created");
    assert_eq!(ev.last().unwrap().0, "response.completed");
    assert_eq!(s.openai.count(), 1, "one upstream call for three answers");
}
