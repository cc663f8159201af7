//! The provider contract: one list of behaviours every provider type must show through the real
//! gateway, run against each provider's fixture (`tests/support/contract.rs`). A new provider
//! joins by adding a fixture and one `contract_suite!` line at the bottom.
//!
//! Each behaviour starts a gateway with the provider under test (as `providers.<name>`, in the
//! fault the behaviour needs) and a healthy OpenAI-compatible `backup`; scenario `solo` has only
//! the provider under test, scenario `pair` has it first and `backup` second.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::contract::*;
use support::*;

const PROMPT: &str = "Which cream suits dry skin in winter?";
const BACKUP_REPLY: &str = "The backup target answers instead.";
const ADMIN_KEY: &str = "adminkey";

struct Setup<F> {
    fx: F,
    backup: MockOpenAi,
    gw: TestGateway,
}

/// The gateway for one behaviour: the provider under test in `fault`, with `policy` (extra
/// provider fields such as timeouts) appended to its block.
async fn setup<F: Fixture>(fx: F, fault: Fault, policy: &str) -> Setup<F> {
    let backup = MockOpenAi::start_with(Knobs {
        content: BACKUP_REPLY.into(),
        ..Default::default()
    })
    .await;
    let name = fx.name().to_owned();
    let mut fields = fx.provider_yaml(&fault);
    if !policy.is_empty() {
        fields = format!("{fields}, {policy}");
    }
    let target = match fx.target_yaml() {
        t if t.is_empty() => String::new(),
        t => format!(", {t}"),
    };
    let yaml = format!(
        r#"
admin:
  api_key: {ADMIN_KEY}
providers:
  {name}: {{ {fields} }}
  backup: {{ type: openai, base_url: "{backup}", api_key: sk-backup }}
scenarios:
  solo:
    targets: [{{ provider: {name}{target} }}]
  pair:
    targets:
      - {{ provider: {name}{target} }}
      - {{ provider: backup, model: backup-model }}
"#,
        backup = backup.url()
    );
    let gw = start_gateway(&yaml);
    Setup { fx, backup, gw }
}

fn ask(gw: &TestGateway, scenario: &str, stream: bool) -> Chat {
    let mut body = json!({"model": scenario, "stream": stream,
                          "messages": [{"role": "user", "content": PROMPT}]});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    chat(gw).body(body)
}

/// Who answered and after how many attempts.
fn served_by(a: &Answer) -> (Option<&str>, Option<&str>) {
    (
        a.header("x-gateway-provider"),
        a.header("x-gateway-attempts"),
    )
}

fn assert_usage(usage: &Value) {
    let n = |k: &str| {
        usage[k]
            .as_u64()
            .unwrap_or_else(|| panic!("usage.{k} is not a count: {usage}"))
    };
    assert_eq!(
        n("total_tokens"),
        n("prompt_tokens") + n("completion_tokens"),
        "{usage}"
    );
    assert!(n("total_tokens") > 0, "{usage}");
}

fn assert_openai_error(a: &Answer) -> Value {
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        a.headers
    );
    let error = a.json()["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "no error.{field}: {}", a.text);
    }
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
    error
}

/// The upstream's request count moved by exactly `n` (when the fixture can count).
fn assert_calls<F: Fixture>(fx: &F, before: Option<usize>, n: usize, what: &str) {
    if let (Some(before), Some(now)) = (before, fx.calls()) {
        assert_eq!(now - before, n, "{}: upstream calls for {what}", fx.name());
    }
}

fn inflight(gw: &TestGateway, provider: &str) -> Option<i64> {
    let prefix = format!("ai_gateway_inflight_requests{{provider=\"{provider}\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

/// Contract 1: a non-stream answer has the OpenAI `chat.completion` shape.
async fn non_stream_answer<F: Fixture>(fx: F) {
    let s = setup(fx, Fault::None, "").await;
    let name = s.fx.name();
    let before = s.fx.calls();
    let a = ask(&s.gw, "solo", false).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(served_by(&a), (Some(name), Some("1")));
    assert!(!a.is_sse(), "{:?}", a.headers);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert!(v["created"].is_u64(), "{v}");
    assert!(v["model"].is_string(), "{v}");
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(1), "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0, "{v}");
    assert_eq!(choice["message"]["role"], "assistant", "{v}");
    assert_eq!(
        choice["message"]["content"],
        s.fx.reply(PROMPT).as_str(),
        "{v}"
    );
    assert_eq!(choice["finish_reason"], "stop", "{v}");
    assert_usage(&v["usage"]);
    assert_calls(&s.fx, before, 1, "one answer");
    assert_eq!(s.backup.count(), 0);
}

/// Contract 2: a stream with `include_usage` has chunks of one id, the whole text, one usage
/// chunk and `[DONE]`; a stream read to its end is not counted as abandoned upstream.
async fn stream_with_usage<F: Fixture>(fx: F) {
    let s = setup(fx, Fault::None, "").await;
    let name = s.fx.name();
    let a = ask(&s.gw, "solo", true).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(served_by(&a), (Some(name), Some("1")));
    assert!(a.is_sse(), "{:?}", a.headers);
    let data = a.sse();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        a.text
    );
    assert_eq!(
        data.iter().filter(|d| *d == "[DONE]").count(),
        1,
        "{}",
        a.text
    );
    let events = a.sse_events();
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"),
        "{}",
        a.text
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream: {}", a.text);
    assert_eq!(
        events[0]["choices"][0]["delta"]["role"], "assistant",
        "{}",
        a.text
    );
    assert_eq!(a.content(), s.fx.reply(PROMPT));
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "stop"),
        "{}",
        a.text
    );
    let with_usage: Vec<&Value> = events.iter().filter(|e| e["usage"].is_object()).collect();
    assert_eq!(with_usage.len(), 1, "one usage chunk: {}", a.text);
    assert_eq!(
        with_usage[0],
        events.last().unwrap(),
        "usage comes last: {}",
        a.text
    );
    assert_eq!(with_usage[0]["choices"], json!([]), "{}", a.text);
    assert_usage(&with_usage[0]["usage"]);
    // The counters contract 8 relies on stay at zero for a stream read to its end.
    assert_eq!(
        s.fx.abandoned().unwrap_or(0),
        0,
        "{name}: streams abandoned"
    );
    assert_eq!(s.fx.stops().unwrap_or(0), 0, "{name}: stop calls");
}

/// Contract 3: an upstream 5xx before the first byte fails over to the next target.
async fn server_error_fails_over<F: Fixture>(fx: F) {
    let s = setup(
        fx,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        "",
    )
    .await;
    let name = s.fx.name().to_owned();
    let before = s.fx.calls();
    for stream in [false, true] {
        let a = ask(&s.gw, "pair", stream).send().await;
        assert_eq!(a.status, 200, "stream={stream}: {}", a.text);
        assert_eq!(
            served_by(&a),
            (Some("backup"), Some("2")),
            "stream={stream}"
        );
        assert_eq!(a.content(), BACKUP_REPLY, "stream={stream}");
        if stream {
            assert_eq!(a.sse().last().map(String::as_str), Some("[DONE]"));
        }
    }
    assert_calls(&s.fx, before, 2, "two failed attempts");
    assert_eq!(s.backup.count(), 2);
    let fallbacks =
        format!(r#"ai_gateway_fallbacks_total{{from="{name}",scenario="pair",to="backup"}} 2"#);
    let m = s.gw.metrics_with(&fallbacks);
    assert!(m.contains(&fallbacks), "{m}");
}

/// Contract 4: a 429 with `Retry-After` fails over, and the target rests: later requests skip
/// it without contacting it, and `/admin/providers` shows the rest.
async fn rate_limit_rests_the_target<F: Fixture>(fx: F) {
    let retry_after = 2;
    let s = setup(
        fx,
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after),
        },
        "",
    )
    .await;
    let name = s.fx.name().to_owned();
    let before = s.fx.calls();
    let first = ask(&s.gw, "pair", false).send().await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(served_by(&first), (Some("backup"), Some("2")));
    assert_calls(&s.fx, before, 1, "the rate-limited attempt");

    let resting = s.fx.calls();
    let second = ask(&s.gw, "pair", true).send().await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(
        served_by(&second),
        (Some("backup"), Some("1")),
        "a resting target is skipped without an attempt"
    );
    assert_calls(&s.fx, resting, 0, "a request while it rests");
    assert_eq!(s.backup.count(), 2);

    let admin = get_json(format!("{}/admin/providers", s.gw.admin), ADMIN_KEY).await;
    let target = admin["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["provider"] == name.as_str()))
        .unwrap_or_else(|| panic!("{name} missing from /admin/providers: {admin}"))
        .clone();
    let rest = target["resting_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} is not resting: {target}"));
    assert!(
        rest > 0.0 && rest <= retry_after as f64,
        "{name} rests {rest} s after Retry-After: {retry_after}: {target}"
    );
}

/// Contract 5: an upstream 4xx that is the request's fault passes through, with no failover.
async fn client_error_passes_through<F: Fixture>(fx: F) {
    let s = setup(
        fx,
        Fault::Status {
            status: 400,
            retry_after: None,
        },
        "",
    )
    .await;
    let name = s.fx.name().to_owned();
    let before = s.fx.calls();
    for stream in [false, true] {
        let a = ask(&s.gw, "pair", stream).send().await;
        assert_eq!(a.status, 400, "stream={stream}: {}", a.text);
        let error = assert_openai_error(&a);
        assert_eq!(error["type"], "invalid_request_error", "{}", a.text);
        assert!(
            error["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{}",
            a.text
        );
        assert_eq!(
            served_by(&a),
            (Some(name.as_str()), Some("1")),
            "stream={stream}"
        );
    }
    assert_calls(&s.fx, before, 2, "two client errors");
    assert_eq!(s.backup.count(), 0, "a client error never fails over");
}

/// Contract 6: silence beyond `timeouts.first_token` is a 504 `upstream_timeout`, on time.
async fn first_token_timeout<F: Fixture>(fx: F) {
    let s = setup(
        fx,
        Fault::Silent,
        "timeouts: { first_token: 300ms }, retry: { attempts: 1 }",
    )
    .await;
    let before = s.fx.calls();
    for stream in [false, true] {
        let t0 = Instant::now();
        let a = ask(&s.gw, "solo", stream).send().await;
        let took = t0.elapsed();
        assert_eq!(a.status, 504, "stream={stream}: {}", a.text);
        assert_openai_error(&a);
        assert_eq!(a.error_code(), "upstream_timeout", "{}", a.text);
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(3),
            "stream={stream}: answered after {took:?}"
        );
    }
    assert_calls(&s.fx, before, 2, "two timed-out attempts");
}

/// Contract 7: a stream cut after some content gives that content, an error event, `[DONE]`.
async fn cut_mid_stream_ends_with_error_and_done<F: Fixture>(fx: F) {
    let s = setup(fx, Fault::CutMidStream, "").await;
    let name = s.fx.name();
    let a = ask(&s.gw, "pair", true).send().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(served_by(&a), (Some(name), Some("1")));
    let data = a.sse();
    assert!(data.len() >= 2, "{}", a.text);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        a.text
    );
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "stream_incomplete", "{}", a.text);
    assert!(error["error"]["message"].is_string(), "{}", a.text);
    let before_error: Vec<Value> = data[..data.len() - 2]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        before_error.iter().all(|e| e.get("error").is_none()),
        "one error event: {}",
        a.text
    );
    let pieces: Vec<&str> = before_error
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        pieces.len(),
        CUT_AFTER,
        "the content sent before the cut: {}",
        a.text
    );
    let delivered: String = pieces.concat();
    let reply = s.fx.reply(PROMPT);
    assert!(
        reply.starts_with(&delivered) && delivered.len() < reply.len(),
        "{delivered:?} is not the start of {reply:?}"
    );
    assert_eq!(s.backup.count(), 0, "no failover after the first byte");
}

/// Contract 8: a client leaving mid-stream releases the upstream: the in-flight gauge drops to
/// 0, the upstream stream is closed and (Dify) the task is stopped.
async fn client_disconnect_releases_the_upstream<F: Fixture>(fx: F) {
    let s = setup(fx, Fault::SlowStream, "").await;
    let name = s.fx.name().to_owned();
    let (abandoned, stops) = (s.fx.abandoned(), s.fx.stops());
    let mut r = ask(&s.gw, "solo", true).send_raw().await;
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    let content = |seen: &str| {
        sse_data(seen)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect::<String>()
    };
    while content(&seen).is_empty() {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("content within 5 s")
            .unwrap()
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(s.fx.reply(PROMPT).starts_with(&content(&seen)), "{seen}");
    assert_eq!(inflight(&s.gw, &name), Some(1), "one stream in flight");
    drop(r);

    let left = Instant::now();
    let released = || {
        inflight(&s.gw, &name) == Some(0)
            && abandoned.is_none_or(|n| s.fx.abandoned() > Some(n))
            && stops.is_none_or(|n| s.fx.stops() > Some(n))
    };
    while !released() {
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "{name}: upstream not released 3 s after the client left: inflight {:?}, \
             streams abandoned {:?} (before {abandoned:?}), stops {:?} (before {stops:?})",
            inflight(&s.gw, &name),
            s.fx.abandoned(),
            s.fx.stops(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Contract 9: a request with tools is served by a provider that serves tools; one that does
/// not is skipped (the next target answers, it is not contacted) or, alone, refuses with 400
/// `unsupported_parameter` — never a 200 that ignored the tools.
async fn unsupported_features_are_never_ignored<F: Fixture>(fx: F) {
    let s = setup(fx, Fault::None, "").await;
    let name = s.fx.name().to_owned();
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    for stream in [false, true] {
        let before = s.fx.calls();
        let mut body = json!({"model": "pair", "stream": stream, "tools": tools,
                              "messages": [{"role": "user", "content": PROMPT}]});
        let a = chat(&s.gw).body(body.clone()).send().await;
        assert_eq!(a.status, 200, "{name}: {}", a.text);
        if s.fx.serves_tools() {
            assert_eq!(served_by(&a), (Some(name.as_str()), Some("1")));
            assert_calls(&s.fx, before, 1, "a request with tools");
        } else {
            assert_eq!(served_by(&a), (Some("backup"), Some("1")), "{name}");
            assert_calls(&s.fx, before, 0, "a request with tools it cannot serve");
            assert!(
                s.backup.last().json()["tools"] == tools,
                "the tools reached the backup"
            );
        }
        body["model"] = json!("solo");
        let a = chat(&s.gw).body(body).send().await;
        if s.fx.serves_tools() {
            assert_eq!(a.status, 200, "{name}: {}", a.text);
        } else {
            assert_eq!(a.status, 400, "{name}: {}", a.text);
            let e = assert_openai_error(&a);
            assert_eq!(
                (e["code"].as_str(), e["param"].as_str()),
                (Some("unsupported_parameter"), Some("tools"))
            );
        }
    }
}

/// One `#[tokio::test]` per behaviour for the fixture built by `$start` (an async fn).
macro_rules! contract_suite {
    ($provider:ident, $start:expr) => {
        contract_suite!(@each $provider, $start;
            non_stream_answer,
            stream_with_usage,
            server_error_fails_over,
            rate_limit_rests_the_target,
            client_error_passes_through,
            first_token_timeout,
            cut_mid_stream_ends_with_error_and_done,
            client_disconnect_releases_the_upstream,
            unsupported_features_are_never_ignored);
    };
    (@each $provider:ident, $start:expr; $($behaviour:ident),+) => {
        mod $provider {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $behaviour() {
                    super::$behaviour(($start)().await).await;
                }
            )+
        }
    };
}

contract_suite!(openai, OpenAiFixture::start);
contract_suite!(dify, DifyFixture::start);
contract_suite!(builtin_mock, BuiltinMockFixture::start);
contract_suite!(anthropic, AnthropicFixture::start);
