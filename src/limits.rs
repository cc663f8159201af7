//! Client limits: requests and tokens per minute, spend budgets and concurrency, per client key.
//!
//! Every limit is reserve-then-reconcile: admission reserves the request's estimate (prompt
//! tokens counted with the o200k tokenizer plus `max_tokens` or `limits.completion_estimate`),
//! and the real usage replaces it when the answer ends — from upstream usage, or from the text
//! actually delivered when the upstream reports none (a stream cut mid-way is charged for what
//! the client received). A request whose reservation does not fit is refused before any
//! upstream contact.
//!
//! RPM and TPM are exact sliding 60 s windows (a log of admissions), not GCRA: the contract
//! promises "at most rpm in any 60 s window", which a token bucket with burst = rpm does not
//! (it admits up to 2 × rpm across a window boundary). Budgets use calendar periods in UTC.
//! State is in memory behind [`LimitStore`], so a shared backend can replace it.

use crate::config::{BudgetLimit, BudgetPeriod, Client, Cost};
use crate::error::GatewayError;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WINDOW: Duration = Duration::from_secs(60);

/// What a request is expected to use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    pub tokens: u64,
    pub usd: f64,
}

/// What it really used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub tokens: u64,
    pub usd: f64,
}

/// An admitted request's claim; give it back with [`LimitStore::settle`].
#[derive(Debug)]
pub struct Ticket {
    pub client: String,
    id: u64,
    period: u64,
    /// Whether the client's budget counts dollars (else tokens).
    budget_in_usd: bool,
}

/// Response headers describing the client's limits (`x-ratelimit-*`).
pub type Headers = Vec<(&'static str, String)>;

/// Why a request was refused, with the headers and wait the client should see.
#[derive(Debug)]
pub struct Refusal {
    pub limit: &'static str,
    /// Boxed: refusals are rare, admissions are every request.
    pub error: Box<GatewayError>,
    pub headers: Headers,
}

/// The limiter backend. In memory now; a shared store (Redis) can implement the same calls.
pub trait LimitStore: Send + Sync {
    /// Checks every limit of `client` and reserves `demand`; also returns the rate-limit headers
    /// for the response.
    fn admit(&self, client: &Client, demand: Demand) -> Result<(Ticket, Headers), Refusal>;
    /// Replaces the reservation with what was really used, and ends the request.
    fn settle(&self, ticket: Ticket, used: Used);
    /// Remaining allowances per client, for `GET /admin/clients`.
    fn snapshot(&self, clients: &[Client]) -> Value;
}

#[derive(Default)]
struct State {
    requests: VecDeque<Instant>,
    /// (when, ticket id, tokens): reservations, replaced by real usage when settled. Ids grow
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
    fn prune(&mut self, now: Instant) {
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.requests.pop_front();
        }
        while let Some(&(at, _, n)) = self.tokens.front() {
            if now.duration_since(at) < WINDOW {
                break;
            }
            self.tokens_sum -= n;
            self.tokens.pop_front();
        }
    }

    fn tokens_in_window(&self) -> u64 {
        self.tokens_sum
    }

    /// How long until `needed` tokens fit under `limit`.
    fn tokens_wait(&self, now: Instant, limit: u64, needed: u64) -> Duration {
        if needed > limit {
            return WINDOW;
        }
        let mut used = self.tokens_sum;
        for (at, _, n) in &self.tokens {
            if used + needed <= limit {
                break;
            }
            used -= n;
            if used + needed <= limit {
                return (*at + WINDOW).saturating_duration_since(now);
            }
        }
        Duration::ZERO
    }
}

/// Seconds in OpenAI's reset format (`"1.5s"`, `"6m0s"`).
fn reset(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        format!(
            "{}m{}s",
            (secs / 60.0).floor() as u64,
            (secs % 60.0).round() as u64
        )
    } else {
        format!("{:.1}s", secs.max(0.0))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 → (year, month), the civil calendar (H. Hinnant's algorithm).
fn year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The budget period containing `unix`, as a number, and the seconds until it ends.
pub fn period(per: BudgetPeriod, unix: u64) -> (u64, u64) {
    let len = match per {
        BudgetPeriod::Minute => 60,
        BudgetPeriod::Hour => 3600,
        BudgetPeriod::Day => 86_400,
        BudgetPeriod::Month => {
            let (y, m) = year_month((unix / 86_400) as i64);
            let id = (y * 12 + i64::from(m)) as u64;
            // The next month's first day, by walking days forward (at most 31 steps).
            let mut d = unix / 86_400 + 1;
            while year_month(d as i64) == (y, m) {
                d += 1;
            }
            return (id, d * 86_400 - unix);
        }
    };
    (unix / len, len - unix % len)
}

pub struct MemoryLimits {
    clients: Mutex<HashMap<String, State>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            clients: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

fn refuse(
    limit: &'static str,
    code: &str,
    message: String,
    wait: Duration,
    headers: Headers,
) -> Refusal {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    Refusal {
        limit,
        error: Box::new(GatewayError::Mapped {
            status: 429,
            message,
            error_type: if code == "budget_exceeded" {
                "insufficient_quota".into()
            } else {
                "rate_limit_error".into()
            },
            code: code.into(),
            param: None,
            should_retry: Some(code != "budget_exceeded"),
            retry_after: Some(secs),
        }),
        headers,
    }
}

impl LimitStore for MemoryLimits {
    fn admit(&self, client: &Client, demand: Demand) -> Result<(Ticket, Headers), Refusal> {
        let now = Instant::now();
        let unix = now_unix();
        let mut all = self.clients.lock();
        let st = all.entry(client.name.clone()).or_default();
        st.prune(now);
        let mut headers = Vec::new();
        if let Some(rpm) = client.rpm {
            let used = st.requests.len() as u64;
            let rpm_wait = st.requests.front().map_or(Duration::ZERO, |t| {
                (*t + WINDOW).saturating_duration_since(now)
            });
            headers.push(("x-ratelimit-limit-requests", rpm.to_string()));
            headers.push((
                "x-ratelimit-remaining-requests",
                rpm.saturating_sub(used + 1).to_string(),
            ));
            headers.push(("x-ratelimit-reset-requests", reset(rpm_wait)));
            if used >= rpm {
                headers[1].1 = "0".into();
                return Err(refuse(
                    "rpm",
                    "rate_limited",
                    format!(
                        "client {} is over its limit of {rpm} requests per minute",
                        client.name
                    ),
                    rpm_wait,
                    headers,
                ));
            }
        }
        if let Some(tpm) = client.tpm {
            let used = st.tokens_in_window();
            let wait = st.tokens_wait(now, tpm, demand.tokens);
            headers.push(("x-ratelimit-limit-tokens", tpm.to_string()));
            headers.push((
                "x-ratelimit-remaining-tokens",
                tpm.saturating_sub(used).to_string(),
            ));
            headers.push(("x-ratelimit-reset-tokens", reset(wait)));
            if used + demand.tokens > tpm {
                return Err(refuse(
                    "tpm",
                    "rate_limited",
                    format!(
                        "client {} would exceed its {tpm} tokens per minute: {used} used or reserved, this request needs about {}",
                        client.name, demand.tokens
                    ),
                    wait,
                    headers,
                ));
            }
        }
        let mut period_id = 0;
        if let Some(b) = client.budget {
            let (id, left) = period(b.per, unix);
            period_id = id;
            if st.period != id {
                st.period = id;
                st.spent = 0.0;
            }
            let reserved: f64 = st.reserved.values().sum();
            let (cap, need) = match b.limit {
                BudgetLimit::Usd(usd) => (usd, demand.usd),
                BudgetLimit::Tokens(t) => (t as f64, demand.tokens as f64),
            };
            if st.spent + reserved + need > cap + 1e-12 {
                return Err(refuse(
                    "budget",
                    "budget_exceeded",
                    format!(
                        "client {} has spent its budget for this {:?}",
                        client.name, b.per
                    )
                    .to_lowercase(),
                    Duration::from_secs(left),
                    headers,
                ));
            }
        }
        if let Some(max) = client.max_concurrency {
            if st.inflight >= max {
                return Err(refuse(
                    "concurrency",
                    "rate_limited",
                    format!(
                        "client {} already has {max} requests in flight",
                        client.name
                    ),
                    Duration::from_secs(1),
                    headers,
                ));
            }
        }
        // Admitted: take everything at once.
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if client.rpm.is_some() {
            st.requests.push_back(now);
        }
        if client.tpm.is_some() {
            st.tokens.push_back((now, id, demand.tokens));
            st.tokens_sum += demand.tokens;
        }
        if let Some(b) = client.budget {
            let need = match b.limit {
                BudgetLimit::Usd(_) => demand.usd,
                BudgetLimit::Tokens(_) => demand.tokens as f64,
            };
            st.reserved.insert(id, need);
        }
        st.inflight += 1;
        let budget_in_usd = matches!(client.budget.map(|b| b.limit), Some(BudgetLimit::Usd(_)));
        Ok((
            Ticket {
                client: client.name.clone(),
                id,
                period: period_id,
                budget_in_usd,
            },
            headers,
        ))
    }

    fn settle(&self, ticket: Ticket, used: Used) {
        let mut all = self.clients.lock();
        let Some(st) = all.get_mut(&ticket.client) else {
            return;
        };
        st.inflight = st.inflight.saturating_sub(1);
        if let Ok(i) = st.tokens.binary_search_by_key(&ticket.id, |t| t.1) {
            st.tokens_sum = st.tokens_sum - st.tokens[i].2 + used.tokens;
            st.tokens[i].2 = used.tokens;
        }
        if st.reserved.remove(&ticket.id).is_some() && st.period == ticket.period {
            // Spend lands in the period the request was admitted in.
            st.spent += if ticket.budget_in_usd {
                used.usd
            } else {
                used.tokens as f64
            };
        }
    }

    fn snapshot(&self, clients: &[Client]) -> Value {
        let now = Instant::now();
        let unix = now_unix();
        let mut all = self.clients.lock();
        let list: Vec<Value> = clients
            .iter()
            .map(|c| {
                let st = all.entry(c.name.clone()).or_default();
                st.prune(now);
                let budget = c.budget.map(|b| {
                    let (id, left) = period(b.per, unix);
                    let spent = if st.period == id { st.spent } else { 0.0 };
                    let (limit, unit) = match b.limit {
                        BudgetLimit::Usd(u) => (u, "usd"),
                        BudgetLimit::Tokens(t) => (t as f64, "tokens"),
                    };
                    json!({"unit": unit, "per": format!("{:?}", b.per).to_lowercase(), "limit": limit, "spent": spent,
                           "reserved": st.reserved.values().sum::<f64>(), "remaining": (limit - spent).max(0.0), "resets_in_seconds": left})
                });
                json!({
                    "client": c.name,
                    "rpm": c.rpm.map(|l| json!({"limit": l, "remaining": l.saturating_sub(st.requests.len() as u64)})),
                    "tpm": c.tpm.map(|l| json!({"limit": l, "remaining": l.saturating_sub(st.tokens_in_window())})),
                    "budget": budget,
                    "max_concurrency": c.max_concurrency,
                    "inflight": st.inflight,
                })
            })
            .collect();
        json!({"clients": list})
    }
}

/// Tokens of `text` with the o200k tokenizer (GPT-4o family; a fair estimate for others).
pub fn count_tokens(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// Prompt tokens of a request's messages: the text of every message plus a few per message for
/// the chat framing, as OpenAI counts.
pub fn prompt_tokens(messages: &[Box<serde_json::value::RawValue>]) -> u64 {
    let mut total = 3;
    for m in messages {
        let v: Value = serde_json::from_str(m.get()).unwrap_or_default();
        total += 4;
        match &v["content"] {
            Value::String(s) => total += count_tokens(s),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(t) = p["text"].as_str() {
                        total += count_tokens(t);
                    }
                }
            }
            _ => {}
        }
    }
    total
}

/// USD for `prompt` and `completion` tokens at `cost` (per 1M tokens).
pub fn usd(cost: Option<Cost>, prompt: u64, completion: u64) -> f64 {
    cost.map_or(0.0, |c| {
        (prompt as f64 * c.input + completion as f64 * c.output) / 1_000_000.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(rpm: Option<u64>, tpm: Option<u64>, budget: Option<crate::config::Budget>) -> Client {
        Client {
            name: "c".into(),
            api_key: None,
            scenarios: None,
            rpm,
            tpm,
            budget,
            max_concurrency: Some(2),
        }
    }

    #[test]
    fn rpm_is_a_sliding_window() {
        let l = MemoryLimits::default();
        let c = client(Some(3), None, None);
        let (a, _) = l.admit(&c, Demand::default()).unwrap();
        let (b, _) = l.admit(&c, Demand::default()).unwrap();
        assert_eq!(
            l.admit(&c, Demand::default()).unwrap_err().limit,
            "concurrency",
            "two in flight is the cap"
        );
        l.settle(a, Used::default());
        l.settle(b, Used::default());
        let (t, headers) = l.admit(&c, Demand::default()).unwrap();
        assert!(headers
            .iter()
            .any(|(k, v)| *k == "x-ratelimit-remaining-requests" && v == "0"));
        l.settle(t, Used::default());
        let refused = l.admit(&c, Demand::default()).unwrap_err();
        assert_eq!(refused.limit, "rpm");
        assert_eq!(refused.error.code(), "rate_limited");
        assert!(refused.error.retry_after().is_some_and(|s| s <= 60));
    }

    #[test]
    fn tpm_reserve_then_reconcile() {
        let l = MemoryLimits::default();
        let c = client(None, Some(1000), None);
        let (t, _) = l
            .admit(
                &c,
                Demand {
                    tokens: 800,
                    usd: 0.0,
                },
            )
            .unwrap();
        assert_eq!(
            l.admit(
                &c,
                Demand {
                    tokens: 300,
                    usd: 0.0
                }
            )
            .unwrap_err()
            .limit,
            "tpm"
        );
        l.settle(
            t,
            Used {
                tokens: 50,
                usd: 0.0,
            },
        );
        assert!(
            l.admit(
                &c,
                Demand {
                    tokens: 300,
                    usd: 0.0
                }
            )
            .is_ok(),
            "the unused reservation was released"
        );
    }

    #[test]
    fn budget_periods() {
        assert_eq!(period(BudgetPeriod::Minute, 125), (2, 55));
        assert_eq!(period(BudgetPeriod::Day, 86_400 * 3 + 10).0, 3);
        // 2026-11-26T00:00:00Z → December starts 5 days later.
        let t = 1_795_651_200;
        assert_eq!(year_month((t / 86_400) as i64), (2026, 11));
        assert_eq!(period(BudgetPeriod::Month, t).1, 5 * 86_400);
        let l = MemoryLimits::default();
        let c = client(
            None,
            None,
            Some(crate::config::Budget {
                limit: BudgetLimit::Usd(0.01),
                per: BudgetPeriod::Day,
            }),
        );
        let (t1, _) = l
            .admit(
                &c,
                Demand {
                    tokens: 0,
                    usd: 0.004,
                },
            )
            .unwrap();
        l.settle(
            t1,
            Used {
                tokens: 0,
                usd: 0.006,
            },
        );
        let (t2, _) = l
            .admit(
                &c,
                Demand {
                    tokens: 0,
                    usd: 0.004,
                },
            )
            .unwrap();
        l.settle(
            t2,
            Used {
                tokens: 0,
                usd: 0.004,
            },
        );
        let r = l
            .admit(
                &c,
                Demand {
                    tokens: 0,
                    usd: 0.001,
                },
            )
            .unwrap_err();
        assert_eq!(
            (r.limit, r.error.code(), r.error.should_retry()),
            ("budget", "budget_exceeded", Some(false))
        );
    }

    #[test]
    fn counts_tokens() {
        assert!(count_tokens("hello world") >= 2);
        assert_eq!(
            usd(
                Some(Cost {
                    input: 1.0,
                    output: 2.0
                }),
                1_000_000,
                500_000
            ),
            2.0
        );
    }
}
