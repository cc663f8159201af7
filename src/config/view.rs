//! The effective configuration as `GET /admin/config` shows it: every value after environment
//! expansion and defaults, with every secret (provider, client and admin keys) shown as `***`.

use super::{Config, Provider, ProviderKind, Secret, Target, Timeouts};
use serde_json::{json, Value};
use std::time::Duration;

fn secret(s: &Option<Secret>) -> Value {
    // Whether a key is set is useful to an operator (an unset key skips the provider); its
    // value never leaves the process.
    match s {
        Some(_) => json!("***"),
        None => Value::Null,
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn timeouts(t: &Timeouts) -> Value {
    json!({
        "connect": secs(t.connect),
        "first_token": secs(t.first_token),
        "idle": secs(t.idle),
        "total": secs(t.total),
    })
}

fn provider(p: &Provider) -> Value {
    let u = &p.url;
    let mut v = json!({
        "type": p.type_name(),
        "base_url": format!("{}://{}{}", if u.tls { "https" } else { "http" }, u.host_header(), u.base_path),
        "api_key": secret(&p.api_key),
        "timeouts": timeouts(&p.timeouts),
        "retry": {"attempts": p.retry.attempts, "backoff": secs(p.retry.backoff), "max_backoff": secs(p.retry.max_backoff)},
        "breaker": {
            "failure_threshold": p.breaker.failure_threshold,
            "open_for": secs(p.breaker.open_for),
            "success_threshold": p.breaker.success_threshold,
            "half_open_probes": p.breaker.half_open_probes,
        },
        "max_concurrency": p.max_concurrency,
    });
    match &p.kind {
        ProviderKind::OpenAi => {}
        ProviderKind::Dify(d) => {
            v["app"] = json!(d.app);
            v["query_input"] = json!(d.query_input);
            v["output"] = json!(d.output);
            v["inputs"] = json!(d.inputs.keys().collect::<Vec<_>>());
            v["system_input"] = json!(d.system_input);
            v["reasoning"] = json!(d.reasoning);
        }
        ProviderKind::Anthropic(a) => {
            v["version"] = json!(a.version);
            v["beta"] = json!(a.beta);
        }
        ProviderKind::Mock(m) => {
            // Its URL is a placeholder that is never connected to; showing it would mislead.
            v["base_url"] = Value::Null;
            v["reply"] = json!(m.reply);
            v["latency"] = json!(secs(m.latency));
            v["chunk_delay"] = json!(secs(m.chunk_delay));
            v["fail_rate"] = json!(m.fail_rate);
            v["status"] = json!(m.status);
            v["retry_after"] = json!(m.retry_after.map(|s| secs(Duration::from_secs(s))));
            v["cut_after"] = json!(m.cut_after);
        }
    }
    v
}

fn template(config: &Config, name: &Option<String>) -> Value {
    name.as_deref()
        .and_then(|n| config.templates.get_template(n).ok())
        .map_or(Value::Null, |t| json!(t.source()))
}

fn target(config: &Config, t: &Target) -> Value {
    json!({
        "provider": t.provider.name,
        "model": t.model,
        "weight": t.weight,
        "cost": t.cost.map(|c| json!({"input": c.input, "output": c.output, "cached_input": c.cached_input})),
        "system_prompt": template(config, &t.system_prompt),
        "params": t.params,
        "inputs": t.inputs.iter().map(|(k, v)| (k.clone(), template(config, &Some(v.clone())))).collect::<serde_json::Map<_, _>>(),
        "timeouts": timeouts(&t.timeouts),
        "retry": {"attempts": t.retry.attempts, "backoff": secs(t.retry.backoff), "max_backoff": secs(t.retry.max_backoff)},
    })
}

/// The redacted effective configuration.
pub fn redacted(config: &Config) -> Value {
    let clients = config.clients.as_ref().map(|cs| {
        cs.iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "api_key": secret(&c.api_key),
                    "scenarios": c.scenarios.clone().unwrap_or_else(|| vec!["*".into()]),
                    "rpm": c.rpm,
                    "tpm": c.tpm,
                    "budget": c.budget.map(|b| match b.limit {
                        super::BudgetLimit::Usd(usd) => json!({"usd": usd, "per": b.per}),
                        super::BudgetLimit::Tokens(n) => json!({"tokens": n, "per": b.per}),
                    }),
                    "max_concurrency": c.max_concurrency,
                    "pick_variant": c.pick_variant,
                })
            })
            .collect::<Vec<_>>()
    });
    let providers: serde_json::Map<String, Value> = config
        .providers
        .iter()
        .map(|(name, p)| (name.clone(), provider(p)))
        .collect();
    let scenarios: serde_json::Map<String, Value> = config
        .scenarios
        .iter()
        .map(|(name, s)| {
            let matcher = s.matcher.as_ref().map(|m| {
                json!({
                    "headers": m.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "metadata": m.metadata.iter().cloned().collect::<serde_json::Map<_, _>>(),
                    "clients": m.clients,
                })
            });
            (
                name.clone(),
                json!({
                    "models": s.models,
                    "match": matcher,
                    "strategy": s.strategy,
                    "targets": s.targets.iter().map(|t| target(config, t)).collect::<Vec<_>>(),
                    "cache": s.cache_ttl.map(|t| json!({"ttl": secs(t)})),
                    "experiment": s.experiment.as_ref().map(|e| json!({
                        "name": e.name,
                        "sticky": e.sticky,
                        "variants": e.variants.iter().map(|v| json!({
                            "name": v.name,
                            "weight": v.weight,
                            "strategy": v.scenario.strategy,
                            "targets": v.scenario.targets.iter().map(|t| target(config, t)).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    })),
                }),
            )
        })
        .collect();
    json!({
        "file": config.path.display().to_string(),
        "listen": config.listen.to_string(),
        "threads": config.threads,
        "admin": {"listen": config.admin_listen.to_string(), "api_key": secret(&config.admin_api_key)},
        "limits": {"max_body": config.max_body, "completion_estimate": config.completion_estimate},
        "clients": clients,
        "providers": providers,
        "scenarios": scenarios,
        "default_scenario": config.default_scenario.and_then(|i| config.scenarios.get_index(i)).map(|(n, _)| n),
        "cache": {"max_entries": config.cache_max_entries, "max_bytes": config.cache_max_bytes, "max_entry_bytes": config.cache_max_entry_bytes},
        "state": {
            "backend": config.state.backend,
            "url": config.state.url.as_ref().map(|u| super::compile::state::redact_url(u.expose())),
            "prefix": config.state.prefix,
            "timeout": secs(config.state.timeout),
            "on_error": config.state.on_error,
        },
        "log": {"level": config.log_level, "format": config.log_format},
        "shutdown": {"grace_period": secs(config.grace_period)},
    })
}

#[cfg(test)]
mod tests {
    use super::redacted;
    use crate::config::Config;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn a_mock_provider_shows_its_settings_and_no_url() {
        let yaml = "providers:\n  m: { type: mock, reply: hi, latency: 250ms, fail_rate: 0.5, status: 503, retry_after: 2s }\nscenarios:\n  s: { targets: [{ provider: m }] }\n";
        let cfg = Config::from_str_at(yaml, Path::new("t.yaml")).unwrap();
        let m = &redacted(&cfg)["providers"]["m"];
        assert_eq!(m["type"], "mock");
        assert_eq!(m["base_url"], json!(null));
        assert_eq!(m["api_key"], json!(null));
        assert_eq!(m["reply"], "hi");
        assert_eq!(m["latency"], "250ms");
        assert_eq!(m["chunk_delay"], "0s");
        assert_eq!(m["fail_rate"], 0.5);
        assert_eq!(m["status"], 503);
        assert_eq!(m["retry_after"], "2s");
        assert_eq!(m["cut_after"], json!(null));
    }

    #[test]
    fn an_anthropic_provider_shows_its_version_and_beta_but_not_its_key() {
        let yaml = "providers:\n  c: { type: anthropic, base_url: \"https://api.anthropic.com/v1\", api_key: sk-ant-secret, beta: [prompt-caching-2024-07-31] }\nscenarios:\n  s: { targets: [{ provider: c, model: claude-sonnet-4-5 }] }\n";
        let cfg = Config::from_str_at(yaml, Path::new("t.yaml")).unwrap();
        let v = redacted(&cfg);
        let c = &v["providers"]["c"];
        assert_eq!(c["type"], "anthropic");
        assert_eq!(c["base_url"], "https://api.anthropic.com/v1");
        assert_eq!(c["api_key"], "***");
        assert_eq!(c["version"], "2023-06-01");
        assert_eq!(c["beta"], json!(["prompt-caching-2024-07-31"]));
        assert!(!v.to_string().contains("sk-ant-secret"));
    }

    #[test]
    fn the_redis_password_is_never_shown() {
        let yaml = "providers:\n  m: {type: mock}\nscenarios:\n  s: {targets: [{provider: m}]}\nstate: { backend: redis, url: \"redis://app:hunter2@redis.svc:6379/1\", on_error: closed }\n";
        let cfg = Config::from_str_at(yaml, Path::new("t.yaml")).unwrap();
        let v = redacted(&cfg);
        assert_eq!(v["state"]["url"], "redis://app:***@redis.svc:6379/1");
        assert_eq!(v["state"]["backend"], "redis");
        assert_eq!(v["state"]["on_error"], "closed");
        assert_eq!(v["state"]["timeout"], "50ms");
        assert!(!v.to_string().contains("hunter2"));
    }
}
