//! The `scenarios:` section: model names and aliases, targets (provider, model, prompt, inputs,
//! params), strategy requirements, matchers, the response-cache fingerprint, and
//! `default_scenario`.

use super::policies::{self, Policies};
use super::{add_template, privacy, Ctx};
use crate::config::raw::{RawConfig, RawMatch, RawProvider, RawScenario, RawTarget};
use crate::config::{Cost, Match, Provider, ProviderKind, Scenario, Strategy, Target};
use crate::protocol::{Feature, Features};
use indexmap::IndexMap;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What every scenario is checked against.
pub(super) struct Scope<'a> {
    pub providers: &'a IndexMap<String, Arc<Provider>>,
    /// Providers as written: a target naming one that failed to compile is not "unknown".
    pub raw_providers: &'a IndexMap<String, RawProvider>,
    pub base: &'a Policies,
    /// Where `system_prompt_file` paths are relative to.
    pub base_dir: &'a Path,
    /// `defaults.privacy` and each provider's `privacy`, read once.
    pub privacy_defaults: Option<privacy::Level>,
    pub provider_privacy: &'a HashMap<String, privacy::Level>,
}

/// The scenarios in file order, and every scenario name and alias → its index.
pub(super) fn compile(
    cx: &mut Ctx,
    raw: &IndexMap<String, RawScenario>,
    scope: &Scope<'_>,
    templates: &mut minijinja::Environment<'static>,
) -> (IndexMap<String, Scenario>, HashMap<String, usize>) {
    if raw.is_empty() {
        cx.error("scenarios", "at least one scenario is required");
    }
    let mut models = Models::new(raw);
    let mut scenarios = IndexMap::new();
    for (idx, (name, s)) in raw.iter().enumerate() {
        let key = format!("scenarios.{name}");
        let aliases = models.add(cx, &key, name, idx, s.models.iter().flatten());
        let scenario = scenario(cx, &key, name, s, aliases, scope, templates);
        scenarios.insert(name.clone(), scenario);
    }
    (scenarios, models.index)
}

/// The names clients may send as `model`, and which scenario claimed each first.
struct Models {
    index: HashMap<String, usize>,
    owner: HashMap<String, String>,
}

impl Models {
    /// Scenario names are claimed up front, so an alias equal to a later scenario's name is
    /// caught too.
    fn new(raw: &IndexMap<String, RawScenario>) -> Self {
        Models {
            index: HashMap::new(),
            owner: raw.keys().map(|n| (n.clone(), n.clone())).collect(),
        }
    }

    /// Registers scenario `name` and its aliases; returns the aliases that were accepted.
    fn add<'a>(
        &mut self,
        cx: &mut Ctx,
        key: &str,
        name: &str,
        idx: usize,
        aliases: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        self.index.insert(name.to_owned(), idx);
        let mut accepted = Vec::new();
        for alias in aliases {
            if alias == name {
                continue;
            }
            match self.owner.get(alias) {
                Some(owner) if owner != name => cx.error(
                    format!("{key}.models"),
                    format!("alias {alias:?} is already used by scenario {owner:?}"),
                ),
                Some(_) => cx.error(
                    format!("{key}.models"),
                    format!("alias {alias:?} is listed twice"),
                ),
                None => {
                    self.owner.insert(alias.clone(), name.to_owned());
                    self.index.insert(alias.clone(), idx);
                    accepted.push(alias.clone());
                }
            }
        }
        accepted
    }
}

fn scenario(
    cx: &mut Ctx,
    key: &str,
    name: &str,
    s: &RawScenario,
    aliases: Vec<String>,
    scope: &Scope<'_>,
    templates: &mut minijinja::Environment<'static>,
) -> Scenario {
    let strategy = s.strategy.unwrap_or_default();
    let targets = match &s.experiment {
        Some(_) if !s.targets.is_empty() => {
            cx.error(key, "set `targets` or `experiment`, not both");
            Vec::new()
        }
        // The variants have the targets.
        Some(_) => Vec::new(),
        None => targets(cx, key, &s.targets, strategy, s, scope, templates),
    };
    if let Some(t) = &s.timeouts {
        let effective = Policies {
            timeouts: policies::timeouts(&scope.base.timeouts, Some(t)),
            retry: scope.base.retry,
            breaker: scope.base.breaker,
            max_concurrency: 1,
        };
        policies::check(cx, key, &effective);
    }
    let matcher = s.matcher.as_ref().map(|m| matcher(cx, key, m));
    // Checked once here; each target reads it again quietly.
    if let Some(v) = &s.privacy {
        privacy::parse(Some(cx), &format!("{key}.privacy"), v);
    }
    if let Some(c) = &s.cache {
        if c.ttl.0.is_zero() {
            cx.error(
                format!("{key}.cache.ttl"),
                "must be greater than zero (remove `cache` to turn it off)",
            );
        }
    }
    let output = s
        .output
        .as_ref()
        .and_then(|o| super::output::compile(cx, key, name, o, scope.base_dir));
    let mut fingerprint = fingerprint(&targets, templates);
    if let Some(o) = &output {
        fingerprint = with_output(fingerprint, o);
    }
    // An `experiment:` is attached afterwards (`experiments::attach`): its variants are made
    // from this scenario.
    Scenario {
        name: name.to_owned(),
        models: aliases,
        matcher,
        strategy,
        targets,
        cache_ttl: s.cache.as_ref().map(|c| c.ttl.0),
        fingerprint,
        output,
        experiment: None,
        variant: None,
    }
}

/// A target list (a scenario's or an experiment variant's, under `key`) and the requirements
/// of its strategy.
pub(super) fn targets(
    cx: &mut Ctx,
    key: &str,
    raw: &[RawTarget],
    strategy: Strategy,
    s: &RawScenario,
    scope: &Scope<'_>,
    templates: &mut minijinja::Environment<'static>,
) -> Vec<Target> {
    if raw.is_empty() {
        cx.error(format!("{key}.targets"), "at least one target is required");
    }
    let mut targets = Vec::new();
    for (ti, t) in raw.iter().enumerate() {
        let tkey = format!("{key}.targets[{ti}]");
        if let Some(target) = target(cx, &tkey, t, s, scope, templates) {
            targets.push(target);
        }
    }
    match strategy {
        Strategy::Weighted if raw.iter().any(|t| t.weight.is_none()) => cx.error(
            format!("{key}.strategy"),
            "weighted needs a `weight` on every target",
        ),
        Strategy::Cost if raw.iter().any(|t| t.cost.is_none()) => cx.error(
            format!("{key}.strategy"),
            "cost needs a `cost: {input, output}` on every target",
        ),
        _ => {}
    }
    targets
}

fn matcher(cx: &mut Ctx, key: &str, m: &RawMatch) -> Match {
    let matcher = Match {
        // Header names are case-insensitive; requests are matched on lowercase names.
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
    };
    if matcher.headers.is_empty() && matcher.metadata.is_empty() && matcher.clients.is_empty() {
        cx.error(
            format!("{key}.match"),
            "needs at least one of headers, metadata, clients",
        );
    }
    matcher
}

/// `None` when the provider is unknown or failed to compile; the target's other fields are
/// then not checked, as most of them depend on the provider type.
fn target(
    cx: &mut Ctx,
    tkey: &str,
    t: &RawTarget,
    s: &RawScenario,
    scope: &Scope<'_>,
    templates: &mut minijinja::Environment<'static>,
) -> Option<Target> {
    let Some(provider) = scope.providers.get(&t.provider).cloned() else {
        if !scope.raw_providers.contains_key(&t.provider) {
            cx.error(
                format!("{tkey}.provider"),
                format!("unknown provider {:?}", t.provider),
            );
        }
        return None;
    };
    let model = model(cx, tkey, t, &provider);
    let privacy = privacy::resolve(&[
        t.privacy
            .as_ref()
            .and_then(|v| privacy::parse(Some(cx), &format!("{tkey}.privacy"), v)),
        scope.provider_privacy.get(&t.provider).copied(),
        s.privacy.as_ref().and_then(|v| privacy::parse(None, "", v)),
        scope.privacy_defaults,
    ]);
    if t.weight == Some(0) {
        cx.error(format!("{tkey}.weight"), "must be at least 1");
    }
    if let Some(c) = t.cost {
        if !(c.input >= 0.0 && c.output >= 0.0 && c.input.is_finite() && c.output.is_finite()) {
            cx.error(
                format!("{tkey}.cost"),
                "input and output must be non-negative numbers",
            );
        }
        if c.cached_input.is_some_and(|p| !(p >= 0.0 && p.is_finite())) {
            cx.error(
                format!("{tkey}.cost.cached_input"),
                "must be a non-negative number",
            );
        }
    }
    let system_prompt = system_prompt(cx, tkey, t, scope.base_dir)
        .map(|src| add_template(cx, templates, &format!("{tkey}.system_prompt"), src));
    let mut inputs = IndexMap::new();
    for (var, src) in t.inputs.iter().flatten() {
        let name = add_template(cx, templates, &format!("{tkey}.inputs.{var}"), src.clone());
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
    let accept_unsupported = accept_unsupported(cx, tkey, t);
    if t.system_prompt_mode.is_some() && system_prompt.is_none() {
        cx.warn(
            format!("{tkey}.system_prompt_mode"),
            "has no effect: the target has no system_prompt",
        );
    }
    Some(Target {
        privacy,
        timeouts: policies::timeouts(&provider.timeouts, s.timeouts.as_ref()),
        retry: policies::retry(&provider.retry, s.retry.as_ref()),
        provider,
        model,
        weight: t.weight,
        cost: t.cost.map(|c| Cost {
            input: c.input,
            output: c.output,
            cached_input: c.cached_input.unwrap_or(c.input),
        }),
        system_prompt,
        system_prompt_mode: t.system_prompt_mode.unwrap_or_default(),
        accept_unsupported,
        params: t.params.clone().unwrap_or_default(),
        inputs,
    })
}

/// `accept_unsupported`: request features the target serves by dropping them.
fn accept_unsupported(cx: &mut Ctx, tkey: &str, t: &RawTarget) -> Features {
    let mut set = Features::NONE;
    for name in t.accept_unsupported.iter().flatten() {
        let key = format!("{tkey}.accept_unsupported");
        match Feature::from_name(name) {
            Some(f) if f.droppable() => set.insert(f),
            Some(_) => cx.error(
                key,
                format!("{name:?} cannot be dropped (only tools, response_format, n, logprobs)"),
            ),
            None => cx.error(
                key,
                format!(
                    "unknown feature {name:?} (droppable: tools, response_format, n, logprobs)"
                ),
            ),
        }
    }
    set
}

/// The target's `model` (blank = none), after checking the fields that depend on the type.
fn model(cx: &mut Ctx, tkey: &str, t: &RawTarget, provider: &Provider) -> Option<String> {
    let is_dify = matches!(provider.kind, ProviderKind::Dify(_));
    let model = t
        .model
        .as_ref()
        .map(|m| m.0.trim().to_owned())
        .filter(|m| !m.is_empty());
    if is_dify && model.is_some() {
        cx.error(
            format!("{tkey}.model"),
            "applies to openai, anthropic and mock providers only (a Dify app has its own model)",
        );
    }
    if !is_dify && t.inputs.is_some() {
        cx.error(format!("{tkey}.inputs"), "applies to dify providers only");
    }
    model
}

/// The system prompt's template source, read from its file when given as one. The file is
/// recorded even when unreadable, so the reload watcher picks it up once it appears.
fn system_prompt(cx: &mut Ctx, tkey: &str, t: &RawTarget, base_dir: &Path) -> Option<String> {
    match (&t.system_prompt, &t.system_prompt_file) {
        (Some(_), Some(_)) => {
            cx.error(tkey, "set system_prompt or system_prompt_file, not both");
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
    }
}

/// Hashes what shapes a scenario's answers: each target's upstream (type, URL, app settings),
/// model, prompt and input template sources, and params. Keys are not part of it.
pub(super) fn fingerprint(
    targets: &[Target],
    templates: &minijinja::Environment<'static>,
) -> [u8; 32] {
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
        h.update(
            format!(
                "{}|{:?}|{:?}|{:?}|{:?}|{}|",
                p.name, p.kind, p.url, t.model, t.system_prompt_mode, t.accept_unsupported
            )
            .as_bytes(),
        );
        if let ProviderKind::Dify(d) = &p.kind {
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

/// `default_scenario` as an index into the compiled scenarios; blank means none.
pub(super) fn default_scenario(
    cx: &mut Ctx,
    raw: &RawConfig,
    scenarios: &IndexMap<String, Scenario>,
) -> Option<usize> {
    match raw.default_scenario.as_ref().map(|s| s.0.trim()) {
        None | Some("") => None,
        Some(name) => {
            let index = scenarios.get_index_of(name);
            if index.is_none() {
                cx.error("default_scenario", format!("unknown scenario {name:?}"));
            }
            index
        }
    }
}

/// A fingerprint that also covers the output schema: a schema change misses the cache.
pub(super) fn with_output(fingerprint: [u8; 32], output: &crate::output::OutputSpec) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(fingerprint);
    h.update(output.schema.json.to_string().as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn the_fingerprint_follows_mock_settings() {
        let print = |knobs: &str| {
            let yaml = format!(
                "providers:\n  m: {{ type: mock{knobs} }}\nscenarios:\n  s: {{ targets: [{{ provider: m }}] }}\n"
            );
            load(&yaml).map(|c| c.scenarios[0].fingerprint).unwrap()
        };
        let plain = print("");
        assert_eq!(plain, print(""));
        assert_eq!(plain, print(", api_key: k"), "keys are not part of it");
        for knobs in [
            ", reply: hi",
            ", latency: 1s",
            ", chunk_delay: 1ms",
            ", fail_rate: 0.5",
            ", status: 503",
            ", retry_after: 1s",
            ", cut_after: 2",
        ] {
            assert_ne!(plain, print(knobs), "{knobs}");
        }
    }

    #[test]
    fn accept_unsupported_lists_only_droppable_features() {
        let yaml = |list: &str| {
            format!(
                "providers:\n  m: {{ type: mock }}\nscenarios:\n  s: {{ targets: [{{ provider: m, accept_unsupported: [{list}] }}] }}\n"
            )
        };
        let ok = load(&yaml("tools, n")).unwrap();
        assert_eq!(
            ok.scenarios[0].targets[0].accept_unsupported.to_string(),
            "tools,n"
        );
        let plain = load(&yaml("")).unwrap();
        assert_ne!(
            ok.scenarios[0].fingerprint, plain.scenarios[0].fingerprint,
            "dropping changes answers: not the same cache entries"
        );
        let e = super::super::tests::errors(&yaml("images, toolz"));
        assert!(e.contains(r#""images" cannot be dropped"#), "{e}");
        assert!(e.contains(r#"unknown feature "toolz""#), "{e}");
        let e = super::super::tests::errors(
            &yaml("tools").replace("accept_unsupported: [tools]", "system_prompt_mode: prefix"),
        );
        assert!(e.contains("system_prompt_mode"), "{e}");
    }
}
