//! Routing and resilience through the real gateway: strategies, failover before the first byte,
//! 429 rests, breakers, the retry budget and client cancellation. Every test checks that each
//! request got exactly one well-formed answer and counts what the mock upstreams received.

mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

/// A config with one provider per mock (`a`, `b`, …) and scenario `s` over them in order.
fn config(
    mocks: &[&MockOpenAi],
    scenario: &str,
    provider_extra: &str,
    target_extra: &[&str],
) -> String {
    let mut providers = String::new();
    let mut targets = String::new();
    for (i, m) in mocks.iter().enumerate() {
        let name = (b'a' + i as u8) as char;
        providers.push_str(&format!(
            "  {name}: {{ type: openai, base_url: \"{}\", api_key: key-{name}, timeouts: {{ connect: 500ms, first_token: 1s, idle: 1s }}{provider_extra} }}\n",
            m.url()
        ));
        let extra = target_extra.get(i).copied().unwrap_or("");
        targets.push_str(&format!(
            "      - {{ provider: {name}, model: model-{name}{extra} }}\n"
        ));
    }
    format!("admin:\n  api_key: admin-key\nproviders:\n{providers}scenarios:\n  s:\n{scenario}\n    targets:\n{targets}")
}

async fn ask(gw: &TestGateway, stream: bool) -> Answer {
    chat(gw)
        .body(json!({"model": "s", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
}

/// Exactly one well-formed answer: a completion, a stream ending in [DONE], or an OpenAI error.
fn well_formed(a: &Answer) {
    if a.status == 200 {
        if a.is_sse() {
            assert_eq!(
                a.sse().last().map(String::as_str),
                Some("[DONE]"),
                "{}",
                a.text
            );
        } else {
            assert!(
                a.json()["choices"][0]["message"]["content"].is_string(),
                "{}",
                a.text
            );
        }
    } else {
        assert!(a.json()["error"]["code"].is_string(), "{}", a.text);
    }
}

async fn run_many(gw: &TestGateway, n: usize, parallel: usize) -> Vec<Answer> {
    futures::stream::iter(0..n)
        .map(|i| ask(gw, i % 2 == 0))
        .buffer_unordered(parallel)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn strategies_distribute_as_defined() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let cases: [(&str, [&str; 2]); 4] = [
        ("    strategy: failover", ["", ""]),
        ("    strategy: round_robin", ["", ""]),
        ("    strategy: weighted", [", weight: 3", ", weight: 1"]),
        (
            "    strategy: cost",
            [
                ", cost: { input: 1.0, output: 2.0 }",
                ", cost: { input: 0.1, output: 0.2 }",
            ],
        ),
    ];
    for (strategy, extras) in cases {
        let gw = start_gateway(&config(&[&a, &b], strategy, "", &extras));
        let (a0, b0) = (a.count(), b.count());
        let answers = run_many(&gw, 1000, 8).await;
        assert!(answers.iter().all(|x| x.status == 200), "{strategy}");
        answers.iter().for_each(well_formed);
        let (na, nb) = (a.count() - a0, b.count() - b0);
        assert_eq!(na + nb, 1000, "{strategy}: one upstream call per request");
        match strategy.trim() {
            "strategy: failover" => assert_eq!((na, nb), (1000, 0)),
            "strategy: round_robin" => assert_eq!((na, nb), (500, 500)),
            "strategy: weighted" => {
                assert!((700..=800).contains(&na), "weighted 3:1 gave {na}:{nb}")
            }
            _ => assert_eq!((na, nb), (0, 1000), "cost picks the cheapest"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn least_busy_and_least_latency_prefer_the_better_target() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    // `a` holds each request 500 ms: it is only chosen while it has nothing in flight.
    a.set(|k| k.latency = Duration::from_millis(500));
    let gw = start_gateway(&config(&[&a, &b], "    strategy: least_busy", "", &[]));
    let answers = run_many(&gw, 1000, 8).await;
    answers.iter().for_each(well_formed);
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, 1000);
    println!("least_busy: a={na} b={nb}");
    // The busy target only gets work while it has nothing in flight: about one request per
    // 500 ms of the run, plus races between concurrent picks.
    assert!(
        na < 100,
        "least_busy sent {na} of 1000 to the busy target (b={nb})"
    );

    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| k.latency = Duration::from_millis(30));
    let gw = start_gateway(&config(&[&a, &b], "    strategy: least_latency", "", &[]));
    let answers = run_many(&gw, 1000, 4).await;
    answers.iter().for_each(well_formed);
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, 1000);
    println!("least_latency: a={na} b={nb}");
    assert!(
        nb > 700,
        "least_latency should shift to the faster target: a={na} b={nb}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_failures_fall_back_before_the_first_byte() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for fault in ["503", "refused", "silent", "pings"] {
        let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
        let mut yaml = config(&[&a, &b], "", "", &[]);
        match fault {
            "503" => a.set(|k| k.status = 503),
            "refused" => yaml = yaml.replace(&a.url(), &format!("http://127.0.0.1:{dead_port}/v1")),
            "pings" => a.set(|k| k.pings_only = true),
            _ => a.set(|k| k.never_answer = true),
        }
        let gw = start_gateway(&yaml);
        // An upstream that only pings is a stream-only fault (pings are SSE).
        let modes: &[bool] = if fault == "pings" {
            &[true, true]
        } else {
            &[false, true]
        };
        for &stream in modes {
            let answer = ask(&gw, stream).await;
            well_formed(&answer);
            assert_eq!(answer.status, 200, "{fault}: {}", answer.text);
            assert_eq!(answer.headers["x-gateway-attempts"], "2", "{fault}");
            assert_eq!(answer.headers["x-gateway-provider"], "b", "{fault}");
            assert!(answer.text.contains("Hello from"), "the fallback's answer");
        }
        assert_eq!(b.count(), 2, "{fault}");
        let m = gw.metrics();
        assert!(
            m.contains(r#"ai_gateway_fallbacks_total{from="a",scenario="s",to="b"} 2"#),
            "{fault}\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_target_rests_for_retry_after() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| {
        k.status = 429;
        k.retry_after = Some(2);
    });
    let gw = start_gateway(&config(&[&a, &b], "", "", &[]));
    let first = ask(&gw, false).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-gateway-provider"], "b");
    let limited_at = Instant::now();
    a.set(|k| {
        k.status = 200;
        k.retry_after = None;
    });
    while limited_at.elapsed() < Duration::from_millis(1700) {
        let r = ask(&gw, true).await;
        well_formed(&r);
        assert_eq!(r.headers["x-gateway-provider"], "b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.count(), 1, "the resting target received nothing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = ask(&gw, false).await;
    assert_eq!(
        r.headers["x-gateway-provider"], "a",
        "back after Retry-After"
    );

    // Every target limited: the client gets 429 with Retry-After.
    let before = a.count() + b.count();
    a.set(|k| {
        k.status = 429;
        k.retry_after = Some(3);
    });
    b.set(|k| {
        k.status = 429;
        k.retry_after = Some(5);
    });
    let r = ask(&gw, false).await;
    well_formed(&r);
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    let r = ask(&gw, false).await;
    assert_eq!(
        r.status, 429,
        "both resting: answered without contacting them"
    );
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(r.headers["retry-after"], "3", "the soonest reopening");
    assert_eq!(
        a.count() + b.count(),
        before + 2,
        "no contact while resting"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_after_the_first_byte_is_an_in_stream_error_without_fallback() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| {
        k.chunks = 6;
        k.reset_after = Some(3);
    });
    let gw = start_gateway(&config(&[&a, &b], "", "", &[]));
    let r = ask(&gw, true).await;
    assert_eq!(r.status, 200);
    let data = r.sse();
    let content: Vec<&String> = data
        .iter()
        .filter(|d| d.contains("\"content\"") && !d.contains("\"role\""))
        .collect();
    assert_eq!(
        content.len(),
        3,
        "three content chunks reached the client: {data:?}"
    );
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "stream_incomplete");
    assert_eq!(b.count(), 0, "no fallback after the first byte");
}

fn gauge(metrics: &str, provider: &str) -> Option<i64> {
    let prefix =
        format!("ai_gateway_circuit_state{{provider=\"{provider}\",target=\"model-{provider}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_opens_probes_and_closes() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| k.status = 503);
    let policy = ", breaker: { failure_threshold: 3, open_for: 1s, success_threshold: 2, half_open_probes: 1 }";
    let gw = start_gateway(&config(&[&a, &b], "", policy, &[]));
    for _ in 0..3 {
        let r = ask(&gw, false).await;
        assert_eq!(r.headers["x-gateway-provider"], "b");
    }
    assert_eq!(a.count(), 3);
    assert_eq!(
        gauge(&gw.metrics(), "a"),
        Some(2),
        "open after failure_threshold"
    );
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_millis(800) {
        let r = ask(&gw, false).await;
        assert_eq!(
            r.headers["x-gateway-attempts"], "1",
            "an open target is skipped without a connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.count(), 3, "no traffic while open");
    let ready = http()
        .get(format!("{}/ready", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "b still serves");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Half-open: exactly one probe at a time. The probe is slow and succeeds.
    a.set(|k| {
        k.status = 200;
        k.latency = Duration::from_millis(400);
    });
    let answers = run_many(&gw, 6, 6).await;
    answers.iter().for_each(well_formed);
    assert_eq!(a.count(), 4, "one probe while half-open");
    assert_eq!(
        gauge(&gw.metrics(), "a"),
        Some(1),
        "one success of two: still half-open"
    );
    a.set(|k| k.latency = Duration::ZERO);
    let r = ask(&gw, false).await;
    assert_eq!(r.headers["x-gateway-provider"], "a", "second probe");
    assert_eq!(
        gauge(&gw.metrics(), "a"),
        Some(0),
        "closed after success_threshold"
    );
    let admin: Value = get_json(format!("{}/admin/providers", gw.admin), "admin-key").await;
    let t = admin["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == "a")
        .unwrap();
    assert_eq!(t["breaker"], "closed");
    assert!(t["ttft_p50_seconds"].as_f64().is_some());
    assert!(t["last_error"].as_str().unwrap().contains("503"), "{t}");
    assert!(
        !admin.to_string().contains("key-a"),
        "no key material in admin output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_bounds_load_during_an_outage() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| k.status = 503);
    b.set(|k| k.status = 503);
    // Breakers out of the way: the budget alone must bound the extra attempts.
    let policy = ", breaker: { failure_threshold: 100000 }";
    let gw = start_gateway(&config(&[&a, &b], "", policy, &[]));
    let n = 60;
    for _ in 0..n {
        let r = ask(&gw, false).await;
        well_formed(&r);
        assert_eq!(r.status, 502);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = a.count() + b.count();
    assert!(
        total as f64 <= 1.2 * n as f64 + 3.0,
        "{total} upstream calls for {n} requests"
    );
    assert!(total > n, "some retries were allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_before_the_first_byte_cancels_the_upstream_call() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| k.latency = Duration::from_secs(3));
    let gw = start_gateway(&config(
        &[&a, &b],
        "",
        ", breaker: { failure_threshold: 1 }",
        &[],
    ));
    assert!(chat(&gw)
        .body(json!({"model": "s", "messages": [{"role": "user", "content": "hi"}]}))
        .timeout(Duration::from_millis(300))
        .try_send_raw()
        .await
        .is_err());
    let until = Instant::now() + Duration::from_secs(2);
    while a.state.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < until,
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.count(), 0, "no fallback for a client that left");
    assert_eq!(
        gauge(&gw.metrics(), "a"),
        Some(0),
        "not a breaker failure (threshold is 1)"
    );
    a.set(|k| k.latency = Duration::ZERO);
    let r = ask(&gw, false).await;
    assert_eq!(r.headers["x-gateway-provider"], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_providers_are_skipped_and_unhealthy_cheap_targets_avoided() {
    // max_concurrency: a provider at its limit is skipped; all full → 503 with Retry-After.
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.set(|k| k.latency = Duration::from_millis(600));
    let gw = start_gateway(&config(&[&a, &b], "", ", max_concurrency: 1", &[]));
    let answers = run_many(&gw, 2, 2).await;
    answers.iter().for_each(well_formed);
    let mut providers: Vec<String> = answers
        .iter()
        .map(|x| x.headers["x-gateway-provider"].to_str().unwrap().to_owned())
        .collect();
    providers.sort();
    assert_eq!(
        providers,
        ["a", "b"],
        "the second request skipped the full provider"
    );
    let solo = start_gateway(&config(&[&a], "", ", max_concurrency: 1", &[]));
    let answers = run_many(&solo, 2, 2).await;
    answers.iter().for_each(well_formed);
    let mut statuses: Vec<u16> = answers.iter().map(|x| x.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
    let busy = answers.iter().find(|x| x.status == 503).unwrap();
    assert!(busy.text.contains("upstream_unavailable"));
    assert!(busy.headers.get("retry-after").is_some());

    // cost: the cheapest healthy target; an open breaker moves traffic to the next cheapest.
    let (x, y) = (MockOpenAi::start().await, MockOpenAi::start().await);
    y.set(|k| k.status = 500);
    let costs = [
        ", cost: { input: 1.0, output: 1.0 }",
        ", cost: { input: 0.1, output: 0.1 }",
    ];
    let gw = start_gateway(&config(
        &[&x, &y],
        "    strategy: cost",
        ", breaker: { failure_threshold: 2, open_for: 60s }",
        &costs,
    ));
    for _ in 0..10 {
        let r = ask(&gw, false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-gateway-provider"], "a");
    }
    assert_eq!(
        y.count(),
        2,
        "the cheap target was tried until its breaker opened"
    );
    assert_eq!(x.count(), 10);

    // /ready is 503 while a scenario has no usable target.
    let (z,) = (MockOpenAi::start().await,);
    z.set(|k| k.status = 500);
    let gw = start_gateway(&config(
        &[&z],
        "",
        ", retry: { attempts: 1 }, breaker: { failure_threshold: 1, open_for: 60s }",
        &[],
    ));
    assert_eq!(
        http()
            .get(format!("{}/ready", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(ask(&gw, false).await.status, 502);
    assert_eq!(
        http()
            .get(format!("{}/ready", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let r = ask(&gw, false).await;
    assert_eq!(r.status, 503, "open breaker: answered without a connect");
    assert_eq!(z.count(), 1);
}

/// Provider `a` on `mock` and scenario `s` with one target without `model:`: the client's model
/// is what goes upstream.
fn model_less(mock: &MockOpenAi, provider_extra: &str) -> String {
    format!(
        "admin:\n  api_key: admin-key\nproviders:\n  a: {{ type: openai, base_url: \"{}\", api_key: key-a, timeouts: {{ connect: 500ms, first_token: 1s, idle: 1s }}{provider_extra} }}\nscenarios:\n  s:\n    targets:\n      - {{ provider: a }}\n",
        mock.url()
    )
}

async fn ask_for(gw: &TestGateway, model: &str) -> Answer {
    chat(gw)
        .header("x-gateway-scenario", "s")
        .body(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
}

async fn providers(gw: &TestGateway) -> Vec<Value> {
    let v = get_json(format!("{}/admin/providers", gw.admin), "admin-key").await;
    v["targets"].as_array().cloned().unwrap_or_default()
}

fn entry<'a>(list: &'a [Value], target: &str) -> Option<&'a Value> {
    list.iter().find(|t| t["target"] == target)
}

/// A mock that answers `status` (with `retry_after`) to requests for `gpt-a` only.
async fn failing_gpt_a(status: u16, retry_after: Option<u64>) -> MockOpenAi {
    let fail_models = vec!["gpt-a".into()];
    MockOpenAi::start_with(Knobs {
        status,
        retry_after,
        fail_models,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_for_one_model_does_not_rest_the_other_models_of_a_model_less_target() {
    let mock = failing_gpt_a(429, Some(30)).await;
    let gw = start_gateway(&model_less(&mock, ""));

    let r = ask_for(&gw, "gpt-a").await;
    well_formed(&r);
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(mock.count(), 1);
    assert_eq!(mock.last().json()["model"], "gpt-a");

    let r = ask_for(&gw, "gpt-b").await;
    well_formed(&r);
    assert_eq!(r.status, 200, "another model is not resting: {}", r.text);
    assert_eq!(mock.count(), 2, "gpt-b reached the upstream");
    assert_eq!(mock.last().json()["model"], "gpt-b");

    let r = ask_for(&gw, "gpt-a").await;
    well_formed(&r);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(mock.count(), 2, "gpt-a rests: answered without a call");

    let list = providers(&gw).await;
    let a = entry(&list, "a/gpt-a").expect("gpt-a listed");
    assert_eq!(a["model"], "gpt-a");
    assert!(a["resting_seconds"].as_f64().is_some(), "{a}");
    let b = entry(&list, "a/gpt-b").expect("gpt-b listed");
    assert!(b["resting_seconds"].is_null(), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_model_opens_its_own_breaker_while_other_models_go_through() {
    let mock = failing_gpt_a(503, None).await;
    let policy = ", retry: { attempts: 1 }, breaker: { failure_threshold: 2, open_for: 60s }";
    let gw = start_gateway(&model_less(&mock, policy));
    for _ in 0..2 {
        let r = ask_for(&gw, "gpt-a").await;
        well_formed(&r);
        assert_eq!(r.status, 502, "{}", r.text);
    }
    assert_eq!(mock.count(), 2);
    let r = ask_for(&gw, "gpt-a").await;
    well_formed(&r);
    assert_eq!(r.status, 503, "open breaker: {}", r.text);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(mock.count(), 2, "no contact while gpt-a's breaker is open");

    let r = ask_for(&gw, "gpt-b").await;
    well_formed(&r);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(mock.count(), 3);
    assert_eq!(mock.last().json()["model"], "gpt-b");
    let ready = http().get(format!("{}/ready", gw.admin)).send().await;
    assert_eq!(
        ready.unwrap().status(),
        200,
        "the target serves other models"
    );

    let list = providers(&gw).await;
    let a = entry(&list, "a/gpt-a").expect("gpt-a listed");
    assert_eq!(
        (a["provider"].as_str(), a["model"].as_str()),
        (Some("a"), Some("gpt-a"))
    );
    assert_eq!(a["breaker"], "open", "{a}");
    assert!(a["last_error"].as_str().unwrap().contains("503"), "{a}");
    let b = entry(&list, "a/gpt-b").expect("gpt-b listed");
    assert_eq!(b["model"], "gpt-b");
    assert_eq!(b["breaker"], "closed", "{b}");
    assert_eq!(b["samples"], 1, "{b}");
    let shared = entry(&list, "a/-").expect("the target's own state stays listed");
    assert_eq!(shared["breaker"], "closed", "{shared}");
    assert_eq!(shared["samples"], 0, "{shared}");
    let m = gw.metrics();
    for (model, code) in [("gpt-a", 2), ("gpt-b", 0)] {
        let series = format!(r#"ai_gateway_circuit_state{{provider="a",target="{model}"}} {code}"#);
        assert!(m.contains(&series), "{m}");
    }
}

async fn reload(gw: &TestGateway, edit: impl FnOnce(String) -> String) {
    let path = gw.dir.path().join("gateway.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    let r = http()
        .post(format!("{}/admin/reload", gw.admin))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn per_model_states_live_and_go_with_their_target_across_reloads() {
    let mock = failing_gpt_a(503, None).await;
    let policy = ", retry: { attempts: 1 }, breaker: { failure_threshold: 1, open_for: 60s }";
    let gw = start_gateway(&model_less(&mock, policy));
    assert_eq!(ask_for(&gw, "gpt-a").await.status, 502);
    assert_eq!(ask_for(&gw, "gpt-b").await.status, 200);

    // Another scenario appears: the target is unchanged, so are its models' states.
    reload(&gw, |t| {
        format!("{t}  other:\n    targets:\n      - {{ provider: a, model: fixed }}\n")
    })
    .await;
    let list = providers(&gw).await;
    assert_eq!(entry(&list, "a/gpt-a").unwrap()["breaker"], "open");
    assert_eq!(entry(&list, "a/gpt-b").unwrap()["samples"], 1);
    assert_eq!(ask_for(&gw, "gpt-a").await.status, 503);
    assert_eq!(mock.count(), 2, "the open breaker survived the reload");
    // The model `other` configures, asked for through the model-less target: one upstream
    // model, one state.
    assert_eq!(ask_for(&gw, "fixed").await.status, 200);
    let list = providers(&gw).await;
    let fixed: Vec<&Value> = list.iter().filter(|t| t["model"] == "fixed").collect();
    assert_eq!(fixed.len(), 1, "{list:?}");
    assert_eq!(fixed[0]["target"], "a/fixed");
    assert_eq!(fixed[0]["samples"], 1);

    // The provider moves to another upstream: the target's model states go with it.
    let healthy = MockOpenAi::start().await;
    reload(&gw, |t| t.replace(&mock.url(), &healthy.url())).await;
    let list = providers(&gw).await;
    assert!(entry(&list, "a/-").is_some());
    assert!(entry(&list, "a/gpt-a").is_none(), "{list:?}");
    assert!(entry(&list, "a/gpt-b").is_none(), "{list:?}");
    let m = gw.metrics();
    assert!(
        !m.contains(r#"target="gpt-a""#) && !m.contains(r#"target="gpt-b""#),
        "the dropped states' series are gone\n{m}"
    );
    assert_eq!(ask_for(&gw, "gpt-a").await.status, 200);
    assert_eq!(healthy.count(), 1);
    let list = providers(&gw).await;
    assert_eq!(entry(&list, "a/gpt-a").unwrap()["breaker"], "closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn model_names_beyond_64_share_the_target_state() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&model_less(&mock, ""));
    let names: Vec<String> = (0..65).map(|i| format!("m-{i:02}")).collect();
    for name in &names {
        let r = ask_for(&gw, name).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_eq!(mock.last().json()["model"], name.as_str());
    }
    assert_eq!(ask_for(&gw, "m-64").await.status, 200);
    assert_eq!(ask_for(&gw, "m-00").await.status, 200);

    let list = providers(&gw).await;
    let own: Vec<&Value> = list
        .iter()
        .filter(|t| t["provider"] == "a" && t["target"] != "a/-")
        .collect();
    assert_eq!(own.len(), 64, "at most 64 model names per target");
    for name in &names[..64] {
        let e = entry(&list, &format!("a/{name}")).expect("listed");
        assert_eq!(e["model"], name.as_str());
        let n = if name == "m-00" { 2 } else { 1 };
        assert_eq!(e["samples"], n, "{e}");
    }
    assert!(
        entry(&list, "a/m-64").is_none(),
        "the 65th name has no state of its own"
    );
    let shared = entry(&list, "a/-").expect("the overflow slot");
    assert_eq!(shared["model"], "a");
    assert_eq!(shared["samples"], 2, "both m-64 requests: {shared}");
    let series = gw
        .metrics()
        .lines()
        .filter(|l| l.starts_with(r#"ai_gateway_circuit_state{provider="a","#))
        .count();
    assert_eq!(series, 65, "one breaker series per state");
}
