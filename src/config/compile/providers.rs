//! The `providers:` section: each upstream's URL, key, policies and type-specific settings.

use super::policies::{self, Policies};
use super::{add_template, parse_url, secret, Ctx};
use crate::config::raw::{DifyApp, ProviderType, RawProvider};
use crate::config::units::Secret;
use crate::config::{
    AnthropicSettings, DifySettings, MockSettings, Provider, ProviderKind, UpstreamUrl,
    ANTHROPIC_VERSION,
};
use indexmap::IndexMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn compile(
    cx: &mut Ctx,
    raw: &IndexMap<String, RawProvider>,
    base: &Policies,
    templates: &mut minijinja::Environment<'static>,
) -> IndexMap<String, Arc<Provider>> {
    let mut providers = IndexMap::new();
    for (name, p) in raw {
        if let Some(provider) = provider(cx, name, p, base, templates) {
            providers.insert(name.clone(), Arc::new(provider));
        }
    }
    providers
}

/// `None` when the provider is too broken to route to (a dify provider without `app`); its
/// problems are reported, and targets naming it are still checked for everything else.
fn provider(
    cx: &mut Ctx,
    name: &str,
    p: &RawProvider,
    base: &Policies,
    templates: &mut minijinja::Environment<'static>,
) -> Option<Provider> {
    let key = format!("providers.{name}");
    let url = url(cx, &key, p);
    let policies = Policies {
        timeouts: policies::timeouts(&base.timeouts, p.timeouts.as_ref()),
        retry: policies::retry(&base.retry, p.retry.as_ref()),
        breaker: policies::breaker(&base.breaker, p.breaker.as_ref()),
        max_concurrency: p.max_concurrency.unwrap_or(base.max_concurrency),
    };
    policies::check(cx, &key, &policies);
    let api_key = api_key(cx, &key, p);
    let kind = match p.kind {
        ProviderType::Openai => {
            reject(cx, &key, &dify_fields(p), "dify");
            reject(cx, &key, &anthropic_fields(p), "anthropic");
            reject(cx, &key, &mock_fields(p), "mock");
            ProviderKind::OpenAi
        }
        ProviderType::Dify => {
            reject(cx, &key, &anthropic_fields(p), "anthropic");
            reject(cx, &key, &mock_fields(p), "mock");
            ProviderKind::Dify(dify(cx, &key, p, templates)?)
        }
        ProviderType::Anthropic => {
            reject(cx, &key, &dify_fields(p), "dify");
            reject(cx, &key, &mock_fields(p), "mock");
            ProviderKind::Anthropic(anthropic(cx, &key, p))
        }
        ProviderType::Mock => {
            reject(cx, &key, &dify_fields(p), "dify");
            reject(cx, &key, &anthropic_fields(p), "anthropic");
            ProviderKind::Mock(mock(cx, &key, p))
        }
    };
    Some(Provider {
        name: name.to_owned(),
        kind,
        url,
        api_key,
        timeouts: policies.timeouts,
        retry: policies.retry,
        breaker: policies.breaker,
        max_concurrency: policies.max_concurrency,
    })
}

/// Where the provider lives. A missing or broken URL is already an error; a placeholder then
/// keeps checking the scenarios that use this provider, so one run reports everything.
fn url(cx: &mut Ctx, key: &str, p: &RawProvider) -> UpstreamUrl {
    let url_key = format!("{key}.base_url");
    let parsed = match (p.kind, &p.base_url) {
        (ProviderType::Mock, None) => return mock_url(),
        (ProviderType::Mock, Some(_)) => {
            cx.error(
                url_key,
                "a mock provider makes no network calls; remove base_url",
            );
            return mock_url();
        }
        (_, None) => {
            cx.error(
                url_key,
                "is required for openai, anthropic and dify providers",
            );
            None
        }
        (_, Some(url)) => parse_url(cx, &url_key, url.0.trim()),
    };
    parsed.unwrap_or(UpstreamUrl {
        tls: false,
        host: String::new(),
        port: 0,
        base_path: String::new(),
    })
}

/// Never connected to; it fills [`Provider::url`], which the cache fingerprint hashes.
fn mock_url() -> UpstreamUrl {
    UpstreamUrl {
        tls: false,
        host: "mock".into(),
        port: 0,
        base_path: String::new(),
    }
}

fn api_key(cx: &mut Ctx, key: &str, p: &RawProvider) -> Option<Secret> {
    let api_key = secret(p.api_key.as_ref());
    if api_key
        .as_ref()
        .is_some_and(|k| !k.expose().bytes().all(|b| b.is_ascii_graphic()))
    {
        // The key goes into an HTTP header verbatim; CR/LF or spaces would corrupt it.
        cx.error(
            format!("{key}.api_key"),
            "must be printable ASCII without spaces",
        );
    }
    // A mock answers without a key, so a missing one is not worth a warning.
    if api_key.is_none() && p.kind != ProviderType::Mock {
        cx.warn(
            format!("{key}.api_key"),
            "is empty; routing skips this provider until a key is set",
        );
    }
    api_key
}

fn dify_fields(p: &RawProvider) -> [(&'static str, bool); 6] {
    [
        ("app", p.app.is_some()),
        ("query_input", p.query_input.is_some()),
        ("output", p.output.is_some()),
        ("inputs", p.inputs.is_some()),
        ("system_input", p.system_input.is_some()),
        ("reasoning", p.reasoning.is_some()),
    ]
}

fn anthropic_fields(p: &RawProvider) -> [(&'static str, bool); 2] {
    [("version", p.version.is_some()), ("beta", p.beta.is_some())]
}

fn mock_fields(p: &RawProvider) -> [(&'static str, bool); 7] {
    [
        ("reply", p.reply.is_some()),
        ("latency", p.latency.is_some()),
        ("chunk_delay", p.chunk_delay.is_some()),
        ("fail_rate", p.fail_rate.is_some()),
        ("status", p.status.is_some()),
        ("retry_after", p.retry_after.is_some()),
        ("cut_after", p.cut_after.is_some()),
    ]
}

/// Reports each field that is set although it belongs to providers of type `owner`.
fn reject(cx: &mut Ctx, key: &str, fields: &[(&str, bool)], owner: &str) {
    for (field, set) in fields {
        if *set {
            cx.error(
                format!("{key}.{field}"),
                format!("applies to `type: {owner}` providers only"),
            );
        }
    }
}

/// `None` without `app`: every other Dify setting depends on the app mode.
fn dify(
    cx: &mut Ctx,
    key: &str,
    p: &RawProvider,
    templates: &mut minijinja::Environment<'static>,
) -> Option<DifySettings> {
    let Some(app) = p.app else {
        cx.error(
            format!("{key}.app"),
            "is required for dify: chat | agent | chatflow | workflow | completion",
        );
        return None;
    };
    let text_modes = matches!(app, DifyApp::Workflow | DifyApp::Completion);
    if p.query_input.is_some() && !text_modes {
        cx.error(
            format!("{key}.query_input"),
            "applies to workflow and completion apps only",
        );
    }
    if p.output.is_some() && app != DifyApp::Workflow {
        cx.error(format!("{key}.output"), "applies to workflow apps only");
    }
    let mut inputs = IndexMap::new();
    for (var, src) in p.inputs.iter().flatten() {
        let tkey = format!("{key}.inputs.{var}");
        let tname = add_template(cx, templates, &tkey, src.clone());
        inputs.insert(var.clone(), tname);
    }
    Some(DifySettings {
        app,
        query_input: p.query_input.clone().unwrap_or_else(|| "query".into()),
        output: p.output.clone(),
        inputs,
        system_input: p.system_input.clone(),
        reasoning: p.reasoning.unwrap_or(false),
    })
}

/// `version` and `beta` go into request headers verbatim: only values that cannot break a
/// header (or, for `beta`, the comma-separated list) are accepted.
fn anthropic(cx: &mut Ctx, key: &str, p: &RawProvider) -> AnthropicSettings {
    let version = p
        .version
        .as_ref()
        .map(|v| v.0.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ANTHROPIC_VERSION.to_owned());
    let is_date = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !is_date {
        cx.error(
            format!("{key}.version"),
            format!("{version:?} is not an Anthropic API version: write a date such as 2023-06-01"),
        );
    }
    let mut beta: Vec<String> = Vec::new();
    for (i, name) in p.beta.iter().flatten().enumerate() {
        let name = name.trim();
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            cx.error(
                format!("{key}.beta[{i}]"),
                format!(
                    "{name:?} is not an anthropic-beta value: letters, digits, `-`, `_` and `.` only"
                ),
            );
        } else if beta.iter().any(|b| b == name) {
            cx.warn(
                format!("{key}.beta[{i}]"),
                format!("{name:?} is listed twice"),
            );
        } else {
            beta.push(name.to_owned());
        }
    }
    AnthropicSettings { version, beta }
}

fn mock(cx: &mut Ctx, key: &str, p: &RawProvider) -> MockSettings {
    let fail_rate = p.fail_rate.unwrap_or(0.0);
    if !(fail_rate.is_finite() && (0.0..=1.0).contains(&fail_rate)) {
        cx.error(format!("{key}.fail_rate"), "must be a number from 0 to 1");
    }
    let status = p.status.unwrap_or(500);
    if !(400..=599).contains(&status) {
        cx.error(
            format!("{key}.status"),
            "must be an error status from 400 to 599",
        );
    }
    MockSettings {
        reply: p.reply.clone(),
        latency: p.latency.map_or(Duration::ZERO, |d| d.0),
        chunk_delay: p.chunk_delay.map_or(Duration::ZERO, |d| d.0),
        fail_rate,
        status,
        retry_after: p.retry_after.map(|d| retry_after(cx, key, d.0)),
        cut_after: p.cut_after,
    }
}

/// `Retry-After` carries whole seconds: a fraction is rounded up, so a client never retries
/// sooner than configured, and the rounding is pointed out.
fn retry_after(cx: &mut Ctx, key: &str, d: Duration) -> u64 {
    if d.subsec_nanos() == 0 {
        return d.as_secs();
    }
    let secs = d.as_secs().saturating_add(1);
    cx.warn(
        format!("{key}.retry_after"),
        format!(
            "Retry-After is whole seconds; {} is sent as {secs}",
            humantime::format_duration(d)
        ),
    );
    secs
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, load, BASE};
    use crate::config::{DifyApp, MockSettings, ProviderKind, UpstreamUrl};
    use std::time::Duration;

    fn mock_settings(cfg: &crate::config::Config, name: &str) -> MockSettings {
        match &cfg.providers[name].kind {
            ProviderKind::Mock(m) => m.clone(),
            other => panic!("{name} is {other:?}"),
        }
    }

    #[test]
    fn urls_policies_and_aliases_compile() {
        let cfg = load(BASE).unwrap();
        let o = &cfg.providers["o"];
        assert_eq!(
            o.url,
            UpstreamUrl {
                tls: true,
                host: "api.example.com".into(),
                port: 8443,
                base_path: "/v1".into()
            }
        );
        assert_eq!(o.url.host_header(), "api.example.com:8443");
        assert_eq!(o.timeouts.first_token, Duration::from_secs(60));
        assert_eq!(o.breaker.failure_threshold, 5);
        assert!(
            cfg.providers["d"].api_key.is_none(),
            "an empty key means no key"
        );
        assert_eq!(cfg.models["alias"], 0);
        assert_eq!(cfg.models["s"], 0);
        let ProviderKind::Dify(d) = &cfg.providers["d"].kind else {
            panic!()
        };
        assert_eq!(
            (d.app, d.query_input.as_str(), d.output.as_deref()),
            (DifyApp::Workflow, "query", Some("plan"))
        );
    }

    #[test]
    fn a_mock_provider_compiles_with_defaults() {
        let yaml = r#"
providers:
  m: { type: mock }
  o: { type: openai, base_url: "http://x/v1" }
scenarios:
  s: { targets: [{ provider: m, model: demo-1 }, { provider: o }] }
"#;
        let cfg = load(yaml).unwrap();
        let m = &cfg.providers["m"];
        assert_eq!(m.type_name(), "mock");
        assert!(m.api_key.is_none());
        assert!(!m.missing_key(), "a mock needs no key");
        assert!(cfg.providers["o"].missing_key());
        assert_eq!(
            m.url,
            UpstreamUrl {
                tls: false,
                host: "mock".into(),
                port: 0,
                base_path: String::new()
            }
        );
        let s = mock_settings(&cfg, "m");
        assert_eq!(s.reply, None);
        assert_eq!((s.latency, s.chunk_delay), (Duration::ZERO, Duration::ZERO));
        assert_eq!((s.fail_rate, s.status), (0.0, 500));
        assert_eq!((s.retry_after, s.cut_after), (None, None));
        assert_eq!(m.timeouts.first_token, Duration::from_secs(60));
        assert_eq!(cfg.scenarios[0].targets[0].model.as_deref(), Some("demo-1"));
        let warned: Vec<&str> = cfg.warnings.iter().map(|w| w.location.as_str()).collect();
        assert_eq!(warned, ["t.yaml:4:6: providers.o.api_key"]);
    }

    #[test]
    fn a_mock_provider_takes_every_knob() {
        let yaml = r#"
providers:
  m:
    type: mock
    api_key: k
    reply: "fixed text"
    latency: 250ms
    chunk_delay: 10ms
    fail_rate: 0.25
    status: 429
    retry_after: 2s
    cut_after: 3
    timeouts: { first_token: 1s }
    retry: { attempts: 1 }
    breaker: { failure_threshold: 2 }
    max_concurrency: 4
  r: { type: mock, retry_after: 1500ms, fail_rate: 1, status: 599, cut_after: 0 }
scenarios:
  s: { targets: [{ provider: m }, { provider: r }] }
"#;
        let cfg = load(yaml).unwrap();
        let m = &cfg.providers["m"];
        let s = mock_settings(&cfg, "m");
        assert_eq!(s.reply.as_deref(), Some("fixed text"));
        assert_eq!(s.latency, Duration::from_millis(250));
        assert_eq!(s.chunk_delay, Duration::from_millis(10));
        assert_eq!((s.fail_rate, s.status), (0.25, 429));
        assert_eq!((s.retry_after, s.cut_after), (Some(2), Some(3)));
        assert_eq!(m.api_key.as_ref().map(|k| k.expose()), Some("k"));
        assert_eq!(m.timeouts.first_token, Duration::from_secs(1));
        assert_eq!(m.retry.attempts, 1);
        assert_eq!(m.breaker.failure_threshold, 2);
        assert_eq!(m.max_concurrency, 4);
        let r = mock_settings(&cfg, "r");
        assert_eq!((r.fail_rate, r.status), (1.0, 599));
        assert_eq!((r.retry_after, r.cut_after), (Some(2), Some(0)));
        let [w] = cfg.warnings.as_slice() else {
            panic!("{:?}", cfg.warnings)
        };
        assert!(
            w.to_string().ends_with(
                "providers.r.retry_after: warning: Retry-After is whole seconds; 1s 500ms is sent as 2"
            ),
            "{w}"
        );
    }

    #[test]
    fn an_anthropic_provider_compiles_with_its_version_and_beta() {
        let yaml = r#"
providers:
  c: { type: anthropic, base_url: "https://api.anthropic.com/v1", api_key: k }
  d: { type: anthropic, base_url: "https://api.anthropic.com/v1", api_key: k, version: "2024-10-22", beta: [prompt-caching-2024-07-31, context-1m-2025-08-07] }
scenarios:
  s: { targets: [{ provider: c, model: claude-sonnet-4-5, params: { max_tokens: 4096 } }, { provider: d, model: claude-opus-4-1 }] }
"#;
        let cfg = load(yaml).unwrap();
        let c = &cfg.providers["c"];
        assert_eq!(c.type_name(), "anthropic");
        assert_eq!(c.url.base_path, "/v1");
        let ProviderKind::Anthropic(s) = &c.kind else {
            panic!("{:?}", c.kind)
        };
        assert_eq!((s.version.as_str(), s.beta.len()), ("2023-06-01", 0));
        let ProviderKind::Anthropic(s) = &cfg.providers["d"].kind else {
            panic!()
        };
        assert_eq!(s.version, "2024-10-22");
        assert_eq!(
            s.beta,
            ["prompt-caching-2024-07-31", "context-1m-2025-08-07"]
        );
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn anthropic_errors_are_all_reported() {
        let yaml = r#"
providers:
  a1: { type: anthropic, api_key: k, version: "June 2023", beta: ["a,b", ""], app: chat, reply: hi }
  a2: { type: anthropic, base_url: "https://api.anthropic.com/v1", api_key: k, beta: [x-1, x-1] }
  o: { type: openai, base_url: "http://x/v1", api_key: k, version: "2023-06-01" }
  d: { type: dify, base_url: "http://x/v1", api_key: k, app: chat, beta: [x] }
scenarios:
  s: { targets: [{ provider: a1, model: m }, { provider: a2, model: m, inputs: { a: b } }] }
"#;
        let e = errors(yaml);
        for want in [
            "providers.a1.base_url: error: is required for openai, anthropic and dify providers",
            "providers.a1.version: error: \"June 2023\" is not an Anthropic API version",
            "providers.a1.beta[0]: error: \"a,b\" is not an anthropic-beta value",
            "providers.a1.beta[1]: error: \"\" is not an anthropic-beta value",
            "providers.a1.app: error: applies to `type: dify` providers only",
            "providers.a1.reply: error: applies to `type: mock` providers only",
            "providers.a2.beta[1]: warning: \"x-1\" is listed twice",
            "providers.o.version: error: applies to `type: anthropic` providers only",
            "providers.d.beta: error: applies to `type: anthropic` providers only",
            "scenarios.s.targets[1].inputs: error: applies to dify providers only",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn mock_errors_are_all_reported() {
        let yaml = r#"
providers:
  o: { type: openai, api_key: k, reply: hi, fail_rate: 0.5 }
  d: { type: dify, api_key: k, app: chat, cut_after: 1 }
  m1: { type: mock, base_url: "http://x/v1", app: chat, reasoning: true, fail_rate: 1.5, status: 200 }
  m2: { type: mock, fail_rate: .nan, status: 600 }
  m3: { type: mock, fail_rate: -0.1, status: 399 }
scenarios:
  s:
    targets:
      - { provider: m1, model: ok, inputs: { a: b } }
"#;
        let e = errors(yaml);
        for want in [
            "providers.o.base_url: error: is required for openai, anthropic and dify providers",
            "providers.o.reply: error: applies to `type: mock` providers only",
            "providers.o.fail_rate: error: applies to `type: mock` providers only",
            "providers.d.base_url: error: is required for openai, anthropic and dify providers",
            "providers.d.cut_after: error: applies to `type: mock` providers only",
            "providers.m1.base_url: error: a mock provider makes no network calls; remove base_url",
            "providers.m1.app: error: applies to `type: dify` providers only",
            "providers.m1.reasoning: error: applies to `type: dify` providers only",
            "providers.m1.fail_rate: error: must be a number from 0 to 1",
            "providers.m1.status: error: must be an error status from 400 to 599",
            "providers.m2.fail_rate: error: must be a number from 0 to 1",
            "providers.m2.status: error: must be an error status from 400 to 599",
            "providers.m3.fail_rate: error: must be a number from 0 to 1",
            "providers.m3.status: error: must be an error status from 400 to 599",
            "scenarios.s.targets[0].inputs: error: applies to dify providers only",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        assert!(!e.contains("targets[0].model"), "{e}");
        assert!(!e.contains("providers.m1.api_key"), "{e}");
        assert!(!e.contains("providers.m2.api_key"), "{e}");
        assert!(
            e.lines().all(|l| l.starts_with("t.yaml:")),
            "every finding has a position:\n{e}"
        );
    }
}
