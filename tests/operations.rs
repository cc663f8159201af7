//! Operations through the real gateway: hot reload from file edits (in place, rename-over and a
//! ConfigMap-style symlink swap) under steady load, broken edits, state kept across reloads,
//! `/admin/config` redaction and the access log.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A config routing scenario `s` to the mock at `url` (listeners on the given ports).
fn yaml(api: u16, admin: u16, url: &str, prompt: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:{api}
admin:
  listen: 127.0.0.1:{admin}
  api_key: admin-key
providers:
  up: {{ type: openai, base_url: "{url}", api_key: key-up, timeouts: {{ connect: 500ms, first_token: 2s, idle: 2s }} }}
scenarios:
  s:
    targets:
      - {{ provider: up, model: m, system_prompt: "{prompt}" }}
"#
    )
}

/// Clients that keep asking (stream and non-stream, alternately) until stopped, and check that
/// every answer is complete: 200, the mock's text, and `[DONE]` at the end of every stream.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<parking_lot::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(api: &str, workers: usize, expect: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|w| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let api = api.to_owned();
                let expect = expect.to_owned();
                tokio::spawn(async move {
                    let c = http();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let stream = i % 2 == 0;
                        let body = json!({"model": "s", "stream": stream, "messages": [{"role": "user", "content": format!("q{i}")}]});
                        let verdict = match Chat::at(&api).client(&c).body(body).try_send_raw().await {
                            Err(e) => Err(format!("send: {e}")),
                            Ok(r) => {
                                let status = r.status().as_u16();
                                match r.text().await {
                                    Err(e) => Err(format!("body: {e}")),
                                    Ok(text) if status != 200 => Err(format!("{status}: {text}")),
                                    Ok(text) if stream => {
                                        let data = sse_data(&text);
                                        let content: String = data
                                            .iter()
                                            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                                            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
                                            .collect();
                                        if data.last().map(String::as_str) == Some("[DONE]") && content == expect {
                                            Ok(())
                                        } else {
                                            Err(format!("incomplete stream: {text}"))
                                        }
                                    }
                                    Ok(text) => {
                                        let v: Value = serde_json::from_str(&text).unwrap_or_default();
                                        if v["choices"][0]["message"]["content"] == expect.as_str() {
                                            Ok(())
                                        } else {
                                            Err(format!("bad answer: {text}"))
                                        }
                                    }
                                }
                            }
                        };
                        match verdict {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.lock().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the clients and asserts that every answer was complete.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let (ok, failed) = (self.ok.load(Ordering::Relaxed), self.failed.lock().clone());
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(ok > 50, "only {ok} requests completed");
    }
}

/// Waits until `to` receives traffic after an edit made at `t0`; returns how long that took.
async fn switched(to: &MockOpenAi, from: &MockOpenAi, t0: Instant) -> Duration {
    let before = to.count();
    let until = t0 + Duration::from_secs(5);
    while to.count() == before {
        assert!(Instant::now() < until, "routing did not change within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed();
    // Requests already in flight on the old config may still land on `from`; after that, none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = from.count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(from.count(), settled, "the old upstream still gets traffic");
    took
}

async fn metric(gw: &TestGateway, name: &str) -> String {
    let text = http()
        .get(format!("{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn slow_mock() -> MockOpenAi {
    // Streams take ~60 ms, so edits always land while streams are open.
    MockOpenAi::start_with(Knobs {
        chunks: 4,
        chunk_interval: Duration::from_millis(15),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_edits_reroute_within_two_seconds_under_load_without_failures() {
    let a = slow_mock().await;
    let b = slow_mock().await;
    let expect = Knobs::default().content;

    // 1 and 2: a plain file, written in place and then replaced by rename (how editors save).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let (api, admin) = free_ports();
    std::fs::write(&path, yaml(api, admin, &a.url(), "one")).unwrap();
    let gw = start_watching(&path, dir);
    let load = Load::start(&gw.api, 6, &expect);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    std::fs::write(&path, yaml(api, admin, &b.url(), "two")).unwrap();
    let in_place = switched(&b, &a, t0).await;

    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, yaml(api, admin, &a.url(), "three")).unwrap();
    let t0 = Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    let renamed = switched(&a, &b, t0).await;

    load.finish().await;
    assert!(metric(&gw, "ai_gateway_config_generation")
        .await
        .ends_with(" 3"));
    assert!(
        metric(&gw, "ai_gateway_config_reloads_total{result=\"ok\"}")
            .await
            .ends_with(" 2")
    );
    drop(gw);

    // 3: a Kubernetes ConfigMap volume: gateway.yaml -> ..data/gateway.yaml, ..data -> ..v1;
    // the kubelet writes ..v2 and renames a new ..data link over the old one.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (api, admin) = free_ports();
    let version = |name: &str, url: &str, prompt: &str| {
        let v = root.join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("gateway.yaml"), yaml(api, admin, url, prompt)).unwrap();
    };
    version("..v1", &a.url(), "one");
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", root.join("gateway.yaml")).unwrap();
    let gw = start_watching(&root.join("gateway.yaml"), dir);
    let load = Load::start(&gw.api, 6, &expect);
    tokio::time::sleep(Duration::from_millis(300)).await;

    version("..v2", &b.url(), "two");
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    let t0 = Instant::now();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    let swapped = switched(&b, &a, t0).await;

    // An edit in place behind the link is seen too.
    let t0 = Instant::now();
    std::fs::write(
        root.join("..v2/gateway.yaml"),
        yaml(api, admin, &a.url(), "three"),
    )
    .unwrap();
    let behind = switched(&a, &b, t0).await;

    load.finish().await;
    for (how, took) in [
        ("in-place edit", in_place),
        ("rename-over", renamed),
        ("symlink swap", swapped),
        ("edit behind the link", behind),
    ] {
        assert!(took < Duration::from_secs(2), "{how} took {took:?}");
    }
    eprintln!("reload latency: in place {in_place:?}, rename {renamed:?}, symlink swap {swapped:?}, behind link {behind:?}");
}

async fn reload(gw: &TestGateway) -> (u16, Value) {
    let r = http()
        .post(format!("{}/admin/reload", gw.admin))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn served_by(gw: &TestGateway, a: &MockOpenAi) -> bool {
    let before = a.count();
    let r = chat(gw)
        .body(json!({"model": "s", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    r.status == 200 && a.count() == before + 1
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_edits_keep_the_old_config_and_report_file_line_column() {
    let a = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let (api, admin) = free_ports();
    let good = yaml(api, admin, &a.url(), "one");
    std::fs::write(&path, &good).unwrap();
    let gw = start_watching(&path, dir);
    assert!(served_by(&gw, &a).await);

    // A YAML syntax error, picked up by the watcher: counted, old config serving.
    std::fs::write(
        &path,
        good.replace("scenarios:\n", "scenarios:\n  s: [unclosed\n"),
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while !metric(&gw, "ai_gateway_config_reloads_total{result=\"error\"}")
        .await
        .ends_with(" 1")
    {
        assert!(Instant::now() < until, "the broken edit was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served_by(&gw, &a).await);
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_config");
    let errors: Vec<String> = serde_json::from_value(body["errors"].clone()).unwrap();
    let file = path.display().to_string();
    let positioned = |e: &String| {
        let rest = e.strip_prefix(&format!("{file}:")).unwrap_or("");
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_digit())
            && !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_digit())
    };
    assert!(
        errors.iter().any(positioned),
        "no file:line:column in {errors:?}"
    );

    // An unknown provider: a semantic error, with the position of the offending value.
    let unknown = good.replace("- { provider: up,", "- { provider: nope,");
    std::fs::write(&path, &unknown).unwrap();
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 400);
    let errors: Vec<String> = serde_json::from_value(body["errors"].clone()).unwrap();
    let line = unknown
        .lines()
        .position(|l| l.contains("provider: nope"))
        .unwrap()
        + 1;
    let col = unknown.lines().nth(line - 1).unwrap().find("nope").unwrap() + 1;
    let want = format!("{file}:{line}:{col}: scenarios.s.targets[0].provider: error:");
    assert!(
        errors.iter().any(|e| e.starts_with(&want)),
        "want {want}, got {errors:?}"
    );
    assert!(served_by(&gw, &a).await);
    assert!(metric(&gw, "ai_gateway_config_generation")
        .await
        .ends_with(" 1"));
    let errs = metric(&gw, "ai_gateway_config_reloads_total{result=\"error\"}").await;
    let n: u64 = errs.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3, "{errs}");

    // Fixing the file brings the next generation.
    std::fs::write(&path, &good).unwrap();
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_required"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_state_survives_a_reload_for_unchanged_targets_only() {
    let a = MockOpenAi::start_with(Knobs {
        status: 503,
        ..Default::default()
    })
    .await;
    let b = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let (api, admin) = free_ports();
    let text = |prompt: &str, a_url: &str| {
        format!(
            r#"listen: 127.0.0.1:{api}
admin:
  listen: 127.0.0.1:{admin}
  api_key: admin-key
providers:
  a: {{ type: openai, base_url: "{a_url}", api_key: k, breaker: {{ failure_threshold: 1, open_for: 60s }} }}
  b: {{ type: openai, base_url: "{b}", api_key: k }}
scenarios:
  s:
    targets:
      - {{ provider: a, model: m }}
      - {{ provider: b, model: m, system_prompt: "{prompt}" }}
"#,
            b = b.url()
        )
    };
    std::fs::write(&path, text("one", &a.url())).unwrap();
    let gw = start_gateway_from_path(&path, dir);
    assert!(served_by(&gw, &b).await);
    let breaker = |v: &Value, target: &str| {
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == target)
            .map(|t| t["breaker"].as_str().unwrap().to_owned())
    };
    let providers =
        || async { get_json(format!("{}/admin/providers", gw.admin), "admin-key").await };
    assert_eq!(breaker(&providers().await, "a/m").as_deref(), Some("open"));

    // Another target's prompt changes: a's breaker stays open and a gets no traffic.
    std::fs::write(&path, text("two", &a.url())).unwrap();
    assert_eq!(reload(&gw).await.0, 200);
    assert_eq!(breaker(&providers().await, "a/m").as_deref(), Some("open"));
    let before = a.count();
    assert!(served_by(&gw, &b).await);
    assert_eq!(a.count(), before, "an open breaker was reset by the reload");

    // a now points at a healthy upstream: a new endpoint starts with a fresh, closed breaker,
    // listed at once (every configured target is, before any traffic).
    std::fs::write(&path, text("two", &b.url())).unwrap();
    assert_eq!(reload(&gw).await.0, 200);
    let fresh = providers().await;
    assert_eq!(
        breaker(&fresh, "a/m").as_deref(),
        Some("closed"),
        "the old endpoint's state is gone"
    );
    let a_state = fresh["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "a/m")
        .cloned()
        .unwrap();
    assert_eq!(a_state["samples"], 0, "{a_state}");
    assert!(a_state["last_error"].is_null(), "{a_state}");
    assert!(served_by(&gw, &b).await);
    assert_eq!(
        breaker(&providers().await, "a/m").as_deref(),
        Some("closed")
    );
    let metrics = metric(&gw, "ai_gateway_circuit_state").await;
    assert!(
        metrics.contains("ai_gateway_circuit_state{provider=\"a\",target=\"m\"} 0"),
        "{metrics}"
    );
}

fn start_gateway_from_path(path: &Path, dir: tempfile::TempDir) -> TestGateway {
    let config = ai_gateway::config::Config::load(path).unwrap();
    let gw = ai_gateway::RunningGateway::start(config).unwrap();
    TestGateway {
        api: format!("http://{}", gw.api_addr),
        admin: format!("http://{}", gw.admin_addr),
        gw,
        dir,
    }
}

fn python() -> std::path::PathBuf {
    let candidate = std::env::var_os("AI_GATEWAY_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = std::process::Command::new(&candidate)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with prometheus_client at {}: run scripts/test.sh (it creates .venv), or set AI_GATEWAY_PYTHON",
        candidate.display()
    );
    candidate
}

/// The reference parser's view of an exposition: family → (type, samples).
fn parse_exposition(text: &str) -> Value {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/metrics_parse.py");
    let mut child = std::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the exposition does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_every_contract_series_with_its_labels_after_a_mixed_workload() {
    let down = MockOpenAi::start_with(Knobs {
        status: 503,
        ..Default::default()
    })
    .await;
    let up = MockOpenAi::start().await;
    let gw = start_gateway(&format!(
        r#"admin:
  api_key: admin-key
clients:
  - {{ name: app, api_key: app-key }}
  - {{ name: batch, api_key: batch-key, rpm: 1 }}
providers:
  down: {{ type: openai, base_url: "{down}", api_key: k, breaker: {{ failure_threshold: 1, open_for: 60s }} }}
  up: {{ type: openai, base_url: "{up}", api_key: k }}
scenarios:
  chat:
    targets:
      - {{ provider: down, model: m1 }}
      - {{ provider: up, model: m2, cost: {{ input: 1.5, output: 2 }} }}
    cache: {{ ttl: 60s }}
"#,
        down = down.url(),
        up = up.url()
    ));
    let c = http();
    let ask = |key: &'static str, stream: bool, text: &'static str| {
        let request = chat(&gw).client(&c).key(key).body(json!({"model": "chat", "stream": stream, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": text}]}));
        async move { request.send().await.status }
    };
    assert_eq!(ask("app-key", false, "one").await, 200); // fallback down → up; miss
    assert_eq!(ask("app-key", true, "two").await, 200); // stream; breaker open skips down
    assert_eq!(ask("app-key", false, "one").await, 200); // cache hit
    assert_eq!(ask("batch-key", false, "three").await, 200);
    assert_eq!(ask("batch-key", false, "four").await, 429); // rpm
    assert_eq!(reload(&gw).await.0, 200);
    let text = gw.metrics_with("ai_gateway_spend_usd_total{client=\"batch\"");
    let families = parse_exposition(&text);

    // (family, type, label names of its samples, one sample that must be present)
    let expect: &[(&str, &str, &[&str], &str)] = &[
        (
            "ai_gateway_requests",
            "counter",
            &[
                "cache", "endpoint", "provider", "scenario", "status", "variant",
            ],
            r#"{"cache":"hit","endpoint":"chat","provider":"-","scenario":"chat","status":"200","variant":""}"#,
        ),
        (
            "ai_gateway_request_duration_seconds",
            "histogram",
            &["endpoint", "provider", "scenario", "variant"],
            r#"{"endpoint":"chat","provider":"up","scenario":"chat"}"#,
        ),
        (
            "ai_gateway_time_to_first_token_seconds",
            "histogram",
            &["endpoint", "provider", "scenario", "variant"],
            r#"{"endpoint":"chat","provider":"up","scenario":"chat"}"#,
        ),
        (
            "ai_gateway_overhead_seconds",
            "histogram",
            &["endpoint", "scenario"],
            r#"{"endpoint":"chat","scenario":"chat"}"#,
        ),
        (
            "ai_gateway_tokens",
            "counter",
            &["endpoint", "kind", "provider", "scenario", "variant"],
            r#"{"endpoint":"chat","kind":"completion","provider":"up","scenario":"chat"}"#,
        ),
        (
            "ai_gateway_upstream_attempts",
            "counter",
            &["outcome", "provider"],
            r#"{"outcome":"status_5xx","provider":"down"}"#,
        ),
        (
            "ai_gateway_fallbacks",
            "counter",
            &["from", "scenario", "to"],
            r#"{"from":"down","scenario":"chat","to":"up"}"#,
        ),
        (
            "ai_gateway_circuit_state",
            "gauge",
            &["provider", "target"],
            r#"{"provider":"down","target":"m1"}"#,
        ),
        (
            "ai_gateway_inflight_requests",
            "gauge",
            &["provider"],
            r#"{"provider":"up"}"#,
        ),
        (
            "ai_gateway_cache_lookups",
            "counter",
            &["result", "scenario"],
            r#"{"result":"hit","scenario":"chat"}"#,
        ),
        ("ai_gateway_cache_entries", "gauge", &[], "{}"),
        ("ai_gateway_cache_bytes", "gauge", &[], "{}"),
        (
            "ai_gateway_rate_limited",
            "counter",
            &["client", "limit"],
            r#"{"client":"batch","limit":"rpm"}"#,
        ),
        (
            "ai_gateway_spend_usd",
            "counter",
            &["client", "endpoint", "provider", "scenario", "variant"],
            r#"{"client":"app","endpoint":"chat","provider":"up","scenario":"chat"}"#,
        ),
        (
            "ai_gateway_config_reloads",
            "counter",
            &["result"],
            r#"{"result":"ok"}"#,
        ),
        ("ai_gateway_config_generation", "gauge", &[], "{}"),
    ];
    for (family, kind, labels, sample) in expect {
        let f = &families[*family];
        assert_eq!(f["type"], *kind, "{family}: {f}");
        let samples = f["samples"].as_array().unwrap();
        assert!(!samples.is_empty(), "{family} has no samples");
        for s in samples {
            let mut names: Vec<&str> = s["labels"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "le")
                .collect();
            names.sort();
            assert_eq!(&names, labels, "{family}: {s}");
        }
        let want: Value = serde_json::from_str(sample).unwrap();
        let found = samples.iter().any(|s| {
            want.as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &s["labels"][k] == v)
        });
        assert!(found, "{family}: no sample with {sample}: {f}");
    }
    // Histograms use LLM-scale buckets: from milliseconds to minutes.
    let les: Vec<f64> = families["ai_gateway_request_duration_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["labels"]["le"].as_str().and_then(|l| l.parse().ok()))
        .collect();
    assert!(
        les.iter().any(|l| *l <= 0.01) && les.iter().any(|l| *l >= 120.0),
        "{les:?}"
    );
    // Values add up: 5 answered requests (4 × 200, 1 × 429), 1 hit, spend charged.
    let total: f64 = families["ai_gateway_requests"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert_eq!(total, 5.0);
    // No client-supplied or unconfigured strings become labels.
    assert!(!text.contains("one") || !text.contains("\"one\""));
    for s in families
        .as_object()
        .unwrap()
        .values()
        .flat_map(|f| f["samples"].as_array().unwrap())
    {
        for v in s["labels"].as_object().unwrap().values() {
            let v = v.as_str().unwrap();
            assert!(
                !["one", "two", "three", "four", "app-key", "batch-key"].contains(&v),
                "label value {v}"
            );
        }
    }
}
