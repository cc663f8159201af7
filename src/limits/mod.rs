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
//!
//! This module is the policy: what each limit means, the refusal errors, the `x-ratelimit-*`
//! headers and the `/admin/clients` view. The counters live in a [`LimitStore`] (`store.rs`),
//! so a shared backend implements counters only.

pub mod store;

use crate::config::{BudgetLimit, BudgetPeriod, Client, Cost};
use crate::error::GatewayError;
pub use crate::stores::LimitStores;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{BudgetCheck, Check, Counters, Lease, Limit, Verdict};
pub use store::{LimitStore, MemoryLimits};

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

/// An admitted request's claim; give it back with [`Limits::settle`].
#[derive(Debug)]
pub struct Ticket {
    lease: Lease,
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

/// Client limits: the policy over a counter store.
pub struct Limits {
    store: LimitStores,
}

impl Limits {
    pub fn new(store: LimitStores) -> Self {
        Limits { store }
    }

    /// Checks every limit of `client` and reserves `demand`; also returns the rate-limit
    /// headers for the response.
    pub async fn admit(
        &self,
        client: &Client,
        demand: Demand,
    ) -> Result<(Ticket, Headers), Refusal> {
        let unix = now_unix();
        let budget = client.budget.map(|b| {
            let (cap, need) = match b.limit {
                BudgetLimit::Usd(usd) => (usd, demand.usd),
                BudgetLimit::Tokens(t) => (t as f64, demand.tokens as f64),
            };
            let (period, left) = period(b.per, unix);
            BudgetCheck {
                period,
                ends_in: Duration::from_secs(left),
                cap,
                need,
            }
        });
        let check = Check {
            client: &client.name,
            window: WINDOW,
            rpm: client.rpm,
            tpm: client.tpm,
            tokens: demand.tokens,
            budget,
            max_inflight: client.max_concurrency,
        };
        let (verdict, c) = self.store.reserve(&check).await;
        let mut headers = Vec::new();
        if let Some(rpm) = client.rpm {
            headers.push(("x-ratelimit-limit-requests", rpm.to_string()));
            headers.push((
                "x-ratelimit-remaining-requests",
                rpm.saturating_sub(c.requests + 1).to_string(),
            ));
            headers.push(("x-ratelimit-reset-requests", reset(c.requests_reset)));
        }
        if let Some(tpm) = client.tpm {
            headers.push(("x-ratelimit-limit-tokens", tpm.to_string()));
            headers.push((
                "x-ratelimit-remaining-tokens",
                tpm.saturating_sub(c.tokens).to_string(),
            ));
            headers.push(("x-ratelimit-reset-tokens", reset(c.tokens_reset)));
        }
        match verdict {
            Verdict::Admitted(lease) => Ok((
                Ticket {
                    lease,
                    budget_in_usd: matches!(
                        client.budget.map(|b| b.limit),
                        Some(BudgetLimit::Usd(_))
                    ),
                },
                headers,
            )),
            Verdict::Refused(limit) => Err(refusal(client, demand, limit, &c, headers, unix)),
            Verdict::Unavailable => Err(Refusal {
                limit: "state",
                error: Box::new(GatewayError::UpstreamUnavailable {
                    message: format!(
                        "client {} has limits and the shared limit store is unreachable (state.on_error: closed); retry shortly",
                        client.name
                    ),
                    retry_after: Duration::from_secs(1),
                }),
                headers: Vec::new(),
            }),
        }
    }

    /// Replaces the reservation with what was really used, and ends the request.
    pub async fn settle(&self, ticket: Ticket, used: Used) {
        let amount = if ticket.budget_in_usd {
            used.usd
        } else {
            used.tokens as f64
        };
        self.store.settle(ticket.lease, used.tokens, amount).await;
    }

    /// Remaining allowances per client, for `GET /admin/clients`.
    pub async fn snapshot(&self, clients: &[Client]) -> Value {
        let unix = now_unix();
        let mut list = Vec::with_capacity(clients.len());
        for c in clients {
            let budget_period = c.budget.map(|b| period(b.per, unix));
            let st = self
                .store
                .counters(&c.name, WINDOW, budget_period.map(|p| p.0))
                .await;
            let budget = c.budget.zip(budget_period).map(|(b, (_, left))| {
                let (limit, unit) = match b.limit {
                    BudgetLimit::Usd(u) => (u, "usd"),
                    BudgetLimit::Tokens(t) => (t as f64, "tokens"),
                };
                json!({"unit": unit, "per": format!("{:?}", b.per).to_lowercase(), "limit": limit, "spent": st.spent,
                       "reserved": st.reserved, "remaining": (limit - st.spent).max(0.0), "resets_in_seconds": left})
            });
            list.push(json!({
                "client": c.name,
                "rpm": c.rpm.map(|l| json!({"limit": l, "remaining": l.saturating_sub(st.requests)})),
                "tpm": c.tpm.map(|l| json!({"limit": l, "remaining": l.saturating_sub(st.tokens)})),
                "budget": budget,
                "max_concurrency": c.max_concurrency,
                "inflight": st.inflight,
            }));
        }
        json!({"clients": list})
    }
}

/// The refusal for `limit`, with its message and how long to wait.
fn refusal(
    client: &Client,
    demand: Demand,
    limit: Limit,
    c: &Counters,
    mut headers: Headers,
    unix: u64,
) -> Refusal {
    let name = &client.name;
    match limit {
        Limit::Rpm => {
            let rpm = client.rpm.unwrap_or(0);
            if let Some(h) = headers
                .iter_mut()
                .find(|(k, _)| *k == "x-ratelimit-remaining-requests")
            {
                h.1 = "0".into();
            }
            refuse(
                "rpm",
                "rate_limited",
                format!("client {name} is over its limit of {rpm} requests per minute"),
                c.requests_reset,
                headers,
            )
        }
        Limit::Tpm => {
            let tpm = client.tpm.unwrap_or(0);
            refuse(
                "tpm",
                "rate_limited",
                format!(
                    "client {name} would exceed its {tpm} tokens per minute: {} used or reserved, this request needs about {}",
                    c.tokens, demand.tokens
                ),
                c.tokens_reset,
                headers,
            )
        }
        Limit::Budget => {
            let per = client.budget.map_or(BudgetPeriod::Day, |b| b.per);
            refuse(
                "budget",
                "budget_exceeded",
                format!("client {name} has spent its budget for this {per:?}").to_lowercase(),
                Duration::from_secs(period(per, unix).1),
                headers,
            )
        }
        Limit::Concurrency => refuse(
            "concurrency",
            "rate_limited",
            format!(
                "client {name} already has {} requests in flight",
                client.max_concurrency.unwrap_or(0)
            ),
            Duration::from_secs(1),
            headers,
        ),
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
    usd_cached(cost, prompt, 0, completion)
}

/// USD for `prompt` tokens, `cached` of which were read from the upstream's prompt cache
/// (priced at `cached_input`), and `completion` tokens at `cost` (per 1M tokens).
pub fn usd_cached(cost: Option<Cost>, prompt: u64, cached: u64, completion: u64) -> f64 {
    cost.map_or(0.0, |c| {
        let cached = cached.min(prompt);
        ((prompt - cached) as f64 * c.input
            + cached as f64 * c.cached_input
            + completion as f64 * c.output)
            / 1_000_000.0
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
            pick_variant: false,
        }
    }

    #[tokio::test]
    async fn rpm_is_a_sliding_window() {
        let l = Limits::new(LimitStores::Memory(MemoryLimits::default()));
        let c = client(Some(3), None, None);
        let (a, _) = l.admit(&c, Demand::default()).await.unwrap();
        let (b, _) = l.admit(&c, Demand::default()).await.unwrap();
        assert_eq!(
            l.admit(&c, Demand::default()).await.unwrap_err().limit,
            "concurrency",
            "two in flight is the cap"
        );
        l.settle(a, Used::default()).await;
        l.settle(b, Used::default()).await;
        let (t, headers) = l.admit(&c, Demand::default()).await.unwrap();
        assert!(headers
            .iter()
            .any(|(k, v)| *k == "x-ratelimit-remaining-requests" && v == "0"));
        l.settle(t, Used::default()).await;
        let refused = l.admit(&c, Demand::default()).await.unwrap_err();
        assert_eq!(refused.limit, "rpm");
        assert_eq!(refused.error.code(), "rate_limited");
        assert!(refused.error.retry_after().is_some_and(|s| s <= 60));
    }

    #[tokio::test]
    async fn tpm_reserve_then_reconcile() {
        let l = Limits::new(LimitStores::Memory(MemoryLimits::default()));
        let c = client(None, Some(1000), None);
        let (t, _) = l
            .admit(
                &c,
                Demand {
                    tokens: 800,
                    usd: 0.0,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            l.admit(
                &c,
                Demand {
                    tokens: 300,
                    usd: 0.0
                }
            )
            .await
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
        )
        .await;
        assert!(
            l.admit(
                &c,
                Demand {
                    tokens: 300,
                    usd: 0.0
                }
            )
            .await
            .is_ok(),
            "the unused reservation was released"
        );
    }

    #[tokio::test]
    async fn budget_periods() {
        assert_eq!(period(BudgetPeriod::Minute, 125), (2, 55));
        assert_eq!(period(BudgetPeriod::Day, 86_400 * 3 + 10).0, 3);
        // 2026-11-26T00:00:00Z → December starts 5 days later.
        let t = 1_795_651_200;
        assert_eq!(year_month((t / 86_400) as i64), (2026, 11));
        assert_eq!(period(BudgetPeriod::Month, t).1, 5 * 86_400);
        let l = Limits::new(LimitStores::Memory(MemoryLimits::default()));
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
            .await
            .unwrap();
        l.settle(
            t1,
            Used {
                tokens: 0,
                usd: 0.006,
            },
        )
        .await;
        let (t2, _) = l
            .admit(
                &c,
                Demand {
                    tokens: 0,
                    usd: 0.004,
                },
            )
            .await
            .unwrap();
        l.settle(
            t2,
            Used {
                tokens: 0,
                usd: 0.004,
            },
        )
        .await;
        let r = l
            .admit(
                &c,
                Demand {
                    tokens: 0,
                    usd: 0.001,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (r.limit, r.error.code(), r.error.should_retry()),
            ("budget", "budget_exceeded", Some(false))
        );
    }

    #[test]
    fn counts_tokens() {
        assert!(count_tokens("hello world") >= 2);
        let cost = Some(Cost {
            input: 1.0,
            output: 2.0,
            cached_input: 0.25,
        });
        assert_eq!(usd(cost, 1_000_000, 500_000), 2.0);
        assert_eq!(usd_cached(cost, 1_000_000, 400_000, 500_000), 1.7);
        // More cached than prompt tokens (a confused upstream) prices no token twice.
        assert_eq!(usd_cached(cost, 100, 1_000, 0), 0.000025);
    }
}
