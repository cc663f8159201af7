//! The `providers:` section: each upstream's URL, key, policies and type-specific settings.

use super::policies::{self, Policies};
use super::{add_template, parse_url, secret, Ctx};
use crate::config::raw::{DifyApp, ProviderType, RawProvider};
use crate::config::units::Secret;
use crate::config::{DifySettings, Provider, ProviderKind, UpstreamUrl};
use indexmap::IndexMap;
use std::sync::Arc;

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
    let url = parse_url(cx, &format!("{key}.base_url"), p.base_url.0.trim());
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
            reject_dify_fields(cx, &key, p);
            ProviderKind::OpenAi
        }
        ProviderType::Dify => ProviderKind::Dify(dify(cx, &key, p, templates)?),
    };
    // A broken URL is already an error; a placeholder keeps checking the scenarios that use
    // this provider, so one run reports everything.
    let url = url.unwrap_or(UpstreamUrl {
        tls: false,
        host: String::new(),
        port: 0,
        base_path: String::new(),
    });
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
    if api_key.is_none() {
        cx.warn(
            format!("{key}.api_key"),
            "is empty; routing skips this provider until a key is set",
        );
    }
    api_key
}

fn reject_dify_fields(cx: &mut Ctx, key: &str, p: &RawProvider) {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{load, BASE};
    use crate::config::{DifyApp, ProviderKind, UpstreamUrl};
    use std::time::Duration;

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
}
