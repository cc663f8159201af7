//! OpenAI compatibility gaps closed ("no silent drops"): `GET /v1/models/{id}` answers the model
//! object of a scenario name or alias, or 404 `model_not_found`; and an upstream stream that
//! delivered its finish reason and then ended without `data: [DONE]` is a complete answer (the
//! gateway adds the `[DONE]`), while one that ends before its finish reason stays an error.
//! Checked over HTTP, in the access log of the real binary, and with the openai Python SDK.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const KEY: &str = "compat-key";
/// An alias with a `/` and a space: clients send it percent-encoded.
const ODD_ALIAS: &str = "acme/chat v2";

fn config(url: &str) -> String {
    format!(
        r#"
clients:
  - {{ name: svc, api_key: {KEY} }}
providers:
  up: {{ type: openai, base_url: "{url}", api_key: sk-up, timeouts: {{ first_token: 5s }} }}
scenarios:
  chat:
    models: [gpt-4o-mini, "{ODD_ALIAS}"]
    targets: [{{ provider: up, model: m }}]
  cached:
    cache: {{ ttl: 300s }}
    targets: [{{ provider: up, model: m }}]
"#
    )
}

async fn get(url: String, key: Option<&str>) -> Answer {
    let mut r = http().get(url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    Answer::read(r.send().await.expect("the gateway answers")).await
}

/// `ODD_ALIAS` as a path segment.
fn encoded_odd_alias() -> String {
    ODD_ALIAS.replace('/', "%2F").replace(' ', "%20")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_is_retrieved_by_scenario_name_or_alias() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock.url()));
    let list = get_json(format!("{}/v1/models", gw.api), KEY).await;
    let entry = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} is listed: {list}"))
    };
    let odd = encoded_odd_alias();
    for (path, id) in [
        ("/v1/models/chat", "chat"),
        ("/v1/models/gpt-4o-mini", "gpt-4o-mini"),
        ("/models/gpt-4o-mini", "gpt-4o-mini"),
        (&format!("/v1/models/{odd}"), ODD_ALIAS),
        // Unencoded, the `/` is part of the id all the same.
        ("/v1/models/acme/chat%20v2", ODD_ALIAS),
        ("/v1/models/cached", "cached"),
    ] {
        let r = get(format!("{}{path}", gw.api), Some(KEY)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let m = r.json();
        assert_eq!(m, entry(id), "{path}: the same object as in the list");
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "ai-gateway");
        assert!(m["created"].as_u64().is_some_and(|c| c > 0), "{m}");
        let scenario = if id == "cached" { "cached" } else { "chat" };
        assert_eq!(m["scenario"], scenario, "{path}");
    }
    assert_eq!(mock.count(), 0, "no upstream is asked");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_model_is_404_model_not_found_naming_the_id() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock.url()));
    for (path, id) in [
        ("/v1/models/gpt-5", "gpt-5"),
        ("/models/no%20such%2Fmodel", "no such/model"),
        // Names are exact: no case folding, no prefix match.
        ("/v1/models/Chat", "Chat"),
        ("/v1/models/gpt-4o", "gpt-4o"),
    ] {
        let r = get(format!("{}{path}", gw.api), Some(KEY)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "model_not_found", "{path}");
        assert_eq!(e["type"], "invalid_request_error", "{path}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("{id:?}")), "{path}: {message}");
    }
    // No id at all is no model route: the generic 404, and other methods are refused.
    let r = get(format!("{}/v1/models/", gw.api), Some(KEY)).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = Answer::read(
        http()
            .delete(format!("{}/v1/models/chat", gw.api))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retrieving_a_model_needs_a_client_key_when_clients_are_configured() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock.url()));
    for key in [None, Some("wrong-key")] {
        for id in ["chat", "gpt-5"] {
            let r = get(format!("{}/v1/models/{id}", gw.api), key).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (401, "invalid_api_key"),
                "{key:?} {id}: an unknown id tells a stranger nothing either"
            );
        }
    }
    // Without clients the gateway is open, as `/v1/models` is.
    let open = start_gateway(&format!(
        "providers:\n  up: {{ type: openai, base_url: \"{}\", api_key: k }}\nscenarios:\n  s:\n    targets: [{{ provider: up }}]\n",
        mock.url()
    ));
    let r = get(format!("{}/v1/models/s", open.api), None).await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!("s")));
}

fn stream_body(content: &str, usage: bool) -> Value {
    json!({"model": "chat", "stream": true, "stream_options": {"include_usage": usage},
           "messages": [{"role": "user", "content": content}]})
}

fn done_events(a: &Answer) -> usize {
    a.sse().iter().filter(|d| *d == "[DONE]").count()
}

/// Checks a stream from the gateway is whole and clean: one `[DONE]` at the very end, the finish
/// chunk, the mock's full text, no error event. Returns its JSON events.
fn assert_whole(a: &Answer, text: &str) -> Vec<Value> {
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.is_sse(), "{}", a.text);
    assert!(a.text.ends_with("data: [DONE]\n\n"), "{:?}", a.text);
    assert_eq!(done_events(a), 1, "{:?}", a.text);
    let events = a.sse_events();
    assert!(
        events.iter().all(|e| e.get("error").is_none()),
        "no error event: {:?}",
        a.text
    );
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "stop"),
        "the finish chunk is relayed: {:?}",
        a.text
    );
    assert_eq!(a.content(), text);
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_stream_without_done_gets_the_gateways_done() {
    let mock = MockOpenAi::start_with(Knobs {
        omit_done: true,
        chunk_interval: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let text = Knobs::default().content;
    let gw = start_gateway(&config(&mock.url()));

    let plain = chat(&gw)
        .key(KEY)
        .body(stream_body("a", false))
        .send()
        .await;
    let events = assert_whole(&plain, &text);
    assert!(events.iter().all(|e| e["usage"].is_null()), "none asked");

    let with_usage = chat(&gw).key(KEY).body(stream_body("b", true)).send().await;
    let events = assert_whole(&with_usage, &text);
    let usage = &events.last().expect("events")["usage"];
    assert_eq!(
        usage["prompt_tokens"], 11,
        "the usage chunk is last: {events:?}"
    );
    assert_eq!(usage["completion_tokens"], text.split_whitespace().count());

    let m = gw.metrics_with(
        r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="up",scenario="chat",status="200",variant=""} 2"#,
    );
    assert!(
        m.contains(
            r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="up",scenario="chat",status="200",variant=""} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"ai_gateway_upstream_attempts_total{outcome="ok",provider="up"} 2"#),
        "{m}"
    );
    assert!(!m.contains(r#"outcome="stream_error""#), "{m}");
    assert_eq!(mock.count(), 2, "no retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_stream_without_done_is_cached_like_any_answer() {
    let mock = MockOpenAi::start_with(Knobs {
        omit_done: true,
        ..Default::default()
    })
    .await;
    let text = Knobs::default().content;
    let gw = start_gateway(&config(&mock.url()));
    let ask = |stream: bool| {
        chat(&gw).key(KEY).body(json!({"model": "cached", "stream": stream,
            "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "q"}]}))
    };
    let miss = ask(true).send().await;
    assert_eq!(miss.header("x-gateway-cache"), Some("miss"));
    assert_whole(&miss, &text);
    let hit = ask(true).send().await;
    assert_eq!(hit.header("x-gateway-cache"), Some("hit"), "{}", hit.text);
    assert_whole(&hit, &text);
    let as_json = ask(false).send().await;
    assert_eq!(as_json.header("x-gateway-cache"), Some("hit"));
    assert_eq!(as_json.content(), text);
    assert_eq!(mock.count(), 1, "hits never reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_ends_before_its_finish_reason_stays_an_error() {
    // Without [DONE] as well: the finish reason is what makes an end of body complete.
    let mock = MockOpenAi::start_with(Knobs {
        cut_after: Some(2),
        omit_done: true,
        ..Default::default()
    })
    .await;
    let gw = start_gateway(&config(&mock.url()));
    let r = chat(&gw).key(KEY).body(stream_body("x", true)).send().await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.sse();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(done_events(&r), 1, "{data:?}");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "stream_incomplete", "{data:?}");
    assert_eq!(
        data.len(),
        1 + 2 + 2,
        "role, two content chunks, error, [DONE]"
    );
    assert!(!r.text.contains("finish_reason\":\"stop"));
    let m = gw.metrics_with(r#"outcome="stream_error""#);
    assert!(
        m.contains(r#"ai_gateway_upstream_attempts_total{outcome="stream_error",provider="up"} 1"#),
        "{m}"
    );
}

/// The binary with `yaml` (listeners added), its stdout (the access log) in a file.
struct Proc {
    child: Child,
    api: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(yaml: &str) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let (api, admin) = free_ports();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            format!("listen: 127.0.0.1:{api}\nadmin:\n  listen: 127.0.0.1:{admin}\n{yaml}"),
        )
        .unwrap();
        let log = dir.path().join("stdout.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
            .arg("-c")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
            assert!(Instant::now() < until, "the gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proc {
            child,
            api: format!("http://127.0.0.1:{api}"),
            log,
            _dir: dir,
        }
    }

    /// The access lines, once there are `n` of them.
    async fn access_lines(&self, n: usize) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<Value> = std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["kind"] == "access")
                .collect();
            if lines.len() >= n || Instant::now() > until {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_keeps_ids_out_and_logs_a_done_less_stream_as_ok() {
    let mock = MockOpenAi::start_with(Knobs {
        omit_done: true,
        ..Default::default()
    })
    .await;
    let p = Proc::spawn(&config(&mock.url()));
    for path in ["/v1/models/gpt-4o-mini", "/models/secret%20id-123"] {
        get(format!("{}{path}", p.api), Some(KEY)).await;
    }
    let r = Chat::at(&p.api)
        .key(KEY)
        .body(stream_body("x", true))
        .send()
        .await;
    assert_whole(&r, &Knobs::default().content);
    let lines = p.access_lines(3).await;
    // A line is written just after its answer went out: the order of lines is not guaranteed.
    let mut seen: Vec<(&str, u64)> = lines
        .iter()
        .filter_map(|l| Some((l["path"].as_str()?, l["status"].as_u64()?)))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/models/{id}", 404),
            ("/v1/chat/completions", 200),
            ("/v1/models/{id}", 200)
        ],
        "{lines:?}"
    );
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(
        !log.contains("secret") && !log.contains("gpt-4o-mini"),
        "{log}"
    );
    let stream = lines
        .iter()
        .find(|l| l["path"] == "/v1/chat/completions")
        .expect("the stream's line");
    assert_eq!(stream["status"], 200, "{stream}");
    assert_eq!(stream["stream"], true);
    assert!(stream["error"].is_null(), "{stream}");
    assert_eq!(stream["attempts"], 1);
    assert!(stream["completion_tokens"].as_u64().is_some_and(|n| n > 0));
}

fn python() -> PathBuf {
    python_with("openai")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_retrieves_models_and_reads_a_done_less_stream_to_its_end() {
    let python = python();
    let mock = MockOpenAi::start_with(Knobs {
        omit_done: true,
        ..Default::default()
    })
    .await;
    let gw = start_gateway(&config(&mock.url()));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/models_check.py");
    let gateway = format!("{}/v1", gw.api);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--gateway", &gateway, "--key", KEY, "--scenario", "chat"])
            .args(["--alias", "gpt-4o-mini", "--alias", ODD_ALIAS])
            .args(["--stream-model", "chat"])
            .args(["--expect-text", &Knobs::default().content])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("models and stream checks passed"),
        "{stdout}"
    );
    print!("{stdout}");
    assert_eq!(mock.count(), 1, "one stream, nothing retried");
}
