//! `POST /v1/embeddings` and `POST /v1/completions` end to end: the official openai SDK against
//! the gateway, what the upstream receives (path, model replaced, body otherwise as sent), bytes
//! relayed as they are, failover, targets that cannot serve the operation, the cache, limits
//! and the `endpoint` label of the request metrics.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use support::client::{http, Answer, Chat};
use support::dify::{key, MockDify, Mode};
use support::*;

struct Setup {
    up: MockOpenAi,
    up2: MockOpenAi,
    dify: MockDify,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let up = MockOpenAi::start().await;
    // The first target of `failover` answers 500; the others are served.
    up.set(|k| {
        k.status = 500;
        k.fail_models = vec!["first".into()];
    });
    let up2 = MockOpenAi::start().await;
    let dify = MockDify::start().await;
    let gw = start_gateway(&format!(
        r#"
admin:
  api_key: admin-key
clients:
  - {{ name: a, api_key: key-a }}
  - {{ name: b, api_key: key-b }}
  - {{ name: lim, api_key: key-lim, tpm: 100 }}
providers:
  up: {{ type: openai, base_url: "{u}", api_key: sk-up }}
  up2: {{ type: openai, base_url: "{u2}", api_key: sk-up2 }}
  dify: {{ type: dify, base_url: "{d}", api_key: {k}, app: chat }}
scenarios:
  emb:
    models: [text-embedding-3-small]
    targets: [{{ provider: up, model: up-embed, params: {{ temperature: 0.2 }} }}]
  comp:
    targets: [{{ provider: up, model: up-instruct }}]
  failover:
    targets: [{{ provider: up, model: first }}, {{ provider: up2, model: second }}]
  dify_only:
    targets: [{{ provider: dify }}]
  mixed:
    targets: [{{ provider: dify }}, {{ provider: up, model: up-embed }}]
  cached:
    cache: {{ ttl: 60s }}
    targets: [{{ provider: up, model: up-cached }}]
"#,
        u = up.url(),
        u2 = up2.url(),
        d = dify.url(),
        k = key(Mode::Chat),
    ));
    Setup { up, up2, dify, gw }
}

/// `POST {path}` on the gateway's API listener.
fn door(gw: &TestGateway, path: &str) -> Chat {
    Chat::at_path(&gw.api, path)
}

async fn embed(gw: &TestGateway, key: &str, body: Value) -> Answer {
    door(gw, "/v1/embeddings").key(key).body(body).send().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_creates_embeddings_and_completions() {
    let python = python_with("openai");
    let s = setup().await;
    let content = Knobs::default().content;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/embeddings_check.py");
    let base = format!("{}/v1", s.gw.api);
    let stdout = run_sdk_script(
        python,
        script,
        vec![
            "--gateway".to_string(),
            base.to_string(),
            "--key".to_string(),
            "key-a".to_string(),
            "--content".to_string(),
            content.to_string(),
        ],
    )
    .await;
    assert!(stdout.contains("sdk checks passed"), "{stdout}");
    let received = s.up.received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert!(paths.contains(&"/v1/embeddings") && paths.contains(&"/v1/completions"));
    for r in &received {
        let want = if r.path == "/v1/embeddings" {
            "up-embed"
        } else {
            "up-instruct"
        };
        assert_eq!(r.json()["model"], want, "{}", r.path);
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer sk-up"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_reach_the_upstream_as_sent_and_return_byte_for_byte() {
    let s = setup().await;
    let body = r#"{"input": ["caf\u00e9 au lait",  "b"], "model":"text-embedding-3-small","dimensions":4,"user":"u-1","metadata":{"scenario":"emb","trace":"t1"}}"#;
    let r = door(&s.gw, "/v1/embeddings")
        .key("key-a")
        .raw_body(body)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-scenario"), Some("emb"));
    assert_eq!(r.header("x-gateway-provider"), Some("up"));
    assert_eq!(r.header("x-gateway-attempts"), Some("1"));
    assert_eq!(r.header("x-gateway-cache"), Some("off"));
    let sent = s.up.last();
    assert_eq!(sent.path, "/v1/embeddings");
    // The target's model replaces the client's; every other value is the client's text; the
    // gateway's metadata key is stripped; chat `params` do not apply.
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        r#"{"model":"up-embed","input":["caf\u00e9 au lait",  "b"],"dimensions":4,"user":"u-1","metadata":{"trace":"t1"}}"#
    );
    // The answer is the upstream's bytes: floats keep their trailing zeros.
    let direct = http()
        .post(format!("{}/embeddings", s.up.url()))
        .body(sent.body.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(r.text, direct);
    let v = r.json();
    assert_ne!(
        v.to_string(),
        r.text,
        "a re-encoding would have changed the bytes (spaces, trailing zeros)"
    );
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["prompt_tokens"], 4);

    // The scenario header, and the default format and a token-array input.
    let r = door(&s.gw, "/embeddings")
        .key("key-a")
        .header("x-gateway-scenario", "emb")
        .body(json!({"input": [[1, 2], [3]], "encoding_format": "base64"}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json()["data"][0]["embedding"].is_string());
    assert_eq!(
        s.up.last().json(),
        json!({"model": "up-embed", "input": [[1, 2], [3]], "encoding_format": "base64"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_are_relayed_streamed_and_not() {
    let s = setup().await;
    let content = Knobs::default().content;
    let r = door(&s.gw, "/v1/completions")
        .key("key-a")
        .raw_body(r#"{"model":"comp","prompt":"Once upon","suffix":"The end.","max_tokens":7,"echo":false}"#)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["choices"][0]["text"], content.as_str());
    let sent = s.up.last();
    assert_eq!(sent.path, "/v1/completions");
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        r#"{"model":"up-instruct","prompt":"Once upon","suffix":"The end.","max_tokens":7,"echo":false}"#
    );

    let r = door(&s.gw, "/completions")
        .key("key-a")
        .body(json!({"model": "comp", "prompt": ["Once", "upon"], "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.is_sse());
    let data = r.sse();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let events = r.sse_events();
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, content);
    assert!(events.iter().any(|e| e["usage"]["prompt_tokens"] == 2));
    assert_eq!(s.up.last().json()["stream"], true);

    // A stream cut before its end is reported in the stream, then [DONE].
    s.up.set(|k| k.cut_after = Some(2));
    let r = door(&s.gw, "/v1/completions")
        .key("key-a")
        .body(json!({"model": "comp", "prompt": "x", "stream": true}))
        .send()
        .await;
    s.up.set(|k| k.cut_after = None);
    assert_eq!(r.status, 200);
    let data = r.sse();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.iter().any(|d| d.contains("\"error\"")), "{data:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_target_fails_over_to_the_next() {
    let s = setup().await;
    let r = embed(&s.gw, "key-a", json!({"model": "failover", "input": "x"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-provider"), Some("up2"));
    assert_eq!(r.header("x-gateway-attempts"), Some("2"));
    assert_eq!(s.up.last().json()["model"], "first");
    assert_eq!(s.up2.last().json()["model"], "second");
    assert_eq!(s.up2.last().path, "/v1/embeddings");
    let r = door(&s.gw, "/v1/completions")
        .key("key-a")
        .body(json!({"model": "failover", "prompt": "x", "stream": true}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-provider"), Some("up2"));
    assert!(s
        .gw
        .metrics_with(r#"ai_gateway_fallbacks_total{from="up",scenario="failover",to="up2"} 2"#)
        .contains(r#"ai_gateway_fallbacks_total{from="up",scenario="failover",to="up2"} 2"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_that_cannot_serve_the_operation_are_skipped_or_refused() {
    let s = setup().await;
    for (path, body) in [
        (
            "/v1/embeddings",
            json!({"model": "dify_only", "input": "x"}),
        ),
        (
            "/v1/completions",
            json!({"model": "dify_only", "prompt": "x"}),
        ),
    ] {
        let r = door(&s.gw, path).key("key-a").body(body).send().await;
        assert_eq!(r.status, 400, "{}", r.text);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "unsupported_operation");
        assert_eq!(e["type"], "invalid_request_error");
        let message = e["message"].as_str().unwrap();
        let op = path.trim_start_matches("/v1/");
        assert!(
            message.contains("dify_only") && message.contains(op),
            "{message}"
        );
    }
    // Dify first, OpenAI second: the OpenAI target serves, and the skip is no attempt.
    let r = embed(&s.gw, "key-a", json!({"model": "mixed", "input": "x"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-provider"), Some("up"));
    assert_eq!(r.header("x-gateway-attempts"), Some("1"));
    assert!(
        s.dify.calls().is_empty(),
        "Dify is never asked for embeddings"
    );
    // Chat on the same scenario still goes to Dify first.
    let r = support::chat(&s.gw)
        .key("key-a")
        .body(json!({"model": "mixed", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-gateway-provider"), Some("dify"));
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_cached_per_client_and_per_operation() {
    let s = setup().await;
    let body = json!({"model": "cached", "input": ["a", "b"]});
    let first = embed(&s.gw, "key-a", body.clone()).await;
    let second = embed(&s.gw, "key-a", body.clone()).await;
    assert_eq!(first.header("x-gateway-cache"), Some("miss"));
    assert_eq!(
        second.header("x-gateway-cache"),
        Some("hit"),
        "{}",
        second.text
    );
    assert_eq!(
        first.text, second.text,
        "a hit replays the upstream's bytes"
    );
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(s.up.count(), 1);
    let other = embed(&s.gw, "key-b", body.clone()).await;
    assert_eq!(
        other.header("x-gateway-cache"),
        Some("miss"),
        "never across clients"
    );
    assert_eq!(s.up.count(), 2);

    // The same bytes at the chat door and the embeddings door are two requests.
    let both = r#"{"model":"cached","messages":[{"role":"user","content":"hi"}],"input":"hi"}"#;
    let chat = support::chat(&s.gw)
        .key("key-a")
        .raw_body(both)
        .send()
        .await;
    assert_eq!(chat.header("x-gateway-cache"), Some("miss"));
    let emb = door(&s.gw, "/v1/embeddings")
        .key("key-a")
        .raw_body(both)
        .send()
        .await;
    assert_eq!(emb.header("x-gateway-cache"), Some("miss"), "{}", emb.text);
    assert_eq!(emb.json()["object"], "list");
    let chat = support::chat(&s.gw)
        .key("key-a")
        .raw_body(both)
        .send()
        .await;
    assert_eq!(chat.header("x-gateway-cache"), Some("hit"));
    assert_eq!(chat.json()["object"], "chat.completion");

    // Completions: whole answers are cached, streams are not.
    let comp = json!({"model": "cached", "prompt": "p"});
    let a = door(&s.gw, "/v1/completions")
        .key("key-a")
        .body(comp.clone())
        .send()
        .await;
    let b = door(&s.gw, "/v1/completions")
        .key("key-a")
        .body(comp)
        .send()
        .await;
    assert_eq!(
        (a.header("x-gateway-cache"), b.header("x-gateway-cache")),
        (Some("miss"), Some("hit"))
    );
    assert_eq!(a.text, b.text);
    let streamed = door(&s.gw, "/v1/completions")
        .key("key-a")
        .body(json!({"model": "cached", "prompt": "p", "stream": true}))
        .send()
        .await;
    assert_eq!(streamed.header("x-gateway-cache"), Some("bypass"));
    assert!(streamed.is_sse());
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_name_the_field() {
    let s = setup().await;
    for (path, body, param) in [
        ("/v1/embeddings", json!({"model": "emb"}), "input"),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": 3}),
            "input",
        ),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": []}),
            "input",
        ),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": "x", "dimensions": -1}),
            "dimensions",
        ),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": "x", "stream": true}),
            "stream",
        ),
        ("/v1/embeddings", json!({"model": 5, "input": "x"}), "model"),
        ("/v1/completions", json!({"model": "comp"}), "prompt"),
        (
            "/v1/completions",
            json!({"model": "comp", "prompt": {"a": 1}}),
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"model": "comp", "prompt": "x", "stream": "yes"}),
            "stream",
        ),
    ] {
        let r = door(&s.gw, path)
            .key("key-a")
            .body(body.clone())
            .send()
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        let e = &r.json()["error"];
        assert_eq!(
            (e["code"].as_str(), e["param"].as_str()),
            (Some("invalid_request"), Some(param)),
            "{body}: {}",
            r.text
        );
    }
    let r = door(&s.gw, "/v1/embeddings")
        .key("key-a")
        .raw_body("{nope")
        .send()
        .await;
    assert_eq!(r.error_code(), "invalid_json");
    let r = door(&s.gw, "/v1/embeddings")
        .body(json!({"model": "emb", "input": "x"}))
        .send()
        .await;
    assert_eq!(r.status, 401, "client auth as for chat");
    let r = embed(&s.gw, "key-a", json!({"model": "nope", "input": "x"})).await;
    assert_eq!(r.error_code(), "model_not_found");
    assert_eq!(s.up.count(), 0, "nothing reached the upstream");
}

/// `/admin/clients` once every request has been settled.
async fn tpm_remaining(gw: &TestGateway) -> u64 {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let v = get_json(format!("{}/admin/clients", gw.admin), "admin-key").await;
        let c = v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == "lim")
            .cloned()
            .unwrap();
        if c["inflight"].as_u64() == Some(0) || std::time::Instant::now() > until {
            return c["tpm"]["remaining"].as_u64().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_count_the_prompt_and_the_upstream_usage() {
    let s = setup().await;
    // About 150 tokens of input: over the 100-token window before any upstream contact.
    let long = "word ".repeat(150);
    let r = embed(&s.gw, "key-lim", json!({"model": "emb", "input": long})).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.error_code(), "rate_limited");
    assert_eq!(s.up.count(), 0);
    // The upstream reports 5 prompt tokens (and no completion): that is what is charged.
    let r = embed(
        &s.gw,
        "key-lim",
        json!({"model": "emb", "input": "one two three four five"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(tpm_remaining(&s.gw).await, 95);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_metrics_carry_the_endpoint() {
    let s = setup().await;
    assert_eq!(
        embed(&s.gw, "key-a", json!({"model": "emb", "input": "a b c"}))
            .await
            .status,
        200
    );
    let r = door(&s.gw, "/v1/completions")
        .key("key-a")
        .body(json!({"model": "comp", "prompt": "x"}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    let r = support::chat(&s.gw)
        .key("key-a")
        .body(json!({"model": "comp", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    let m = s.gw.metrics_with(r#"endpoint="chat""#);
    for line in [
        r#"ai_gateway_requests_total{cache="off",endpoint="embeddings",provider="up",scenario="emb",status="200",variant=""} 1"#,
        r#"ai_gateway_requests_total{cache="off",endpoint="completions",provider="up",scenario="comp",status="200",variant=""} 1"#,
        r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="up",scenario="comp",status="200",variant=""} 1"#,
        r#"ai_gateway_tokens_total{endpoint="embeddings",kind="prompt",provider="up",scenario="emb",variant=""} 3"#,
        r#"ai_gateway_request_duration_seconds_count{endpoint="embeddings",provider="up",scenario="emb",variant=""} 1"#,
        r#"ai_gateway_overhead_seconds_count{endpoint="completions",scenario="comp"} 1"#,
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    assert!(
        !m.contains(r#"ai_gateway_tokens_total{endpoint="embeddings",kind="completion""#),
        "embeddings have no completion tokens"
    );
}
