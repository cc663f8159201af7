//! Structured output (`output:` on a scenario, or the client's own `response_format`): answers
//! wrapped in a fence, missing a required field, truncated, or valid only on the repair attempt
//! reach the client as valid JSON (`x-gateway-output`); the upstream sees the repair request;
//! all-invalid answers end in 502 `invalid_output` listing paths and reasons; Dify and Anthropic
//! targets, streams, the cache and the metrics follow the same rules.

mod support;

use serde_json::{json, Value};
use support::anthropic::{AnthropicKnobs, MockAnthropic, MOCK_KEY};
use support::client::{http, sse_events};
use support::dify::{key, MockDify, Mode};
use support::*;

const SENTIMENT: &str = r#"{
  "type": "object",
  "required": ["label", "score"],
  "additionalProperties": false,
  "properties": {
    "label": {"enum": ["positive", "neutral", "negative"]},
    "score": {"type": "number", "minimum": -1, "maximum": 1}
  }
}"#;

const VALID: &str = r#"{"label":"positive","score":0.8}"#;

struct Setup {
    gpt: MockOpenAi,
    gpt_b: MockOpenAi,
    claude: MockAnthropic,
    dify: MockDify,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let gpt = MockOpenAi::start().await;
    let gpt_b = MockOpenAi::start().await;
    let claude = MockAnthropic::start_with(AnthropicKnobs {
        text: VALID.into(),
        ..Default::default()
    })
    .await;
    let dify = MockDify::start().await;
    let yaml = format!(
        r#"
clients:
  - name: app
    api_key: client-key
providers:
  gpt: {{ type: openai, base_url: "{a}", api_key: sk-a }}
  gpt-b: {{ type: openai, base_url: "{b}", api_key: sk-b }}
  claude: {{ type: anthropic, base_url: "{c}", api_key: {MOCK_KEY} }}
  dify-flow: {{ type: dify, base_url: "{d}", api_key: {wk}, app: workflow, query_input: requirements, output: plan }}
  dify-chat: {{ type: dify, base_url: "{d}", api_key: {ck}, app: chat }}
scenarios:
  sentiment:
    output: {{ schema_file: schemas/sentiment.json }}
    targets: [{{ provider: gpt, model: gpt-up }}]
  sentiment_failover:
    output: {{ schema_file: schemas/sentiment.json, repair_attempts: 1 }}
    strategy: failover
    targets:
      - {{ provider: gpt, model: first, cost: {{ input: 1, output: 0 }} }}
      - {{ provider: gpt-b, model: second, cost: {{ input: 2, output: 0 }} }}
  validate_only:
    output:
      repair_attempts: 0
      schema: {{ type: object, required: [ok], properties: {{ ok: {{ type: boolean }} }} }}
    targets: [{{ provider: gpt, model: gpt-up }}]
    cache: {{ ttl: 60s }}
  plan_flow:
    output: {{ schema_file: schemas/sentiment.json }}
    targets: [{{ provider: dify-flow }}]
  via_claude:
    output: {{ schema_file: schemas/sentiment.json }}
    targets: [{{ provider: claude, model: claude-up }}]
  plain:
    targets: [{{ provider: gpt, model: gpt-up }}]
  plain_dify:
    targets: [{{ provider: dify-chat }}]
  never_valid:
    output: {{ schema_file: schemas/sentiment.json }}
    targets: [{{ provider: gpt-b, model: gpt-b-up }}]
"#,
        a = gpt.url(),
        b = gpt_b.url(),
        c = claude.url(),
        d = dify.url(),
        wk = key(Mode::Workflow),
        ck = key(Mode::Chat),
    );
    let gw = start_gateway_with_files(&yaml, &[("schemas/sentiment.json", SENTIMENT)]);
    Setup {
        gpt,
        gpt_b,
        claude,
        dify,
        gw,
    }
}

struct Answer {
    status: u16,
    output: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn content(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content: {}", self.body))
            .to_owned()
    }
}

async fn ask(gw: &TestGateway, body: Value) -> Answer {
    let r = http()
        .post(format!("{}/v1/chat/completions", gw.api))
        .bearer_auth("client-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    let output = r
        .headers()
        .get("x-gateway-output")
        .map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status: r.status().as_u16(),
        output,
        body: r.text().await.unwrap(),
    }
}

fn msg(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn script(mock: &MockOpenAi, answers: &[&str]) {
    let answers: Vec<String> = answers.iter().map(|a| (*a).to_owned()).collect();
    mock.set(|k| k.script = answers);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_answer_is_unwrapped_and_the_upstream_is_asked_for_the_schema() {
    let s = setup().await;
    script(
        &s.gpt,
        &[&format!(
            "Sure! Here it is:\n```json\n{VALID}\n```\nAnything else?"
        )],
    );
    let a = ask(&s.gw, msg("sentiment", "I love the new clinic")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("valid"));
    assert_eq!(a.content(), VALID);
    let sent = s.gpt.last().json();
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "sentiment");
    assert_eq!(
        sent["response_format"]["json_schema"]["schema"]["required"],
        json!(["label", "score"])
    );
    assert!(
        sent.get("stream").is_none() || sent["stream"] == false,
        "{sent}"
    );
    let m = s.gw.metrics();
    assert!(
        m.contains(r#"ai_gateway_output_validations_total{result="valid",scenario="sentiment"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_field_is_repaired_on_the_same_target_and_usage_adds_up() {
    let s = setup().await;
    script(&s.gpt, &[r#"{"label":"positive"}"#, VALID]);
    let a = ask(&s.gw, msg("sentiment", "Great service")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("repaired"));
    assert_eq!(a.content(), VALID);
    let calls = s.gpt.received();
    assert_eq!(calls.len(), 2, "the answer and one repair");
    let repair = calls[1].json();
    let messages = repair["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{repair}");
    assert_eq!(messages[0]["content"], "Great service");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], r#"{"label":"positive"}"#);
    assert_eq!(messages[2]["role"], "user");
    let ask_again = messages[2]["content"].as_str().unwrap();
    assert!(
        ask_again.contains("/score: required property is missing"),
        "{ask_again}"
    );
    // Both answers were paid for: the mock reports 11 prompt tokens per call.
    assert_eq!(a.json()["usage"]["prompt_tokens"], 22, "{}", a.body);
    let m = s.gw.metrics();
    assert!(
        m.contains(
            r#"ai_gateway_output_validations_total{result="repaired",scenario="sentiment"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"kind="prompt",provider="gpt",scenario="sentiment",variant=""} 22"#),
        "tokens_total counts the repair: {m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_answer_is_repaired() {
    let s = setup().await;
    script(&s.gpt, &[r#"{"label":"positive","sco"#, VALID]);
    let a = ask(&s.gw, msg("sentiment", "Nice")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("repaired"));
    let repair = s.gpt.last().json();
    let text = repair["messages"][2]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("/: not valid JSON (it ends early"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn still_invalid_answers_end_in_invalid_output_listing_paths_not_text() {
    let s = setup().await;
    s.gpt
        .set(|k| k.content = r#"{"label":"SECRET-PATIENT-NOTE","extra":1}"#.into());
    let a = ask(&s.gw, msg("sentiment", "hmm")).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.output, None);
    let e = &a.json()["error"];
    assert_eq!(e["code"], "invalid_output");
    let message = e["message"].as_str().unwrap();
    for part in [
        "/score: required property is missing",
        "/extra: property is not allowed by the schema",
        "/label: must be one of",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(!message.contains("SECRET"), "no answer text: {message}");
    assert_eq!(
        s.gpt.count(),
        2,
        "the answer and its one repair; a lone target is not retried from the start"
    );
    let m = s.gw.metrics();
    assert!(
        m.contains(
            r#"ai_gateway_output_validations_total{result="invalid",scenario="sentiment"} 1"#
        ),
        "{m}"
    );
    // repair_attempts: 0 validates only.
    let before = s.gpt.count();
    let a = ask(&s.gw, msg("validate_only", "x")).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(
        a.body.contains("/ok: required property is missing"),
        "{}",
        a.body
    );
    assert_eq!(s.gpt.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_stays_invalid_fails_over_to_the_next() {
    let s = setup().await;
    s.gpt.set(|k| k.content = "I think it is positive.".into());
    s.gpt_b.set(|k| k.content = VALID.into());
    let a = ask(&s.gw, msg("sentiment_failover", "Lovely staff")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("repaired"));
    assert_eq!(a.content(), VALID);
    assert_eq!(s.gpt.count(), 2, "answer + repair on the first target");
    assert_eq!(s.gpt_b.count(), 1);
    let m = s.gw.metrics();
    assert!(
        m.contains(
            r#"ai_gateway_fallbacks_total{from="gpt",scenario="sentiment_failover",to="gpt-b"} 1"#
        ),
        "{m}"
    );
    // Spend prices every answer at its own target: 2 × 11 prompt tokens at $1/M on the first,
    // 11 at $2/M on the second.
    let spent: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"ai_gateway_spend_usd_total{client="app",endpoint="chat",provider="gpt-b",scenario="sentiment_failover",variant=""} "#,
            )
        })
        .unwrap_or_else(|| panic!("no spend: {m}"))
        .parse()
        .unwrap();
    assert!((spent - 44e-6).abs() < 1e-12, "{spent}");
    // The first target answered both times: an attempt that worked, not a failure that
    // counts for its breaker.
    assert!(
        m.contains(r#"ai_gateway_upstream_attempts_total{outcome="ok",provider="gpt"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dify_workflow_is_validated_after_the_fact_and_repaired() {
    let s = setup().await;
    s.dify.set(|k| {
        k.script = vec![
            "Plan: {\"label\": \"neutral\"}".into(),
            format!("Here you go: {VALID}"),
        ]
    });
    let a = ask(&s.gw, msg("plan_flow", "Summarise the consultation")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("repaired"));
    assert_eq!(a.content(), VALID);
    let calls: Vec<_> = s
        .dify
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/workflows/run"))
        .collect();
    assert_eq!(calls.len(), 2);
    let first = &calls[0].body;
    assert_eq!(
        first["inputs"]["requirements"], "Summarise the consultation",
        "Dify gets no instruction: {first}"
    );
    let second = &calls[1].body;
    let query = second["inputs"]["requirements"].as_str().unwrap();
    assert!(
        query.contains("/score: required property is missing"),
        "{query}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_target_gets_an_instruction() {
    let s = setup().await;
    let a = ask(&s.gw, msg("via_claude", "Great")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("valid"));
    assert_eq!(a.content(), VALID);
    let sent = s.claude.last().json();
    let system = sent["system"].to_string();
    assert!(system.contains("JSON Schema"), "{sent}");
    assert!(system.contains("score"), "{sent}");
    assert!(sent.get("response_format").is_none(), "{sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_response_format_is_honoured_on_any_scenario() {
    let s = setup().await;
    // OpenAI target: the client's own format is forwarded, and still checked.
    script(&s.gpt, &["not json at all", r#"{"city":"Paris"}"#]);
    let mut body = msg("plain", "Where?");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "place",
        "schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}});
    let a = ask(&s.gw, body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("repaired"));
    assert_eq!(a.content(), r#"{"city":"Paris"}"#);
    let sent = s.gpt.received()[0].json();
    assert_eq!(sent["response_format"]["json_schema"]["name"], "place");

    // A Dify target cannot take it: validated after the fact instead of refused.
    s.dify.set(|k| k.script = vec![r#"{"city":"Lyon"}"#.into()]);
    body["model"] = json!("plain_dify");
    let a = ask(&s.gw, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content(), r#"{"city":"Lyon"}"#);

    // json_object: any object.
    script(&s.gpt, &["[1, 2]", r#"{"a": 1}"#]);
    let mut body = msg("plain", "obj");
    body["response_format"] = json!({"type": "json_object"});
    let a = ask(&s.gw, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("repaired"));
    assert_eq!(a.content(), r#"{"a": 1}"#);

    // A client schema that is no schema is the client's error.
    let mut body = msg("plain", "bad");
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}});
    let a = ask(&s.gw, body).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        a.json()["error"]["param"],
        "response_format.json_schema.schema"
    );

    // Tools cannot be combined with one checked JSON answer.
    let mut body = msg("sentiment", "tools");
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let a = ask(&s.gw, body).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["param"], "tools");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_on_a_validated_scenario_is_the_valid_json_replayed() {
    let s = setup().await;
    script(&s.gpt, &[&format!("```json\n{VALID}\n```")]);
    let mut body = msg("sentiment", "stream it");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let a = ask(&s.gw, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.output.as_deref(), Some("valid"));
    let data = sse_data(&a.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, VALID);
    assert!(
        chunks.iter().any(|c| c["usage"]["prompt_tokens"] == 11),
        "usage chunk: {}",
        a.body
    );
    let sent = s.gpt.last().json();
    assert_ne!(
        sent["stream"], true,
        "the upstream answer is read whole: {sent}"
    );

    // The Anthropic door gets the same answer as Messages events.
    script(&s.gpt, &[VALID]);
    let r = http()
        .post(format!("{}/v1/messages", s.gw.api))
        .header("x-api-key", "client-key")
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "sentiment", "max_tokens": 100, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse_events(&r.text().await.unwrap());
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .filter_map(|(_, e)| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, VALID);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_validated_answers_are_cached() {
    let s = setup().await;
    script(&s.gpt, &["nope", r#"{"ok": true}"#]);
    let body = msg("validate_only", "cache me");
    let a = ask(&s.gw, body.clone()).await;
    assert_eq!(a.status, 502, "{}", a.body);
    let a = ask(&s.gw, body.clone()).await;
    assert_eq!(
        a.status, 200,
        "the invalid answer was not stored: {}",
        a.body
    );
    assert_eq!(s.gpt.count(), 2);
    let hit = ask(&s.gw, body).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.content(), r#"{"ok": true}"#);
    assert_eq!(hit.output.as_deref(), Some("valid"));
    assert_eq!(s.gpt.count(), 2, "served from the cache");
}

#[test]
fn a_bad_schema_is_a_load_error_naming_its_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = |output: &str| {
        format!(
            r#"
providers:
  p: {{ type: openai, base_url: "http://127.0.0.1:1/v1", api_key: k }}
scenarios:
  s:
    output: {output}
    targets: [{{ provider: p, model: m }}]
"#
        )
    };
    let load = |yaml: String| {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        ai_gateway::config::Config::load(&path)
            .unwrap_err()
            .to_string()
    };
    std::fs::write(
        dir.path().join("broken.json"),
        "{\n  \"type\": \"object\",\n  oops\n}",
    )
    .unwrap();
    let e = load(config("{ schema_file: broken.json }"));
    assert!(e.contains("broken.json:3:3"), "{e}");
    std::fs::write(
        dir.path().join("wrong.json"),
        r#"{"type": "object", "properties": {"score": {"type": "decimal"}}}"#,
    )
    .unwrap();
    let e = load(config("{ schema_file: wrong.json }"));
    assert!(
        e.contains("wrong.json") && e.contains("/properties/score/type"),
        "{e}"
    );
    let e = load(config("{ schema: { type: 7 } }"));
    assert!(
        e.contains("scenarios.s.output.schema") && e.contains("/type"),
        "{e}"
    );
    let e = load(config("{ schema_file: missing.json }"));
    assert!(e.contains("cannot read"), "{e}");
    let e = load(config("{ repair_attempts: 1 }"));
    assert!(e.contains("a schema is required"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_and_anthropic_sdks_get_validated_json() {
    let python = python_with("openai, anthropic, pydantic");
    let s = setup().await;
    s.gpt.set(|k| {
        k.content = VALID.into();
        k.script = vec!["{\"town\": 1}".into(), r#"{"city":"Paris"}"#.into()];
    });
    s.gpt_b.set(|k| k.content = "no JSON here".into());
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/structured_check.py");
    let stdout = run_sdk_script(python, script, vec!["--gateway".into(), s.gw.api.clone()]).await;
    assert!(stdout.contains("structured sdk checks passed"), "{stdout}");
    // The SDK's strict schema was forwarded as it wrote it.
    let first = s.gpt.received()[0].json();
    assert_eq!(
        first["response_format"]["json_schema"]["strict"], true,
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_responses_door_gets_validated_json_and_stores_it() {
    let s = setup().await;
    script(&s.gpt, &[&format!("```\n{VALID}\n```")]);
    let r = http()
        .post(format!("{}/v1/responses", s.gw.api))
        .bearer_auth("client-key")
        .json(&json!({"model": "sentiment", "input": "Lovely staff"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-gateway-output")
            .unwrap()
            .to_str()
            .unwrap(),
        "valid"
    );
    let body: Value = r.json().await.unwrap();
    let message = body["output"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(message["content"][0]["text"], VALID, "{body}");
    // Stored like any response: retrievable by its id.
    let id = body["id"].as_str().unwrap();
    let got = http()
        .get(format!("{}/v1/responses/{id}", s.gw.api))
        .bearer_auth("client-key")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
}
