//! Upstream policies (timeouts, retry, circuit breaker, concurrency): the built-in values,
//! `defaults:` over them, the per-provider and per-scenario overrides, and the checks that every
//! effective set must pass.

use super::Ctx;
use crate::config::raw::{RawBreaker, RawDefaults, RawRetry, RawTimeouts};
use crate::config::{Breaker, Retry, Timeouts};
use std::time::Duration;

/// One effective set of policies; `defaults:` produces the base that providers override.
pub(super) struct Policies {
    pub timeouts: Timeouts,
    pub retry: Retry,
    pub breaker: Breaker,
    pub max_concurrency: u32,
}

/// The built-in values under `defaults:`, checked under the `defaults` key.
pub(super) fn defaults(cx: &mut Ctx, d: &RawDefaults) -> Policies {
    let base = Policies {
        timeouts: timeouts(
            &Timeouts {
                connect: Duration::from_secs(2),
                first_token: Duration::from_secs(60),
                idle: Duration::from_secs(30),
                total: Duration::from_secs(300),
            },
            Some(&d.timeouts),
        ),
        retry: retry(
            &Retry {
                attempts: 3,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
            },
            Some(&d.retry),
        ),
        breaker: breaker(
            &Breaker {
                failure_threshold: 5,
                open_for: Duration::from_secs(60),
                success_threshold: 2,
                half_open_probes: 1,
            },
            Some(&d.breaker),
        ),
        max_concurrency: d.max_concurrency.unwrap_or(256),
    };
    check(cx, "defaults", &base);
    base
}

pub(super) fn timeouts(base: &Timeouts, over: Option<&RawTimeouts>) -> Timeouts {
    let Some(o) = over else { return *base };
    Timeouts {
        connect: o.connect.map_or(base.connect, |d| d.0),
        first_token: o.first_token.map_or(base.first_token, |d| d.0),
        idle: o.idle.map_or(base.idle, |d| d.0),
        total: o.total.map_or(base.total, |d| d.0),
    }
}

pub(super) fn retry(base: &Retry, over: Option<&RawRetry>) -> Retry {
    let Some(o) = over else { return *base };
    Retry {
        attempts: o.attempts.unwrap_or(base.attempts),
        backoff: o.backoff.map_or(base.backoff, |d| d.0),
        max_backoff: o.max_backoff.map_or(base.max_backoff, |d| d.0),
    }
}

pub(super) fn breaker(base: &Breaker, over: Option<&RawBreaker>) -> Breaker {
    let Some(o) = over else { return *base };
    Breaker {
        failure_threshold: o.failure_threshold.unwrap_or(base.failure_threshold),
        open_for: o.open_for.map_or(base.open_for, |d| d.0),
        success_threshold: o.success_threshold.unwrap_or(base.success_threshold),
        half_open_probes: o.half_open_probes.unwrap_or(base.half_open_probes),
    }
}

/// Reports every out-of-range value of `p` under `key` (`defaults`, `providers.x`, …).
pub(super) fn check(cx: &mut Ctx, key: &str, p: &Policies) {
    let t = &p.timeouts;
    for (name, d) in [
        ("connect", t.connect),
        ("first_token", t.first_token),
        ("idle", t.idle),
        ("total", t.total),
    ] {
        if d.is_zero() {
            cx.error(
                format!("{key}.timeouts.{name}"),
                "must be greater than zero",
            );
        }
    }
    if t.first_token > t.total {
        cx.warn(
            format!("{key}.timeouts"),
            "first_token is longer than total; total wins",
        );
    }
    let r = &p.retry;
    if r.attempts == 0 {
        cx.error(format!("{key}.retry.attempts"), "must be at least 1");
    }
    if r.backoff > r.max_backoff {
        cx.error(format!("{key}.retry"), "backoff is longer than max_backoff");
    }
    let b = &p.breaker;
    if b.failure_threshold == 0 || b.success_threshold == 0 || b.half_open_probes == 0 {
        cx.error(
            format!("{key}.breaker"),
            "failure_threshold, success_threshold and half_open_probes must be at least 1",
        );
    }
    if p.max_concurrency == 0 {
        cx.error(format!("{key}.max_concurrency"), "must be at least 1");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use std::time::Duration;

    #[test]
    fn env_defaults_and_overrides_apply() {
        let yaml = r#"
defaults:
  timeouts: { connect: 1s, total: 90s }
providers:
  o:
    type: openai
    base_url: ${AI_GW_TEST_SURELY_UNSET:-http://127.0.0.1:9/v1}
    api_key: ${AI_GW_TEST_SURELY_UNSET}
    timeouts: { first_token: 5s }
scenarios:
  s:
    timeouts: { idle: 7s }
    targets: [{ provider: o }]
"#;
        let cfg = load(yaml).unwrap();
        let t = &cfg.scenarios[0].targets[0];
        assert_eq!(t.provider.url.port, 9);
        assert_eq!(t.timeouts.connect, Duration::from_secs(1));
        assert_eq!(t.timeouts.first_token, Duration::from_secs(5));
        assert_eq!(t.timeouts.idle, Duration::from_secs(7));
        assert_eq!(t.timeouts.total, Duration::from_secs(90));
        assert!(t.provider.api_key.is_none());
    }
}
