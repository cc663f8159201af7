//! Turns the on-disk schema into [`Config`], collecting every semantic problem on the way.

use super::raw::*;
use super::units::{EnvString, Secret};
use super::*;
use std::collections::HashSet;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_MAX_BODY: u64 = 8 << 20;

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
    let config = build(raw, path, &base_dir, &mut cx);
    if cx.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(ConfigError(cx.diags));
    }
    match config {
        Some(mut c) => {
            c.warnings = cx.diags;
            c.sources.extend(cx.sources);
            Ok(c)
        }
        None => Err(ConfigError(cx.diags)),
    }
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

fn timeouts(base: &Timeouts, over: Option<&RawTimeouts>) -> Timeouts {
    let Some(o) = over else { return *base };
    Timeouts {
        connect: o.connect.map_or(base.connect, |d| d.0),
        first_token: o.first_token.map_or(base.first_token, |d| d.0),
        idle: o.idle.map_or(base.idle, |d| d.0),
        total: o.total.map_or(base.total, |d| d.0),
    }
}

fn retry(base: &Retry, over: Option<&RawRetry>) -> Retry {
    let Some(o) = over else { return *base };
    Retry {
        attempts: o.attempts.unwrap_or(base.attempts),
        backoff: o.backoff.map_or(base.backoff, |d| d.0),
        max_backoff: o.max_backoff.map_or(base.max_backoff, |d| d.0),
    }
}

fn breaker(base: &Breaker, over: Option<&RawBreaker>) -> Breaker {
    let Some(o) = over else { return *base };
    Breaker {
        failure_threshold: o.failure_threshold.unwrap_or(base.failure_threshold),
        open_for: o.open_for.map_or(base.open_for, |d| d.0),
        success_threshold: o.success_threshold.unwrap_or(base.success_threshold),
        half_open_probes: o.half_open_probes.unwrap_or(base.half_open_probes),
    }
}

fn check_policies(cx: &mut Ctx, key: &str, t: &Timeouts, r: &Retry, b: &Breaker, conc: u32) {
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
    if r.attempts == 0 {
        cx.error(format!("{key}.retry.attempts"), "must be at least 1");
    }
    if r.backoff > r.max_backoff {
        cx.error(format!("{key}.retry"), "backoff is longer than max_backoff");
    }
    if b.failure_threshold == 0 || b.success_threshold == 0 || b.half_open_probes == 0 {
        cx.error(
            format!("{key}.breaker"),
            "failure_threshold, success_threshold and half_open_probes must be at least 1",
        );
    }
    if conc == 0 {
        cx.error(format!("{key}.max_concurrency"), "must be at least 1");
    }
}

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

/// Hashes what shapes a scenario's answers: each target's upstream (type, URL, app settings),
/// model, prompt and input template sources, and params. Keys are not part of it.
fn fingerprint(targets: &[Target], templates: &minijinja::Environment<'static>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let source = |name: &str| {
        templates
            .get_template(name)
            .map(|t| t.source().to_owned())
            .unwrap_or_default()
    };
    let mut h = Sha256::new();
    for t in targets {
        let p = &t.provider;
        h.update(format!("{}|{:?}|{:?}|{:?}|", p.name, p.kind, p.url, t.model).as_bytes());
        if let crate::config::ProviderKind::Dify(d) = &p.kind {
            for name in d.inputs.values() {
                h.update(source(name).as_bytes());
            }
        }
        h.update(
            t.system_prompt
                .as_deref()
                .map(source)
                .unwrap_or_default()
                .as_bytes(),
        );
        h.update(
            serde_json::Value::Object(t.params.clone())
                .to_string()
                .as_bytes(),
        );
        for (var, name) in &t.inputs {
            h.update(format!("|{var}={}", source(name)).as_bytes());
        }
        h.update(b"\n");
    }
    h.finalize().into()
}

fn build(raw: RawConfig, path: &Path, base_dir: &Path, cx: &mut Ctx) -> Option<Config> {
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

    let d = &raw.defaults;
    let base_timeouts = timeouts(
        &Timeouts {
            connect: Duration::from_secs(2),
            first_token: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(300),
        },
        Some(&d.timeouts),
    );
    let base_retry = retry(
        &Retry {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        },
        Some(&d.retry),
    );
    let base_breaker = breaker(
        &Breaker {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            success_threshold: 2,
            half_open_probes: 1,
        },
        Some(&d.breaker),
    );
    let base_conc = d.max_concurrency.unwrap_or(256);
    check_policies(
        cx,
        "defaults",
        &base_timeouts,
        &base_retry,
        &base_breaker,
        base_conc,
    );

    // Providers.
    let mut providers: IndexMap<String, Arc<Provider>> = IndexMap::new();
    for (name, p) in &raw.providers {
        let key = format!("providers.{name}");
        let url = parse_url(cx, &format!("{key}.base_url"), p.base_url.0.trim());
        let t = timeouts(&base_timeouts, p.timeouts.as_ref());
        let r = retry(&base_retry, p.retry.as_ref());
        let b = breaker(&base_breaker, p.breaker.as_ref());
        let conc = p.max_concurrency.unwrap_or(base_conc);
        check_policies(cx, &key, &t, &r, &b, conc);
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
        if api_key.is_none() {
            cx.warn(
                format!("{key}.api_key"),
                "is empty; routing skips this provider until a key is set",
            );
        }
        let kind = match p.kind {
            ProviderType::Openai => {
                for (field, set) in [
                    ("app", p.app.is_some()),
                    ("query_input", p.query_input.is_some()),
                    ("output", p.output.is_some()),
                    ("inputs", p.inputs.is_some()),
                    ("system_input", p.system_input.is_some()),
                    ("reasoning", p.reasoning.is_some()),
                ] {
                    if set {
                        cx.error(
                            format!("{key}.{field}"),
                            "applies to `type: dify` providers only",
                        );
                    }
                }
                ProviderKind::OpenAi
            }
            ProviderType::Dify => {
                let Some(app) = p.app else {
                    cx.error(
                        format!("{key}.app"),
                        "is required for dify: chat | agent | chatflow | workflow | completion",
                    );
                    continue;
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
                    let tname = add_template(cx, &mut templates, &tkey, src.clone());
                    inputs.insert(var.clone(), tname);
                }
                ProviderKind::Dify(DifySettings {
                    app,
                    query_input: p.query_input.clone().unwrap_or_else(|| "query".into()),
                    output: p.output.clone(),
                    inputs,
                    system_input: p.system_input.clone(),
                    reasoning: p.reasoning.unwrap_or(false),
                })
            }
        };
        // A broken URL is already an error; a placeholder keeps checking the scenarios that use
        // this provider, so one run reports everything.
        let url = url.unwrap_or(UpstreamUrl {
            tls: false,
            host: String::new(),
            port: 0,
            base_path: String::new(),
        });
        providers.insert(
            name.clone(),
            Arc::new(Provider {
                name: name.clone(),
                kind,
                url,
                api_key,
                timeouts: t,
                retry: r,
                breaker: b,
                max_concurrency: conc,
            }),
        );
    }

    // Scenarios.
    if raw.scenarios.is_empty() {
        cx.error("scenarios", "at least one scenario is required");
    }
    let mut scenarios: IndexMap<String, Scenario> = IndexMap::new();
    let mut models: HashMap<String, usize> = HashMap::new();
    let mut model_owner: HashMap<String, String> = HashMap::new();
    for name in raw.scenarios.keys() {
        model_owner.insert(name.clone(), name.clone());
    }
    for (idx, (name, s)) in raw.scenarios.iter().enumerate() {
        let key = format!("scenarios.{name}");
        models.insert(name.clone(), idx);
        let mut aliases = Vec::new();
        for alias in s.models.iter().flatten() {
            if alias == name {
                continue;
            }
            match model_owner.get(alias) {
                Some(owner) if owner != name => cx.error(
                    format!("{key}.models"),
                    format!("alias {alias:?} is already used by scenario {owner:?}"),
                ),
                Some(_) => cx.error(
                    format!("{key}.models"),
                    format!("alias {alias:?} is listed twice"),
                ),
                None => {
                    model_owner.insert(alias.clone(), name.clone());
                    models.insert(alias.clone(), idx);
                    aliases.push(alias.clone());
                }
            }
        }
        let strategy = s.strategy.unwrap_or_default();
        if s.targets.is_empty() {
            cx.error(format!("{key}.targets"), "at least one target is required");
        }
        let mut targets = Vec::new();
        for (ti, t) in s.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{ti}]");
            let Some(provider) = providers.get(&t.provider).cloned() else {
                if !raw.providers.contains_key(&t.provider) {
                    cx.error(
                        format!("{tkey}.provider"),
                        format!("unknown provider {:?}", t.provider),
                    );
                }
                continue;
            };
            let is_dify = matches!(provider.kind, ProviderKind::Dify(_));
            let model = t
                .model
                .as_ref()
                .map(|m| m.0.trim().to_owned())
                .filter(|m| !m.is_empty());
            if is_dify && model.is_some() {
                cx.error(
                    format!("{tkey}.model"),
                    "applies to openai providers only (a Dify app has its own model)",
                );
            }
            if !is_dify && t.inputs.is_some() {
                cx.error(format!("{tkey}.inputs"), "applies to dify providers only");
            }
            if t.weight == Some(0) {
                cx.error(format!("{tkey}.weight"), "must be at least 1");
            }
            if let Some(c) = t.cost {
                if !(c.input >= 0.0
                    && c.output >= 0.0
                    && c.input.is_finite()
                    && c.output.is_finite())
                {
                    cx.error(
                        format!("{tkey}.cost"),
                        "input and output must be non-negative numbers",
                    );
                }
            }
            let source = match (&t.system_prompt, &t.system_prompt_file) {
                (Some(_), Some(_)) => {
                    cx.error(&tkey, "set system_prompt or system_prompt_file, not both");
                    None
                }
                (Some(p), None) => Some(p.clone()),
                (None, Some(file)) => {
                    let full = base_dir.join(file);
                    cx.sources.push(full.clone());
                    match std::fs::read_to_string(&full) {
                        Ok(text) => Some(text),
                        Err(e) => {
                            cx.error(
                                format!("{tkey}.system_prompt_file"),
                                format!("cannot read {}: {e}", full.display()),
                            );
                            None
                        }
                    }
                }
                (None, None) => None,
            };
            let system_prompt = source
                .map(|src| add_template(cx, &mut templates, &format!("{tkey}.system_prompt"), src));
            let mut inputs = IndexMap::new();
            for (var, src) in t.inputs.iter().flatten() {
                let name = add_template(
                    cx,
                    &mut templates,
                    &format!("{tkey}.inputs.{var}"),
                    src.clone(),
                );
                inputs.insert(var.clone(), name);
            }
            for reserved in ["messages", "stream", "metadata"] {
                if t.params.as_ref().is_some_and(|p| p.contains_key(reserved)) {
                    cx.error(
                        format!("{tkey}.params.{reserved}"),
                        "is set by the gateway and cannot be a param",
                    );
                }
            }
            targets.push(Target {
                timeouts: timeouts(&provider.timeouts, s.timeouts.as_ref()),
                retry: retry(&provider.retry, s.retry.as_ref()),
                provider,
                model,
                weight: t.weight,
                cost: t.cost.map(|c| Cost {
                    input: c.input,
                    output: c.output,
                }),
                system_prompt,
                params: t.params.clone().unwrap_or_default(),
                inputs,
            });
        }
        match strategy {
            Strategy::Weighted if s.targets.iter().any(|t| t.weight.is_none()) => cx.error(
                format!("{key}.strategy"),
                "weighted needs a `weight` on every target",
            ),
            Strategy::Cost if s.targets.iter().any(|t| t.cost.is_none()) => cx.error(
                format!("{key}.strategy"),
                "cost needs a `cost: {input, output}` on every target",
            ),
            _ => {}
        }
        if let Some(t) = &s.timeouts {
            let eff = timeouts(&base_timeouts, Some(t));
            check_policies(cx, &key, &eff, &base_retry, &base_breaker, 1);
        }
        let matcher = s.matcher.as_ref().map(|m| Match {
            headers: m
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            metadata: m
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clients: m.clients.clone(),
        });
        if let Some(m) = &matcher {
            if m.headers.is_empty() && m.metadata.is_empty() && m.clients.is_empty() {
                cx.error(
                    format!("{key}.match"),
                    "needs at least one of headers, metadata, clients",
                );
            }
        }
        if let Some(c) = &s.cache {
            if c.ttl.0.is_zero() {
                cx.error(
                    format!("{key}.cache.ttl"),
                    "must be greater than zero (remove `cache` to turn it off)",
                );
            }
        }
        let fingerprint = fingerprint(&targets, &templates);
        scenarios.insert(
            name.clone(),
            Scenario {
                name: name.clone(),
                models: aliases,
                matcher,
                strategy,
                targets,
                cache_ttl: s.cache.as_ref().map(|c| c.ttl.0),
                fingerprint,
            },
        );
    }

    let default_scenario = match raw.default_scenario.as_ref().map(|s| s.0.trim()) {
        None | Some("") => None,
        Some(name) => match scenarios.get_index_of(name) {
            Some(i) => Some(i),
            None => {
                cx.error("default_scenario", format!("unknown scenario {name:?}"));
                None
            }
        },
    };

    // Clients.
    let clients = raw.clients.as_ref().map(|list| {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let key = format!("clients[{i}]");
            if !names.insert(c.name.clone()) {
                cx.error(
                    format!("{key}.name"),
                    format!("duplicate client name {:?}", c.name),
                );
            }
            let api_key = secret(c.api_key.as_ref());
            match &api_key {
                None => cx.warn(
                    format!("{key}.api_key"),
                    format!("client {:?} has no key and can never authenticate", c.name),
                ),
                Some(k) => {
                    if !keys.insert(k.expose().to_owned()) {
                        cx.error(
                            format!("{key}.api_key"),
                            "the same key is given to two clients",
                        );
                    }
                }
            }
            let scenarios_allowed = match &c.scenarios {
                None => None,
                Some(list) if list.iter().any(|s| s == "*") => None,
                Some(list) => {
                    for s in list {
                        if !raw.scenarios.contains_key(s) {
                            cx.error(
                                format!("{key}.scenarios"),
                                format!("unknown scenario {s:?}"),
                            );
                        }
                    }
                    Some(list.clone())
                }
            };
            let budget = c.budget.as_ref().and_then(|b| match (b.usd, b.tokens) {
                (Some(usd), None) if usd > 0.0 && usd.is_finite() => Some(Budget {
                    limit: BudgetLimit::Usd(usd),
                    per: b.per,
                }),
                (None, Some(tokens)) if tokens > 0 => Some(Budget {
                    limit: BudgetLimit::Tokens(tokens),
                    per: b.per,
                }),
                _ => {
                    cx.error(
                        format!("{key}.budget"),
                        "set exactly one of `usd` or `tokens`, greater than zero",
                    );
                    None
                }
            });
            for (field, v) in [
                ("rpm", c.rpm),
                ("tpm", c.tpm),
                ("max_concurrency", c.max_concurrency.map(u64::from)),
            ] {
                if v == Some(0) {
                    cx.error(
                        format!("{key}.{field}"),
                        "must be at least 1 (remove it for no limit)",
                    );
                }
            }
            out.push(Client {
                name: c.name.clone(),
                api_key,
                scenarios: scenarios_allowed,
                rpm: c.rpm,
                tpm: c.tpm,
                budget,
                max_concurrency: c.max_concurrency,
            });
        }
        out
    });
    for (name, s) in &raw.scenarios {
        if let Some(m) = &s.matcher {
            for client in &m.clients {
                if !raw.clients.iter().flatten().any(|c| &c.name == client) {
                    cx.error(
                        format!("scenarios.{name}.match.clients"),
                        format!("unknown client {client:?}"),
                    );
                }
            }
        }
    }

    let cache_max_entries = raw.cache.max_entries.unwrap_or(1000);
    let cache_max_bytes = raw.cache.max_bytes.map_or(64 << 20, |s| s.0);
    let log_level = raw.log.level.clone();
    if let Some(level) = &log_level {
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            cx.error(
                "log.level",
                format!("{level:?} is not one of error, warn, info, debug, trace, off"),
            );
        }
    }

    Some(Config {
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
        cache_max_entries,
        cache_max_bytes,
        log_level,
        log_format: raw.log.format.unwrap_or_default(),
        grace_period: raw
            .shutdown
            .grace_period
            .map_or(Duration::from_secs(30), |d| d.0),
        templates,
        warnings: Vec::new(),
        sources: vec![path.to_path_buf()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_str_at(yaml, Path::new("t.yaml"))
    }

    fn errors(yaml: &str) -> String {
        match load(yaml) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str = r#"
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
                "consultation_summary"
            ]
        );
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
