//! Several gateway processes sharing one real redis-server (`state.backend: redis`): limits,
//! budgets, the cache, single-flight and Dify conversations hold across replicas as they would
//! on one.

mod support;

use futures::future::join_all;
use serde_json::{json, Value};
use std::time::Duration;
use support::dify::{shared_state_config, MockDify};
use support::process::{spawn, Proc};
use support::redis::RedisServer;
use support::*;

fn config(redis: &str, upstream: &str, clients: &str) -> String {
    format!(
        r#"
admin:
  api_key: adm
state: {{ backend: redis, url: "{redis}", timeout: 2s }}
clients:
{clients}
providers:
  up: {{ type: openai, base_url: "{upstream}", api_key: sk-up, timeouts: {{ first_token: 5s }} }}
scenarios:
  s:
    targets: [{{ provider: up, model: m, cost: {{ input: 1000, output: 2000 }} }}]
  cached:
    cache: {{ ttl: 60s }}
    targets: [{{ provider: up, model: m }}]
"#
    )
}

fn replicas(n: usize, yaml: &str) -> Vec<Proc> {
    (0..n).map(|_| spawn(yaml, &[])).collect()
}

/// A Redis, the OpenAI mock and `n` replicas of the shared config with `clients`.
async fn fleet(n: usize, clients: &str) -> (RedisServer, MockOpenAi, Vec<Proc>) {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    let gws = replicas(n, &config(&redis.url(), &mock.url(), clients));
    (redis, mock, gws)
}

fn ask(p: &Proc, key: &str, model: &str, text: &str) -> Chat {
    Chat::at(&p.api)
        .key(key)
        .body(json!({"model": model, "messages": [{"role": "user", "content": text}]}))
}

/// `/admin/clients` once every request has been settled (settlement follows the response, and
/// reaches Redis within tens of milliseconds).
async fn admin_clients(p: &Proc) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let v: Value = get_json(format!("{}/admin/clients", p.admin), "adm").await;
        let busy = v["clients"].as_array().unwrap().iter().any(|c| {
            c["inflight"].as_u64() != Some(0)
                || c["budget"]["reserved"].as_f64().is_some_and(|r| r > 0.0)
        });
        if !busy || std::time::Instant::now() > until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rpm_limit_of_ten_admits_exactly_ten_of_thirty_requests_over_three_replicas() {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    let yaml = config(
        &redis.url(),
        &mock.url(),
        "  - { name: app, api_key: k-app, rpm: 10 }",
    );
    let gws = replicas(3, &yaml);
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = ask(&gws[i % 3], "k-app", "s", &format!("q{i}"))
            .send()
            .await;
        if r.status == 429 {
            assert_eq!(r.error_code(), "rate_limited", "{}", r.text);
            assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        }
        statuses.push(r.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20);
    assert_eq!(
        mock.count(),
        10,
        "refused requests never reach the upstream"
    );
    // Every replica reports the same shared window.
    for g in &gws {
        let v = admin_clients(g).await;
        assert_eq!(v["clients"][0]["rpm"]["remaining"], 0, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_over_three_replicas_admit_exactly_fifty() {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    let yaml = config(
        &redis.url(),
        &mock.url(),
        "  - { name: app, api_key: k-app, rpm: 50 }",
    );
    let gws = replicas(3, &yaml);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let answers = join_all((0..200).map(|i| {
        ask(&gws[i % 3], "k-app", "s", &format!("c{i}"))
            .client(&client)
            .send()
    }))
    .await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!((ok, refused), (50, 150));
    assert_eq!(mock.count(), 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_spent_on_one_replica_is_spent_on_all() {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    // Each answer costs (11 prompt + ~12 completion tokens) at $1000/$2000 per 1M tokens,
    // about $0.035; a $0.1 budget takes a few requests.
    let yaml = config(
        &redis.url(),
        &mock.url(),
        "  - { name: app, api_key: k-app, budget: { usd: 0.1, per: day } }",
    );
    let gws = replicas(2, &yaml);
    let mut admitted = 0;
    for i in 0..20 {
        let r = Chat::at(&gws[i % 2].api)
            .key("k-app")
            .body(json!({"model": "s", "max_tokens": 5, "messages": [{"role": "user", "content": format!("b{i}")}]}))
            .send()
            .await;
        if r.status == 429 {
            assert_eq!(r.error_code(), "budget_exceeded", "{}", r.text);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        admitted += 1;
    }
    assert!(
        (1..20).contains(&admitted),
        "the budget ran out after {admitted}"
    );
    // Both replicas refuse now, and report the same spend.
    for g in &gws {
        let r = ask(g, "k-app", "s", "one more").send().await;
        assert_eq!(r.error_code(), "budget_exceeded", "{}", r.text);
    }
    let a = admin_clients(&gws[0]).await["clients"][0]["budget"].clone();
    let b = admin_clients(&gws[1]).await["clients"][0]["budget"].clone();
    assert_eq!(a["spent"], b["spent"]);
    assert!(a["spent"].as_f64().unwrap() > 0.0, "{a}");
    assert_eq!(mock.count(), admitted);

    // The spend lives in Redis: a replica started now (nothing in its memory) refuses too.
    let fresh = spawn(&yaml, &[]);
    let r = ask(&fresh, "k-app", "s", "after restart").send().await;
    assert_eq!(r.error_code(), "budget_exceeded", "{}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_cached_by_one_replica_is_a_hit_on_another() {
    let (redis, mock, gws) = fleet(2, "  - { name: app, api_key: k-app }").await;
    let first = ask(&gws[0], "k-app", "cached", "the same question")
        .send()
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-gateway-cache"), Some("miss"));
    let second = ask(&gws[1], "k-app", "cached", "the same question")
        .send()
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-gateway-cache"), Some("hit"));
    assert_eq!(
        second.json()["choices"][0]["message"]["content"],
        first.json()["choices"][0]["message"]["content"]
    );
    assert_eq!(mock.count(), 1);
    // Streamed from the shared entry too.
    let streamed = Chat::at(&gws[1].api)
        .key("k-app")
        .body(json!({"model": "cached", "stream": true, "messages": [{"role": "user", "content": "the same question"}]}))
        .send()
        .await;
    assert!(streamed.is_sse());
    assert_eq!(streamed.header("x-gateway-cache"), Some("hit"));
    assert_eq!(mock.count(), 1);
    // Redis holds the entry under the configured prefix, with the scenario's TTL.
    let keys = redis.cmd(&["KEYS", "aigw:c:*"]);
    assert!(keys.contains("aigw:c:"), "{keys}");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_identical_concurrent_requests_over_two_replicas_make_one_upstream_call() {
    let (_redis, mock, gws) = fleet(2, "  - { name: app, api_key: k-app }").await;
    mock.set(|k| k.latency = Duration::from_millis(400));
    let client = reqwest::Client::new();
    let answers = join_all((0..20).map(|i| {
        ask(&gws[i % 2], "k-app", "cached", "everyone asks this")
            .client(&client)
            .send()
    }))
    .await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            a.json()["choices"][0]["message"]["content"],
            answers[0].json()["choices"][0]["message"]["content"]
        );
    }
    assert_eq!(mock.count(), 1, "one upstream call for twenty requests");
    let coalesced = answers
        .iter()
        .filter(|a| a.header("x-gateway-cache") != Some("miss"))
        .count();
    assert_eq!(coalesced, 19);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_leading_replica_fails_a_waiting_replica_takes_over() {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    // The first call fails after a while (errors are never shared), the next succeeds.
    mock.set(|k| {
        k.latency = Duration::from_millis(300);
        k.status = 400;
    });
    let gws = replicas(
        2,
        &config(
            &redis.url(),
            &mock.url(),
            "  - { name: app, api_key: k-app }",
        ),
    );
    let leader = ask(&gws[0], "k-app", "cached", "take over").send();
    let follower = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = ask(&gws[1], "k-app", "cached", "take over").send();
        tokio::time::sleep(Duration::from_millis(100)).await;
        mock.set(|k| k.status = 200);
        r.await
    };
    let (leader, follower) = tokio::join!(leader, follower);
    assert_eq!(leader.status, 400, "{}", leader.text);
    assert_eq!(follower.status, 200, "{}", follower.text);
    assert_eq!(follower.header("x-gateway-cache"), Some("miss"));
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dify_conversation_continues_on_another_replica() {
    let redis = RedisServer::start();
    let dify = MockDify::start().await;
    let yaml = shared_state_config(&redis.url(), &dify, "2s");
    let gws = replicas(2, &yaml);
    let mut history = vec![];
    for (i, text) in ["第一句", "第二句", "第三句"].iter().enumerate() {
        history.push(json!({"role": "user", "content": text}));
        let r = Chat::at(&gws[i % 2].api)
            .header("x-gateway-session", "visit-7")
            .body(json!({"model": "chat", "user": "patient-42", "messages": history}))
            .send()
            .await;
        assert_eq!(r.status, 200, "turn {i}: {}", r.text);
        history.push(
            json!({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]}),
        );
    }
    let calls = dify.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].body["conversation_id"], "");
    let conv = calls[1].body["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        conv.len(),
        36,
        "turn 2 on replica B continues turn 1's conversation"
    );
    assert_eq!(calls[2].body["conversation_id"], conv.as_str());
    assert_eq!(
        calls[1].body["query"], "第二句",
        "only the new turn is sent"
    );
    // The end user's id is not readable in Redis's key names.
    let keys = redis.cmd(&["KEYS", "*"]);
    assert!(
        !keys.contains("patient-42") && !keys.contains("visit-7"),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_without_limits_never_touch_redis() {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    let gw = spawn(
        &config(
            &redis.url(),
            &mock.url(),
            "  - { name: free, api_key: k-free }",
        ),
        &[],
    );
    for i in 0..5 {
        let r = ask(&gw, "k-free", "s", &format!("f{i}")).send().await;
        assert_eq!(r.status, 200);
    }
    let stats = redis.cmd(&["INFO", "commandstats"]);
    for command in ["evalsha", "eval", "get", "set", "incr"] {
        assert!(
            !stats.contains(&format!("cmdstat_{command}:")),
            "{command} reached Redis: {stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_response_is_continued_and_read_on_another_replica() {
    let (_redis, mock, gws) = fleet(2, "  - { name: app, api_key: k-app }").await;
    let one = Chat::at_path(&gws[0].api, "/v1/responses")
        .key("k-app")
        .body(json!({"model": "s", "input": "My name is Ada."}))
        .send()
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    let id = one.json()["id"].as_str().unwrap().to_owned();
    let two = Chat::at_path(&gws[1].api, "/v1/responses")
        .key("k-app")
        .body(json!({"model": "s", "input": "What is my name?", "previous_response_id": id}))
        .send()
        .await;
    assert_eq!(two.status, 200, "{}", two.text);
    assert_eq!(
        mock.last().json()["messages"],
        json!([
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello from the mock upstream, one two three."},
            {"role": "user", "content": "What is my name?"},
        ]),
        "replica B replayed the chain replica A stored"
    );
    let got: Value = get_json(format!("{}/v1/responses/{id}", gws[1].api), "k-app").await;
    assert_eq!(got["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_limit_holds_across_replicas_and_frees_its_slots() {
    let (_redis, mock, gws) =
        fleet(2, "  - { name: app, api_key: k-app, max_concurrency: 2 }").await;
    mock.set(|k| k.latency = Duration::from_millis(600));
    let client = reqwest::Client::new();
    let answers = join_all((0..6).map(|i| {
        ask(&gws[i % 2], "k-app", "s", &format!("slot{i}"))
            .client(&client)
            .send()
    }))
    .await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 2, "two slots for the whole fleet");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(a.status, 429);
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("in flight"),
            "{}",
            a.text
        );
    }
    // Settled slots are free again, on either replica.
    assert_eq!(admin_clients(&gws[0]).await["clients"][0]["inflight"], 0);
    mock.set(|k| k.latency = Duration::ZERO);
    for g in &gws {
        assert_eq!(ask(g, "k-app", "s", "after").send().await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_bigger_than_max_entry_bytes_is_served_but_not_shared() {
    let redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    let yaml = config(
        &redis.url(),
        &mock.url(),
        "  - { name: app, api_key: k-app }",
    )
    .replace("state:", "cache: { max_entry_bytes: 100 }\nstate:");
    let gws = replicas(2, &yaml);
    let first = ask(&gws[0], "k-app", "cached", "a long answer")
        .send()
        .await;
    assert_eq!(first.status, 200);
    // Kept by the replica that made it...
    let again = ask(&gws[0], "k-app", "cached", "a long answer")
        .send()
        .await;
    assert_eq!(again.header("x-gateway-cache"), Some("hit"));
    // ...but not in Redis, so the other replica asks the upstream itself.
    let answers: Vec<String> = redis
        .keys("aigw:c:*")
        .into_iter()
        .filter(|k| !k.ends_with(":lock"))
        .collect();
    assert!(answers.is_empty(), "{answers:?}");
    let other = ask(&gws[1], "k-app", "cached", "a long answer")
        .send()
        .await;
    assert_eq!(other.header("x-gateway-cache"), Some("miss"));
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn clearing_the_cache_on_one_replica_clears_the_shared_entries() {
    let (redis, mock, gws) = fleet(2, "  - { name: app, api_key: k-app }").await;
    for text in ["one", "two"] {
        assert_eq!(
            ask(&gws[0], "k-app", "cached", text).send().await.status,
            200
        );
    }
    let answers = |r: &RedisServer| -> Vec<String> {
        r.keys("aigw:c:*")
            .into_iter()
            .filter(|k| !k.ends_with(":lock"))
            .collect()
    };
    assert_eq!(answers(&redis).len(), 2);
    let cleared: Value = http()
        .delete(format!("{}/admin/cache", gws[0].admin))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 2, "{cleared}");
    assert!(answers(&redis).is_empty());
    let r = ask(&gws[1], "k-app", "cached", "one").send().await;
    assert_eq!(r.header("x-gateway-cache"), Some("miss"));
    assert_eq!(mock.count(), 3);
}
