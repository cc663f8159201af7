//! The `ai-gateway` command: run the gateway, or validate a config with `--check`.

use ai_gateway::config::{Config, LogFormat, Severity};
use clap::Parser;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// glibc malloc serializes on arena locks under pingora's multi-threaded load (seen in perf as
/// futex waits inside malloc/free); mimalloc's thread-local heaps avoid that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ai-gateway",
    version,
    about = "OpenAI-compatible LLM gateway sidecar (pingora)"
)]
struct Cli {
    /// Path to gateway.yaml.
    #[arg(short = 'c', long = "config", default_value = "gateway.yaml")]
    config: PathBuf,
    /// Validate the config, print every finding, and exit (non-zero on errors).
    #[arg(long)]
    check: bool,
    /// Health probe for container runtimes: GET this path (default /health) on the admin
    /// listener of the config and exit 0 on a 200. Needs no curl in the image.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "/health")]
    probe: Option<String>,
}

/// `--probe`: one HTTP/1.1 GET to the admin listener.
fn probe(admin: SocketAddr, path: &str) -> Result<(), String> {
    let mut addr = admin;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    match &head[9..12] {
        b"200" => Ok(()),
        other => Err(format!(
            "{addr}{path} answered {}",
            String::from_utf8_lossy(other)
        )),
    }
}

/// App logs on stderr, as JSON lines when `log.format: json`; `RUST_LOG` overrides the level.
fn init_logging(cfg: &Config) {
    let level = cfg.log_level.clone().unwrap_or_else(|| "info".into());
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    if cfg.log_format == LogFormat::Json {
        b.format(|buf, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = Config::load(&cli.config);
    if cli.check {
        return match loaded {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("{w}");
                }
                println!(
                    "{}: ok ({} scenarios, {} providers, {} warnings)",
                    cli.config.display(),
                    cfg.scenarios.len(),
                    cfg.providers.len(),
                    cfg.warnings.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                let errors = e.0.iter().filter(|d| d.severity == Severity::Error).count();
                for d in &e.0 {
                    eprintln!("{d}");
                }
                eprintln!("{}: {errors} error(s)", cli.config.display());
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => {
            for d in &e.0 {
                eprintln!("{d}");
            }
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.probe {
        return match probe(cfg.admin_listen, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("probe failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&cfg);
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    log::info!(
        "ai-gateway {} listening on {} (admin {}), {} scenarios",
        env!("CARGO_PKG_VERSION"),
        cfg.listen,
        cfg.admin_listen,
        cfg.scenarios.len()
    );
    // Access-log lines are `info` records of target `access`: `RUST_LOG=info,access=off`
    // turns them off, and so does any level above info.
    let access_log = if log::log_enabled!(target: "access", log::Level::Info) {
        match ai_gateway::access_log::AccessLog::stdout() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cannot start the access log: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Default::default()
    };
    let grace = cfg.grace_period;
    let options = ai_gateway::Options {
        access_log,
        watch_config: true,
        sighup: true,
    };
    let (server, shared) = match ai_gateway::build_server_with(cfg, options) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let flush = shared.clone();
    let signals = ai_gateway::lifecycle::ProcessSignals {
        lifecycle: shared.lifecycle.clone(),
        grace,
        before_exit: Arc::new(move || flush.access_log.flush()),
    };
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    shared.access_log.flush();
    ExitCode::SUCCESS
}
