//! The gateway binary as a child process, the way an operator runs it: for signal handling,
//! logs, and several replicas sharing one Redis.

use super::free_ports;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ai-gateway");

pub struct Proc {
    pub child: Child,
    pub api: String,
    pub admin: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs the binary with `yaml` (listeners added) and `env`; returns once `/health` answers.
pub fn spawn(yaml: &str, env: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let (api, admin) = free_ports();
    let path = dir.path().join("gateway.yaml");
    let full = yaml.replacen("admin:", &format!("admin:\n  listen: 127.0.0.1:{admin}"), 1);
    std::fs::write(&path, format!("listen: 127.0.0.1:{api}\n{full}")).unwrap();
    let stdout = dir.path().join("stdout.log");
    let stderr = dir.path().join("stderr.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let p = Proc {
        child,
        api: format!("http://127.0.0.1:{api}"),
        admin: format!("http://127.0.0.1:{admin}"),
        stdout,
        stderr,
        _dir: dir,
    };
    let until = Instant::now() + Duration::from_secs(15);
    for port in [api, admin] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "the gateway did not start: {}",
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    p
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        // The shell's builtin `kill`: no procps needed on a minimal machine.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }
    /// Waits for the exit; `None` after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
