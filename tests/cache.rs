//! The response cache through the real gateway: hits, replay across stream modes, what is never
//! stored, tenant isolation, config fingerprints, client controls, bounds and single-flight.

mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::*;

fn config(mock: &MockOpenAi, ttl: &str, prompt: &str, cache_block: &str) -> String {
    format!(
        r#"
admin:
  api_key: admin-key
clients:
  - {{ name: tenant-a, api_key: key-a }}
  - {{ name: tenant-b, api_key: key-b }}
providers:
  up: {{ type: openai, base_url: "{url}", api_key: sk-up, timeouts: {{ first_token: 5s }} }}
scenarios:
  cached:
    cache: {{ ttl: {ttl} }}
    targets: [{{ provider: up, model: m, system_prompt: "{prompt}" }}]
  plain:
    targets: [{{ provider: up, model: m }}]
{cache_block}"#,
        url = mock.url()
    )
}

async fn ask(
    gw: &TestGateway,
    key: &str,
    model: &str,
    stream: bool,
    content: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut r = chat(gw).key(key).body(
        json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": content}]}),
    );
    for (k, v) in extra {
        r = r.header(k, v);
    }
    r.send().await
}

fn cache_header(a: &Answer) -> &str {
    a.header("x-gateway-cache").unwrap_or("")
}

/// (text, usage) of a completion or a stream.
fn text_and_usage(a: &Answer) -> (String, Value) {
    if a.is_sse() {
        let data = a.sse();
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{}",
            a.text
        );
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        let usage = chunks
            .iter()
            .rev()
            .find(|c| c["usage"].is_object())
            .map(|c| c["usage"].clone())
            .unwrap_or(Value::Null);
        (text, usage)
    } else {
        let v = a.json();
        (
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
            v["usage"].clone(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hits_replay_across_stream_modes_and_skip_the_upstream() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, "300s", "p1", ""));
    // non-stream miss → non-stream hit → stream hit
    let first = ask(&gw, "key-a", "cached", false, "q1", &[]).await;
    assert_eq!((first.status, cache_header(&first)), (200, "miss"));
    let second = ask(&gw, "key-a", "cached", false, "q1", &[]).await;
    assert_eq!(cache_header(&second), "hit");
    assert!(second.headers.get("age").is_some());
    assert_eq!(text_and_usage(&first), text_and_usage(&second));
    let replay = ask(&gw, "key-a", "cached", true, "q1", &[]).await;
    assert_eq!(cache_header(&replay), "hit");
    let data = replay.sse();
    let content_chunks = data
        .iter()
        .filter(|d| d.contains("\"content\":\"") && !d.contains("\"role\""))
        .count();
    assert!(content_chunks >= 3, "replayed as several chunks: {data:?}");
    assert_eq!(text_and_usage(&replay), text_and_usage(&first));
    assert_eq!(mock.count(), 1, "hits never reach the upstream");

    // stream miss → non-stream hit
    let s = ask(&gw, "key-a", "cached", true, "q2", &[]).await;
    assert_eq!(cache_header(&s), "miss");
    let n = ask(&gw, "key-a", "cached", false, "q2", &[]).await;
    assert_eq!(cache_header(&n), "hit");
    assert_eq!(text_and_usage(&s), text_and_usage(&n));
    assert_eq!(mock.count(), 2);

    // No cache block: off.
    let off = ask(&gw, "key-a", "plain", false, "q1", &[]).await;
    assert_eq!(cache_header(&off), "off");
    let m = gw.metrics();
    assert!(
        m.contains(r#"ai_gateway_cache_lookups_total{result="hit",scenario="cached"} 3"#),
        "{m}"
    );
    assert!(m.contains(r#"ai_gateway_cache_lookups_total{result="miss",scenario="cached"} 2"#));
    assert!(m.contains("ai_gateway_cache_entries 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_never_cached() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, "300s", "p", ""));
    for (i, fault) in ["500", "429", "cut"].iter().enumerate() {
        let q = format!("question {i}");
        mock.set(|k| match *fault {
            "500" => k.status = 500,
            "429" => {
                k.status = 429;
                k.retry_after = Some(0);
            }
            _ => k.cut_after = Some(2),
        });
        let bad = ask(&gw, "key-a", "cached", true, &q, &[]).await;
        assert!(
            bad.status != 200 || bad.text.contains("stream_incomplete"),
            "{fault}: {}",
            bad.text
        );
        mock.set(|k| *k = Knobs::default());
        tokio::time::sleep(Duration::from_millis(1100)).await; // past any 429 rest
        let before = mock.count();
        let good = ask(&gw, "key-a", "cached", false, &q, &[]).await;
        assert_eq!((good.status, cache_header(&good)), (200, "miss"), "{fault}");
        assert_eq!(
            mock.count(),
            before + 1,
            "{fault}: served fresh, not from the cache"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_and_config_changes_get_their_own_entries() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, "300s", "prompt one", ""));
    assert_eq!(
        cache_header(&ask(&gw, "key-a", "cached", false, "same", &[]).await),
        "miss"
    );
    assert_eq!(
        cache_header(&ask(&gw, "key-a", "cached", false, "same", &[]).await),
        "hit"
    );
    assert_eq!(
        cache_header(&ask(&gw, "key-b", "cached", false, "same", &[]).await),
        "miss",
        "another client key"
    );

    // Only the system prompt changes in gateway.yaml; after a reload the next request misses.
    let path = gw.dir.path().join("gateway.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("prompt one", "prompt two");
    std::fs::write(&path, text).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/admin/reload", gw.admin))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["config_generation"], 2);
    let after = ask(&gw, "key-a", "cached", false, "same", &[]).await;
    assert_eq!(cache_header(&after), "miss");
    assert_eq!(mock.last().json()["messages"][0]["content"], "prompt two");

    // A broken edit changes nothing and says why.
    std::fs::write(&path, "providers: [").unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/admin/reload", gw.admin))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0].as_str().unwrap().contains("gateway.yaml:"),
        "{v}"
    );
    assert_eq!(
        cache_header(&ask(&gw, "key-a", "cached", false, "same", &[]).await),
        "hit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_controls_ttl_and_byte_bound() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, "1s", "p", ""));
    assert_eq!(
        cache_header(&ask(&gw, "key-a", "cached", false, "c", &[]).await),
        "miss"
    );
    let n0 = mock.count();
    let r = ask(
        &gw,
        "key-a",
        "cached",
        false,
        "c",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(cache_header(&r), "bypass");
    assert_eq!(mock.count(), n0 + 1, "no-cache skips the lookup");
    let r = ask(
        &gw,
        "key-a",
        "cached",
        false,
        "n",
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(cache_header(&r), "bypass");
    assert_eq!(
        cache_header(&ask(&gw, "key-a", "cached", false, "n", &[]).await),
        "miss",
        "no-store stored nothing"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = ask(
        &gw,
        "key-a",
        "cached",
        false,
        "c",
        &[("cache-control", "max-age=0")],
    )
    .await;
    assert_eq!(cache_header(&r), "miss", "entry older than max-age");
    let r = ask(
        &gw,
        "key-a",
        "cached",
        false,
        "c",
        &[("cache-control", "max-age=60")],
    )
    .await;
    assert_eq!(cache_header(&r), "hit");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cache_header(&ask(&gw, "key-a", "cached", false, "c", &[]).await),
        "miss",
        "TTL expired"
    );

    // Byte bound: 2 KiB holds one 1.2 KB answer, not two.
    let big = MockOpenAi::start().await;
    big.set(|k| k.content = "x".repeat(1200));
    let gw = start_gateway(&config(
        &big,
        "300s",
        "p",
        "cache:\n  max_bytes: 2KiB\n  max_entries: 100\n",
    ));
    ask(&gw, "key-a", "cached", false, "one", &[]).await;
    ask(&gw, "key-a", "cached", false, "two", &[]).await;
    let admin: Value = get_json(format!("{}/admin/cache", gw.admin), "admin-key").await;
    assert_eq!(admin["entries"], 1, "{admin}");
    assert!(admin["bytes"].as_u64().unwrap() <= 2048);
    let cleared: Value = reqwest::Client::new()
        .delete(format!("{}/admin/cache", gw.admin))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_concurrent_requests_make_one_upstream_call() {
    let mock = MockOpenAi::start().await;
    mock.set(|k| k.latency = Duration::from_millis(400));
    let gw = start_gateway(&config(&mock, "300s", "p", ""));
    let answers: Vec<Answer> = futures::stream::iter(0..50)
        .map(|i| ask(&gw, "key-a", "cached", i % 2 == 0, "together", &[]))
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(
        mock.count(),
        1,
        "one upstream call for 50 identical requests"
    );
    let texts: std::collections::HashSet<String> =
        answers.iter().map(|a| text_and_usage(a).0).collect();
    assert_eq!(texts.len(), 1, "all 50 got the same answer");
    assert!(answers.iter().all(|a| a.status == 200));
    let m = gw.metrics();
    let coalesced: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"ai_gateway_cache_lookups_total{result="coalesced",scenario="cached"} "#,
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(coalesced >= 40, "{coalesced} coalesced\n{m}");

    // If the leader fails, every waiter makes its own attempt.
    mock.set(|k| k.status = 500);
    let answers: Vec<Answer> = futures::stream::iter(0..5)
        .map(|_| ask(&gw, "key-a", "cached", false, "fails", &[]))
        .buffer_unordered(5)
        .collect()
        .await;
    assert!(answers.iter().all(|a| a.status == 502));
}

#[tokio::test(flavor = "multi_thread")]
async fn dify_answers_are_cached_too_and_sessions_never() {
    let dify = support::dify::MockDify::start().await;
    let yaml = format!(
        "providers:\n  d: {{ type: dify, base_url: \"{}\", api_key: {}, app: chat }}\nscenarios:\n  s:\n    cache: {{ ttl: 60s }}\n    targets: [{{ provider: d }}]\n",
        dify.url(),
        support::dify::key(support::dify::Mode::Chat)
    );
    let gw = start_gateway(&yaml);
    let a = ask(&gw, "", "s", true, "dify q", &[]).await;
    let b = ask(&gw, "", "s", false, "dify q", &[]).await;
    assert_eq!((cache_header(&a), cache_header(&b)), ("miss", "hit"));
    assert_eq!(text_and_usage(&a), text_and_usage(&b));
    assert_eq!(dify.calls().len(), 1);
    let s1 = ask(
        &gw,
        "",
        "s",
        false,
        "dify q",
        &[("x-gateway-session", "s-9")],
    )
    .await;
    assert_eq!(cache_header(&s1), "bypass");
    assert_eq!(dify.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_sees_hits_with_equal_answers() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, "300s", "p", ""));
    let python = std::env::var_os("AI_GATEWAY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/cache_check.py");
    let base = format!("{}/v1", gw.api);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--gateway", &base, "--key", "key-a"])
            .output()
    })
    .await
    .unwrap()
    .expect("python with the openai SDK (run scripts/test.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("cache sdk checks passed"), "{text}");
    assert_eq!(
        mock.count(),
        2,
        "two misses (one per question), everything else from the cache"
    );
}
