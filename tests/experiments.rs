//! Experiments (issue 16, part 2), with the gateway running for real over two mock upstreams,
//! one per variant: the split of 1,000 users, stickiness (repeats, a reload, another gateway
//! process), a weight change that moves only users near the boundary, forced variants, feedback,
//! `/admin/experiments` against the requests counted here, the `variant` metric label and
//! response header (cache hits and errors included), a round-robin rotation per variant, and
//! config mistakes refused by a reload.

mod support;

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use support::client::http;
use support::*;

const ADMIN: &str = "admin-key";

fn config(a: &MockOpenAi, b: &MockOpenAi, weights: (u32, u32)) -> String {
    format!(
        r#"
admin:
  api_key: {ADMIN}
clients:
  - {{ name: app, api_key: app-key }}
  - {{ name: other, api_key: other-key }}
  - {{ name: qa, api_key: qa-key, pick_variant: true }}
providers:
  a: {{ type: openai, base_url: "{a}", api_key: k, retry: {{ attempts: 1 }} }}
  b: {{ type: openai, base_url: "{b}", api_key: k, retry: {{ attempts: 1 }} }}
scenarios:
  plan:
    experiment:
      name: plan-v2
      variants:
        - {{ name: control, weight: {wa}, targets: [{{ provider: a, model: model-a }}] }}
        - {{ name: v2, weight: {wb}, targets: [{{ provider: b, model: model-b }}] }}
  other:
    targets: [{{ provider: a, model: model-other }}]
"#,
        a = a.url(),
        b = b.url(),
        wa = weights.0,
        wb = weights.1,
    )
}

struct Setup {
    a: MockOpenAi,
    b: MockOpenAi,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let a = MockOpenAi::start().await;
    let b = MockOpenAi::start().await;
    let gw = start_gateway(&config(&a, &b, (50, 50)));
    Setup { a, b, gw }
}

fn ask(model: &str, user: Option<&str>) -> Value {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "plan please"}]});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    body
}

/// The variant (`x-gateway-variant`) that answered `user` on `api`.
async fn variant_of(c: &reqwest::Client, api: &str, user: &str) -> String {
    let r = Chat::at(api)
        .client(c)
        .key("app-key")
        .body(ask("plan", Some(user)))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.header("x-gateway-variant").unwrap().to_owned()
}

/// The variant of each of `users`, 16 requests at a time.
async fn variants(api: &str, users: &[String]) -> Vec<String> {
    let c = http();
    stream::iter(users)
        .map(|u| {
            let c = c.clone();
            async move { variant_of(&c, api, u).await }
        })
        .buffered(16)
        .collect()
        .await
}

async fn reload(gw: &TestGateway) -> (u16, Value) {
    let r = http()
        .post(format!("{}/admin/reload", gw.admin))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn rewrite(gw: &TestGateway, f: impl FnOnce(String) -> String) {
    let path = gw.dir.path().join("gateway.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, f(text)).unwrap();
}

async fn admin_experiments(gw: &TestGateway) -> Value {
    get_json(format!("{}/admin/experiments", gw.admin), ADMIN).await
}

async fn feedback(gw: &TestGateway, key: &str, body: Value) -> Answer {
    Chat::at_path(&gw.api, "/v1/feedback")
        .key(key)
        .body(body)
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_users_split_evenly_and_each_upstream_sees_its_variant() {
    let Setup { a, b, gw } = setup().await;
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let got = variants(&gw.api, &users).await;
    let count = |v: &str| got.iter().filter(|g| *g == v).count();
    let (control, v2) = (count("plan-v2/control"), count("plan-v2/v2"));
    assert_eq!(control + v2, 1000, "{got:?}");
    for n in [control, v2] {
        assert!((440..=560).contains(&n), "control {control}, v2 {v2}");
    }
    // Each variant's own upstream, with its own model, served exactly its users.
    assert_eq!(a.count(), control);
    assert_eq!(b.count(), v2);
    assert!(a.received().iter().all(|r| r.json()["model"] == "model-a"));
    assert!(b.received().iter().all(|r| r.json()["model"] == "model-b"));
    // The metrics carry the variant, and agree.
    let m = gw.metrics_with("variant=\"plan-v2/v2\"");
    for (variant, provider, n) in [("control", "a", control), ("v2", "b", v2)] {
        let series = format!(
            r#"ai_gateway_requests_total{{cache="off",endpoint="chat",provider="{provider}",scenario="plan",status="200",variant="plan-v2/{variant}"}} {n}"#
        );
        assert!(m.contains(&series), "missing {series}:\n{m}");
    }
    let e = admin_experiments(&gw).await;
    assert_eq!(e["experiments"][0]["variants"][0]["requests"], control);
    assert_eq!(e["experiments"][0]["variants"][1]["requests"], v2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_keeps_its_variant_across_requests_reloads_and_processes() {
    let Setup { a, b, gw } = setup().await;
    let users: Vec<String> = (0..200).map(|i| format!("sticky-{i}")).collect();
    let first = variants(&gw.api, &users).await;
    assert_eq!(variants(&gw.api, &users).await, first, "repeated requests");

    // A reload that changes something else keeps every assignment.
    rewrite(&gw, |t| t.replace("model-other", "model-other-2"));
    assert_eq!(reload(&gw).await.0, 200);
    assert_eq!(variants(&gw.api, &users).await, first, "after a reload");

    // Another gateway process on the same config assigns the same way, and logs the variant.
    let mut other = support::process::spawn(&config(&a, &b, (50, 50)), &[]);
    assert_eq!(
        variants(&other.api, &users).await,
        first,
        "in another process"
    );
    other.signal("TERM");
    tokio::task::block_in_place(|| other.wait(std::time::Duration::from_secs(10)));
    let log = other.stdout_text();
    assert!(
        log.contains(r#""scenario":"plan","variant":"plan-v2/control""#)
            && log.contains(r#""variant":"plan-v2/v2""#),
        "{log}"
    );

    // 50/50 → 60/40: no control user leaves; some v2 users (those near the boundary) move.
    rewrite(&gw, |t| {
        t.replace(
            "weight: 50, targets: [{ provider: a",
            "weight: 60, targets: [{ provider: a",
        )
        .replace(
            "weight: 50, targets: [{ provider: b",
            "weight: 40, targets: [{ provider: b",
        )
    });
    assert_eq!(reload(&gw).await.0, 200);
    let after = variants(&gw.api, &users).await;
    let mut moved = 0;
    for (before, now) in first.iter().zip(&after) {
        if before == "plan-v2/control" {
            assert_eq!(now, before, "a user of the growing variant moved out");
        } else if now != before {
            moved += 1;
        }
    }
    let v2_before = first.iter().filter(|v| *v == "plan-v2/v2").count();
    assert!(
        moved > 0 && moved < v2_before / 2,
        "moved {moved} of {v2_before}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_pick_variant_clients_may_force_a_variant() {
    let Setup { a, b, gw } = setup().await;
    let send = |key: &'static str, model: &'static str, forced: &'static str| {
        Chat::at(&gw.api)
            .key(key)
            .header("x-gateway-variant", forced)
            .body(ask(model, Some("u-forced")))
            .send()
    };
    // Allowed: every request goes where QA asked.
    for (forced, mock) in [("v2", &b), ("control", &a), ("v2", &b)] {
        let before = mock.count();
        let r = send("qa-key", "plan", forced).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let want = format!("plan-v2/{forced}");
        assert_eq!(r.header("x-gateway-variant"), Some(want.as_str()));
        assert_eq!(mock.count(), before + 1);
    }
    // An unknown variant names the valid ones.
    let r = send("qa-key", "plan", "v3").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "unknown_variant")
    );
    assert!(r.text.contains("valid: control, v2"), "{}", r.text);
    // Any other client is refused, on any scenario, before an upstream is called.
    let before = a.count() + b.count();
    for model in ["plan", "other"] {
        let r = send("app-key", model, "v2").await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.json()["error"]["type"], "permission_error");
        assert_eq!(r.error_code(), "variant_forbidden");
    }
    assert_eq!(a.count() + b.count(), before);
    // On a scenario without an experiment, an allowed client's header is ignored.
    let r = send("qa-key", "other", "v2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-gateway-variant"), None);
    // The Anthropic door refuses in Anthropic's shape.
    let r = Chat::at_path(&gw.api, "/v1/messages")
        .key("app-key")
        .header("x-gateway-variant", "v2")
        .body(json!({"model": "plan", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    // …and serves an experiment like the OpenAI door.
    let r = Chat::at_path(&gw.api, "/v1/messages")
        .key("app-key")
        .body(json!({"model": "plan", "max_tokens": 20, "metadata": {"user_id": "u-forced"}, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("x-gateway-variant").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_is_attributed_to_the_variant_of_its_request() {
    let Setup { gw, .. } = setup().await;
    let r = chat(&gw)
        .key("app-key")
        .body(ask("plan", Some("fb-user")))
        .send()
        .await;
    let id = r.header("x-request-id").unwrap().to_owned();
    let variant = r.header("x-gateway-variant").unwrap().to_owned();
    // Another client's key does not find it.
    let f = feedback(&gw, "other-key", json!({"request_id": id, "score": 1})).await;
    assert_eq!(
        (f.status, f.error_code().as_str()),
        (404, "request_not_found")
    );
    // Bad bodies name the field.
    for (body, param) in [
        (json!({"request_id": id, "score": 2}), "score"),
        (json!({"request_id": id}), "score"),
        (json!({"score": 0.5}), "request_id"),
        (
            json!({"request_id": id, "score": 0.5, "comment": "x".repeat(2001)}),
            "comment",
        ),
    ] {
        let f = feedback(&gw, "app-key", body).await;
        assert_eq!(f.status, 400, "{}", f.text);
        assert_eq!(f.json()["error"]["param"], param);
    }
    let f = feedback(
        &gw,
        "app-key",
        json!({"request_id": id, "score": -0.5, "comment": "too long a plan"}),
    )
    .await;
    assert_eq!(f.status, 200, "{}", f.text);
    assert_eq!(
        f.json(),
        json!({"ok": true, "request_id": id, "scenario": "plan", "variant": variant})
    );
    // One piece of feedback per answer; unknown ids and non-experiment requests are 404s.
    let again = feedback(&gw, "app-key", json!({"request_id": id, "score": 1})).await;
    assert_eq!(again.status, 404);
    let unknown = feedback(&gw, "app-key", json!({"request_id": "nope", "score": 1})).await;
    assert_eq!(unknown.status, 404);
    let plain = chat(&gw)
        .key("app-key")
        .body(ask("other", None))
        .send()
        .await;
    let plain_id = plain.header("x-request-id").unwrap();
    let f = feedback(&gw, "app-key", json!({"request_id": plain_id, "score": 1})).await;
    assert_eq!(f.status, 404);

    let m = gw.metrics();
    for series in [
        format!(r#"ai_gateway_feedback_total{{scenario="plan",variant="{variant}"}} 1"#),
        format!(r#"ai_gateway_feedback_score_sum{{scenario="plan",variant="{variant}"}} -0.5"#),
        // Outside experiments the label is empty.
        r#"ai_gateway_requests_total{cache="off",endpoint="chat",provider="a",scenario="other",status="200",variant=""} 1"#.to_owned(),
    ] {
        assert!(m.contains(&series), "missing {series}:\n{m}");
    }
    let e = admin_experiments(&gw).await;
    let row = e["experiments"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| format!("plan-v2/{}", v["name"].as_str().unwrap()) == variant)
        .cloned()
        .unwrap();
    assert_eq!(
        (row["feedback_count"].clone(), row["mean_score"].clone()),
        (json!(1), json!(-0.5))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_experiments_figures_equal_the_requests_counted() {
    let Setup { a, b, gw } = setup().await;
    // The second variant's upstream fails: its answers are errors.
    b.set(|k| k.status = 500);
    let c = http();
    let mut counted: HashMap<String, (u64, u64, u64, u64)> = HashMap::new();
    let mut ids: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..60 {
        let r = Chat::at(&gw.api)
            .client(&c)
            .key("app-key")
            .body(ask("plan", Some(&format!("stats-{i}"))))
            .send()
            .await;
        let v = r.header("x-gateway-variant").unwrap().to_owned();
        let e = counted.entry(v.clone()).or_default();
        e.0 += 1;
        if r.status >= 500 {
            e.1 += 1;
        } else {
            let usage = &r.json()["usage"];
            e.2 += usage["prompt_tokens"].as_u64().unwrap();
            e.3 += usage["completion_tokens"].as_u64().unwrap();
        }
        ids.entry(v)
            .or_default()
            .push(r.header("x-request-id").unwrap().to_owned());
    }
    let scores = [
        ("plan-v2/control", [1.0, 0.5, 1.0]),
        ("plan-v2/v2", [-1.0, 0.0, -0.5]),
    ];
    for (variant, values) in scores {
        for (id, s) in ids[variant].iter().zip(values) {
            let f = feedback(&gw, "app-key", json!({"request_id": id, "score": s})).await;
            assert_eq!(f.status, 200, "{}", f.text);
        }
    }
    let _ = gw.metrics_with("ai_gateway_feedback_total");
    let e = admin_experiments(&gw).await;
    assert_eq!(e["tests"]["error_rate"], "two-proportion z-test");
    assert_eq!(e["tests"]["score"], "Welch t-test");
    let exp = &e["experiments"][0];
    assert_eq!(
        (
            exp["scenario"].as_str(),
            exp["name"].as_str(),
            exp["sticky"].as_str()
        ),
        (Some("plan"), Some("plan-v2"), Some("user"))
    );
    for (i, (variant, values)) in scores.iter().enumerate() {
        let row = &exp["variants"][i];
        let (n, errors, prompt, completion) = counted[*variant];
        assert_eq!(
            format!("plan-v2/{}", row["name"].as_str().unwrap()),
            *variant
        );
        assert_eq!(row["weight"], 50.0);
        assert_eq!(row["requests"], n, "{row}");
        assert_eq!(row["errors"], errors, "{row}");
        assert_eq!(
            row["error_rate"].as_f64().unwrap(),
            errors as f64 / n as f64
        );
        assert_eq!(
            row["tokens"],
            json!({"prompt": prompt, "completion": completion})
        );
        assert_eq!(row["feedback_count"], 3);
        let mean = values.iter().sum::<f64>() / 3.0;
        assert!(
            (row["mean_score"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{row}"
        );
        assert!(
            row["latency_p50_seconds"].as_f64().unwrap()
                <= row["latency_p95_seconds"].as_f64().unwrap()
        );
        if i == 0 {
            assert_eq!(errors, 0);
            assert!(row["ttft_p95_seconds"].as_f64().is_some(), "{row}");
            assert!(row["p_value_error_rate"].is_null() && row["p_value_score"].is_null());
        } else {
            assert_eq!(errors, n, "every v2 answer failed");
            for k in ["p_value_error_rate", "p_value_score"] {
                let p = row[k].as_f64().unwrap_or_else(|| panic!("{k}: {row}"));
                assert!((0.0..=1.0).contains(&p), "{k} {p}");
            }
            assert!(row["p_value_error_rate"].as_f64().unwrap() < 0.001);
        }
    }
    assert_eq!(a.count() as u64, counted["plan-v2/control"].0);
}

#[tokio::test(flavor = "multi_thread")]
async fn experiment_mistakes_are_refused_by_a_reload_naming_the_scenario() {
    let Setup { gw, .. } = setup().await;
    let good = std::fs::read_to_string(gw.dir.path().join("gateway.yaml")).unwrap();
    for (edit, want) in [
        (
            // Both targets and an experiment.
            good.replace(
                "  plan:\n    experiment:",
                "  plan:\n    targets: [{ provider: a }]\n    experiment:",
            ),
            "scenarios.plan: error: set `targets` or `experiment`, not both",
        ),
        (
            // One variant.
            good.replace(
                "        - { name: v2, weight: 50, targets: [{ provider: b, model: model-b }] }\n",
                "",
            ),
            "scenarios.plan.experiment.variants: error: an experiment needs at least two variants",
        ),
        (
            // Two variants of one name.
            good.replace("name: v2,", "name: control,"),
            "scenarios.plan.experiment.variants[1].name: error: variant \"control\" is listed twice",
        ),
        (
            // One experiment name in two scenarios.
            good.replace(
                "  other:\n    targets: [{ provider: a, model: model-other }]",
                "  other:\n    experiment: { name: plan-v2, variants: [{ name: x, weight: 1, targets: [{ provider: a }] }, { name: y, weight: 1, targets: [{ provider: b }] }] }",
            ),
            "scenarios.other.experiment.name: error: experiment \"plan-v2\" is already used by scenario \"plan\"",
        ),
    ] {
        std::fs::write(gw.dir.path().join("gateway.yaml"), &edit).unwrap();
        let (status, body) = reload(&gw).await;
        assert_eq!(status, 400, "{body}");
        let errors: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let errors = errors.join("\n");
        assert!(errors.contains(want), "missing {want:?} in {errors}");
    }
    // The running config is untouched.
    let r = chat(&gw)
        .key("app-key")
        .body(ask("plan", Some("u")))
        .send()
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_of_an_experiment_names_its_variant_hits_and_errors_included() {
    let a = MockOpenAi::start().await;
    let b = MockOpenAi::start().await;
    b.set(|k| k.status = 503);
    let yaml = config(&a, &b, (50, 50)).replace(
        "  plan:\n    experiment:",
        "  plan:\n    cache: { ttl: 60s }\n    experiment:",
    );
    let gw = start_gateway(&yaml);
    let send = |forced: &'static str| {
        Chat::at(&gw.api)
            .key("qa-key")
            .header("x-gateway-variant", forced)
            .body(ask("plan", Some("same")))
            .send()
    };
    let miss = send("control").await;
    let hit = send("control").await;
    let failed = send("v2").await;
    for (r, status, cache, variant) in [
        (&miss, 200, "miss", "plan-v2/control"),
        (&hit, 200, "hit", "plan-v2/control"),
        (&failed, 502, "miss", "plan-v2/v2"),
    ] {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.header("x-gateway-cache"), Some(cache));
        assert_eq!(r.header("x-gateway-variant"), Some(variant));
    }
    assert_eq!(a.count(), 1, "the hit came from the cache");
    // Each variant has its own cache entries: v2 did not get control's answer.
    assert_eq!(b.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_variant_has_its_own_round_robin_rotation() {
    let a = MockOpenAi::start().await;
    let b = MockOpenAi::start().await;
    let yaml = config(&a, &b, (50, 50))
        .replace(
            "name: control, weight: 50, targets: [{ provider: a, model: model-a }]",
            "name: control, weight: 50, strategy: round_robin, targets: [{ provider: a }, { provider: b }]",
        )
        .replace(
            "name: v2, weight: 50, targets: [{ provider: b, model: model-b }]",
            "name: v2, weight: 50, strategy: round_robin, targets: [{ provider: a }, { provider: b }]",
        );
    let gw = start_gateway(&yaml);
    let mut control = Vec::new();
    for forced in ["control", "v2", "control", "v2"] {
        let r = Chat::at(&gw.api)
            .key("qa-key")
            .header("x-gateway-variant", forced)
            .body(ask("plan", None))
            .send()
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        if forced == "control" {
            control.push(r.header("x-gateway-provider").unwrap().to_owned());
        }
    }
    // A rotation shared with v2 would have given control the same target twice.
    assert_eq!(control, ["a", "b"]);
}
