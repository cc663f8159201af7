//! Client limits through the real gateway: RPM, TPM reserve-then-reconcile, budgets from
//! targets' cost, charging streams by delivered text, and what the upstream never sees.

mod support;

use serde_json::{json, Value};
use support::*;

fn config(mock: &MockOpenAi, clients: &str) -> String {
    format!(
        r#"
admin:
  api_key: admin-key
clients:
{clients}
providers:
  up: {{ type: openai, base_url: "{url}", api_key: sk-up }}
scenarios:
  s:
    targets: [{{ provider: up, model: m, cost: {{ input: 1000, output: 2000 }} }}]
  cached:
    cache: {{ ttl: 60s }}
    targets: [{{ provider: up, model: m, cost: {{ input: 1000, output: 2000 }} }}]
"#,
        url = mock.url()
    )
}

async fn ask(gw: &TestGateway, key: &str, body: Value) -> Answer {
    chat(gw).key(key).body(body).send().await
}

fn msg(extra: Value) -> Value {
    let mut b = json!({"model": "s", "messages": [{"role": "user", "content": "hello there"}]});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    b
}

/// `/admin/clients` once every request has been settled (settlement follows the response).
async fn clients(gw: &TestGateway) -> Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let v: Value = get_json(format!("{}/admin/clients", gw.admin), "admin-key").await;
        let busy = v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["inflight"].as_u64() != Some(0));
        if !busy || std::time::Instant::now() > until {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rpm_refuses_the_61st_request_of_a_minute() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(
        &mock,
        "  - { name: a, api_key: key-a, rpm: 60 }\n  - { name: b, api_key: key-b, rpm: 60 }",
    ));
    for i in 0..60 {
        let r = ask(&gw, "key-a", msg(json!({}))).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(
            r.headers["x-ratelimit-remaining-requests"],
            (59 - i).to_string()
        );
    }
    let r = ask(&gw, "key-a", msg(json!({}))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
    assert!(r.headers.get("x-ratelimit-reset-requests").is_some());
    assert_eq!(mock.count(), 60, "the upstream never saw the 61st");
    let other = ask(&gw, "key-b", msg(json!({}))).await;
    assert_eq!(other.status, 200, "another client key is unaffected");
    assert!(gw
        .metrics()
        .contains(r#"ai_gateway_rate_limited_total{client="a",limit="rpm"} 1"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn tpm_refuses_at_admission_and_releases_unused_reservations() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, "  - { name: a, api_key: key-a, tpm: 1000 }"));
    let r = ask(
        &gw,
        "key-a",
        msg(json!({"stream": true, "max_tokens": 2000})),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(r.headers["x-ratelimit-limit-tokens"], "1000");
    assert_eq!(mock.count(), 0, "refused before any upstream contact");
    // 500 reserved, about 20 used: the rest is released, so 900 more fit.
    let r = ask(&gw, "key-a", msg(json!({"max_tokens": 500}))).await;
    assert_eq!(r.status, 200);
    clients(&gw).await; // settled
    let r = ask(&gw, "key-a", msg(json!({"max_tokens": 900}))).await;
    assert_eq!(
        r.status, 200,
        "the unused reservation was released: {}",
        r.text
    );
    let c = clients(&gw).await;
    let remaining = c["clients"][0]["tpm"]["remaining"].as_u64().unwrap();
    assert!(
        remaining >= 1000 - 2 * 19 - 10,
        "two short answers used about 19 tokens each: {c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_is_spent_at_the_targets_cost() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(
        &mock,
        "  - { name: a, api_key: key-a, budget: { usd: 0.10, per: day } }",
    ));
    // The mock reports 11 prompt and 8 completion tokens: 11×$0.001 + 8×$0.002 = $0.027.
    let mut served = 0;
    loop {
        let r = ask(&gw, "key-a", msg(json!({"max_tokens": 10}))).await;
        if r.status != 200 {
            assert_eq!(r.status, 429);
            assert_eq!(r.json()["error"]["code"], "budget_exceeded");
            assert_eq!(r.headers["x-should-retry"], "false");
            assert!(r.headers.get("retry-after").is_some());
            break;
        }
        served += 1;
        assert!(served < 10);
        clients(&gw).await; // settled
    }
    assert_eq!(
        served, 3,
        "3 × $0.027 spent; a 4th (reserving ~$0.03) does not fit in $0.10"
    );
    assert_eq!(mock.count(), 3);
    let m = gw.metrics_with(
        r#"ai_gateway_spend_usd_total{client="a",endpoint="chat",provider="up",scenario="s",variant=""} 0.08"#,
    );
    let spend: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"ai_gateway_spend_usd_total{client="a",endpoint="chat",provider="up",scenario="s",variant=""} "#)
        })
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((spend - 3.0 * 0.027).abs() < 1e-9, "spend {spend}");
    let c = clients(&gw).await;
    assert!(
        (c["clients"][0]["budget"]["spent"].as_f64().unwrap() - 0.081).abs() < 1e-9,
        "{c}"
    );

    // Cache hits cost nothing.
    let gw = start_gateway(&config(
        &mock,
        "  - { name: a, api_key: key-a, budget: { usd: 0.10, per: day } }",
    ));
    for _ in 0..5 {
        let r = ask(&gw, "key-a", json!({"model": "cached", "max_tokens": 10, "messages": [{"role": "user", "content": "hello there"}]})).await;
        assert_eq!(r.status, 200);
        clients(&gw).await;
    }
    let c = clients(&gw).await;
    assert!(
        (c["clients"][0]["budget"]["spent"].as_f64().unwrap() - 0.027).abs() < 1e-9,
        "one miss, four free hits: {c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_without_usage_are_charged_by_delivered_text() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(
        &mock,
        "  - { name: a, api_key: key-a, budget: { tokens: 100000, per: day } }",
    ));
    let prompt = ai_gateway::limits::prompt_tokens(&[serde_json::value::RawValue::from_string(
        r#"{"role":"user","content":"hello there"}"#.into(),
    )
    .unwrap()]);
    // An upstream that ignores include_usage: the delivered text is counted.
    mock.set(|k| k.omit_usage = true);
    let r = ask(&gw, "key-a", msg(json!({"stream": true}))).await;
    assert_eq!(r.status, 200);
    let full = "Hello from the mock upstream, one two three.";
    let expected = prompt + ai_gateway::limits::count_tokens(full);
    let spent = clients(&gw).await["clients"][0]["budget"]["spent"]
        .as_f64()
        .unwrap() as u64;
    assert_eq!(spent, expected);

    // Cut after two of four chunks: only what reached the client is charged.
    mock.set(|k| k.cut_after = Some(2));
    let r = ask(&gw, "key-a", msg(json!({"stream": true}))).await;
    assert!(r.text.contains("stream_incomplete"));
    let delivered: String = r
        .sse()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(!delivered.is_empty() && delivered.len() < full.len());
    let after = clients(&gw).await["clients"][0]["budget"]["spent"]
        .as_f64()
        .unwrap() as u64;
    assert_eq!(
        after - spent,
        prompt + ai_gateway::limits::count_tokens(&delivered)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_client_concurrency_refuses_immediately() {
    let mock = MockOpenAi::start().await;
    mock.set(|k| k.latency = std::time::Duration::from_millis(400));
    let gw = start_gateway(&config(
        &mock,
        "  - { name: a, api_key: key-a, max_concurrency: 1 }",
    ));
    let (x, y) = tokio::join!(ask(&gw, "key-a", msg(json!({}))), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ask(&gw, "key-a", msg(json!({}))).await
    });
    assert_eq!(x.status, 200);
    assert_eq!(y.status, 429);
    assert_eq!(y.json()["error"]["code"], "rate_limited");
    assert!(gw
        .metrics()
        .contains(r#"ai_gateway_rate_limited_total{client="a",limit="concurrency"} 1"#));
}
