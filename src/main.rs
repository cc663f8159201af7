//! The `ai-gateway` command: run the gateway, or validate a config with `--check`.

use ai_gateway::config::{Config, Severity};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

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
    let level = cfg.log_level.clone().unwrap_or_else(|| "info".into());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
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
    match ai_gateway::build_server(cfg) {
        // run_forever handles SIGTERM (graceful), SIGINT (fast) and SIGQUIT (upgrade) and exits.
        Ok((server, _shared)) => server.run_forever(),
        Err(e) => {
            eprintln!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
