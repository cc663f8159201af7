//! Turns the on-disk schema into [`Config`], collecting every semantic problem on the way.
//!
//! This module parses, owns the diagnostics collector and the helpers every section shares, and
//! runs the sections in order: policies, providers, scenarios, clients. Each section reports into
//! the same collector and keeps going after a problem, so one run lists everything.

mod clients;
mod experiments;
mod output;
mod policies;
mod privacy;
mod providers;
mod scenarios;
pub mod state;

use super::raw::RawConfig;
use super::units::{EnvString, Secret};
use super::{Config, ConfigError, Diagnostic, Severity, UpstreamUrl};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_MAX_BODY: u64 = 8 << 20;

/// The diagnostics of one load, and what they need to name a position.
struct Ctx {
    file: String,
    diags: Vec<Diagnostic>,
    positions: super::positions::Positions,
    /// Files read besides the config itself (prompt files), for the reload watcher.
    sources: Vec<PathBuf>,
}

impl Ctx {
    /// `file:line:column: key.path` when the path (or its parent) is in the file.
    fn locate(&self, path: &dyn fmt::Display) -> String {
        let path = path.to_string();
        match super::positions::find(&self.positions, &path) {
            Some((line, col)) => format!("{}:{line}:{col}: {path}", self.file),
            None => format!("{}: {path}", self.file),
        }
    }
    fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        let location = self.locate(&path);
        self.diags.push(Diagnostic {
            severity: Severity::Error,
            location,
            message: message.into(),
        });
    }
    fn warn(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        let location = self.locate(&path);
        self.diags.push(Diagnostic {
            severity: Severity::Warning,
            location,
            message: message.into(),
        });
    }
}

pub(super) fn compile(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: RawConfig = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e.path().to_string();
            let inner = e.into_inner();
            let location = match inner.location() {
                Some(l) => format!("{file}:{}:{}", l.line(), l.column()),
                None => file.clone(),
            };
            // serde_yaml appends "at line X column Y" itself; the location already says it.
            let mut message = inner.to_string();
            if let Some(cut) = message.find(" at line ") {
                message.truncate(cut);
            }
            // serde_yaml names the enclosing mapping; the full key path is more useful.
            if at != "." && !at.is_empty() {
                let own = message.split_once(": ").filter(|(p, _)| !p.contains(' '));
                let text = own.map_or(message.as_str(), |(_, rest)| rest);
                message = format!("{at}: {text}");
            }
            return Err(ConfigError(vec![Diagnostic {
                severity: Severity::Error,
                location,
                message,
            }]));
        }
    };
    let mut cx = Ctx {
        file,
        diags: Vec::new(),
        positions: super::positions::index(text),
        sources: Vec::new(),
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut config = build(raw, path, &base_dir, &mut cx);
    if cx.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(ConfigError(cx.diags));
    }
    config.warnings = cx.diags;
    config.sources.extend(cx.sources);
    Ok(config)
}

fn socket_addr(cx: &mut Ctx, key: &str, value: Option<&EnvString>, default: &str) -> SocketAddr {
    let text = value.map(|v| v.0.as_str()).unwrap_or(default);
    match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            cx.error(
                key,
                format!("{text:?} is not an ip:port address (e.g. 127.0.0.1:8080)"),
            );
            // A placeholder keeps validation going; the load fails anyway.
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn secret(value: Option<&EnvString>) -> Option<Secret> {
    value
        .map(|v| v.0.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

fn parse_url(cx: &mut Ctx, key: &str, text: &str) -> Option<UpstreamUrl> {
    let uri: http::Uri = match text.parse() {
        Ok(u) => u,
        Err(e) => {
            // A URL with `@` may hold a credential: it is not echoed into logs.
            let shown = if text.contains('@') {
                "the URL".to_owned()
            } else {
                format!("{text:?}")
            };
            cx.error(key, format!("{shown} is not a URL: {e}"));
            return None;
        }
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // The URL is not echoed: it holds a credential.
        cx.error(
            key,
            "must not carry credentials (user:password@); use api_key",
        );
        return None;
    }
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            cx.error(key, format!("{text:?} must start with http:// or https://"));
            return None;
        }
    };
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        cx.error(key, format!("{text:?} has no host"));
        return None;
    };
    if uri.query().is_some() {
        cx.error(key, format!("{text:?} must not have a query string"));
        return None;
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some(UpstreamUrl {
        tls,
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        host,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// Registers a template under its key path, so render errors at request time name where it was
/// written; returns that name.
fn add_template(
    cx: &mut Ctx,
    env: &mut minijinja::Environment<'static>,
    key: &str,
    source: String,
) -> String {
    let name = key.to_owned();
    if let Err(e) = env.add_template_owned(name.clone(), source) {
        cx.error(key, format!("template does not compile: {e}"));
    }
    name
}

/// The whole config, section by section; problems land in `cx`, so the result is only used
/// when no error was recorded.
fn build(raw: RawConfig, path: &Path, base_dir: &Path, cx: &mut Ctx) -> Config {
    let listen = socket_addr(cx, "listen", raw.listen.as_ref(), DEFAULT_LISTEN);
    let admin_listen = socket_addr(
        cx,
        "admin.listen",
        raw.admin.listen.as_ref(),
        DEFAULT_ADMIN_LISTEN,
    );
    if listen == admin_listen {
        cx.error("admin.listen", "must differ from listen");
    }
    if raw.threads == Some(0) {
        cx.error("threads", "must be at least 1 (remove it for one per core)");
    }
    let max_body = raw.limits.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0);
    if max_body == 0 {
        cx.error("limits.max_body", "must be greater than zero");
    }
    let max_body = usize::try_from(max_body).unwrap_or(usize::MAX);

    let mut templates = minijinja::Environment::new();
    // Missing profile fields render as empty text instead of failing the request.
    templates.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);

    let base = policies::defaults(cx, &raw.defaults);
    let providers = providers::compile(cx, &raw.providers, &base, &mut templates);
    let privacy_defaults = raw
        .defaults
        .privacy
        .as_ref()
        .and_then(|v| privacy::parse(Some(&mut *cx), "defaults.privacy", v));
    let mut provider_privacy = std::collections::HashMap::new();
    for (name, p) in &raw.providers {
        let key = format!("providers.{name}.privacy");
        if let Some(level) = p
            .privacy
            .as_ref()
            .and_then(|v| privacy::parse(Some(&mut *cx), &key, v))
        {
            provider_privacy.insert(name.clone(), level);
        }
    }
    let scope = scenarios::Scope {
        providers: &providers,
        raw_providers: &raw.providers,
        base: &base,
        base_dir,
        privacy_defaults,
        provider_privacy: &provider_privacy,
    };
    let (mut scenarios, models) = scenarios::compile(cx, &raw.scenarios, &scope, &mut templates);
    experiments::attach(cx, &raw.scenarios, &mut scenarios, &scope, &mut templates);
    let default_scenario = scenarios::default_scenario(cx, &raw, &scenarios);
    let clients = clients::compile(cx, raw.clients.as_deref(), &raw.scenarios);
    clients::check_matchers(cx, &raw.scenarios, raw.clients.as_deref());

    let responses_ttl = raw.responses.ttl.map_or(Duration::from_secs(3600), |d| d.0);
    if responses_ttl.is_zero() {
        cx.error(
            "responses.ttl",
            "must be greater than zero (send `store: false` not to store a response)",
        );
    }

    let state = state::compile(cx, &raw.state);

    let log_level = raw.log.level.clone();
    if let Some(level) = &log_level {
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            cx.error(
                "log.level",
                format!("{level:?} is not one of error, warn, info, debug, trace, off"),
            );
        }
    }

    Config {
        path: path.to_path_buf(),
        listen,
        threads: raw.threads,
        admin_listen,
        admin_api_key: secret(raw.admin.api_key.as_ref()),
        max_body,
        completion_estimate: raw.limits.completion_estimate.unwrap_or(512),
        clients,
        providers,
        scenarios,
        models,
        default_scenario,
        cache_max_entries: raw.cache.max_entries.unwrap_or(1000),
        cache_max_bytes: raw.cache.max_bytes.map_or(64 << 20, |s| s.0),
        cache_max_entry_bytes: raw.cache.max_entry_bytes.map_or(1 << 20, |s| s.0),
        state,
        log_level,
        log_format: raw.log.format.unwrap_or_default(),
        grace_period: raw
            .shutdown
            .grace_period
            .map_or(Duration::from_secs(30), |d| d.0),
        responses_ttl,
        templates,
        warnings: Vec::new(),
        sources: vec![path.to_path_buf()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_str_at(yaml, Path::new("t.yaml"))
    }

    pub(super) fn errors(yaml: &str) -> String {
        match load(yaml) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.to_string(),
        }
    }

    pub(super) const BASE: &str = r#"
providers:
  o: { type: openai, base_url: "https://api.example.com:8443/v1/", api_key: k }
  d: { type: dify, base_url: "http://dify.local/v1", api_key: "", app: workflow, output: plan }
scenarios:
  s:
    models: [alias]
    targets:
      - provider: o
        model: m
      - provider: d
"#;

    #[test]
    fn the_shipped_file_loads_with_defaults_and_warnings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace("${OPENAI_API_KEY}", "")
            .replace("${DIFY_", "${UNSET_FOR_TEST_");
        let cfg = Config::from_str_at(&text, &path).unwrap();
        let names: Vec<&str> = cfg.scenarios.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "general_chat",
                "beauty_plan",
                "sentiment",
                "consultation_summary",
                "demo"
            ]
        );
        // The demo runs on the built-in mock, which needs no key; no real scenario falls back
        // to it.
        let demo = &cfg.scenarios["demo"];
        assert_eq!(demo.targets[0].provider.type_name(), "mock");
        assert!(!demo.targets[0].provider.missing_key());
        assert!(cfg
            .scenarios
            .values()
            .filter(|s| s.name != "demo")
            .all(|s| s.all_targets().all(|t| t.provider.type_name() != "mock")));
        assert_eq!(cfg.scenarios[0].targets[0].provider.name, "dify-chat");
        assert_eq!(cfg.scenarios[0].targets[1].provider.name, "openai");
        assert!(cfg.scenarios[0].targets[1].system_prompt.is_some());
        assert!(cfg
            .warnings
            .iter()
            .any(|w| w.location.ends_with("providers.openai.api_key")));
        assert_eq!(cfg.default_scenario, Some(0));
        assert_eq!(cfg.max_body, 8 << 20);
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let yaml = r#"
threads: 0
clients:
  - { name: a, api_key: same, scenarios: [nope] }
  - { name: a, api_key: same, budget: { usd: 1, tokens: 5, per: day } }
providers:
  o: { type: openai, base_url: "http://x/v1", api_key: "has space", app: chat }
  d: { type: dify, base_url: "http://x/v1", api_key: k }
scenarios:
  s:
    match: {}
    targets:
      - { provider: o, system_prompt: a, system_prompt_file: b.md, params: { stream: true } }
      - { provider: o, weight: 0, cost: { input: -1, output: 1 } }
      - { provider: o, cost: { input: 1, output: 1, cached_input: -0.5 } }
  t: { targets: [] }
"#;
        let e = errors(yaml);
        for want in [
            "threads: error: must be at least 1",
            "clients[0].scenarios: error: unknown scenario \"nope\"",
            "clients[1].name: error: duplicate client name",
            "clients[1].api_key: error: the same key is given to two clients",
            "clients[1].budget: error: set exactly one of",
            "providers.o.api_key: error: must be printable ASCII",
            "providers.o.app: error: applies to `type: dify` providers only",
            "providers.d.app: error: is required for dify",
            "scenarios.s.match: error: needs at least one of",
            "scenarios.s.targets[0]: error: set system_prompt or system_prompt_file, not both",
            "scenarios.s.targets[0].params.stream: error: is set by the gateway",
            "scenarios.s.targets[1].weight: error: must be at least 1",
            "scenarios.s.targets[1].cost: error: input and output must be non-negative",
            "scenarios.s.targets[2].cost.cached_input: error: must be a non-negative number",
            "scenarios.t.targets: error: at least one target is required",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = errors("providers:\n  o: { type: openai, base_url: 'http://x', api_key: k }\nscenarios:\n  s:\n    targets: [{ provider: o }]\n    retries: 3\n");
        assert!(
            e.starts_with("t.yaml:6:5: error: scenarios.s.retries: unknown field `retries`"),
            "{e}"
        );
        let e = errors("listen: [1, 2]\n");
        assert!(e.starts_with("t.yaml:1:9: error: listen:"), "{e}");
        let e = errors("providers:\n  o: { type: grpc, base_url: x }\n");
        assert!(e.contains("unknown variant `grpc`"), "{e}");
    }
}
