//! Which targets may serve a request, in which order, and what the gateway has learned about
//! each target (breaker, 429 rest, latency, in-flight, recent outcomes).
//!
//! State lives in [`Router`], keyed by target (provider + upstream model), so scenarios sharing a
//! target share its breaker. An openai target without a configured model forwards the client's
//! model, so its state is kept per model name (`per_model.rs`). A [`Plan`] orders a scenario's
//! targets by its strategy; admission (breaker permit, 429 rest, provider concurrency) happens
//! per attempt through [`Router::admit`], so a probe slot is never taken for a target that is
//! not tried.

pub mod breaker;
pub mod budget;
mod per_model;

use crate::config::{Provider, Scenario, Strategy, Target};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use breaker::{Admission, Breaker};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Samples kept per target for TTFT percentiles and the success rate.
const WINDOW: usize = 256;
/// Weight of a new TTFT sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Default)]
struct Observed {
    ewma_ttft: Option<f64>,
    ttfts: VecDeque<f64>,
    outcomes: VecDeque<bool>,
    last_error: Option<String>,
}

/// What the gateway knows about one target.
pub struct TargetState {
    pub provider: String,
    pub label: String,
    /// Where the target is served from; a reload that moves it starts its state afresh.
    endpoint: String,
    breaker: Mutex<Breaker>,
    rest_until: Mutex<Option<Instant>>,
    inflight: AtomicU32,
    observed: Mutex<Observed>,
    /// The breaker state last exported, so the gauge is touched only on transitions.
    published: AtomicI64,
    /// Its provider has no API key: routing skips it (shown by `/admin/providers`).
    no_key: AtomicBool,
    /// For a target that forwards the client's model: each model name's own state (also listed
    /// under its own key in [`Router`]'s map), at most [`per_model::MAX_MODELS`]; names beyond
    /// share this state. Empty (and never allocated) for every other state.
    models: Mutex<HashMap<String, Arc<TargetState>>>,
}

impl TargetState {
    fn publish(&self, metrics: &Metrics, code: i64) {
        if self.published.swap(code, Ordering::Relaxed) == code {
            return;
        }
        metrics
            .circuit_state
            .with_label_values(&[&self.provider, &self.label])
            .set(code);
    }

    fn observe(&self, ok: bool, ttft: Option<Duration>, error: Option<String>) {
        let mut o = self.observed.lock();
        if o.outcomes.len() == WINDOW {
            o.outcomes.pop_front();
        }
        o.outcomes.push_back(ok);
        if let Some(t) = ttft {
            let s = t.as_secs_f64();
            o.ewma_ttft = Some(o.ewma_ttft.map_or(s, |e| e + EWMA_ALPHA * (s - e)));
            if o.ttfts.len() == WINDOW {
                o.ttfts.pop_front();
            }
            o.ttfts.push_back(s);
        }
        if error.is_some() {
            o.last_error = error;
        }
    }

    fn ewma(&self) -> f64 {
        self.observed.lock().ewma_ttft.unwrap_or(0.0)
    }
}

/// A reload may change the breaker settings of a surviving state.
fn refresh(s: &TargetState, t: &Target) {
    let mut b = s.breaker.lock();
    if b.settings != t.provider.breaker {
        b.settings = t.provider.breaker;
    }
}

fn target_key(t: &Target) -> String {
    format!("{}/{}", t.provider.name, t.model.as_deref().unwrap_or("-"))
}

fn endpoint(t: &Target) -> String {
    let u = &t.provider.url;
    format!(
        "{} {}://{}:{}{}",
        t.provider.type_name(),
        if u.tls { "https" } else { "http" },
        u.host,
        u.port,
        u.base_path
    )
}

/// An admitted attempt. Its verdict goes to the breaker; dropped without one (client left,
/// client error) it only frees its slots.
pub struct AttemptGuard {
    state: Arc<TargetState>,
    provider_slots: Arc<AtomicU32>,
    probe: bool,
    settled: bool,
    metrics: Arc<Metrics>,
}

impl AttemptGuard {
    /// The stream is established (first content event): the attempt succeeded.
    pub fn success(&mut self, ttft: Duration) {
        if self.settled {
            return;
        }
        self.settled = true;
        let code = {
            let mut b = self.state.breaker.lock();
            b.on_success(self.probe);
            b.code()
        };
        self.state.publish(&self.metrics, code);
        self.state.observe(true, Some(ttft), None);
    }

    /// The target failed (connect, timeout, 5xx, broken stream).
    pub fn failure(&mut self, error: &str) {
        if self.settled {
            return;
        }
        self.settled = true;
        let code = {
            let mut b = self.state.breaker.lock();
            b.on_failure(Instant::now());
            b.code()
        };
        self.state.publish(&self.metrics, code);
        self.state.observe(false, None, Some(error.to_owned()));
    }

    /// The target said 429: it gets nothing until `until`; not a breaker failure.
    pub fn rest(&mut self, until: Instant, error: &str) {
        let mut r = self.state.rest_until.lock();
        *r = Some(r.map_or(until, |u| u.max(until)));
        drop(r);
        self.state.observe(false, None, Some(error.to_owned()));
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.state.breaker.lock().on_cancel(self.probe);
        }
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
        self.provider_slots.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a candidate was not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Open { retry_at: Instant },
    Resting { until: Instant },
    Full,
}

pub struct Router {
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
    provider_slots: Mutex<HashMap<String, Arc<AtomicU32>>>,
    round_robin: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    pub budget: budget::RetryBudget,
    metrics: Arc<Metrics>,
}

pub struct Candidate<'a> {
    pub target: &'a Target,
    state: Arc<TargetState>,
    slots: Arc<AtomicU32>,
}

impl Candidate<'_> {
    pub fn label(&self) -> &str {
        &self.state.label
    }
}

pub struct Plan<'a> {
    pub candidates: Vec<Candidate<'a>>,
}

fn cost_of(t: &Target) -> f64 {
    t.cost.map_or(f64::MAX, |c| c.input + c.output)
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Router {
            targets: Mutex::new(HashMap::new()),
            provider_slots: Mutex::new(HashMap::new()),
            round_robin: Mutex::new(HashMap::new()),
            budget: budget::RetryBudget::default(),
            metrics,
        }
    }

    fn state(&self, t: &Target) -> Arc<TargetState> {
        let mut map = self.targets.lock();
        self.state_in(&mut map, t)
    }

    /// The target's own state in `map` (the caller holds the lock), created when missing or
    /// when its provider now points elsewhere.
    fn state_in(
        &self,
        map: &mut HashMap<String, Arc<TargetState>>,
        t: &Target,
    ) -> Arc<TargetState> {
        let key = target_key(t);
        if let Some(s) = map.get(&key).filter(|s| s.endpoint == endpoint(t)) {
            refresh(s, t);
            return s.clone();
        }
        let label = t.model.clone().unwrap_or_else(|| t.provider.name.clone());
        let s = self.new_state(t, label, endpoint(t));
        map.insert(key, s.clone());
        s
    }

    /// A fresh state, exported as closed.
    fn new_state(&self, t: &Target, label: String, endpoint: String) -> Arc<TargetState> {
        let s = Arc::new(TargetState {
            provider: t.provider.name.clone(),
            label,
            endpoint,
            breaker: Mutex::new(Breaker::new(t.provider.breaker)),
            rest_until: Mutex::new(None),
            inflight: AtomicU32::new(0),
            observed: Mutex::new(Observed::default()),
            published: AtomicI64::new(-1),
            no_key: AtomicBool::new(t.provider.missing_key()),
            models: Mutex::new(HashMap::new()),
        });
        s.publish(&self.metrics, 0);
        s
    }

    /// At start and after a reload: knows every target of `config` (so `/admin/providers` and
    /// the per-target series list them before any traffic), and forgets targets the config no
    /// longer has, or whose provider now points elsewhere (their breaker and latency history
    /// described another endpoint). State of unchanged targets is kept as is, with the
    /// per-model states of a target that forwards the client's model; those go with it.
    pub fn sync(&self, config: &crate::config::Config) {
        let live: HashMap<String, String> = config
            .scenarios
            .values()
            .flat_map(|s| s.all_targets())
            .map(|t| (target_key(t), endpoint(t)))
            .collect();
        {
            let mut map = self.targets.lock();
            let models = per_model::of_live_targets(&map, &live);
            map.retain(|key, s| {
                let keep = live.get(key) == Some(&s.endpoint) || models.contains(&Arc::as_ptr(s));
                if !keep {
                    let _ = self
                        .metrics
                        .circuit_state
                        .remove_label_values(&[&s.provider, &s.label]);
                }
                keep
            });
        }
        for t in config.scenarios.values().flat_map(|s| s.all_targets()) {
            let s = self.state(t);
            let no_key = t.provider.missing_key();
            s.no_key.store(no_key, Ordering::Relaxed);
            for m in s.models.lock().values() {
                m.no_key.store(no_key, Ordering::Relaxed);
            }
        }
        for p in config.providers.values() {
            // Creates the provider's gauge at zero; an existing one keeps its value.
            self.metrics.inflight_requests.with_label_values(&[&p.name]);
        }
    }

    fn slots(&self, p: &Provider) -> Arc<AtomicU32> {
        self.provider_slots
            .lock()
            .entry(p.name.clone())
            .or_default()
            .clone()
    }

    /// The scenario's usable targets (with an API key) ordered by its strategy, or 502 naming
    /// why none can serve. `model` is the client's: a target without a configured model sends
    /// it upstream, so that model's own state (breaker, rest, latency) is the one consulted.
    pub fn plan<'a>(
        &self,
        scenario: &'a Scenario,
        model: Option<&str>,
    ) -> Result<Plan<'a>, GatewayError> {
        let mut missing = Vec::new();
        let mut candidates: Vec<Candidate<'a>> = Vec::with_capacity(scenario.targets.len());
        for t in &scenario.targets {
            if t.provider.missing_key() {
                missing.push(format!("provider {} has no api_key", t.provider.name));
                continue;
            }
            candidates.push(Candidate {
                target: t,
                state: self.state_for(t, model),
                slots: self.slots(&t.provider),
            });
        }
        if candidates.is_empty() {
            return Err(GatewayError::UpstreamError(format!(
                "no target of scenario {} can serve: {}",
                scenario.name,
                missing.join("; ")
            )));
        }
        self.order(scenario, &mut candidates);
        Ok(Plan { candidates })
    }

    fn order(&self, scenario: &Scenario, c: &mut [Candidate<'_>]) {
        let n = c.len();
        if n < 2 {
            return;
        }
        match scenario.strategy {
            Strategy::Failover => {}
            Strategy::RoundRobin => {
                // Each experiment variant has a rotation of its own.
                let key = match &scenario.variant {
                    Some(v) => format!("{}\0{v}", scenario.name),
                    None => scenario.name.clone(),
                };
                let counter = self.round_robin.lock().entry(key).or_default().clone();
                let start = counter.fetch_add(1, Ordering::Relaxed) % n;
                c.rotate_left(start);
            }
            Strategy::Weighted => {
                // Weighted sampling without replacement: the first pick follows the weights.
                for i in 0..n {
                    let total: u64 = c[i..]
                        .iter()
                        .map(|x| u64::from(x.target.weight.unwrap_or(1)))
                        .sum();
                    let mut pick = fastrand::u64(0..total.max(1));
                    let mut chosen = i;
                    for (j, x) in c.iter().enumerate().skip(i) {
                        let w = u64::from(x.target.weight.unwrap_or(1));
                        if pick < w {
                            chosen = j;
                            break;
                        }
                        pick -= w;
                    }
                    c.swap(i, chosen);
                }
            }
            Strategy::LeastLatency => {
                // Power of two choices on the TTFT moving average; the rest by average.
                let a = fastrand::usize(0..n);
                let mut b = fastrand::usize(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let best = if c[a].state.ewma() <= c[b].state.ewma() {
                    a
                } else {
                    b
                };
                c.swap(0, best);
                c[1..].sort_by(|x, y| x.state.ewma().total_cmp(&y.state.ewma()));
            }
            Strategy::LeastBusy => {
                // Fewest in flight; ties go to the faster target, then at random.
                fastrand::shuffle(c);
                c.sort_by(|x, y| {
                    let (ix, iy) = (
                        x.state.inflight.load(Ordering::Relaxed),
                        y.state.inflight.load(Ordering::Relaxed),
                    );
                    ix.cmp(&iy)
                        .then_with(|| x.state.ewma().total_cmp(&y.state.ewma()))
                });
            }
            Strategy::Cost => c.sort_by(|x, y| cost_of(x.target).total_cmp(&cost_of(y.target))),
        }
    }

    /// Admits an attempt on `c`, or says why not (no connect is made for a skipped target).
    pub fn admit(&self, c: &Candidate<'_>, now: Instant) -> Result<AttemptGuard, Skip> {
        if let Some(until) = *c.state.rest_until.lock() {
            if now < until {
                return Err(Skip::Resting { until });
            }
        }
        let max = c.target.provider.max_concurrency;
        if c.slots.fetch_add(1, Ordering::Relaxed) >= max {
            c.slots.fetch_sub(1, Ordering::Relaxed);
            return Err(Skip::Full);
        }
        let (admission, code) = {
            let mut b = c.state.breaker.lock();
            let a = b.admit(now);
            (a, b.code())
        };
        c.state.publish(&self.metrics, code);
        let probe = match admission {
            Admission::Normal => false,
            Admission::Probe => true,
            Admission::Denied { retry_at } => {
                c.slots.fetch_sub(1, Ordering::Relaxed);
                return Err(Skip::Open { retry_at });
            }
        };
        c.state.inflight.fetch_add(1, Ordering::Relaxed);
        Ok(AttemptGuard {
            state: c.state.clone(),
            provider_slots: c.slots.clone(),
            probe,
            settled: false,
            metrics: self.metrics.clone(),
        })
    }

    /// Whether some target of the scenario could be tried now (`/ready`); for an experiment,
    /// of every variant (each variant serves its users alone).
    pub fn has_usable_target(&self, scenario: &Scenario) -> bool {
        if let Some(e) = &scenario.experiment {
            return e
                .variants
                .iter()
                .all(|v| self.has_usable_target(&v.scenario));
        }
        let now = Instant::now();
        scenario.targets.iter().any(|t| {
            !t.provider.missing_key() && {
                let s = self.state(t);
                let b = s.breaker.lock();
                !matches!(b.state, breaker::State::Open { until } if until > now)
            }
        })
    }

    /// Every known target for `GET /admin/providers`.
    pub fn snapshot(&self) -> Value {
        let now = Instant::now();
        let mut list: Vec<(String, Arc<TargetState>)> = self
            .targets
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let targets: Vec<Value> = list
            .into_iter()
            .map(|(key, s)| {
                let (state, failures, reopens_in) = {
                    let b = s.breaker.lock();
                    let failures = match b.state {
                        breaker::State::Closed { failures } => failures,
                        _ => 0,
                    };
                    let reopens = match b.state {
                        breaker::State::Open { until } => Some(until.saturating_duration_since(now).as_secs_f64()),
                        _ => None,
                    };
                    (b.name(), failures, reopens)
                };
                let o = s.observed.lock();
                let mut ttfts: Vec<f64> = o.ttfts.iter().copied().collect();
                ttfts.sort_by(f64::total_cmp);
                let pct = |p: f64| -> Option<f64> {
                    (!ttfts.is_empty()).then(|| ttfts[((ttfts.len() - 1) as f64 * p).round() as usize])
                };
                let ok = o.outcomes.iter().filter(|x| **x).count();
                let resting = s.rest_until.lock().filter(|u| *u > now).map(|u| (u - now).as_secs_f64());
                json!({
                    "target": key,
                    "provider": s.provider,
                    "model": s.label,
                    "breaker": state,
                    "consecutive_failures": failures,
                    "reopens_in_seconds": reopens_in,
                    "resting_seconds": resting,
                    "inflight": s.inflight.load(Ordering::Relaxed),
                    "success_rate": (!o.outcomes.is_empty()).then(|| ok as f64 / o.outcomes.len() as f64),
                    "samples": o.outcomes.len(),
                    "ttft_p50_seconds": pct(0.5),
                    "ttft_p99_seconds": pct(0.99),
                    "ttft_ewma_seconds": o.ewma_ttft,
                    "last_error": o.last_error,
                    "skipped": s.no_key.load(Ordering::Relaxed).then_some("no api_key"),
                })
            })
            .collect();
        json!({"targets": targets})
    }
}
