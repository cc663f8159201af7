//! ai-gateway: an OpenAI-compatible LLM gateway sidecar built on pingora.
//!
//! [`build_server`] turns a validated [`config::Config`] into a pingora `Server` with the API and
//! admin listeners; `main` runs it for the process's lifetime, and [`RunningGateway`] runs it on a
//! thread with an explicit stop (integration tests, embedding).

pub mod access_log;
pub mod cache;
pub mod config;
pub mod conversations;
pub mod downstream;
pub mod endpoints;
pub mod error;
pub mod experiments;
pub mod filters;
pub mod forward;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod output;
pub mod privacy;
pub mod protocol;
pub mod providers;
pub mod reload;
pub mod remote;
pub mod routing;
pub mod server;
pub mod state;
pub mod stores;
pub mod upstream;

use async_trait::async_trait;
use config::Config;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use server::{Gateway, Role};
use state::Shared;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the gateway did not start listening on {0} within 10 s")]
    NotListening(SocketAddr),
    #[error("cannot start the server thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What a gateway does besides serving, beyond what gateway.yaml says.
#[derive(Default)]
pub struct Options {
    /// Where access-log lines go; disabled by default.
    pub access_log: access_log::AccessLog,
    /// Reload when the config file or a prompt file changes.
    pub watch_config: bool,
    /// Reload on SIGHUP (only for the process's own gateway: signals are process-wide).
    pub sighup: bool,
}

/// Builds the pingora server for `config` with default [`Options`]; the caller runs it.
pub fn build_server(config: Config) -> Result<(Server, Arc<Shared>), StartError> {
    build_server_with(config, Options::default())
}

/// Builds the pingora server for `config`; the caller runs it.
pub fn build_server_with(
    config: Config,
    options: Options,
) -> Result<(Server, Arc<Shared>), StartError> {
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let conf = ServerConf {
        threads,
        // The drain (lifecycle.rs) ends the process within the configured grace period; pingora's
        // own, longer one only matters if that drain could not run.
        grace_period_seconds: Some(config.grace_period.as_secs() + 10),
        graceful_shutdown_timeout_seconds: Some(5),
        ..Default::default()
    };
    if config
        .clients
        .iter()
        .flatten()
        .any(|c| c.tpm.is_some() || c.budget.is_some())
    {
        // Loading the tokenizer takes a moment; do it now rather than on the first request.
        std::thread::spawn(|| limits::count_tokens("warm up"));
    }
    let listen = config.listen.to_string();
    let admin_listen = config.admin_listen.to_string();
    let shared = Arc::new(Shared::new(config, options.access_log)?);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut api = Service::new(
        "ai-gateway api".to_owned(),
        Gateway {
            role: Role::Api,
            shared: shared.clone(),
        },
    );
    api.add_tcp(&listen);
    let mut admin = Service::new(
        "ai-gateway admin".to_owned(),
        Gateway {
            role: Role::Admin,
            shared: shared.clone(),
        },
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);
    server.add_service(api);
    server.add_service(admin);
    if options.watch_config || options.sighup {
        let watcher = reload::ConfigWatcher {
            shared: shared.clone(),
            files: options.watch_config,
            sighup: options.sighup,
        };
        server.add_service(pingora::services::background::background_service(
            "config watcher",
            watcher,
        ));
    }
    Ok((server, shared))
}

struct NotifyWatch(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifyWatch {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running on its own thread until [`RunningGateway::stop`] or drop.
pub struct RunningGateway {
    pub shared: Arc<Shared>,
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
    /// Starts the gateway and returns once both listeners accept connections.
    pub fn start(config: Config) -> Result<RunningGateway, StartError> {
        Self::start_with(config, Options::default())
    }

    pub fn start_with(config: Config, options: Options) -> Result<RunningGateway, StartError> {
        let api_addr = config.listen;
        let admin_addr = config.admin_listen;
        let (server, shared) = build_server_with(config, options)?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let watch = NotifyWatch(stop.clone());
        let thread = std::thread::Builder::new()
            .name("ai-gateway".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(watch),
                })
            })?;
        let gw = RunningGateway {
            shared,
            api_addr,
            admin_addr,
            stop,
            thread: Some(thread),
        };
        for addr in [api_addr, admin_addr] {
            let until = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > until {
                    return Err(StartError::NotListening(addr));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(gw)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.notify_one();
            let _ = t.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}
