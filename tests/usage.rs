//! Usage that always adds up, through the real gateway: every OpenAI-compatible stream is asked
//! for its usage, a client that did not ask never sees it, and limits, spend and
//! `tokens_total` count the upstream's real tokens (cached and reasoning ones too); an upstream
//! without usage is estimated and counted as such. Dify's reasoning (`reasoning_chunk` events,
//! a leading `<think>`) reaches the client as `reasoning_content`.

mod support;

use serde_json::{json, Value};
use support::dify::{key, MockDify, Mode};
use support::*;

const CONTENT: &str = "Hello from the mock upstream, one two three.";

fn config(mock: &MockOpenAi, dify: &MockDify) -> String {
    format!(
        r#"
clients:
  - {{ name: free, api_key: key-free }}
  - {{ name: tight, api_key: key-tight, tpm: 100 }}
providers:
  up: {{ type: openai, base_url: "{url}", api_key: sk-up }}
  think: {{ type: dify, base_url: "{dify}", api_key: {chat}, app: chat, reasoning: true }}
  plain: {{ type: dify, base_url: "{dify}", api_key: {chat}, app: chat }}
scenarios:
  s:
    targets: [{{ provider: up, model: m, cost: {{ input: 1000, output: 2000, cached_input: 250 }} }}]
  think:
    targets: [{{ provider: think }}]
  plain:
    targets: [{{ provider: plain }}]
"#,
        url = mock.url(),
        dify = dify.url(),
        chat = key(Mode::Chat),
    )
}

async fn setup() -> (MockOpenAi, MockDify, TestGateway) {
    let mock = MockOpenAi::start().await;
    let dify = MockDify::start().await;
    let gw = start_gateway(&config(&mock, &dify));
    (mock, dify, gw)
}

fn ask(model: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    b
}

/// Asserts `/metrics` has this line (labels in Prometheus' order), once recorded: metrics follow
/// the answer.
fn assert_metric(gw: &TestGateway, line: &str) {
    let text = gw.metrics_with(line);
    assert!(
        text.lines().any(|l| l == line),
        "no {line:?} in:\n{}",
        text.lines()
            .filter(|l| l.starts_with("ai_gateway_tokens")
                || l.starts_with("ai_gateway_spend")
                || l.starts_with("ai_gateway_usage"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn assert_tokens(gw: &TestGateway, scenario: &str, provider: &str, kind: &str, n: u64) {
    assert_metric(
        gw,
        &format!(
            r#"ai_gateway_tokens_total{{endpoint="chat",kind="{kind}",provider="{provider}",scenario="{scenario}",variant=""}} {n}"#
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_without_include_usage_sees_no_usage_and_is_counted_for_real() {
    let (mock, _dify, gw) = setup().await;
    let r = chat(&gw)
        .key("key-free")
        .body(ask(
            "s",
            json!({"stream": true, "stream_options": {"continuous_usage_stats": false}}),
        ))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.content(), CONTENT);
    assert!(
        !r.text.contains("\"usage\""),
        "no usage chunk, no usage: null: {}",
        r.text
    );
    let events = r.sse_events();
    assert!(events
        .iter()
        .all(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty())));
    assert!(events
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "stop"));
    assert!(r.text.ends_with("data: [DONE]\n\n"), "{}", r.text);

    // Upstream was asked for usage, the client's other stream options kept.
    let sent = mock.last().json();
    assert_eq!(
        sent["stream_options"],
        json!({"continuous_usage_stats": false, "include_usage": true})
    );
    // The mock's real usage: 11 prompt and 8 completion tokens, $0.011 + $0.016.
    assert_tokens(&gw, "s", "up", "prompt", 11);
    assert_tokens(&gw, "s", "up", "completion", 8);
    assert_metric(
        &gw,
        r#"ai_gateway_spend_usd_total{client="free",endpoint="chat",provider="up",scenario="s",variant=""} 0.027"#,
    );
    assert!(!gw.metrics().contains("ai_gateway_usage_estimated_total{"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tpm_client_is_charged_the_real_tokens_of_a_stream() {
    let (mock, _dify, gw) = setup().await;
    // The reservation (about 8 prompt tokens + max_tokens 5) fits in 100; the 500 prompt
    // tokens the upstream reports do not, and they are what the window counts.
    mock.set(|k| k.prompt_tokens = 500);
    let body = ask("s", json!({"stream": true, "max_tokens": 5}));
    let first = chat(&gw).key("key-tight").body(body.clone()).send().await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(!first.text.contains("\"usage\""));
    assert_tokens(&gw, "s", "up", "prompt", 500);
    let second = chat(&gw).key("key-tight").body(body).send().await;
    assert_eq!(second.status, 429, "{}", second.text);
    assert_eq!(second.error_code(), "rate_limited");
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_with_include_usage_keeps_its_usage_chunk() {
    let (mock, _dify, gw) = setup().await;
    mock.set(|k| {
        k.cached_tokens = Some(4);
        k.reasoning_tokens = Some(2);
    });
    let r = chat(&gw)
        .key("key-free")
        .body(ask(
            "s",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.sse_events();
    let (last, rest) = events.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19,
               "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0}})
    );
    assert!(
        rest.iter()
            .all(|e| e["usage"].is_null() && e.get("usage").is_some()),
        "relayed as the upstream sent it: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_without_usage_is_estimated_and_counted() {
    let (mock, _dify, gw) = setup().await;
    mock.set(|k| k.omit_usage = true);
    let stream = chat(&gw)
        .key("key-free")
        .body(ask("s", json!({"stream": true})))
        .send()
        .await;
    assert_eq!(stream.status, 200, "{}", stream.text);
    assert_eq!(stream.content(), CONTENT);
    let whole = chat(&gw)
        .key("key-free")
        .body(ask("s", json!({})))
        .send()
        .await;
    assert_eq!(whole.status, 200, "{}", whole.text);
    assert!(whole.json().get("usage").is_none());

    assert_metric(&gw, r#"ai_gateway_usage_estimated_total{provider="up"} 2"#);
    let prompt = ai_gateway::limits::prompt_tokens(&[serde_json::value::RawValue::from_string(
        r#"{"role":"user","content":"hello there"}"#.into(),
    )
    .unwrap()]);
    let completion = ai_gateway::limits::count_tokens(CONTENT);
    assert_tokens(&gw, "s", "up", "prompt", 2 * prompt);
    assert_tokens(&gw, "s", "up", "completion", 2 * completion);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_and_reasoning_tokens_are_counted_and_cached_ones_priced_as_such() {
    let (mock, dify, gw) = setup().await;
    mock.set(|k| {
        k.cached_tokens = Some(6);
        k.reasoning_tokens = Some(3);
    });
    let r = chat(&gw)
        .key("key-free")
        .body(ask("s", json!({"stream": true})))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.text.contains("\"usage\""));
    assert_tokens(&gw, "s", "up", "cached", 6);
    assert_tokens(&gw, "s", "up", "reasoning", 3);
    // 5 uncached × $1000/M + 6 cached × $250/M + 8 completion × $2000/M.
    assert_metric(
        &gw,
        r#"ai_gateway_spend_usd_total{client="free",endpoint="chat",provider="up",scenario="s",variant=""} 0.0225"#,
    );

    // A translated answer (Dify) carries them in the client's usage.
    dify.set(|k| k.usage_details = Some((5, 2)));
    let r = chat(&gw)
        .key("key-free")
        .body(ask("plain", json!({})))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let usage = &r.json()["usage"];
    assert_eq!(usage["prompt_tokens_details"], json!({"cached_tokens": 5}));
    assert_eq!(
        usage["completion_tokens_details"],
        json!({"reasoning_tokens": 2})
    );
    assert_tokens(&gw, "plain", "plain", "cached", 5);
    assert_tokens(&gw, "plain", "plain", "reasoning", 2);
}

/// (reasoning, content) of an answer, streamed or whole.
fn split(a: &Answer) -> (String, String) {
    if a.is_sse() {
        let events = a.sse_events();
        let field = |name: &str| {
            events
                .iter()
                .filter_map(|e| e["choices"][0]["delta"][name].as_str())
                .collect::<String>()
        };
        (field("reasoning_content"), field("content"))
    } else {
        let m = &a.json()["choices"][0]["message"];
        (
            m["reasoning_content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            m["content"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dify_reasoning_chunks_and_a_leading_think_become_reasoning_content() {
    let (_mock, dify, gw) = setup().await;
    let answer = "chat says: hello there";
    let thought = "The user greets; greet back.";
    for knobs in ["reasoning_chunk", "think"] {
        dify.set(|k| {
            k.reasoning_chunks = (knobs == "reasoning_chunk").then_some(thought);
            k.think = (knobs == "think").then_some(thought);
            // Seven pieces cut the tags of `<think>…</think>` mid-way.
            k.pieces = 7;
        });
        for stream in [true, false] {
            let body = ask("think", json!({"stream": stream}));
            let r = chat(&gw).key("key-free").body(body).send().await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(
                split(&r),
                (thought.to_owned(), answer.to_owned()),
                "{knobs}, stream {stream}: {}",
                r.text
            );
            // Without `reasoning: true`: reasoning chunks are dropped, the tags stay.
            let body = ask("plain", json!({"stream": stream}));
            let r = chat(&gw).key("key-free").body(body).send().await;
            let content = match knobs {
                "think" => format!("<think>{thought}</think>\n\n{answer}"),
                _ => answer.to_owned(),
            };
            assert_eq!(
                split(&r),
                (String::new(), content),
                "{knobs}, stream {stream}: {}",
                r.text
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_sees_usage_only_when_it_asks() {
    let (_mock, dify, gw) = setup().await;
    dify.set(|k| {
        k.think = Some("The user greets; greet back.");
        k.pieces = 5;
    });
    let python = python_with("openai");
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/usage_check.py");
    let api = format!("{}/v1", gw.api);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(["--gateway", &api])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
