//! Patient privacy: the upstream sees placeholders, the client the originals (non-stream, and a
//! stream with the placeholder split at every position); a session keeps its placeholders
//! across turns; `mask` and `block`; a target-level override inside one request's failover;
//! `/metrics` counts kinds; and the gateway's own logs never contain the values.

mod support;

use serde_json::{json, Value};
use support::client::http;
use support::dify::{key, MockDify, Mode};
use support::process::spawn;
use support::*;

const PHONE: &str = "13800138000";
const PHONE2: &str = "13912345678";
const EMAIL: &str = "zhangwei@clinic-mail.cn";
const NAME: &str = "张伟";

fn yaml(gpt: &MockOpenAi, gpt_b: &MockOpenAi, dify: &MockDify) -> String {
    format!(
        r#"admin:
  api_key: admin-key
clients:
  - name: app
    api_key: client-key
providers:
  gpt: {{ type: openai, base_url: "{a}", api_key: sk-a }}
  gpt-b: {{ type: openai, base_url: "{b}", api_key: sk-b, privacy: {{ action: pseudonymize }} }}
  dify-chat: {{ type: dify, base_url: "{d}", api_key: {k}, app: chat }}
scenarios:
  summary:
    privacy:
      detect: [cn_mobile, cn_id, bank_card, email, profile_names]
      action: pseudonymize
    targets: [{{ provider: gpt, model: gpt-up }}]
  masked:
    privacy: {{ action: mask }}
    targets: [{{ provider: gpt, model: gpt-up }}]
  blocked:
    privacy: {{ detect: [cn_mobile, cn_id], action: block }}
    targets: [{{ provider: gpt, model: gpt-up }}]
  self_hosted_first:
    privacy: {{ action: block }}
    targets:
      - {{ provider: dify-chat, privacy: off }}
      - {{ provider: gpt-b, model: up-b }}
  plain:
    targets: [{{ provider: gpt, model: gpt-up }}]
  dify_private:
    privacy: {{ action: pseudonymize }}
    targets: [{{ provider: dify-chat, inputs: {{ patient: "{{{{ user_profile.name }}}}" }} }}]
  prompted:
    privacy: {{ action: pseudonymize }}
    targets:
      - provider: gpt
        model: gpt-up
        system_prompt: "客户：{{{{ user_profile.name }}}}，电话 {{{{ user_profile.phone }}}}"

  cached_private:
    privacy: {{ action: pseudonymize }}
    cache: {{ ttl: 60s }}
    targets: [{{ provider: gpt, model: gpt-up }}]
"#,
        a = gpt.url(),
        b = gpt_b.url(),
        d = dify.url(),
        k = key(Mode::Chat),
    )
}

struct Setup {
    gpt: MockOpenAi,
    gpt_b: MockOpenAi,
    dify: MockDify,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let gpt = MockOpenAi::start().await;
    let gpt_b = MockOpenAi::start().await;
    let dify = MockDify::start().await;
    let gw = start_gateway(&yaml(&gpt, &gpt_b, &dify));
    Setup {
        gpt,
        gpt_b,
        dify,
        gw,
    }
}

async fn ask(api: &str, body: Value) -> (u16, String) {
    let r = http()
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth("client-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn turn(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}],
           "metadata": {"user_profile": {"name": NAME}}})
}

fn content(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

fn streamed(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_sees_placeholders_and_the_client_the_originals() {
    let s = setup().await;
    s.gpt
        .set(|k| k.content = "好的[NAME_1]，我们会致电[PHONE_1]并发邮件到[EMAIL_1]。".into());
    let (status, body) = ask(
        &s.gw.api,
        turn(
            "summary",
            &format!("我是{NAME}，电话{PHONE}，邮箱{EMAIL}，订单号20240101123045123456。"),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        content(&body),
        format!("好的{NAME}，我们会致电{PHONE}并发邮件到{EMAIL}。")
    );
    let sent = String::from_utf8(s.gpt.last().body.to_vec()).unwrap();
    for value in [PHONE, EMAIL, NAME] {
        assert!(!sent.contains(value), "{value} left the gateway: {sent}");
    }
    assert!(
        sent.contains("我是[NAME_1]，电话[PHONE_1]，邮箱[EMAIL_1]，订单号20240101123045123456"),
        "{sent}"
    );
    let m = s.gw.metrics();
    // The name twice: in the message and as the profile's own value.
    for (kind, n) in [("cn_mobile", 1), ("email", 1), ("profile_names", 2)] {
        assert!(
            m.contains(&format!(
                r#"ai_gateway_pii_detections_total{{action="pseudonymize",kind="{kind}",scenario="summary"}} {n}"#
            )),
            "{kind}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_placeholder_split_at_every_position_of_a_stream_is_restored() {
    let s = setup().await;
    let answer = "请拨打[PHONE_1]联系[NAME_1]。";
    let chars = answer.chars().count();
    for chunks in [1, 2, 3, 4, 5, 7, chars] {
        s.gpt.set(|k| {
            k.content = answer.into();
            k.chunks = chunks;
        });
        let mut body = turn("summary", &format!("{NAME}的电话是{PHONE}"));
        body["stream"] = json!(true);
        let (status, text) = ask(&s.gw.api, body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            streamed(&text),
            format!("请拨打{PHONE}联系{NAME}。"),
            "{chunks} chunks: {text}"
        );
        assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_keeps_its_placeholders_across_turns() {
    let s = setup().await;
    let mut one = turn("summary", &format!("电话{PHONE}"));
    one["metadata"]["session_id"] = json!("visit-42");
    assert_eq!(ask(&s.gw.api, one).await.0, 200);
    let mut two = turn("summary", &format!("新号码{PHONE2}，旧号码{PHONE}"));
    two["metadata"]["session_id"] = json!("visit-42");
    assert_eq!(ask(&s.gw.api, two).await.0, 200);
    let calls = s.gpt.received();
    let first = String::from_utf8(calls[0].body.to_vec()).unwrap();
    let second = String::from_utf8(calls[1].body.to_vec()).unwrap();
    assert!(first.contains("电话[PHONE_1]"), "{first}");
    assert!(
        second.contains("新号码[PHONE_2]，旧号码[PHONE_1]"),
        "the same number keeps its placeholder: {second}"
    );
    // Another session starts afresh.
    let mut other = turn("summary", &format!("新号码{PHONE2}"));
    other["metadata"]["session_id"] = json!("visit-43");
    assert_eq!(ask(&s.gw.api, other).await.0, 200);
    let third = String::from_utf8(s.gpt.last().body.to_vec()).unwrap();
    assert!(third.contains("新号码[PHONE_1]"), "{third}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mask_is_not_restored_and_block_refuses_naming_kinds_only() {
    let s = setup().await;
    s.gpt.set(|k| k.content = "已记录[PHONE_1]".into());
    let (status, body) = ask(&s.gw.api, turn("masked", &format!("电话{PHONE}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), "已记录[PHONE_1]");
    let sent = String::from_utf8(s.gpt.last().body.to_vec()).unwrap();
    assert!(!sent.contains(PHONE), "{sent}");

    let before = s.gpt.count();
    let (status, body) = ask(&s.gw.api, turn("blocked", &format!("电话{PHONE}"))).await;
    assert_eq!(status, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "pii_detected");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("cn_mobile"), "{message}");
    assert!(!message.contains(PHONE), "{message}");
    assert_eq!(s.gpt.count(), before, "nothing was sent");
    // Without personal data the same scenario answers.
    let (status, body) = ask(&s.gw.api, turn("blocked", "我想了解双眼皮手术")).await;
    assert_eq!(status, 200, "{body}");
    // The Anthropic door refuses in its own shape.
    let r = http()
        .post(format!("{}/v1/messages", s.gw.api))
        .header("x-api-key", "client-key")
        .json(&json!({"model": "blocked", "max_tokens": 50,
            "messages": [{"role": "user", "content": format!("电话{PHONE}")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let m = s.gw.metrics();
    assert!(
        m.contains(r#"ai_gateway_pii_detections_total{action="block",kind="cn_mobile",scenario="blocked"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_self_hosted_target_sees_originals_and_the_external_fallback_placeholders() {
    let s = setup().await;
    s.gpt_b.set(|k| k.content = "已安排[NAME_1]的回访".into());
    // The first try: Dify (privacy off) answers with the originals it was sent.
    let (status, body) = ask(
        &s.gw.api,
        turn("self_hosted_first", &format!("{NAME}电话{PHONE}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let query = s.dify.calls()[0].body["query"].as_str().unwrap().to_owned();
    assert!(query.contains(PHONE) && query.contains(NAME), "{query}");
    // Dify fails: the OpenAI fallback (its provider says pseudonymize) gets placeholders.
    s.dify
        .set(|k| k.fail_with = Some((500, "internal_server_error", "down")));
    let (status, body) = ask(
        &s.gw.api,
        turn("self_hosted_first", &format!("{NAME}电话{PHONE}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), format!("已安排{NAME}的回访"));
    let sent = String::from_utf8(s.gpt_b.last().body.to_vec()).unwrap();
    assert!(sent.contains("[NAME_1]电话[PHONE_1]"), "{sent}");
    assert!(!sent.contains(PHONE), "{sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_logs_never_contain_the_values() {
    let gpt = MockOpenAi::start().await;
    gpt.set(|k| k.content = "好的[NAME_1]，致电[PHONE_1]".into());
    let gpt_b = MockOpenAi::start().await;
    let dify = MockDify::start().await;
    let config = format!("{}log:\n  level: debug\n", yaml(&gpt, &gpt_b, &dify));
    let mut p = spawn(&config, &[("RUST_LOG", "debug")]);
    let id = "11010519491231002X";
    for (model, stream) in [
        ("summary", false),
        ("summary", true),
        ("blocked", false),
        ("masked", false),
    ] {
        let mut body = turn(
            model,
            &format!("{NAME}，电话{PHONE}，邮箱{EMAIL}，身份证{id}"),
        );
        body["stream"] = json!(stream);
        let (status, text) = ask(&p.api, body).await;
        assert!(status == 200 || status == 400, "{status}: {text}");
    }
    p.signal("TERM");
    tokio::task::block_in_place(|| p.wait(std::time::Duration::from_secs(10)));
    let logs = format!("{}\n{}", p.stdout_text(), p.stderr_text());
    assert!(
        logs.contains("\"pii\":\"cn_mobile:1"),
        "the access log counts kinds: {logs}"
    );
    for value in [PHONE, EMAIL, NAME, id] {
        assert!(!logs.contains(value), "{value} is in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_call_arguments_dify_queries_and_cached_answers() {
    let s = setup().await;
    // Tool-call arguments are restored, whole and streamed.
    s.gpt.set(|k| {
        k.tool_call = Some(("call_back".into(), r#"{"phone":"[PHONE_1]"}"#.into()));
        k.chunks = 9;
    });
    let tools = json!([{"type": "function", "function": {"name": "call_back",
        "parameters": {"type": "object", "properties": {"phone": {"type": "string"}}}}}]);
    for stream in [false, true] {
        let mut body = turn("summary", &format!("请回电{PHONE}"));
        body["tools"] = tools.clone();
        body["stream"] = json!(stream);
        let (status, text) = ask(&s.gw.api, body).await;
        assert_eq!(status, 200, "{text}");
        let args: String = if stream {
            sse_data(&text)
                .iter()
                .filter(|d| *d != "[DONE]")
                .filter_map(|d| {
                    let v: Value = serde_json::from_str(d).unwrap();
                    v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect()
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            args,
            format!(r#"{{"phone":"{PHONE}"}}"#),
            "stream {stream}: {text}"
        );
    }
    s.gpt.set(|k| k.tool_call = None);

    // A Dify app gets the placeholders in its query.
    let (status, body) = ask(
        &s.gw.api,
        turn("dify_private", &format!("{NAME}的电话{PHONE}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let query = s.dify.calls().last().unwrap().body["query"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(query.contains("[NAME_1]的电话[PHONE_1]"), "{query}");
    assert!(!query.contains(PHONE), "{query}");

    // The cache keys on the original request and replays the restored answer.
    s.gpt.set(|k| k.content = "已记录[PHONE_1]".into());
    let body = turn("cached_private", &format!("电话{PHONE}"));
    let (_, first) = ask(&s.gw.api, body.clone()).await;
    let calls = s.gpt.count();
    let (_, hit) = ask(&s.gw.api, body).await;
    assert_eq!(s.gpt.count(), calls, "served from the cache");
    assert_eq!(content(&first), format!("已记录{PHONE}"));
    assert_eq!(content(&hit), format!("已记录{PHONE}"));
    // Another number is another request: no answer of the first is replayed.
    let (_, other) = ask(&s.gw.api, turn("cached_private", &format!("电话{PHONE2}"))).await;
    assert_eq!(content(&other), format!("已记录{PHONE2}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_variables_dify_inputs_and_tool_results_are_rewritten_too() {
    let s = setup().await;
    let body = json!({"model": "prompted",
    "metadata": {"user_profile": {"name": NAME, "phone": PHONE}},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "查一下我的预约"}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": format!("{{\"phone\":\"{PHONE}\"}}")}}]},
        {"role": "tool", "tool_call_id": "c1", "content": format!("预约人{NAME}，邮箱{EMAIL}")},
        {"role": "user", "content": "好的"}
    ]});
    let (status, text) = ask(&s.gw.api, body).await;
    assert_eq!(status, 200, "{text}");
    let sent = s.gpt.last().json();
    let all = sent.to_string();
    for value in [PHONE, NAME, EMAIL] {
        assert!(!all.contains(value), "{value} left: {all}");
    }
    assert_eq!(
        sent["messages"][0]["content"], "客户：[NAME_1]，电话 [PHONE_1]",
        "{all}"
    );
    assert!(
        sent["messages"][2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
            .contains("[PHONE_1]"),
        "{all}"
    );
    assert_eq!(
        sent["messages"][3]["content"],
        "预约人[NAME_1]，邮箱[EMAIL_1]"
    );

    // A Dify app's inputs rendered from the profile carry the placeholders as well.
    let (status, text) = ask(&s.gw.api, turn("dify_private", "你好")).await;
    assert_eq!(status, 200, "{text}");
    let call = s.dify.calls().last().unwrap().body.clone();
    assert_eq!(call["inputs"]["patient"], "[NAME_1]", "{call}");
}
