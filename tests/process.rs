//! The gateway as a process, the way an operator runs it: graceful SIGTERM with open streams,
//! SIGHUP reload, and a run with real keys whose logs, metrics and admin output are searched
//! for key material.

mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::process::{spawn, Proc};
use support::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn provider_yaml(url: &str, grace: &str) -> String {
    format!(
        r#"admin:
  api_key: admin-key
shutdown:
  grace_period: {grace}
providers:
  up: {{ type: openai, base_url: "{url}", api_key: key-up, timeouts: {{ first_token: 5s, idle: 5s, total: 60s }} }}
scenarios:
  s:
    targets: [{{ provider: up, model: m }}]
"#
    )
}

/// Opens `n` streams at once and returns them once each has delivered content.
async fn open_streams(
    api: &str,
    n: usize,
) -> Vec<(
    String,
    futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
)> {
    let opens = (0..n).map(|i| {
        let url = format!("{api}/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .json(&json!({"model": "s", "stream": true, "messages": [{"role": "user", "content": format!("q{i}")}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut body = r.bytes_stream().boxed();
            let mut seen = String::new();
            while content(&seen).is_empty() {
                let chunk = body.next().await.expect("stream open").unwrap();
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            (seen, body)
        }
    });
    futures::future::join_all(opens).await
}

async fn finish(
    mut seen: String,
    mut body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
) -> Result<String, String> {
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => seen.push_str(&String::from_utf8_lossy(&c)),
            Err(e) => return Err(format!("stream broke: {e} after {seen}")),
        }
    }
    Ok(seen)
}

fn content(sse: &str) -> String {
    sse_data(sse)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

type Finishing = tokio::task::JoinHandle<Result<String, String>>;

/// A gateway with 20 streams open (each `chunks` chunks `interval` apart) when it gets SIGTERM;
/// returns it, its upstream, the signal's time, and the streams being read to their end.
async fn sigterm_with_open_streams(
    chunks: usize,
    interval: Duration,
    grace: &str,
) -> (Proc, MockOpenAi, Instant, Vec<Finishing>) {
    let mock = MockOpenAi::start_with(Knobs {
        chunks,
        chunk_interval: interval,
        ..Default::default()
    })
    .await;
    let p = spawn(&provider_yaml(&mock.url(), grace), &[]);
    let streams = open_streams(&p.api, 20).await;
    let t0 = Instant::now();
    p.signal("TERM");
    let tasks = streams
        .into_iter()
        .map(|(seen, body)| tokio::spawn(finish(seen, body)))
        .collect();
    (p, mock, t0, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_twenty_open_streams_finish_then_exits_zero() {
    let (mut p, _mock, t0, tasks) =
        sigterm_with_open_streams(10, Duration::from_millis(150), "20s").await;

    // No new connections are taken once draining.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        client().get(format!("{}/v1/models", p.api)).send(),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a new request was served during the drain"
    );

    let expect = Knobs::default().content;
    for t in tasks {
        let sse = t.await.unwrap().unwrap();
        assert_eq!(
            sse_data(&sse).last().map(String::as_str),
            Some("[DONE]"),
            "{sse}"
        );
        assert_eq!(content(&sse), expect, "{sse}");
        assert!(!sse.contains("shutting_down"));
    }
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(10)));
    let took = t0.elapsed();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        p.stderr_text()
    );
    // The process leaves when the streams are done, not at the end of the 20 s grace period.
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    // Every stream is in the access log, flushed before exit.
    let log = p.stdout_text();
    let streams = log
        .lines()
        .filter(|l| l.contains("\"stream\":true") && l.contains("\"status\":200"))
        .count();
    assert_eq!(streams, 20, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_grace_deadline_open_streams_get_an_error_event_and_done() {
    let (mut p, _mock, t0, tasks) =
        sigterm_with_open_streams(40, Duration::from_millis(250), "1s").await;
    for t in tasks {
        let sse = t.await.unwrap().unwrap();
        let data = sse_data(&sse);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{sse}");
        let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(err["error"]["code"], "shutting_down", "{sse}");
    }
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(10)));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "{}",
        p.stderr_text()
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let mock = MockOpenAi::start().await;
    let mut p = spawn(&provider_yaml(&mock.url(), "5s"), &[]);
    let generation = || async {
        let m = client()
            .get(format!("{}/metrics", p.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.lines()
            .find(|l| l.starts_with("ai_gateway_config_generation "))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(generation().await.as_deref(), Some("1"));
    p.signal("HUP");
    let until = Instant::now() + Duration::from_secs(3);
    while generation().await.as_deref() != Some("2") {
        assert!(
            Instant::now() < until,
            "SIGHUP did not reload: {}",
            p.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p
        .stderr_text()
        .contains("config reloaded (SIGHUP), generation 2"));
    p.signal("INT");
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(5)));
    assert!(status.is_some(), "SIGINT did not stop the gateway");
}

/// A run with provider, client and admin keys, debug logging, upstreams that echo the key they
/// were sent in their error bodies, and every admin endpoint called: no key appears anywhere an
/// operator or client can read.
#[tokio::test(flavor = "multi_thread")]
async fn no_key_material_in_logs_metrics_admin_output_or_errors() {
    // Built at run time: keys in source trip secret scanners. The client key has neither a
    // well-known prefix nor digits, so only exact scrubbing can hide it.
    let provider_key = format!("sk-{}", "prov1derSecret".repeat(2));
    let echo_key = format!("opaque{}", "upstreamsecret".repeat(2));
    let client_key = format!("client{}", "secretvalue".repeat(3));
    let admin_key = format!("admin{}", "Secret7".repeat(3));
    let ok = MockOpenAi::start().await;
    let echo_provider = MockOpenAi::start_with(Knobs {
        status: 401,
        error_body: json!({"error": {"message": format!("Incorrect API key provided: {provider_key}. Bearer {provider_key}"), "type": "invalid_request_error", "code": "invalid_api_key"}}).to_string(),
        ..Default::default()
    })
    .await;
    let echo_opaque = MockOpenAi::start_with(Knobs {
        status: 500,
        error_body: json!({"error": {"message": format!("key {echo_key} rejected"), "type": "server_error"}}).to_string(),
        ..Default::default()
    })
    .await;
    let yaml = format!(
        r#"admin:
  api_key: ${{ADMIN_KEY}}
clients:
  - {{ name: svc, api_key: "${{CLIENT_KEY}}", rpm: 1000, budget: {{ usd: 10, per: day }} }}
providers:
  ok: {{ type: openai, base_url: "{ok}", api_key: "${{PROVIDER_KEY}}" }}
  echo: {{ type: openai, base_url: "{echo}", api_key: "${{PROVIDER_KEY}}" }}
  opaque: {{ type: openai, base_url: "{opaque}", api_key: "${{ECHO_KEY}}", retry: {{ attempts: 1 }} }}
scenarios:
  good:
    targets: [{{ provider: ok, model: m, cost: {{ input: 1, output: 2 }} }}]
  bad:
    targets: [{{ provider: echo, model: m }}]
  opaque:
    targets: [{{ provider: opaque, model: m }}]
log:
  level: debug
"#,
        ok = ok.url(),
        echo = echo_provider.url(),
        opaque = echo_opaque.url(),
    );
    let mut p = spawn(
        &yaml,
        &[
            ("ADMIN_KEY", &admin_key),
            ("CLIENT_KEY", &client_key),
            ("PROVIDER_KEY", &provider_key),
            ("ECHO_KEY", &echo_key),
            ("RUST_LOG", "debug"),
        ],
    );
    let c = client();
    let mut seen = String::new();
    for (model, stream, key) in [
        ("good", false, client_key.as_str()),
        ("good", true, client_key.as_str()),
        ("bad", false, client_key.as_str()),
        ("bad", true, client_key.as_str()),
        ("opaque", false, client_key.as_str()),
        ("good", false, "wrong-key"),
        ("good", false, provider_key.as_str()),
    ] {
        let r = c
            .post(format!("{}/v1/chat/completions", p.api))
            .bearer_auth(key)
            .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let headers = format!("{:?}", r.headers());
        seen.push_str(&format!("{headers}\n{}\n", r.text().await.unwrap()));
    }
    assert_eq!(
        echo_provider.last().header("authorization"),
        Some(format!("Bearer {provider_key}"))
    );
    for path in [
        "/admin/providers",
        "/admin/config",
        "/admin/clients",
        "/admin/cache",
    ] {
        let r = c
            .get(format!("{}{path}", p.admin))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        seen.push_str(&r.text().await.unwrap());
    }
    let config: Value = serde_json::from_str(
        &c.get(format!("{}/admin/config", p.admin))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(config["providers"]["ok"]["api_key"], "***");
    assert_eq!(config["clients"][0]["api_key"], "***");
    assert_eq!(config["admin"]["api_key"], "***");
    assert_eq!(config["scenarios"]["good"]["targets"][0]["provider"], "ok");
    let r = c
        .post(format!("{}/admin/reload", p.admin))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    seen.push_str(&r.text().await.unwrap());
    std::thread::sleep(Duration::from_millis(300));
    seen.push_str(
        &c.get(format!("{}/metrics", p.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    p.signal("TERM");
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(10)));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
    let stdout = p.stdout_text();
    let stderr = p.stderr_text();
    // The run did log: an access line per chat request, and debug output.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("/v1/chat/completions"))
            .count(),
        7,
        "{stdout}"
    );
    assert!(stderr.contains("DEBUG"), "no debug output: {stderr}");
    assert!(
        seen.contains("invalid_api_key") && seen.contains("rejected"),
        "{seen}"
    );
    for (what, text) in [
        ("responses and admin output", &seen),
        ("stdout", &stdout),
        ("stderr", &stderr),
    ] {
        for key in [&provider_key, &echo_key, &client_key, &admin_key] {
            // A fragment of a key is as bad as the key.
            let fragment = &key[..16];
            assert!(
                !text.contains(fragment),
                "key material ({fragment}…) in {what}:\n{text}"
            );
        }
        // The gateway's own hint "Bearer <key>" is the only Bearer allowed.
        let lower = text.to_ascii_lowercase();
        let leaked = lower
            .match_indices("bearer ")
            .any(|(i, m)| !lower[i + m.len()..].starts_with("<key>"));
        assert!(!leaked, "an Authorization value in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_a_drain_stops_at_once() {
    let mock = MockOpenAi::start_with(Knobs {
        never_answer: true,
        ..Default::default()
    })
    .await;
    let mut p = spawn(&provider_yaml(&mock.url(), "30s"), &[]);
    let url = format!("{}/v1/chat/completions", p.api);
    let pending = tokio::spawn(async move {
        client()
            .post(url)
            .json(&json!({"model": "s", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
    });
    while mock.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal("TERM");
    // The request is in flight: the drain waits for it.
    let waiting = tokio::task::block_in_place(|| p.wait(Duration::from_millis(500)));
    assert!(waiting.is_none(), "exited with a request in flight");
    p.signal("INT");
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(3)));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(1)),
        "{}",
        p.stderr_text()
    );
    assert!(
        pending.await.unwrap().is_err(),
        "the cut request cannot have an answer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_records_what_a_target_dropped() {
    let mut p = spawn(
        r#"admin:
  api_key: admin-key
providers:
  builtin: { type: mock, reply: ok }
scenarios:
  s:
    targets: [{ provider: builtin, accept_unsupported: [tools, logprobs] }]
"#,
        &[],
    );
    let url = format!("{}/v1/chat/completions", p.api);
    for extra in [
        json!({"tools": [{"type": "function", "function": {"name": "f"}}], "logprobs": true}),
        json!({}),
    ] {
        let mut body = json!({"model": "s", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    p.signal("TERM");
    let status = tokio::task::block_in_place(|| p.wait(Duration::from_secs(10)));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
    let lines: Vec<Value> = p
        .stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["kind"] == "access")
        .collect();
    assert_eq!(lines.len(), 2, "{}", p.stdout_text());
    assert_eq!(lines[0]["dropped"], "tools,logprobs");
    assert_eq!(lines[1]["dropped"], Value::Null);
}
