//! A scenario's `experiment:`: its name, stickiness and variants. Each variant's targets are
//! compiled by the same code as a scenario's (`scenarios::targets`), and each variant becomes a
//! full [`Scenario`] made from its parent by [`variant_scenario`], so the request path serves
//! the chosen variant like any scenario.

use super::scenarios::{self, Scope};
use super::Ctx;
use crate::config::raw::{RawExperiment, RawScenario};
use crate::config::{Experiment, Scenario, Strategy, Target, Variant};
use indexmap::IndexMap;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// Names that travel in a header (`x-gateway-variant: <experiment>/<variant>`) and a metric
/// label: short, and without `/`, spaces or anything that needs escaping.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const NAME_RULE: &str = "must be 1 to 64 characters of A-Z a-z 0-9 _ . -";

/// Gives every scenario with `experiment:` its compiled experiment (and the fingerprint of its
/// variants).
pub(super) fn attach(
    cx: &mut Ctx,
    raw: &IndexMap<String, RawScenario>,
    scenarios: &mut IndexMap<String, Scenario>,
    scope: &Scope<'_>,
    templates: &mut minijinja::Environment<'static>,
) {
    // Experiment name → its scenario: an experiment's assignment and stats go by its name.
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for (name, s) in raw {
        let (Some(e), Some(parent)) = (&s.experiment, scenarios.get_mut(name)) else {
            continue;
        };
        let key = format!("scenarios.{name}");
        if let Some(other) = owners.insert(&e.name, name) {
            cx.error(
                format!("{key}.experiment.name"),
                format!(
                    "experiment {:?} is already used by scenario {other:?}",
                    e.name
                ),
            );
        }
        let experiment = compile(cx, &key, e, s, parent, scope, templates);
        parent.fingerprint = fingerprint_of(&experiment);
        parent.experiment = Some(experiment);
    }
}

/// The experiment of scenario `parent` (already compiled, without targets), under `key`.
fn compile(
    cx: &mut Ctx,
    key: &str,
    raw: &RawExperiment,
    s: &RawScenario,
    parent: &Scenario,
    scope: &Scope<'_>,
    templates: &mut minijinja::Environment<'static>,
) -> Experiment {
    let ekey = format!("{key}.experiment");
    if !valid_name(&raw.name) {
        cx.error(format!("{ekey}.name"), NAME_RULE);
    }
    if raw.variants.len() < 2 {
        cx.error(
            format!("{ekey}.variants"),
            "an experiment needs at least two variants",
        );
    }
    let mut names = HashSet::new();
    let mut total = 0.0;
    let mut variants = Vec::with_capacity(raw.variants.len());
    for (i, v) in raw.variants.iter().enumerate() {
        let vkey = format!("{ekey}.variants[{i}]");
        if !valid_name(&v.name) {
            cx.error(format!("{vkey}.name"), NAME_RULE);
        } else if !names.insert(v.name.as_str()) {
            cx.error(
                format!("{vkey}.name"),
                format!("variant {:?} is listed twice", v.name),
            );
        }
        if v.weight.is_finite() && v.weight >= 0.0 {
            total += v.weight;
        } else {
            cx.error(format!("{vkey}.weight"), "must be a number ≥ 0");
        }
        // A variant without its own strategy takes the scenario's.
        let strategy = v.strategy.or(s.strategy).unwrap_or_default();
        let targets = scenarios::targets(cx, &vkey, &v.targets, strategy, s, scope, templates);
        let fingerprint = variant_fingerprint(
            &scenarios::fingerprint(&targets, templates),
            &raw.name,
            &v.name,
        );
        variants.push(Variant {
            name: v.name.clone(),
            weight: v.weight,
            scenario: variant_scenario(parent, &raw.name, &v.name, strategy, targets, fingerprint),
        });
    }
    if raw.variants.len() >= 2 && total <= 0.0 {
        cx.error(
            format!("{ekey}.variants"),
            "the variants' weights must add up to more than zero",
        );
    }
    Experiment {
        name: raw.name.clone(),
        sticky: raw.sticky.unwrap_or_default(),
        variants,
    }
}

/// The one place a variant's scenario is made: the parent's name, models, matcher and cache
/// (and whatever else describes the scenario rather than its upstreams), with the variant's
/// strategy and targets, its own fingerprint and its `<experiment>/<variant>` tag.
fn variant_scenario(
    parent: &Scenario,
    experiment: &str,
    variant: &str,
    strategy: Strategy,
    targets: Vec<Target>,
    fingerprint: [u8; 32],
) -> Scenario {
    Scenario {
        name: parent.name.clone(),
        models: parent.models.clone(),
        matcher: parent.matcher.clone(),
        strategy,
        targets,
        cache_ttl: parent.cache_ttl,
        // The output schema holds for every variant.
        fingerprint: match &parent.output {
            Some(o) => scenarios::with_output(fingerprint, o),
            None => fingerprint,
        },
        output: parent.output.clone(),
        experiment: None,
        variant: Some(format!("{experiment}/{variant}")),
    }
}

/// A variant's answers are its own: two variants with the same targets still never share
/// cache entries, so each variant's figures describe its own traffic.
fn variant_fingerprint(targets: &[u8; 32], experiment: &str, variant: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(targets);
    h.update(experiment.as_bytes());
    h.update([0]);
    h.update(variant.as_bytes());
    h.finalize().into()
}

/// The parent scenario's fingerprint: every variant's, in order (the parent itself never
/// serves a request).
pub(super) fn fingerprint_of(e: &Experiment) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in &e.variants {
        h.update(v.scenario.fingerprint);
        h.update(v.weight.to_le_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, load};

    const PROVIDERS: &str =
        "providers:\n  a: { type: mock, reply: A }\n  b: { type: mock, reply: B }\n";

    fn yaml(scenarios: &str) -> String {
        format!("{PROVIDERS}scenarios:\n{scenarios}")
    }

    #[test]
    fn variants_are_full_scenarios_with_their_own_targets() {
        let cfg = load(&yaml(
            "  s:\n    models: [alias]\n    cache: { ttl: 60s }\n    experiment:\n      name: e1\n      variants:\n        - { name: control, weight: 50, targets: [{ provider: a }] }\n        - { name: v2, weight: 50, strategy: round_robin, targets: [{ provider: b }, { provider: a, system_prompt: hi }] }\n",
        ))
        .unwrap();
        let s = &cfg.scenarios["s"];
        assert!(s.targets.is_empty());
        let e = s.experiment.as_ref().unwrap();
        assert_eq!(e.name, "e1");
        assert_eq!(e.sticky, crate::config::Sticky::User);
        let [control, v2] = &e.variants[..] else {
            panic!("two variants")
        };
        assert_eq!(control.scenario.name, "s");
        assert_eq!(control.scenario.models, ["alias"]);
        assert_eq!(control.scenario.cache_ttl, s.cache_ttl);
        assert_eq!(control.scenario.variant.as_deref(), Some("e1/control"));
        assert_eq!(v2.scenario.strategy, crate::config::Strategy::RoundRobin);
        assert_eq!(v2.scenario.targets.len(), 2);
        assert!(v2.scenario.targets[1].system_prompt.is_some());
        assert_ne!(control.scenario.fingerprint, v2.scenario.fingerprint);
        assert_eq!(s.all_targets().count(), 3);
    }

    #[test]
    fn experiment_mistakes_are_load_errors_naming_the_scenario() {
        let e = errors(&yaml(
            "  both:\n    targets: [{ provider: a }]\n    experiment: { name: x, variants: [{ name: a, weight: 1, targets: [{ provider: a }] }, { name: b, weight: 1, targets: [{ provider: b }] }] }\n  one:\n    experiment: { name: y, variants: [{ name: only, weight: 1, targets: [{ provider: a }] }] }\n  dup:\n    experiment: { name: x, variants: [{ name: a, weight: 1, targets: [{ provider: a }] }, { name: a, weight: -1, targets: [] }] }\n  zero:\n    experiment: { name: 'bad name', variants: [{ name: a/b, weight: 0, targets: [{ provider: a }] }, { name: c, weight: 0, targets: [{ provider: zz }] }] }\n",
        ));
        for want in [
            "scenarios.both: error: set `targets` or `experiment`, not both",
            "scenarios.one.experiment.variants: error: an experiment needs at least two variants",
            "scenarios.dup.experiment.variants[1].name: error: variant \"a\" is listed twice",
            "scenarios.dup.experiment.variants[1].weight: error: must be a number ≥ 0",
            "scenarios.dup.experiment.variants[1].targets: error: at least one target is required",
            "scenarios.dup.experiment.name: error: experiment \"x\" is already used by scenario \"both\"",
            "scenarios.zero.experiment.name: error: must be 1 to 64 characters",
            "scenarios.zero.experiment.variants[0].name: error: must be 1 to 64 characters",
            "scenarios.zero.experiment.variants: error: the variants' weights must add up to more than zero",
            "scenarios.zero.experiment.variants[1].targets[0].provider: error: unknown provider \"zz\"",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = errors(&yaml(
            "  s:\n    experiment: { name: x, sticky: forever, variants: [] }\n",
        ));
        assert!(e.contains("unknown variant `forever`"), "{e}");
    }
}
