//! Scenario resolution, DESIGN §1.2: header, `metadata.scenario`, model name or alias, the first
//! `match:` that holds, then `default_scenario`. The default serves requests that name no model;
//! a `model` that is neither a scenario nor an alias (and is not routed by steps 1, 2 or 4) is
//! answered 404 `model_not_found`, so a typo never reaches an upstream silently.

use crate::config::{Client, Config, Match};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use serde_json::Value;

/// Read access to request headers, so resolution does not depend on pingora types.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Headers for http::HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        http::HeaderMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

fn matches(m: &Match, req: &ChatRequest, headers: &dyn Headers, client: Option<&Client>) -> bool {
    m.headers
        .iter()
        .all(|(name, want)| headers.get(name) == Some(want.as_str()))
        && m.metadata
            .iter()
            .all(|(key, want)| match (req.metadata.get(key), want) {
                (Some(got), want) if got == want => true,
                // YAML `true`/`1` should match a client that sent the string form, and vice versa.
                (Some(Value::String(got)), want) => want
                    .as_str()
                    .map_or_else(|| want.to_string().as_str() == got.as_str(), |w| w == got),
                _ => false,
            })
        && (m.clients.is_empty() || client.is_some_and(|c| m.clients.contains(&c.name)))
}

/// The index of the scenario in `config.scenarios`, already checked against the client's
/// allow-list.
pub fn resolve(
    config: &Config,
    req: &ChatRequest,
    header_scenario: Option<&str>,
    headers: &dyn Headers,
    client: Option<&Client>,
) -> Result<usize, GatewayError> {
    let named = |name: &str, source: &str| {
        config.scenario_index(name).ok_or_else(|| {
            GatewayError::ModelNotFound(format!("unknown scenario {name:?} (from {source})"))
        })
    };
    let idx = if let Some(name) = header_scenario {
        named(name, "header x-gateway-scenario")?
    } else if let Some(name) = &req.scenario {
        named(name, "metadata.scenario")?
    } else if let Some(i) = req.model.as_deref().and_then(|m| config.models.get(m)) {
        *i
    } else if let Some(i) = config.scenarios.values().position(|s| {
        s.matcher
            .as_ref()
            .is_some_and(|m| matches(m, req, headers, client))
    }) {
        i
    } else if let (Some(i), None) = (
        config.default_scenario,
        req.model.as_deref().filter(|m| !m.is_empty()),
    ) {
        // An explicit model that names nothing is a client error, not a reason to fall back:
        // a typo must not silently reach the default scenario's upstream.
        i
    } else {
        return Err(GatewayError::ModelNotFound(match &req.model {
            Some(m) => {
                format!("the model {m:?} does not exist: no scenario or alias has that name")
            }
            None => "no scenario applies to this request and no default_scenario is set".into(),
        }));
    };
    let scenario = &config.scenarios[idx];
    if let Some(c) = client {
        if !c.allows(&scenario.name) {
            return Err(GatewayError::ScenarioForbidden(scenario.name.clone()));
        }
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RequestHints;
    use std::collections::HashMap;
    use std::path::Path;

    impl Headers for HashMap<&str, &str> {
        fn get(&self, name: &str) -> Option<&str> {
            HashMap::get(self, name).copied()
        }
    }

    const YAML: &str = r#"
providers:
  p: { type: openai, base_url: "http://127.0.0.1:1/v1", api_key: k }
clients:
  - { name: a, api_key: ka, scenarios: [one, two, matched] }
  - { name: b, api_key: kb }
scenarios:
  one: { models: [alias-one], targets: [{ provider: p }] }
  two: { targets: [{ provider: p }] }
  matched:
    match: { headers: { x-app: crm }, metadata: { tier: 1 } }
    targets: [{ provider: p }]
  for_b:
    match: { clients: [b] }
    targets: [{ provider: p }]
default_scenario: two
"#;

    fn req(body: &str) -> ChatRequest {
        ChatRequest::parse(body.as_bytes(), &RequestHints::default()).unwrap()
    }

    #[test]
    fn resolution_order() {
        let cfg = Config::from_str_at(YAML, Path::new("t.yaml")).unwrap();
        let a = cfg.clients.as_ref().unwrap().first();
        let b = cfg.clients.as_ref().unwrap().get(1);
        let none: HashMap<&str, &str> = HashMap::new();
        let crm: HashMap<&str, &str> = [("x-app", "crm")].into();
        let name = |i: usize| cfg.scenarios[i].name.clone();
        let m = |s| r#"{"messages":[{"role":"user","content":"x"}]"#.to_owned() + s + "}";

        // 1. header wins over everything
        let r = req(&m(r#","model":"alias-one","metadata":{"scenario":"one"}"#));
        assert_eq!(
            name(resolve(&cfg, &r, Some("two"), &none, a).unwrap()),
            "two"
        );
        // 2. metadata.scenario
        assert_eq!(name(resolve(&cfg, &r, None, &none, a).unwrap()), "one");
        // 3. model alias
        let r = req(&m(r#","model":"alias-one""#));
        assert_eq!(name(resolve(&cfg, &r, None, &none, a).unwrap()), "one");
        // 4. match: all conditions must hold
        let r = req(&m(r#","metadata":{"tier":"1"}"#));
        assert_eq!(name(resolve(&cfg, &r, None, &crm, a).unwrap()), "matched");
        assert_eq!(name(resolve(&cfg, &r, None, &none, a).unwrap()), "two");
        let plain = req(&m(""));
        assert_eq!(
            name(resolve(&cfg, &plain, None, &none, b).unwrap()),
            "for_b"
        );
        // 5. default
        assert_eq!(name(resolve(&cfg, &plain, None, &none, a).unwrap()), "two");
        // unknown names and forbidden scenarios
        assert_eq!(
            resolve(&cfg, &plain, Some("zzz"), &none, a)
                .unwrap_err()
                .code(),
            "model_not_found"
        );
        let r = req(&m(r#","model":"gpt-unknown""#));
        assert_eq!(
            resolve(&cfg, &r, None, &none, a).unwrap_err().code(),
            "model_not_found"
        );
        let r = req(&m(r#","model":"gpt-unknown","metadata":{"tier":1}"#));
        assert_eq!(name(resolve(&cfg, &r, None, &crm, a).unwrap()), "matched");
        assert_eq!(
            resolve(&cfg, &plain, Some("for_b"), &none, a)
                .unwrap_err()
                .code(),
            "scenario_forbidden"
        );
    }
}
