//! The `clients:` section: names, keys, allowed scenarios and limits, and the client names that
//! scenario matchers refer to.

use super::{secret, Ctx};
use crate::config::raw::{RawBudget, RawClient, RawScenario};
use crate::config::{Budget, BudgetLimit, Client};
use indexmap::IndexMap;
use std::collections::HashSet;

/// `None` when the section is absent: no client authentication.
pub(super) fn compile(
    cx: &mut Ctx,
    raw: Option<&[RawClient]>,
    scenarios: &IndexMap<String, RawScenario>,
) -> Option<Vec<Client>> {
    let list = raw?;
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
            // A shared key would make the client, and so its limits, ambiguous.
            Some(k) if !keys.insert(k.expose().to_owned()) => cx.error(
                format!("{key}.api_key"),
                "the same key is given to two clients",
            ),
            Some(_) => {}
        }
        let scenarios_allowed = allowed_scenarios(cx, &key, c, scenarios);
        let budget = c.budget.as_ref().and_then(|b| budget(cx, &key, b));
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
            pick_variant: c.pick_variant.unwrap_or(false),
        });
    }
    Some(out)
}

/// `None` = every scenario (absent, or `"*"` anywhere in the list).
fn allowed_scenarios(
    cx: &mut Ctx,
    key: &str,
    c: &RawClient,
    scenarios: &IndexMap<String, RawScenario>,
) -> Option<Vec<String>> {
    let list = c.scenarios.as_ref()?;
    if list.iter().any(|s| s == "*") {
        return None;
    }
    for s in list {
        if !scenarios.contains_key(s) {
            cx.error(
                format!("{key}.scenarios"),
                format!("unknown scenario {s:?}"),
            );
        }
    }
    Some(list.clone())
}

fn budget(cx: &mut Ctx, key: &str, b: &RawBudget) -> Option<Budget> {
    let limit = match (b.usd, b.tokens) {
        (Some(usd), None) if usd > 0.0 && usd.is_finite() => BudgetLimit::Usd(usd),
        (None, Some(tokens)) if tokens > 0 => BudgetLimit::Tokens(tokens),
        _ => {
            cx.error(
                format!("{key}.budget"),
                "set exactly one of `usd` or `tokens`, greater than zero",
            );
            return None;
        }
    };
    Some(Budget { limit, per: b.per })
}

/// Scenario matchers may only name clients that exist; checked once both sections are read.
pub(super) fn check_matchers(
    cx: &mut Ctx,
    scenarios: &IndexMap<String, RawScenario>,
    clients: Option<&[RawClient]>,
) {
    for (name, s) in scenarios {
        let Some(m) = &s.matcher else { continue };
        for client in &m.clients {
            if !clients.into_iter().flatten().any(|c| &c.name == client) {
                cx.error(
                    format!("scenarios.{name}.match.clients"),
                    format!("unknown client {client:?}"),
                );
            }
        }
    }
}
