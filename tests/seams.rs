//! A fresh gateway shows its whole routing table and its known metric series before any
//! traffic, and the shipped config answers from the built-in mock with no keys set.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use support::*;

const YAML: &str = r#"
admin:
  api_key: adminkey
providers:
  up: { type: openai, base_url: "http://127.0.0.1:9/v1", api_key: k }
  keyless: { type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "" }
  echo: { type: mock }
scenarios:
  a:
    targets:
      - { provider: up, model: m1 }
      - { provider: keyless, model: m2 }
  b:
    targets:
      - { provider: echo }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_gateway_lists_every_target_and_exports_zero_series() {
    let gw = start_gateway(YAML);
    let v = get_json(format!("{}/admin/providers", gw.admin), "adminkey").await;
    let targets = v["targets"].as_array().expect("targets");
    let by_name = |name: &str| -> Value {
        targets
            .iter()
            .find(|t| t["target"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {v}"))
    };
    assert_eq!(targets.len(), 3, "{v}");
    for name in ["up/m1", "keyless/m2", "echo/-"] {
        let t = by_name(name);
        assert_eq!(t["breaker"], "closed", "{t}");
        assert_eq!(t["consecutive_failures"], 0);
        assert_eq!(t["inflight"], 0);
        assert_eq!(t["samples"], 0);
        assert!(t["last_error"].is_null());
    }
    assert_eq!(by_name("keyless/m2")["skipped"], "no api_key");
    assert!(by_name("up/m1")["skipped"].is_null());
    assert!(
        by_name("echo/-")["skipped"].is_null(),
        "a mock needs no key"
    );

    let m = gw.metrics();
    for series in [
        r#"ai_gateway_config_reloads_total{result="ok"} 0"#,
        r#"ai_gateway_config_reloads_total{result="error"} 0"#,
        r#"ai_gateway_circuit_state{provider="up",target="m1"} 0"#,
        r#"ai_gateway_circuit_state{provider="keyless",target="m2"} 0"#,
        r#"ai_gateway_inflight_requests{provider="up"} 0"#,
        r#"ai_gateway_inflight_requests{provider="echo"} 0"#,
    ] {
        assert!(m.contains(series), "{series} missing from:\n{m}");
    }

    // A failed reload is counted on the series that already existed.
    std::fs::write(gw.dir.path().join("gateway.yaml"), "providers: [").unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/admin/reload", gw.admin))
        .bearer_auth("adminkey")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let m = gw.metrics();
    assert!(
        m.contains(r#"ai_gateway_config_reloads_total{result="error"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"ai_gateway_config_reloads_total{result="ok"} 0"#),
        "{m}"
    );
}

async fn post(gw: &TestGateway, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_config_answers_from_the_builtin_mock_without_keys() {
    let gw = start_gateway_from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml"));
    let ask =
        json!({"model": "demo", "messages": [{"role": "user", "content": "水光针适合什么肤质？"}]});

    let r = post(&gw, ask.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-gateway-provider"], "mock");
    assert_eq!(r.headers()["x-gateway-cache"], "miss");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "水光针适合什么肤质？"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);

    // The same question again is a cache hit with the same answer.
    let r = post(&gw, ask).await;
    assert_eq!(r.headers()["x-gateway-cache"], "hit");
    let again: Value = r.json().await.unwrap();
    assert_eq!(
        again["choices"][0]["message"]["content"],
        "水光针适合什么肤质？"
    );

    // A stream, with usage, ends with [DONE].
    let r = post(
        &gw,
        json!({"model": "demo-echo", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "stream this answer back to me please"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "stream this answer back to me please");
    assert!(data.len() > 4, "streamed in several chunks: {data:?}");
    assert!(data.iter().any(|d| d.contains("\"usage\":{")));

    // Real scenarios without keys stay a clear 502: the mock is never their fallback.
    let r = post(
        &gw,
        json!({"model": "general_chat", "messages": [{"role": "user", "content": "你好"}]}),
    )
    .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no api_key"),
        "{v}"
    );

    let m = gw.metrics_with("scenario=\"demo\"");
    assert!(
        m.contains(
            r#"ai_gateway_requests_total{cache="hit",endpoint="chat",provider="-",scenario="demo",status="200",variant=""} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"ai_gateway_upstream_attempts_total{outcome="ok",provider="mock"} 2"#),
        "{m}"
    );
}
