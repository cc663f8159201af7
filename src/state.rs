//! Process-wide state shared by both listeners: the active configuration snapshot (swapped
//! atomically on reload), metrics, the router, the upstream client, and the stores (response
//! cache, client limits, conversations) — built from config in one place, [`Stores::build`].

use crate::cache::{Answers, MemoryAnswers, ResponseCache};
use crate::config::StateBackend;
use crate::config::{Config, ConfigError};
use crate::conversations::MemoryConversations;
use crate::limits::{LimitStores, Limits, MemoryLimits};
use crate::metrics::Metrics;
use crate::remote::answers::RedisAnswers;
use crate::remote::conversations::RedisConversations;
use crate::remote::limits::RedisLimits;
use crate::remote::Remote;
use crate::stores::Conversations;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything a request needs from configuration, fixed for the request's whole life.
pub struct RuntimeState {
    pub config: Arc<Config>,
    pub generation: u64,
    /// Unix time of the load, reported as `created` by `/v1/models`.
    pub loaded_at: u64,
}

impl RuntimeState {
    pub fn new(config: Config, generation: u64) -> Self {
        RuntimeState {
            config: Arc::new(config),
            generation,
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// The stores of state that outlives a request, built for the configured backend: in this
/// process, or shared by every replica through Redis (`state.backend`).
pub struct Stores {
    pub cache: ResponseCache,
    pub limits: Limits,
    pub conversations: Conversations,
    /// Experiment requests awaiting feedback: a store of their own, so a busy experiment never
    /// evicts the conversations of the in-memory store.
    pub feedback: Conversations,
    /// The Redis connection, when state is shared (for `/ready`).
    pub remote: Option<Arc<Remote>>,
}

impl Stores {
    pub fn build(config: &Config, metrics: &Arc<Metrics>) -> Stores {
        let l1 = MemoryAnswers::new(config.cache_max_entries, config.cache_max_bytes);
        let remote = match config.state.backend {
            StateBackend::Memory => None,
            StateBackend::Redis => Remote::new(&config.state, metrics.clone()),
        };
        let Some(remote) = remote else {
            return Stores {
                cache: ResponseCache::new(Answers::Memory(l1)),
                limits: Limits::new(LimitStores::Memory(MemoryLimits::default())),
                conversations: Conversations::Memory(MemoryConversations::default()),
                feedback: Conversations::Memory(MemoryConversations::default()),
                remote: None,
            };
        };
        Stores {
            cache: ResponseCache::new(Answers::Redis(RedisAnswers::new(
                remote.clone(),
                l1,
                config.cache_max_entry_bytes,
            ))),
            limits: Limits::new(LimitStores::Redis(RedisLimits::new(remote.clone()))),
            conversations: Conversations::Redis(RedisConversations::new(remote.clone())),
            feedback: Conversations::Redis(RedisConversations::new(remote.clone())),
            remote: Some(remote),
        }
    }
}

pub struct Shared {
    state: ArcSwap<RuntimeState>,
    pub metrics: Arc<Metrics>,
    /// Breakers, rests, latency and in-flight per target; kept across reloads.
    pub router: crate::routing::Router,
    /// Pooled connections to upstreams and the DNS cache.
    pub upstream: Upstream,
    /// Cached answers; kept across reloads (keys carry each scenario's config fingerprint).
    pub cache: ResponseCache,
    reload_lock: parking_lot::Mutex<()>,
    /// Client RPM/TPM/budget/concurrency state.
    pub limits: Limits,
    /// Conversations per (target, user, session); kept across reloads.
    pub conversations: Conversations,
    /// Experiment requests (request id → scenario, variant) for `POST /v1/feedback`.
    pub feedback: Conversations,
    /// This replica's per-variant experiment figures (`/admin/experiments`).
    pub experiments: crate::experiments::ExperimentStats,
    /// The shared-state connection (`state.backend: redis`); fixed until restart.
    pub remote: Option<Arc<Remote>>,
    /// Requests in flight and the graceful stop.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    pub access_log: crate::access_log::AccessLog,
}

impl Shared {
    pub fn new(
        config: Config,
        access_log: crate::access_log::AccessLog,
    ) -> Result<Shared, prometheus::Error> {
        let metrics = Arc::new(Metrics::new()?);
        metrics.config_generation.set(1);
        let Stores {
            cache,
            limits,
            conversations,
            feedback,
            remote,
        } = Stores::build(&config, &metrics);
        let router = crate::routing::Router::new(metrics.clone());
        // Every configured target is known (and exported) from the start, not after its first
        // request.
        router.sync(&config);
        let experiments = crate::experiments::ExperimentStats::default();
        experiments.sync(&config, &metrics);
        Ok(Shared {
            cache,
            reload_lock: parking_lot::Mutex::new(()),
            limits,
            state: ArcSwap::from_pointee(RuntimeState::new(config, 1)),
            router,
            metrics,
            upstream: Upstream::new(),
            conversations,
            feedback,
            experiments,
            remote,
            lifecycle: Arc::default(),
            access_log,
        })
    }

    /// The snapshot a request works with from start to end.
    pub fn snapshot(&self) -> Arc<RuntimeState> {
        self.state.load_full()
    }

    /// Re-reads the config file; on success swaps it in atomically (requests in flight keep
    /// theirs). A bad file changes nothing and is returned with every finding. `trigger` names
    /// the cause in the log (file change, SIGHUP, admin API).
    pub fn reload(&self, trigger: &str) -> Result<Reloaded, ConfigError> {
        let _one_at_a_time = self.reload_lock.lock();
        let current = self.snapshot();
        match Config::load(&current.config.path) {
            Ok(cfg) => {
                let restart_required = cfg.listen != current.config.listen
                    || cfg.admin_listen != current.config.admin_listen
                    || cfg.threads != current.config.threads
                    || cfg.state != current.config.state;
                let generation = current.generation + 1;
                for w in &cfg.warnings {
                    log::warn!("{w}");
                }
                self.router.sync(&cfg);
                self.experiments.sync(&cfg, &self.metrics);
                self.state
                    .store(Arc::new(RuntimeState::new(cfg, generation)));
                if restart_required {
                    log::warn!("config reloaded ({trigger}), generation {generation}; listener, thread or state changes need a restart");
                } else {
                    log::info!("config reloaded ({trigger}), generation {generation}");
                }
                self.metrics.config_generation.set(generation as i64);
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                Ok(Reloaded {
                    generation,
                    restart_required,
                })
            }
            Err(e) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                log::error!("config reload ({trigger}) failed; the running config stays:\n{e}");
                Err(e)
            }
        }
    }
}

pub struct Reloaded {
    pub generation: u64,
    /// Listener or thread changes take effect only after a restart.
    pub restart_required: bool,
}
