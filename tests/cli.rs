//! The `ai-gateway` binary as an operator uses it: `--check` and running the shipped config.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ai-gateway");

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml")
}

/// The variables the shipped file reads; cleared so the test sees a fresh machine.
const VARS: [&str; 10] = [
    "GATEWAY_LISTEN",
    "GATEWAY_ADMIN_LISTEN",
    "GATEWAY_ADMIN_KEY",
    "DIFY_API_BASE_URL",
    "DIFY_CHAT_API_KEY",
    "DIFY_BEAUTY_API_KEY",
    "DIFY_SUMMARY_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
    "OPENAI_BASE_URL",
];

fn gateway_cmd() -> Command {
    let mut c = Command::new(BIN);
    for v in VARS {
        c.env_remove(v);
    }
    c
}

#[test]
fn check_accepts_the_shipped_file() {
    let out = gateway_cmd()
        .args(["--check", "-c"])
        .arg(shipped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (5 scenarios"));
    // With no keys set, every provider is reported as skipped, as a warning.
    assert!(
        stderr.contains("providers.openai.api_key: warning"),
        "{stderr}"
    );
}

#[test]
fn check_reports_unknown_keys_with_position_and_every_semantic_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "providers:\n  p:\n    type: openai\n    base_url: http://127.0.0.1:1/v1\n    api_key: k\n    timout: 3s\nscenarios:\n  s: { targets: [{ provider: p }] }\n",
    )
    .unwrap();
    let out = gateway_cmd()
        .args(["--check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6:5: error: providers.p.timout: unknown field `timout`",
            bad.display()
        )),
        "{stderr}"
    );

    let semantic = dir.path().join("semantic.yaml");
    std::fs::write(
        &semantic,
        r#"
providers:
  p: { type: openai, base_url: "http://127.0.0.1:1/v1", api_key: k }
scenarios:
  a: { models: [shared], strategy: weighted, targets: [{ provider: p }] }
  b: { models: [shared], strategy: cost, targets: [{ provider: nope }] }
default_scenario: c
"#,
    )
    .unwrap();
    let out = gateway_cmd()
        .args(["--check", "-c"])
        .arg(&semantic)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "scenarios.a.strategy: error: weighted needs a `weight` on every target",
        "scenarios.b.models: error: alias \"shared\" is already used by scenario \"a\"",
        "scenarios.b.targets[0].provider: error: unknown provider \"nope\"",
        "scenarios.b.strategy: error: cost needs a `cost",
        "default_scenario: error: unknown scenario \"c\"",
        "5 error(s)",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    let out = gateway_cmd()
        .args(["--check", "-c", "/nonexistent/gateway.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn check_validates_the_redis_url_without_printing_its_password_or_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, url: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "state: {{ backend: redis, url: \"{url}\" }}\nproviders:\n  m: {{ type: mock }}\nscenarios:\n  s: {{ targets: [{{ provider: m }}] }}\n"
            ),
        )
        .unwrap();
        path
    };
    // Nothing listens on port 1: `--check` does not connect, so a Redis that is down is fine.
    let good = write("good.yaml", "redis://:s3cr3t-pw@127.0.0.1:1/0");
    let out = gateway_cmd()
        .args(["--check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, url) in [
        ("scheme.yaml", "http://:s3cr3t-pw@127.0.0.1:6379/0"),
        ("port.yaml", "redis://:s3cr3t-pw@127.0.0.1:port/0"),
    ] {
        let out = gateway_cmd()
            .args(["--check", "-c"])
            .arg(write(name, url))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} passed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("state.url: error"), "{name}: {text}");
        assert!(
            !text.contains("s3cr3t-pw"),
            "{name} printed the password: {text}"
        );
    }
}

fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match reqwest::get(url).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    })
}

#[test]
fn the_binary_runs_the_shipped_config_with_no_variables_set() {
    let (api, admin) = support::free_ports();
    let mut child = gateway_cmd()
        .arg("-c")
        .arg(shipped())
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{api}"))
        .env("GATEWAY_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while get(&format!("http://127.0.0.1:{api}/health")).0 != 200 {
        assert!(Instant::now() < until, "gateway did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, models) = get(&format!("http://127.0.0.1:{api}/v1/models"));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for s in [
        "general_chat",
        "beauty_plan",
        "sentiment",
        "consultation_summary",
    ] {
        assert!(ids.contains(&s), "{s} missing from {ids:?}");
    }
    let (status, ready) = get(&format!("http://127.0.0.1:{admin}/ready"));
    assert_eq!(status, 503, "no keys set: nothing can serve yet ({ready})");
    let (status, metrics) = get(&format!("http://127.0.0.1:{admin}/metrics"));
    assert_eq!(status, 200);
    assert!(metrics.contains("ai_gateway_config_generation 1"));

    // A chat request with no key anywhere is a clear 502, not a hang.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v: Value = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{api}/v1/chat/completions"))
            .json(&serde_json::json!({"model": "general_chat", "messages": [{"role": "user", "content": "你好"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(v["error"]["code"], "upstream_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no api_key"),
        "{v}"
    );

    // SIGINT: fast shutdown, exit 0.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < until, "gateway did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}
