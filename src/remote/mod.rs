//! The shared-state backend: one Redis (or any Redis-protocol server) reached by every replica.
//! This module owns the connection and the rules every command follows — bounded by
//! `state.timeout`, counted in `ai_gateway_state_errors_total{op}` when it fails, and not
//! tried at all after a failure until a background probe finds Redis answering again, so no
//! request waits on a Redis that is down.
//! The stores built on it (`limits`, `answers`, `conversations`, `flight`) decide what a
//! failure means for them.
//!
//! The connection lives on a runtime of its own (one thread): requests on any listener's
//! runtime send commands to it over a channel, and the connection's reconnects never depend on
//! which listener touched Redis first.

pub mod answers;
pub mod conversations;
pub mod flight;
pub mod limits;

use crate::config::{OnError, StateConfig};
use crate::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, ScriptInvocation};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a Redis that failed is probed: requests do not try it in between, so a Redis that
/// is down or slow costs one timeout, not one per request.
const REST: Duration = Duration::from_secs(1);
/// At most one warning per this long while Redis is unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct Remote {
    manager: ConnectionManager,
    runtime: Option<tokio::runtime::Runtime>,
    prefix: String,
    timeout: Duration,
    pub on_error: OnError,
    metrics: Arc<Metrics>,
    /// This store, for the prober it starts.
    me: std::sync::Weak<Remote>,
    /// Milliseconds since `epoch` of the last warning, plus one (0 = never warned).
    warned_at: AtomicU64,
    degraded: AtomicBool,
    epoch: Instant,
}

impl Remote {
    /// Prepares the connection without connecting: a replica starts whether or not Redis is
    /// up. `None` when the URL cannot be used (it was validated at load, so this is rare).
    pub fn new(cfg: &StateConfig, metrics: Arc<Metrics>) -> Option<Arc<Remote>> {
        let url = cfg.url.as_ref()?;
        let client = match redis::Client::open(url.expose()) {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "state.url cannot be used ({}); shared state is off",
                    e.category()
                );
                return None;
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("state-redis")
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                log::error!("cannot start the shared-state runtime: {e}");
                return None;
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = {
            let _in_runtime = runtime.enter();
            match ConnectionManager::new_lazy_with_config(client, config) {
                Ok(m) => m,
                Err(e) => {
                    log::error!(
                        "cannot prepare the Redis connection ({}); shared state is off",
                        e.category()
                    );
                    return None;
                }
            }
        };
        Some(Arc::new_cyclic(|me| Remote {
            me: me.clone(),
            manager,
            runtime: Some(runtime),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            on_error: cfg.on_error,
            metrics,
            warned_at: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            epoch: Instant::now(),
        }))
    }

    /// The key `name` under the configured prefix.
    pub fn key(&self, name: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + name.len());
        k.push_str(&self.prefix);
        k.push_str(name);
        k
    }

    /// Whether the last command failed (until one succeeds again): `/ready` says `degraded`.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// While Redis is known to be unreachable, commands are not tried: the caller's fallback
    /// applies at once (counted like a failure) and the prober decides when Redis is back.
    fn resting(&self, op: &'static str) -> bool {
        if self.degraded.load(Ordering::Relaxed) {
            self.count_error(op);
            return true;
        }
        false
    }

    fn count_error(&self, op: &'static str) {
        self.metrics
            .state_errors_total
            .with_label_values(&[op])
            .inc();
    }

    fn warn(&self, op: &'static str, why: &str) {
        let now = self.now_ms();
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + WARN_EVERY.as_millis() as u64;
        if due
            && self
                .warned_at
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The URL is not named: it may carry a password.
            log::warn!(
                "shared state: Redis is unreachable ({op}: {why}); limits and budgets are {}, the cache and conversations miss until it is back",
                match self.on_error {
                    OnError::Local => "counted per replica",
                    OnError::Open => "not enforced",
                    OnError::Closed => "refusing limited clients",
                }
            );
        }
    }

    fn failed(&self, op: &'static str, why: &str) {
        self.count_error(op);
        self.warn(op, why);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            if let Some(me) = self.me.upgrade() {
                self.spawn(me.probe());
            }
        }
    }

    /// Pings Redis every [`REST`] until it answers, then lets commands through again.
    async fn probe(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REST).await;
            let mut con = self.manager.clone();
            let ping = redis::cmd("PING");
            match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut con)).await {
                Ok(Ok(_)) => {
                    self.degraded.store(false, Ordering::Relaxed);
                    log::info!("shared state: Redis answers again");
                    return;
                }
                Ok(Err(e)) => {
                    self.count_error("ping");
                    self.warn(
                        "ping",
                        if e.is_timeout() {
                            "timed out"
                        } else {
                            e.category()
                        },
                    );
                }
                Err(_) => {
                    self.count_error("ping");
                    self.warn("ping", "timed out");
                }
            }
        }
    }

    fn settle<T>(
        &self,
        op: &'static str,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        match r {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                let why = if e.is_timeout() {
                    "timed out"
                } else {
                    e.category()
                };
                self.failed(op, why);
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    /// Runs `cmd`; `None` when Redis did not answer in time (counted as an error of `op`).
    pub async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Option<T> {
        if self.resting(op) {
            return None;
        }
        let mut con = self.manager.clone();
        let r = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut con)).await;
        self.settle(op, r)
    }

    /// Runs a Lua script (EVALSHA; loaded on NOSCRIPT), under the same rules as [`Self::run`].
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        inv: &ScriptInvocation<'_>,
    ) -> Option<T> {
        if self.resting(op) {
            return None;
        }
        let mut con = self.manager.clone();
        let r = tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut con)).await;
        self.settle(op, r)
    }

    /// Runs `work` on the Redis runtime, detached from any request (retries of settlements).
    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.runtime {
            rt.spawn(work);
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime inside another (a test's) panics; shutting it down does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowercase hex of `bytes`, for key names.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}
