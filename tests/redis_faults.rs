//! The shared-state backend when Redis fails, with a real redis-server: down at startup, killed
//! mid-traffic and back, slow, and unreachable behind a partition. No request hangs past the
//! command timeout, a fault never fails a request that could be served, `on_error` decides
//! what limits do meanwhile, and operators see it (`/ready`, metrics, one warning).

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::dify::{shared_state_config, MockDify};
use support::process::{spawn, Proc};
use support::redis::{RedisServer, SlowProxy};
use support::*;

fn config(redis: &str, upstream: &str, on_error: &str, rpm: u64) -> String {
    format!(
        r#"
admin:
  api_key: adm
state: {{ backend: redis, url: "{redis}", timeout: 50ms, on_error: {on_error} }}
clients:
  - {{ name: app, api_key: k-app, rpm: {rpm} }}
  - {{ name: free, api_key: k-free }}
providers:
  up: {{ type: openai, base_url: "{upstream}", api_key: sk-up }}
scenarios:
  s:
    cache: {{ ttl: 60s }}
    targets: [{{ provider: up, model: m }}]
"#
    )
}

async fn ask(p: &Proc, key: &str, text: &str) -> (Answer, Duration) {
    let t = Instant::now();
    let a = Chat::at(&p.api)
        .key(key)
        .body(json!({"model": "s", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await;
    (a, t.elapsed())
}

async fn ready(p: &Proc) -> Value {
    let r = http()
        .get(format!("{}/ready", p.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a Redis fault does not take the replica out of service"
    );
    r.json().await.unwrap()
}

/// `/ready`'s `state` once it is `want` (the prober looks every second).
async fn wait_state(p: &Proc, want: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let v = ready(p).await;
        if v["state"] == want || Instant::now() > until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(p: &Proc) -> String {
    http()
        .get(format!("{}/metrics", p.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn errors_of(metrics: &str, op: &str) -> u64 {
    let needle = format!("ai_gateway_state_errors_total{{op=\"{op}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// No request waits much longer than the 50 ms command timeout on a broken Redis; a hang
/// would be seconds (the client's limit is 30 s).
const NO_HANG: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_at_startup_the_gateway_serves_then_shares_once_redis_is_up() {
    let mut redis = RedisServer::start();
    redis.stop();
    let mock = MockOpenAi::start().await;
    let gw = spawn(&config(&redis.url(), &mock.url(), "local", 2), &[]);
    // Per-replica counting meanwhile: the third request of the minute is refused here.
    for i in 0..3 {
        let (a, took) = ask(&gw, "k-app", &format!("d{i}")).await;
        assert!(took < NO_HANG, "request {i} took {took:?}");
        assert_eq!(a.status, if i < 2 { 200 } else { 429 }, "{}", a.text);
    }
    let v = ready(&gw).await;
    assert_eq!(v["state"], "degraded", "{v}");
    let m = metrics(&gw).await;
    assert!(errors_of(&m, "limits_reserve") >= 1, "{m}");
    assert!(errors_of(&m, "cache_get") >= 1, "{m}");

    redis.restart();
    let v = wait_state(&gw, "ok").await;
    assert_eq!(v["state"], "ok", "{v}");
    // Back on Redis: a fresh window there, and the admission is recorded in Redis.
    let (a, _) = ask(&gw, "k-app", "back").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(redis.keys("aigw:{app}:req").len(), 1);
    assert_eq!(mock.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_traffic_no_request_hangs_or_fails_and_one_warning_is_logged() {
    let mut redis = RedisServer::start();
    let mock = MockOpenAi::start().await;
    let gw = spawn(&config(&redis.url(), &mock.url(), "local", 1000), &[]);
    let mut n = 0;
    let mut send = |key: &'static str| {
        n += 1;
        let gw = &gw;
        let text = format!("t{n}");
        async move { ask(gw, key, &text).await }
    };
    for _ in 0..5 {
        let (a, _) = send("k-app").await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(redis.keys("aigw:{app}:req").len(), 1);
    redis.stop();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for key in ["k-app", "k-free"] {
            let (a, took) = send(key).await;
            assert_eq!(a.status, 200, "{}", a.text);
            assert!(
                took < NO_HANG,
                "a request took {took:?} while Redis was down"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready(&gw).await["state"], "degraded");
    let m = metrics(&gw).await;
    assert!(errors_of(&m, "limits_reserve") >= 1, "{m}");
    assert!(errors_of(&m, "cache_put") >= 1, "{m}");
    // Loud, but not a log line per request: one warning in three seconds of failures.
    let log = format!("{}{}", gw.stdout_text(), gw.stderr_text());
    let warnings = log.matches("Redis is unreachable").count();
    assert_eq!(warnings, 1, "{log}");

    redis.restart();
    assert_eq!(wait_state(&gw, "ok").await["state"], "ok");
    let (a, _) = send("k-app").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        redis.keys("aigw:{app}:req").len(),
        1,
        "counting is back in Redis"
    );
    assert!(
        log.contains("Redis") && !log.contains("redis://"),
        "the URL is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_error_closed_refuses_limited_clients_and_serves_the_others() {
    let mut redis = RedisServer::start();
    redis.stop();
    let mock = MockOpenAi::start().await;
    let gw = spawn(&config(&redis.url(), &mock.url(), "closed", 100), &[]);
    let (a, took) = ask(&gw, "k-app", "limited").await;
    assert!(took < NO_HANG);
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.error_code(), "upstream_unavailable");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{}",
        a.text
    );
    assert_eq!(a.header("retry-after"), Some("1"));
    let (a, _) = ask(&gw, "k-free", "unlimited").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(mock.count(), 1);
    let m = metrics(&gw).await;
    assert!(
        m.contains("ai_gateway_rate_limited_total{client=\"app\",limit=\"state\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_error_open_admits_without_counting() {
    let mut redis = RedisServer::start();
    redis.stop();
    let mock = MockOpenAi::start().await;
    let gw = spawn(&config(&redis.url(), &mock.url(), "open", 1), &[]);
    for i in 0..4 {
        let (a, _) = ask(&gw, "k-app", &format!("o{i}")).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text);
    }
    assert_eq!(mock.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_redis_counts_as_down_for_that_command() {
    let redis = RedisServer::start();
    let proxy = SlowProxy::start(redis.port());
    let mock = MockOpenAi::start().await;
    let gw = spawn(&config(&proxy.url(), &mock.url(), "local", 1000), &[]);
    let (a, _) = ask(&gw, "k-app", "fast").await;
    assert_eq!(a.status, 200);
    assert_eq!(ready(&gw).await["state"], "ok");
    // Answers now take 300 ms, six times the 50 ms timeout.
    proxy.set_delay(Duration::from_millis(300));
    for i in 0..4 {
        let (a, took) = ask(&gw, "k-app", &format!("slow{i}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(took < NO_HANG, "{took:?}");
    }
    assert_eq!(ready(&gw).await["state"], "degraded");
    assert!(errors_of(&metrics(&gw).await, "limits_reserve") >= 1);
    // A partition (nothing answers at all) is the same.
    proxy.set_delay(Duration::ZERO);
    proxy.set_blackhole(true);
    for i in 0..3 {
        let (a, took) = ask(&gw, "k-app", &format!("hole{i}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(took < NO_HANG, "{took:?}");
    }
    proxy.set_blackhole(false);
    assert_eq!(wait_state(&gw, "ok").await["state"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_lookup_that_fails_starts_a_new_conversation() {
    let mut redis = RedisServer::start();
    let dify = MockDify::start().await;
    let yaml = shared_state_config(&redis.url(), &dify, "50ms");
    let gw = spawn(&yaml, &[]);
    let turn = |text: &'static str| {
        Chat::at(&gw.api)
            .header("x-gateway-session", "visit-9")
            .body(json!({"model": "chat", "user": "p-1", "messages": [{"role": "user", "content": text}]}))
            .send()
    };
    assert_eq!(turn("one").await.status, 200);
    redis.stop();
    let r = turn("two").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let calls = dify.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].body["conversation_id"], "",
        "a new conversation, not an error"
    );
    let m = metrics(&gw).await;
    assert!(errors_of(&m, "conversation_get") >= 1, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_appears_in_no_log_metric_or_admin_answer() {
    let redis = RedisServer::start();
    redis.cmd(&["CONFIG", "SET", "requirepass", "pa55-w0rd-x"]);
    let mock = MockOpenAi::start().await;
    let url = format!("redis://:pa55-w0rd-x@127.0.0.1:{}/0", redis.port());
    let gw = spawn(&config(&url, &mock.url(), "local", 5), &[]);
    let (a, _) = ask(&gw, "k-app", "auth").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        ready(&gw).await["state"],
        "ok",
        "the password authenticates"
    );
    // A wrong password: degraded, and still nothing printed.
    let bad = format!("redis://:wr0ng-pa55-y@127.0.0.1:{}/0", redis.port());
    let gw2 = spawn(&config(&bad, &mock.url(), "local", 5), &[]);
    let (a, _) = ask(&gw2, "k-app", "auth").await;
    assert_eq!(a.status, 200);
    assert_eq!(ready(&gw2).await["state"], "degraded");
    for (g, secret) in [(&gw, "pa55-w0rd-x"), (&gw2, "wr0ng-pa55-y")] {
        let config: Value = get_json(format!("{}/admin/config", g.admin), "adm").await;
        assert_eq!(
            config["state"]["url"],
            format!("redis://:***@127.0.0.1:{}/0", redis.port())
        );
        let seen = format!(
            "{config}{}{}{}",
            metrics(g).await,
            g.stdout_text(),
            g.stderr_text()
        );
        assert!(!seen.contains(secret), "the password leaked");
    }
}
