//! Dify apps behind the OpenAI API, through the real gateway against the mock Dify: every mode,
//! stream and non-stream, conversations, errors, disconnects — and the official openai SDK.

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::dify::{key, MockDify, Mode};
use support::*;

fn config(dify: &MockDify) -> String {
    let url = dify.url();
    let mut providers = String::new();
    let mut scenarios = String::new();
    for m in Mode::ALL {
        let extra = match m {
            Mode::Agent => ", reasoning: true".to_owned(),
            Mode::Workflow => r#", query_input: requirements, output: plan, inputs: { profile: "{{ user_profile | tojson }}" }"#.to_owned(),
            _ => String::new(),
        };
        providers.push_str(&format!(
            "  d-{n}: {{ type: dify, base_url: \"{url}\", api_key: {k}, app: {n}{extra}, timeouts: {{ first_token: 3s, idle: 3s }} }}\n",
            n = m.name(),
            k = key(m)
        ));
        scenarios.push_str(&format!(
            "  {n}:\n    targets: [{{ provider: d-{n} }}]\n",
            n = m.name()
        ));
    }
    format!(
        r#"
providers:
{providers}  d-persona: {{ type: dify, base_url: "{url}", api_key: {chat}, app: chat, system_input: persona }}
  d-bad-key: {{ type: dify, base_url: "{url}", api_key: app-wrong, app: chat }}
  d-wrong-mode: {{ type: dify, base_url: "{url}", api_key: {wf}, app: chat }}
scenarios:
{scenarios}  prompted:
    targets: [{{ provider: d-chat, system_prompt: "你是顾问。" }}]
  persona:
    targets: [{{ provider: d-persona, system_prompt: "Persona text." }}]
  bad_key:
    targets: [{{ provider: d-bad-key }}]
  wrong_mode:
    targets: [{{ provider: d-wrong-mode }}]
"#,
        chat = key(Mode::Chat),
        wf = key(Mode::Workflow)
    )
}

fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("AI_GATEWAY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    Command::new(&candidate)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success())
        .then_some(candidate)
}

fn run_sdk(args: &[String]) -> (bool, String) {
    let python = python()
        .expect("no Python with the openai SDK: run scripts/test.sh or set AI_GATEWAY_PYTHON");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/dify_check.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mode_through_the_openai_sdk_stream_and_non_stream() {
    let dify = MockDify::start().await;
    dify.set(|k| k.ping = true); // a ping mid-stream must not break the SDK
    let gw = start_gateway(&config(&dify));
    let base = format!("{}/v1", gw.api);
    let (ok, out) = tokio::task::spawn_blocking(move || run_sdk(&["--gateway".into(), base]))
        .await
        .unwrap();
    assert!(ok, "SDK checks failed:\n{out}");
    print!("{out}");
    let produced = dify.produced();
    let results: Vec<Value> = out
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 10, "five modes × stream/non-stream");
    for r in &results {
        let mode = r["mode"].as_str().unwrap();
        let text = r["text"].as_str().unwrap();
        assert_eq!(text, format!("{mode} says: 推荐一个补水方案"), "{r}");
        assert!(
            produced.iter().any(|(a, _)| a == text),
            "{text} was not produced by the mock"
        );
        assert_eq!(r["model"], mode, "model echoes what the client asked for");
        let chars = text.chars().count() as u64;
        let (prompt, completion) = if mode == "workflow" {
            (7 + chars, 0)
        } else {
            (7, chars)
        };
        assert_eq!(
            r["usage"],
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}),
            "{r}"
        );
        if r["stream"] == true {
            assert_eq!(
                r["ids"].as_array().unwrap().len(),
                1,
                "one id per stream: {r}"
            );
            assert!(r["ids"][0].as_str().unwrap().starts_with("chatcmpl-"));
            assert_eq!(r["done"], true, "raw stream ends with [DONE]: {r}");
        }
        if mode == "agent" {
            assert_eq!(r["reasoning"], "thinking about it", "{r}");
        }
    }
    // What Dify received: streaming always, the app's user, inputs always, no auto naming.
    for call in dify.calls() {
        assert_eq!(call.body["response_mode"], "streaming");
        assert_eq!(call.body["user"], "gateway");
        assert!(call.body["inputs"].is_object());
        if call.path.ends_with("/chat-messages") {
            assert_eq!(call.body["auto_generate_name"], false);
        }
        assert!(call.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer app-"));
    }
    let wf = dify
        .calls()
        .into_iter()
        .find(|c| c.path.ends_with("/workflows/run"))
        .unwrap();
    assert_eq!(wf.body["inputs"]["requirements"], "推荐一个补水方案");
    assert_eq!(wf.body["inputs"]["profile"], r#"{"skin_type":"dry"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_keeps_one_dify_conversation_per_user() {
    let dify = MockDify::start().await;
    let gw = start_gateway(&config(&dify));
    let mut history = vec![];
    for (i, text) in ["第一句", "第二句", "第三句"].iter().enumerate() {
        history.push(json!({"role": "user", "content": text}));
        let r = chat(&gw)
            .header("x-gateway-session", "s-1")
            .body(json!({"model": "chat", "user": "alice", "messages": history}))
            .send()
            .await;
        assert_eq!(r.status, 200, "turn {i}");
        assert_eq!(r.headers["x-gateway-session"], "s-1");
        let v = r.json();
        history
            .push(json!({"role": "assistant", "content": v["choices"][0]["message"]["content"]}));
    }
    let calls = dify.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].body["conversation_id"], "");
    let conv = calls[1].body["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(conv.len(), 36);
    assert_eq!(calls[2].body["conversation_id"], conv.as_str());
    assert_eq!(calls[1].body["query"], "第二句", "only the new turn");
    assert_eq!(calls[2].body["query"], "第三句");

    // Same session id, another user: a conversation of its own.
    let r = chat(&gw)
        .header("x-gateway-session", "s-1")
        .body(json!({"model": "chat", "user": "bob", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    let r = chat(&gw)
        .header("x-gateway-session", "s-1")
        .body(json!({"model": "chat", "user": "bob", "messages": [{"role": "user", "content": "again"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    let calls = dify.calls();
    assert_eq!(calls[3].body["conversation_id"], "");
    let bob = calls[4].body["conversation_id"].as_str().unwrap();
    assert!(!bob.is_empty() && bob != conv);
    assert_eq!(calls[4].body["user"], "bob");

    // Dify lost the conversation: the mapping is dropped and the turn retried once as new.
    dify.state.conversations.lock().clear();
    history.push(json!({"role": "user", "content": "第四句"}));
    let r = chat(&gw)
        .header("x-gateway-session", "s-1")
        .body(json!({"model": "chat", "user": "alice", "messages": history}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    let calls = dify.calls();
    let retry = calls.last().unwrap();
    assert_eq!(retry.body["conversation_id"], "");
    let q = retry.body["query"].as_str().unwrap();
    assert!(
        q.contains("第一句") && q.ends_with("第四句"),
        "history rendered into the new conversation: {q}"
    );
    assert_eq!(
        calls[calls.len() - 2].body["conversation_id"],
        conv.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transcripts_system_prompts_and_images() {
    let dify = MockDify::start().await;
    let gw = start_gateway(&config(&dify));
    let msgs = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [
            {"type": "text", "text": "看看这张图"},
            {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]}
    ]);
    let r = chat(&gw)
        .body(json!({"model": "prompted", "messages": msgs}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let call = dify.calls().pop().unwrap();
    assert_eq!(
        call.body["query"],
        "你是顾问。\n\nAnswer briefly.\n\nConversation so far:\nuser: earlier\nassistant: reply\n\nCurrent message:\n看看这张图"
    );
    let files = call.body["files"].as_array().unwrap();
    assert_eq!(
        files[0],
        json!({"type": "image", "transfer_method": "remote_url", "url": "https://img.example/a.png"})
    );
    assert_eq!(files[1]["transfer_method"], "local_file");
    assert_eq!(files[1]["upload_file_id"].as_str().unwrap().len(), 36);
    assert_eq!(dify.state.uploads.lock().len(), 1);

    // With system_input the system text goes to that input, not into the query.
    let r = chat(&gw).body(json!({"model": "persona", "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "q"}]})).send().await;
    assert_eq!(r.status, 200);
    let call = dify.calls().pop().unwrap();
    assert_eq!(call.body["query"], "q");
    assert_eq!(call.body["inputs"]["persona"], "Persona text.\n\nBe kind.");
}

#[tokio::test(flavor = "multi_thread")]
async fn dify_errors_map_to_openai_statuses() {
    let dify = MockDify::start().await;
    let gw = start_gateway(&config(&dify));
    let ask = |model: &'static str, stream: bool| {
        let request = chat(&gw).body(
            json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]}),
        );
        async move {
            let r = request.send().await;
            (r.status, r.error_code(), r.headers)
        }
    };
    let (s, c, h) = ask("bad_key", false).await;
    assert_eq!((s, c.as_str()), (502, "upstream_misconfigured"));
    assert_eq!(h["x-should-retry"], "false");
    let (s, c, _) = ask("wrong_mode", true).await;
    assert_eq!((s, c.as_str()), (502, "upstream_misconfigured"));

    dify.set(|k| k.fail_with = Some((429, "too_many_requests", "Too many requests.")));
    let (s, c, h) = ask("chat", true).await;
    assert_eq!((s, c.as_str()), (429, "rate_limit_exceeded"));
    assert_eq!(h["retry-after"], "1");
    dify.set(|k| k.fail_with = Some((400, "provider_quota_exceeded", "quota used up")));
    let (s, c, h) = ask("agent", false).await;
    assert_eq!((s, c.as_str()), (429, "insufficient_quota"));
    assert_eq!(h["x-should-retry"], "false");
    dify.set(|k| k.fail_with = None);

    // A failed workflow run (HTTP 200 from Dify) is an error, never an empty success.
    dify.set(|k| k.workflow_fails = true);
    for stream in [false, true] {
        let (s, c, _) = ask("workflow", stream).await;
        assert_eq!((s, c.as_str()), (502, "upstream_error"), "stream={stream}");
    }
    dify.set(|k| k.workflow_fails = false);

    // Mid-stream error event: error chunk + [DONE]; cut stream: stream_incomplete + [DONE].
    for (knob, code) in [("error", "upstream_error"), ("cut", "stream_incomplete")] {
        dify.set(|k| {
            k.error_after = (knob == "error").then_some(2);
            k.cut_after = (knob == "cut").then_some(2);
        });
        let r = chat(&gw).body(json!({"model": "chatflow", "stream": true, "messages": [{"role": "user", "content": "abcdefghij"}]})).send().await;
        assert_eq!(r.status, 200);
        let data = r.sse();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{knob}");
        let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(err["error"]["code"], code, "{knob}: {data:?}");
        let first: Value = serde_json::from_str(&data[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mid_stream_error_raises_api_error_in_the_sdk() {
    let dify = MockDify::start().await;
    dify.set(|k| k.error_after = Some(1));
    let gw = start_gateway(&config(&dify));
    let base = format!("{}/v1", gw.api);
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run_sdk(&["--gateway".into(), base, "--expect-stream-error".into()])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: mid-stream error raised openai.APIError"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_stops_the_dify_task() {
    let dify = MockDify::start().await;
    dify.set(|k| {
        k.pieces = 20;
        k.interval = Duration::from_millis(200);
    });
    let gw = start_gateway(&config(&dify));
    for model in ["agent", "workflow"] {
        let before = dify.stops().len();
        let mut r = chat(&gw).body(json!({"model": model, "stream": true, "user": "carol", "messages": [{"role": "user", "content": "a long answer please"}]})).send_raw().await;
        assert_eq!(r.status(), 200);
        r.chunk().await.unwrap().expect("first chunk");
        let left = Instant::now();
        drop(r);
        let stop = loop {
            if let Some(s) = dify.stops().get(before).cloned() {
                break s;
            }
            assert!(
                left.elapsed() < Duration::from_secs(3),
                "no stop call for {model}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            stop.at.duration_since(left) < Duration::from_secs(1),
            "stop after {:?}",
            stop.at.duration_since(left)
        );
        let call = dify.calls().pop().unwrap();
        assert_eq!(stop.body["user"], "carol");
        let expected = if model == "workflow" {
            "/v1/workflows/tasks/"
        } else {
            "/v1/chat-messages/"
        };
        assert!(stop.path.starts_with(expected), "{}", stop.path);
        assert_eq!(call.body["user"], "carol");
    }
    // The task id is the one Dify streamed.
    let stops = dify.stops();
    assert!(stops
        .iter()
        .all(|s| s.body["task"].as_str().unwrap().len() == 36));
}
