//! The counters behind client limits, behind [`LimitStore`]: one atomic check-and-reserve over a
//! client's request window, token window, budget reservations and concurrency leases, and the
//! settlement that replaces a reservation with what was used. No policy lives here (no limits'
//! meaning, errors or headers): a shared backend implements these three calls and nothing else.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A budget reservation to check: the period it counts in, the cap and this request's need, in
/// the budget's unit (USD or tokens).
#[derive(Debug, Clone, Copy)]
pub struct BudgetCheck {
    pub period: u64,
    /// Until the period ends: how long a shared store keeps the period's spend.
    pub ends_in: Duration,
    pub cap: f64,
    pub need: f64,
}

/// What to check and reserve for one request of `client`. `None` limits are neither checked nor
/// counted.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub client: &'a str,
    pub window: Duration,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Tokens to reserve in the TPM window.
    pub tokens: u64,
    pub budget: Option<BudgetCheck>,
    pub max_inflight: Option<u32>,
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    Budget,
    Concurrency,
}

/// The client's counters as the check saw them (before this request's reservation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Requests in the window, and how long until the oldest leaves it.
    pub requests: u64,
    pub requests_reset: Duration,
    /// Tokens used or reserved in the window, and how long until this request's tokens fit.
    pub tokens: u64,
    pub tokens_reset: Duration,
    /// Budget spent in the period and reserved by requests in flight.
    pub spent: f64,
    pub reserved: f64,
    pub inflight: u32,
}

/// Where an admitted request's reservation is held, so its settlement goes there too (a
/// shared backend falls back to memory while it is unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Memory,
    Shared,
    /// Admitted without counting (`on_error: open`).
    Nothing,
}

/// An admitted request's claim on the counters.
#[derive(Debug)]
pub struct Lease {
    pub client: String,
    pub(crate) id: u64,
    pub(crate) period: u64,
    pub(crate) held: Held,
}

#[derive(Debug)]
pub enum Verdict {
    Admitted(Lease),
    Refused(Limit),
    /// The shared store cannot be reached and `on_error: closed` refuses limited clients.
    Unavailable,
}

pub trait LimitStore: Send + Sync {
    /// Checks every limit in `check` in order (rpm, tpm, budget, concurrency) and, when all
    /// pass, reserves them at once.
    fn reserve(&self, check: &Check<'_>) -> impl Future<Output = (Verdict, Counters)> + Send;
    /// Replaces the lease's reservation with what was used (`tokens` in the window, `amount`
    /// in the budget's unit) and ends the request.
    fn settle(&self, lease: Lease, tokens: u64, amount: f64) -> impl Future<Output = ()> + Send;
    /// The client's counters now; `period` selects the budget period reported.
    fn counters(
        &self,
        client: &str,
        window: Duration,
        period: Option<u64>,
    ) -> impl Future<Output = Counters> + Send;
}

#[derive(Default)]
struct State {
    requests: VecDeque<Instant>,
    /// (when, lease id, tokens): reservations, replaced by real usage when settled. Ids grow
    /// with time, so the log is sorted by id and a settlement finds its entry by binary search.
    tokens: VecDeque<(Instant, u64, u64)>,
    /// Sum of `tokens`, kept up to date so admission is O(1) at any request rate.
    tokens_sum: u64,
    period: u64,
    spent: f64,
    reserved: HashMap<u64, f64>,
    inflight: u32,
}

impl State {
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.requests.pop_front();
        }
        while let Some(&(at, _, n)) = self.tokens.front() {
            if now.duration_since(at) < window {
                break;
            }
            self.tokens_sum -= n;
            self.tokens.pop_front();
        }
    }

    /// How long until `needed` tokens fit under `limit`.
    fn tokens_wait(&self, now: Instant, window: Duration, limit: u64, needed: u64) -> Duration {
        if needed > limit {
            return window;
        }
        let mut used = self.tokens_sum;
        for (at, _, n) in &self.tokens {
            if used + needed <= limit {
                break;
            }
            used -= n;
            if used + needed <= limit {
                return (*at + window).saturating_duration_since(now);
            }
        }
        Duration::ZERO
    }

    fn counters(&self, now: Instant, window: Duration, tpm: u64, needed: u64) -> Counters {
        Counters {
            requests: self.requests.len() as u64,
            requests_reset: self.requests.front().map_or(Duration::ZERO, |t| {
                (*t + window).saturating_duration_since(now)
            }),
            tokens: self.tokens_sum,
            tokens_reset: self.tokens_wait(now, window, tpm, needed),
            spent: self.spent,
            reserved: self.reserved.values().sum(),
            inflight: self.inflight,
        }
    }
}

/// Counters in this process.
pub struct MemoryLimits {
    clients: Mutex<HashMap<String, State>>,
    next_id: AtomicU64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }
}

impl MemoryLimits {
    pub(crate) fn reserve_now(&self, c: &Check<'_>) -> (Verdict, Counters) {
        let now = Instant::now();
        let mut all = self.clients.lock();
        let st = all.entry(c.client.to_owned()).or_default();
        st.prune(now, c.window);
        if let Some(b) = c.budget {
            if st.period != b.period {
                st.period = b.period;
                st.spent = 0.0;
            }
        }
        let counters = st.counters(now, c.window, c.tpm.unwrap_or(u64::MAX), c.tokens);
        let refused = if c.rpm.is_some_and(|rpm| counters.requests >= rpm) {
            Some(Limit::Rpm)
        } else if c.tpm.is_some_and(|tpm| counters.tokens + c.tokens > tpm) {
            Some(Limit::Tpm)
        } else if c
            .budget
            .is_some_and(|b| counters.spent + counters.reserved + b.need > b.cap + 1e-12)
        {
            Some(Limit::Budget)
        } else if c.max_inflight.is_some_and(|m| counters.inflight >= m) {
            Some(Limit::Concurrency)
        } else {
            None
        };
        if let Some(limit) = refused {
            return (Verdict::Refused(limit), counters);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if c.rpm.is_some() {
            st.requests.push_back(now);
        }
        if c.tpm.is_some() {
            st.tokens.push_back((now, id, c.tokens));
            st.tokens_sum += c.tokens;
        }
        if let Some(b) = c.budget {
            st.reserved.insert(id, b.need);
        }
        st.inflight += 1;
        let lease = Lease {
            client: c.client.to_owned(),
            id,
            period: c.budget.map_or(0, |b| b.period),
            held: Held::Memory,
        };
        (Verdict::Admitted(lease), counters)
    }
}

impl LimitStore for MemoryLimits {
    async fn reserve(&self, check: &Check<'_>) -> (Verdict, Counters) {
        self.reserve_now(check)
    }

    async fn settle(&self, lease: Lease, tokens: u64, amount: f64) {
        if lease.held != Held::Memory {
            return;
        }
        let mut all = self.clients.lock();
        let Some(st) = all.get_mut(&lease.client) else {
            return;
        };
        st.inflight = st.inflight.saturating_sub(1);
        if let Ok(i) = st.tokens.binary_search_by_key(&lease.id, |t| t.1) {
            st.tokens_sum = st.tokens_sum - st.tokens[i].2 + tokens;
            st.tokens[i].2 = tokens;
        }
        if st.reserved.remove(&lease.id).is_some() && st.period == lease.period {
            // Spend lands in the period the request was admitted in.
            st.spent += amount;
        }
    }

    async fn counters(&self, client: &str, window: Duration, period: Option<u64>) -> Counters {
        let now = Instant::now();
        let mut all = self.clients.lock();
        let st = all.entry(client.to_owned()).or_default();
        st.prune(now, window);
        let mut c = st.counters(now, window, u64::MAX, 0);
        if period.is_some_and(|p| p != st.period) {
            c.spent = 0.0;
        }
        c
    }
}
