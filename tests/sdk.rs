//! The official openai Python SDK against the real gateway (stream, non-stream, errors).
//!
//! Needs a Python with the `openai` package: `$AI_GATEWAY_PYTHON`, else `.venv/bin/python`
//! (created by `scripts/test.sh`). Without one the test fails and says how to get it.

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::*;

fn python() -> PathBuf {
    python_with("openai")
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_stream_non_stream_and_errors() {
    let python = python();
    let mock = MockOpenAi::start().await;
    let max_body = 256 * 1024;
    let yaml = format!(
        r#"
limits:
  max_body: {max_body}
clients:
  - name: svc
    api_key: sdk-client-key
providers:
  up: {{ type: openai, base_url: "{url}", api_key: sk-upstream-key }}
scenarios:
  general_chat:
    models: [gpt-3.5-turbo]
    targets: [{{ provider: up, model: mock-model }}]
"#,
        url = mock.url()
    );
    let gw = start_gateway(&yaml);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sdk_check.py");
    let gateway = format!("{}/v1", gw.api);
    let direct = mock.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([
                "--gateway",
                &gateway,
                "--direct",
                &direct,
                "--key",
                "sdk-client-key",
            ])
            .args(["--model", "gpt-3.5-turbo", "--upstream-model", "mock-model"])
            .args(["--max-body", &max_body.to_string()])
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
    assert!(stdout.contains("sdk checks passed"));
    print!("{stdout}");

    // What the mock saw through the gateway: provider key only, never the client's.
    let via_gateway: Vec<_> = mock
        .received()
        .into_iter()
        .filter(|r| r.header("authorization").as_deref() == Some("Bearer sk-upstream-key"))
        .collect();
    assert_eq!(
        via_gateway.len(),
        3,
        "non-stream, SDK stream, raw stream; rejected requests never arrive"
    );
    for r in mock.received() {
        assert_ne!(
            r.header("authorization").as_deref(),
            Some("Bearer sdk-client-key")
        );
    }
}
