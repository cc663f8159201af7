//! The process's life after start: which requests are in flight, and the graceful stop.
//!
//! On SIGTERM the listeners stop accepting (pingora's graceful terminate) while requests and
//! streams in flight go on. The process exits 0 as soon as none is left; at `shutdown.grace_period`
//! every stream still open is ended the way the contract ends a broken stream (an error event
//! and `data: [DONE]`), non-stream requests get a 503, and the process exits. pingora's own
//! graceful path sleeps the whole grace period even when idle and then drops open streams
//! mid-byte, which is why the drain is the gateway's.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long requests cut at the grace deadline get to write their last bytes. The wait ends as
/// soon as the last one is written, so the bound only matters on a starved machine, where 2 s
/// proved too short for 40 streams to get their error event out.
const FINAL_WRITE: Duration = Duration::from_secs(5);
/// How long the in-flight count must stay at zero before the process exits: a request whose
/// head was being read when SIGTERM arrived is counted only once it is parsed.
const QUIET: Duration = Duration::from_millis(100);

pub struct Lifecycle {
    inflight: AtomicUsize,
    draining: AtomicBool,
    deadline: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            deadline: watch::channel(false).0,
        }
    }
}

/// Counts one request as in flight until dropped (with the request's context).
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the grace deadline has passed (never, for a request that started without one).
pub async fn deadline_passed(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => {
            if rx.wait_for(|passed| *passed).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

impl Lifecycle {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn deadline_watch(&self) -> watch::Receiver<bool> {
        self.deadline.subscribe()
    }

    /// True from SIGTERM on: `/ready` answers 503 so no new traffic is sent here.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight or `grace` has passed; at the deadline tells every
    /// open request to finish now and gives them [`FINAL_WRITE`] to do it. Returns how many
    /// requests were cut.
    pub fn drain(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        let started = Instant::now();
        let until = started + grace;
        let mut quiet_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.inflight() == 0 {
                let since = *quiet_since.get_or_insert(now);
                if now.duration_since(since) >= QUIET {
                    return 0;
                }
            } else {
                quiet_since = None;
            }
            if now >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let cut = self.inflight();
        log::warn!(
            "shutdown grace period of {grace:?} is over; ending {cut} request(s) still in flight"
        );
        self.deadline.send_replace(true);
        let until = Instant::now() + FINAL_WRITE;
        while self.inflight() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        cut
    }
}

/// The signals of a gateway run as a process: SIGTERM drains (see the module docs), SIGINT
/// stops at once. pingora's `run_forever` would also exit on SIGQUIT for a binary upgrade,
/// which a sidecar does not use.
pub struct ProcessSignals {
    pub lifecycle: Arc<Lifecycle>,
    pub grace: Duration,
    /// Runs after the drain, just before the process exits (flushes the access log).
    pub before_exit: Arc<dyn Fn() + Send + Sync>,
}

#[async_trait]
impl ShutdownSignalWatch for ProcessSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; stop the gateway with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                log::info!(
                    "SIGTERM: no longer accepting connections; draining {} request(s) in flight (grace period {:?})",
                    self.lifecycle.inflight(),
                    self.grace
                );
                let lifecycle = self.lifecycle.clone();
                let grace = self.grace;
                let before_exit = self.before_exit.clone();
                // An operator who does not want to wait: SIGINT during the drain stops at once.
                let hurry = self.before_exit.clone();
                tokio::spawn(async move {
                    int.recv().await;
                    log::warn!("SIGINT during the drain: stopping now");
                    hurry();
                    std::process::exit(1);
                });
                // pingora sleeps its own (longer) grace period on the main thread after this
                // returns; the drain ends the process first.
                let spawned = std::thread::Builder::new().name("drain".into()).spawn(move || {
                    let cut = lifecycle.drain(grace);
                    log::info!("drained ({cut} request(s) cut at the deadline); exiting");
                    before_exit();
                    std::process::exit(0);
                });
                if let Err(e) = spawned {
                    log::error!("cannot start the drain thread: {e}");
                }
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                (self.before_exit)();
                ShutdownSignal::FastShutdown
            }
        }
    }
}
