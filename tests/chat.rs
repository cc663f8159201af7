//! Chat completions through the real gateway against the mock OpenAI upstream: what the client
//! gets back and what the upstream receives.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

fn config(mock: &MockOpenAi, extra_target: &str) -> String {
    format!(
        r#"
providers:
  up:
    type: openai
    base_url: {url}
    api_key: sk-provider-secret-0001
    timeouts: {{ connect: 1s, first_token: 2s, idle: 2s, total: 10s }}
clients:
  - name: svc
    api_key: client-key-1
    scenarios: [chat, plain]
  - name: other
    api_key: client-key-2
    scenarios: [plain]
scenarios:
  chat:
    models: [chat, gpt-3.5-turbo]
    targets:
      - provider: up
        model: mock-model
        system_prompt: "You help a client with {{{{ user_profile.skin_type }}}} skin in {{{{ scenario }}}}."
        params: {{ temperature: 0.3, max_tokens: 64 }}
        {extra_target}
  plain:
    models: [plain]
    targets:
      - provider: up
        model: mock-model
limits:
  max_body: 2MiB
"#,
        url = mock.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn non_stream_answer_and_what_the_upstream_received() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    let body = json!({
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "你好"}],
        "temperature": 0.9,
        "user": "end-user-7",
        "metadata": {"user_profile": {"skin_type": "oily"}, "session_id": "s-1", "trace": "keep"}
    });
    let resp = chat(&gw).key("client-key-1").body(body).send().await;
    assert_eq!(resp.status, 200);
    let h = &resp.headers;
    assert_eq!(h["x-gateway-scenario"], "chat");
    assert_eq!(h["x-gateway-provider"], "up");
    assert_eq!(h["x-gateway-attempts"], "1");
    assert_eq!(h["x-gateway-cache"], "off");
    assert_eq!(h["x-gateway-session"], "s-1");
    assert!(h.get("x-request-id").is_some());
    assert!(
        h.get("openai-organization").is_none(),
        "upstream account headers are not relayed"
    );
    let answer = resp.json();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from the mock upstream, one two three."
    );
    assert_eq!(answer["model"], "mock-model");

    let seen = mock.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk-provider-secret-0001")
    );
    assert!(!String::from_utf8_lossy(&seen.body).contains("client-key-1"));
    for (name, value) in seen.headers.iter() {
        assert!(
            !value.as_bytes().windows(12).any(|w| w == b"client-key-1"),
            "client key leaked in {name}"
        );
    }
    let up = seen.json();
    assert_eq!(up["model"], "mock-model");
    assert_eq!(up["messages"][0]["role"], "system");
    assert_eq!(
        up["messages"][0]["content"],
        "You help a client with oily skin in chat."
    );
    assert_eq!(
        up["messages"][1],
        json!({"role": "user", "content": "你好"})
    );
    assert_eq!(
        up["temperature"], 0.9,
        "the client's value wins over params"
    );
    assert_eq!(up["max_tokens"], 64, "params fill what the client left out");
    assert_eq!(up["user"], "end-user-7");
    assert_eq!(
        up["metadata"],
        json!({"trace": "keep"}),
        "gateway extensions are stripped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_is_relayed_chunk_by_chunk_and_ends_with_done() {
    let mock = MockOpenAi::start().await;
    mock.set(|k| {
        k.chunks = 4;
        k.chunk_interval = Duration::from_millis(150);
    });
    let gw = start_gateway(&config(&mock, ""));
    let body = json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut resp = chat(&gw)
        .key("client-key-1")
        .body(body.clone())
        .send_raw()
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Chunks must arrive spread out as the upstream sends them, not in one piece at the end.
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        arrivals.push(start.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        arrivals.len() >= 4,
        "stream arrived in {} pieces",
        arrivals.len()
    );
    assert!(
        arrivals.last().unwrap().saturating_sub(arrivals[0]) >= Duration::from_millis(400),
        "pieces arrived at {arrivals:?}"
    );
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from the mock upstream, one two three.");
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 11);

    // Byte-for-byte what the upstream sends directly.
    let direct = http()
        .post(format!("{}/chat/completions", mock.url()))
        .json(&json!({"model": "mock-model", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, direct);
    assert_eq!(mock.last().json()["stream"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mebibyte_body_reaches_the_upstream_byte_for_byte() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    // Escapes, non-ASCII text and an \u escape must survive untouched (no re-encoding).
    let mut content = String::new();
    while content.len() < (1 << 20) {
        content.push_str("line \"quoted\" \\ tab\t 医美 émoji 😀 ");
    }
    let messages = json!([
        {"role": "user", "content": content},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]}
    ]);
    let messages_text = serde_json::to_string(&messages)
        .unwrap()
        .replace("é", "\\u00e9");
    let raw_body = format!(r#"{{"model":"plain","messages":{messages_text},"stream":false}}"#);
    assert!(raw_body.len() > 1 << 20);
    let resp = chat(&gw)
        .key("client-key-1")
        .raw_body(raw_body)
        .send()
        .await;
    assert_eq!(resp.status, 200);
    let seen = String::from_utf8(mock.last().body.to_vec()).unwrap();
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        messages: &'a serde_json::value::RawValue,
    }
    let raw: Raw = serde_json::from_str(&seen).unwrap();
    assert_eq!(
        raw.messages.get(),
        messages_text,
        "messages differ from what the client sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_have_openai_shape_and_never_reach_the_upstream() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    let send = |body: String, key: &'static str| {
        let request = chat(&gw).key(key).raw_body(body);
        async move {
            let r = request.send().await;
            (r.status, r.error_code(), r.json())
        }
    };
    let ok_msg = r#""messages":[{"role":"user","content":"x"}]"#;
    let cases = [
        (
            send("{not json".into(), "client-key-1").await,
            400,
            "invalid_json",
        ),
        (
            send(r#"{"model":"plain"}"#.to_string(), "client-key-1").await,
            400,
            "invalid_request",
        ),
        (
            send(format!(r#"{{"model":"nope",{ok_msg}}}"#), "client-key-1").await,
            404,
            "model_not_found",
        ),
        (
            send(format!(r#"{{"model":"plain",{ok_msg}}}"#), "wrong-key").await,
            401,
            "invalid_api_key",
        ),
        (
            send(format!(r#"{{"model":"chat",{ok_msg}}}"#), "client-key-2").await,
            403,
            "scenario_forbidden",
        ),
        (
            send(
                format!(
                    r#"{{"model":"plain","messages":[{{"role":"user","content":"{}"}}]}}"#,
                    "x".repeat(3 << 20)
                ),
                "client-key-1",
            )
            .await,
            413,
            "request_too_large",
        ),
    ];
    for ((status, code, body), want_status, want_code) in cases {
        assert_eq!((status, code.as_str()), (want_status, want_code), "{body}");
        for field in ["message", "type", "param", "code"] {
            assert!(
                body["error"].get(field).is_some(),
                "missing error.{field}: {body}"
            );
        }
    }
    assert_eq!(mock.count(), 0, "no upstream contact for rejected requests");

    let r = http()
        .get(format!("{}/v1/nothing", gw.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let r = http()
        .get(format!("{}/v1/chat/completions", gw.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = http()
        .get(format!("{}/v1/models", gw.api))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "models need a client key when clients are configured"
    );
}

/// Sends raw bytes on a fresh connection and reads until the gateway closes it.
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    conn.write_all(request).await.unwrap();
    read_until_closed(conn).await
}

/// Everything the gateway sends until it closes the connection.
async fn read_until_closed(mut conn: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_http_gets_an_openai_shaped_400_and_the_connection_closes() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    for request in [
        &b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"[..],
        &b"\x01\x02 not http at all\r\n\r\n"[..],
    ] {
        let answer = raw_exchange(&gw.api, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{answer}");
    }
    // The listener is unharmed.
    let r = http()
        .get(format!("{}/health", gw.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_continue_invites_the_body_and_refuses_an_oversized_one_unsent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    let addr = gw.api.trim_start_matches("http://").to_owned();
    let head = |len: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer client-key-1\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\
             Connection: close\r\n\r\n"
        )
    };

    // Invited: the 100 arrives before any body byte is sent.
    let body = r#"{"model":"plain","messages":[{"role":"user","content":"hi"}]}"#;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head(body.len()).as_bytes()).await.unwrap();
    let mut first = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut first))
        .await
        .expect("100 Continue comes without waiting for the body")
        .unwrap();
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 100 Continue\r\n"), "{first}");
    conn.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until_closed(conn).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(mock.count(), 1);

    // Too large: refused at once, the body is never sent.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head(100 << 20).as_bytes()).await.unwrap();
    let answer = read_until_closed(conn).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_statuses_map_to_gateway_errors() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    let body = json!({"model": "plain", "messages": [{"role": "user", "content": "x"}]});

    mock.set(|k| {
        k.status = 400;
        k.error_body = r#"{"error":{"message":"This model's maximum context length is 10 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#.into();
    });
    let r = chat(&gw)
        .key("client-key-1")
        .body(body.clone())
        .send()
        .await;
    assert_eq!(r.status, 400, "client-fault upstream 4xx pass through");
    assert!(r.headers.get("set-cookie").is_none());
    let v = r.json();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "messages");

    mock.set(|k| {
        k.status = 503;
        // Assembled at run time: nothing shaped like a real key is committed.
        let fake = ["sk", "-leakedkey1234567890abcdef"].concat();
        k.error_body = format!(r#"{{"error":{{"message":"overloaded, key {fake}"}}}}"#);
    });
    let r = chat(&gw)
        .key("client-key-1")
        .body(body.clone())
        .send()
        .await;
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("503") && msg.contains("overloaded"), "{msg}");
    assert!(
        !msg.contains("sk-leaked"),
        "upstream key echo must be redacted: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_unreachable_upstreams_do_not_hang_the_client() {
    let mock = MockOpenAi::start().await;
    mock.set(|k| k.never_answer = true);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = format!(
        r#"
providers:
  silent:
    type: openai
    base_url: {url}
    api_key: k1
    timeouts: {{ first_token: 500ms, total: 30s }}
    retry: {{ attempts: 1 }}
  stalls:
    type: openai
    base_url: {url}
    api_key: k2
    timeouts: {{ first_token: 500ms, idle: 300ms }}
    retry: {{ attempts: 1 }}
  dead:
    type: openai
    base_url: http://{dead}/v1
    api_key: k3
    timeouts: {{ connect: 500ms }}
    retry: {{ attempts: 1 }}
scenarios:
  silent: {{ targets: [{{ provider: silent, model: m }}] }}
  stalls: {{ targets: [{{ provider: stalls, model: m }}] }}
  dead: {{ targets: [{{ provider: dead, model: m }}] }}
"#,
        url = mock.url()
    );
    let gw = start_gateway(&yaml);
    let ask = |model: &str, stream: bool| {
        let request = chat(&gw).body(
            json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]}),
        );
        async move {
            let t = Instant::now();
            let r = request.send().await;
            (r.status, r.error_code(), t.elapsed())
        }
    };
    for stream in [false, true] {
        let (status, code, took) = ask("silent", stream).await;
        assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(5),
            "took {took:?}"
        );
    }
    mock.set(|k| {
        k.never_answer = false;
        k.stall_after_headers = true;
    });
    let (status, code, _) = ask("stalls", true).await;
    assert_eq!(
        (status, code.as_str()),
        (504, "upstream_timeout"),
        "headers without a first event"
    );
    let (status, code, took) = ask("dead", false).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    assert!(took < Duration::from_secs(5));

    let metrics = gw.metrics_with(
        r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="silent",scenario="silent",status="504",variant=""} 2"#,
    );
    assert!(
        metrics.contains(
            r#"ai_gateway_upstream_attempts_total{outcome="timeout",provider="silent"} 2"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"ai_gateway_upstream_attempts_total{outcome="connect_error",provider="dead"} 1"#
    ));
    assert!(metrics.contains(r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="silent",scenario="silent",status="504",variant=""} 2"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_done() {
    let mock = MockOpenAi::start().await;
    mock.set(|k| {
        k.cut_after = Some(2);
        k.chunk_interval = Duration::from_millis(20);
    });
    let gw = start_gateway(&config(&mock, ""));
    let body =
        json!({"model": "plain", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let r = chat(&gw).key("client-key-1").body(body).send().await;
    assert_eq!(r.status, 200);
    let data = r.sse();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "stream_incomplete");
    assert_eq!(
        data.len(),
        1 + 2 + 2,
        "role chunk, two content chunks, error, [DONE]"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled_across_requests() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    for stream in [false, true, false, true, false] {
        let body = json!({"model": "plain", "stream": stream, "messages": [{"role": "user", "content": "x"}]});
        let r = chat(&gw).key("client-key-1").body(body).send().await;
        assert_eq!(r.status, 200);
    }
    let peers: std::collections::HashSet<_> = mock.received().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "five sequential requests should share one keep-alive connection: {peers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_attempts_and_inflight() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    for _ in 0..3 {
        let r = chat(&gw)
            .key("client-key-1")
            .body(json!({"model": "plain", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await;
        assert_eq!(r.status, 200);
    }
    let m = gw.metrics_with(
        r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="up",scenario="plain",status="200",variant=""} 3"#,
    );
    assert!(m.contains(r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="up",scenario="plain",status="200",variant=""} 3"#), "{m}");
    assert!(m.contains(r#"ai_gateway_upstream_attempts_total{outcome="ok",provider="up"} 3"#));
    assert!(m.contains(r#"ai_gateway_inflight_requests{provider="up"} 0"#));
    assert!(m.contains(
        r#"ai_gateway_request_duration_seconds_count{endpoint="chat",provider="up",scenario="plain",variant=""} 3"#
    ));
    assert!(
        m.contains(r#"ai_gateway_tokens_total{endpoint="chat",kind="prompt",provider="up",scenario="plain",variant=""} 33"#)
    );
    assert!(m.contains("# TYPE ai_gateway_overhead_seconds histogram"));
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_ready_and_admin_gate() {
    let mock = MockOpenAi::start().await;
    let gw = start_gateway(&config(&mock, ""));
    let v: Value = get_json(format!("{}/v1/models", gw.api), "client-key-1").await;
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "gpt-3.5-turbo", "plain"]);
    for url in [
        format!("{}/health", gw.api),
        format!("{}/health", gw.admin),
        format!("{}/ready", gw.admin),
    ] {
        assert_eq!(
            http().get(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    let r = http()
        .get(format!("{}/admin/providers", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "admin_disabled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn system_prompt_file_and_header_profile() {
    let mock = MockOpenAi::start().await;
    let yaml = format!(
        r#"
admin:
  api_key: admin-secret
providers:
  up: {{ type: openai, base_url: "{url}", api_key: k }}
scenarios:
  plan:
    match: {{ headers: {{ x-app: crm }} }}
    targets:
      - provider: up
        model: m
        system_prompt_file: plan.md
"#,
        url = mock.url()
    );
    let gw = start_gateway_with_files(
        &yaml,
        &[("plan.md", "方案 for {{ user_profile.name }} ({{ user }})")],
    );
    let r = chat(&gw)
        .header("x-app", "crm")
        .header("x-gateway-user-profile", r#"{"name":"李女士"}"#)
        .body(json!({"model": "anything", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-gateway-scenario"], "plan");
    assert_eq!(
        mock.last().json()["messages"][0]["content"],
        "方案 for 李女士 (gateway)"
    );
    assert_eq!(mock.last().json()["model"], "m");

    let r = http()
        .get(format!("{}/admin/x", gw.admin))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
