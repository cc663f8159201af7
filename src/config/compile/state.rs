//! The `state:` section: which backend holds the state replicas share, and how to reach it.
//! The URL is checked here (scheme, host, database) so `--check` finds a bad one; the gateway
//! never connects at load time, because a Redis that is down must not stop a replica starting.

use super::Ctx;
use crate::config::raw::RawState;
use crate::config::{OnError, Secret, StateBackend, StateConfig};
use redis::IntoConnectionInfo;
use std::time::Duration;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";
const DEFAULT_PREFIX: &str = "aigw:";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

pub(super) fn compile(cx: &mut Ctx, raw: &RawState) -> StateConfig {
    let backend = raw.backend.unwrap_or_default();
    let url = raw.url.as_ref().map(|u| u.0.trim().to_owned());
    let url = match (backend, url) {
        (StateBackend::Memory, Some(u)) if !u.is_empty() => {
            cx.warn(
                "state.url",
                "is ignored while state.backend is memory (set backend: redis to share state)",
            );
            None
        }
        (StateBackend::Memory, _) => None,
        (StateBackend::Redis, u) => {
            let u = u.filter(|u| !u.is_empty()).unwrap_or(DEFAULT_URL.into());
            check_url(cx, &u);
            Some(Secret::new(u))
        }
    };
    let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        cx.error("state.timeout", "must be greater than zero");
    }
    let prefix = raw
        .prefix
        .as_ref()
        .map_or(DEFAULT_PREFIX.to_owned(), |p| p.0.clone());
    if prefix.contains(['{', '}']) {
        cx.error(
            "state.prefix",
            "must not contain { or }: they would change the Redis Cluster hash slot of every key",
        );
    }
    StateConfig {
        backend,
        url,
        prefix,
        timeout,
        on_error: raw.on_error.unwrap_or(OnError::Local),
    }
}

/// Parses the URL as the client will; the message names the problem, never the URL (it may
/// carry a password).
fn check_url(cx: &mut Ctx, url: &str) {
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    if !scheme_ok {
        cx.error(
            "state.url",
            "must start with redis:// or rediss:// (TLS), e.g. redis://127.0.0.1:6379/0",
        );
        return;
    }
    if let Err(e) = url.into_connection_info() {
        cx.error(
            "state.url",
            format!(
                "is not a valid Redis URL ({}); write it like redis://[user:password@]host:6379/0",
                e.category()
            ),
        );
    }
}

/// The URL with any password replaced by `***`, for `/admin/config` and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            // A user name alone carries no secret.
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, load};
    use super::*;

    const BASE: &str =
        "providers:\n  m: {type: mock}\nscenarios:\n  s: {targets: [{provider: m}]}\n";

    fn with_base(state: &str) -> String {
        format!("{BASE}{state}")
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:p@ss@redis.svc:6380/2"),
            "rediss://app:***@redis.svc:6380/2"
        );
        assert_eq!(
            redact_url("redis://app@10.0.0.1:6379/0"),
            "redis://app@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn defaults_and_checks() {
        let c = load(&with_base("state: {backend: redis}\n")).unwrap();
        assert_eq!(c.state.backend, StateBackend::Redis);
        assert_eq!(c.state.url.as_ref().map(Secret::expose), Some(DEFAULT_URL));
        assert_eq!(c.state.prefix, "aigw:");
        assert_eq!(c.state.timeout, Duration::from_millis(50));
        assert_eq!(c.state.on_error, OnError::Local);
        let e = errors(&with_base(
            "state: {backend: redis, url: \"http://:pw@host\"}\n",
        ));
        assert!(e.contains("state.url"), "{e}");
        assert!(!e.contains("pw@"), "the password is not echoed: {e}");
        let e = errors(&with_base(
            "state: {backend: redis, url: \"redis://:pw@host:notaport/0\"}\n",
        ));
        assert!(e.contains("state.url") && !e.contains("pw"), "{e}");
        let e = errors(&with_base("state: {backend: redis, on_error: maybe}\n"));
        assert!(e.contains("on_error"), "{e}");
        let c = load(&with_base("state: {backend: memory}\n")).unwrap();
        assert!(c.state.url.is_none());
    }
}
