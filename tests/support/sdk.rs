//! The official Python SDKs against the gateway: finding a Python that has them, and running an
//! SDK check script from `tests/sdk/`.

/// A Python that can `import <modules>` (comma-separated): `$AI_GATEWAY_PYTHON`, else the
/// `.venv` that `scripts/test.sh` creates. Without one the test fails saying how to get it.
pub fn python_with(modules: &str) -> std::path::PathBuf {
    let candidate = std::env::var_os("AI_GATEWAY_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        });
    let ok = std::process::Command::new(&candidate)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with {modules} at {}: run scripts/test.sh (it creates .venv), or set AI_GATEWAY_PYTHON",
        candidate.display()
    );
    candidate
}

/// Runs an SDK check script with `python` off the async runtime; fails the test with its
/// output when it fails, and returns its stdout.
pub async fn run_sdk_script(
    python: std::path::PathBuf,
    script: std::path::PathBuf,
    args: Vec<String>,
) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
