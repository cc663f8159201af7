//! The OpenAI-compatible API listener: `/v1/chat/completions`, `/v1/models`, `/health`.

use crate::cache::{self, Control, Lookup};
use crate::config::{Client, Config, Scenario};
use crate::error::GatewayError;
use crate::exchange::{self, RequestCtx};
use crate::filters::{auth, scenario};
use crate::forward;
use crate::limits::{self, Demand, Used};
use crate::protocol::{ChatRequest, RequestHints};
use crate::providers::TemplateVars;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;
use std::time::Duration;

/// A header as UTF-8 text: profile values carry names in Chinese, which `to_str` (visible
/// ASCII only) would drop.
fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

fn route_error(session: &Session, allowed: &str) -> GatewayError {
    let method = session.req_header().method.as_str().to_owned();
    let path = session.req_header().uri.path().to_owned();
    if method == allowed {
        GatewayError::NotFound { method, path }
    } else {
        GatewayError::MethodNotAllowed { method, path }
    }
}

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let method = session.req_header().method.clone();
    let path = session.req_header().uri.path().to_owned();
    match (path.as_str(), method.as_str()) {
        ("/v1/chat/completions" | "/chat/completions", "POST") => {
            ctx.metered = true;
            chat(shared, session, ctx).await
        }
        ("/v1/models" | "/models", "GET") => models(shared, session, ctx).await,
        ("/health", "GET" | "HEAD") => {
            exchange::write_health(session, ctx).await;
            Ok(())
        }
        ("/v1/chat/completions" | "/chat/completions", _) => Err(route_error(session, "POST")),
        ("/v1/models" | "/models" | "/health", _) => Err(route_error(session, "GET")),
        _ => Err(GatewayError::NotFound {
            method: method.as_str().to_owned(),
            path,
        }),
    }
}

async fn models(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    auth::authenticate(config, super::authorization(session))?;
    let mut data = Vec::new();
    for s in config.scenarios.values() {
        for id in std::iter::once(&s.name).chain(s.models.iter()) {
            data.push(json!({
                "id": id,
                "object": "model",
                "created": state.loaded_at,
                "owned_by": "ai-gateway",
                "scenario": s.name,
            }));
        }
    }
    let body = json!({"object": "list", "data": data}).to_string();
    let _ = exchange::write_json(session, ctx, 200, Bytes::from(body)).await;
    Ok(())
}

async fn chat(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    // One snapshot for the whole request: a reload mid-request never mixes two configs.
    let state = shared.snapshot();
    let config = &state.config;
    let client = auth::authenticate(config, super::authorization(session))?;
    ctx.client = client.map(|c| c.name.clone());

    let hints = RequestHints {
        scenario: header(session, "x-gateway-scenario").map(str::to_owned),
        session: header(session, "x-gateway-session").map(str::to_owned),
        user_profile: header(session, "x-gateway-user-profile").map(str::to_owned),
    };
    let body = crate::server::read_body(session, config.max_body).await?;
    let req = ChatRequest::parse(&body, &hints)?;
    ctx.stream = Some(req.stream);
    ctx.session = req.session.clone().filter(|s| exchange::echoable(s));

    let idx = scenario::resolve(
        config,
        &req,
        hints.scenario.as_deref(),
        &session.req_header().headers,
        client,
    )?;
    let scenario = &config.scenarios[idx];
    ctx.scenario = Some(scenario.name.clone());

    let default_user =
        client.map_or_else(|| "gateway".to_owned(), |c| format!("gateway-{}", c.name));
    let vars = TemplateVars {
        scenario: &scenario.name,
        user: req.user.as_deref().unwrap_or(&default_user),
    };

    // Client limits: reserve before anything is contacted, settle with what was really used.
    let limited = client.filter(|c| {
        c.rpm.is_some() || c.tpm.is_some() || c.budget.is_some() || c.max_concurrency.is_some()
    });
    let Some(c) = limited else {
        return answer(
            shared, session, ctx, config, scenario, client, &req, &hints, body, &vars,
        )
        .await;
    };
    let counts_tokens = c.tpm.is_some() || c.budget.is_some();
    let prompt_estimate = if counts_tokens {
        limits::prompt_tokens(&req.messages)
    } else {
        0
    };
    let completion_estimate = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.rest.iter().find(|(n, _)| n == k))
        .and_then(|(_, v)| v.get().parse::<u64>().ok())
        .unwrap_or(config.completion_estimate);
    let demand = Demand {
        tokens: if counts_tokens {
            prompt_estimate + completion_estimate
        } else {
            0
        },
        // The dearest target of the scenario: routing may pick any of them.
        usd: scenario
            .targets
            .iter()
            .map(|t| limits::usd(t.cost, prompt_estimate, completion_estimate))
            .fold(0.0, f64::max),
    };
    let ticket = match shared.limits.admit(c, demand) {
        Ok((ticket, headers)) => {
            ctx.extra_headers = headers;
            ticket
        }
        Err(refusal) => {
            ctx.extra_headers = refusal.headers;
            shared
                .metrics
                .rate_limited_total
                .with_label_values(&[&c.name, refusal.limit])
                .inc();
            return Err(*refusal.error);
        }
    };
    if counts_tokens {
        ctx.delivered = Some(String::new());
    }
    let result = answer(
        shared, session, ctx, config, scenario, client, &req, &hints, body, &vars,
    )
    .await;
    // Cache hits and failures before any content cost nothing. Without upstream usage, the
    // prompt estimate and the text really delivered are charged.
    let (prompt, completion) = if ctx.cache == "hit" || ctx.ttft.is_none() {
        (0, 0)
    } else {
        match (ctx.prompt_tokens, ctx.completion_tokens) {
            (Some(p), Some(c)) => (p, c),
            _ => (
                prompt_estimate,
                ctx.delivered.as_deref().map_or(0, limits::count_tokens),
            ),
        }
    };
    let spent = limits::usd(ctx.cost, prompt, completion);
    ctx.spent = Some(spent);
    shared.limits.settle(
        ticket,
        Used {
            tokens: prompt + completion,
            usd: spent,
        },
    );
    result
}

/// The answer itself: from the cache, or from the upstreams (storing it when allowed).
#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &Config,
    scenario: &Scenario,
    client: Option<&Client>,
    req: &ChatRequest,
    hints: &RequestHints,
    body: Bytes,
    vars: &TemplateVars<'_>,
) -> Result<(), GatewayError> {
    let Some(ttl) = scenario.cache_ttl else {
        ctx.cache = "off";
        return Box::pin(forward::serve(
            shared, session, ctx, config, scenario, req, vars,
        ))
        .await;
    };
    let lookups = |result: &str| {
        shared
            .metrics
            .cache_lookups_total
            .with_label_values(&[&scenario.name, result])
            .inc();
    };
    let control = cache::control(header(session, "cache-control"));
    // A session's turns depend on Dify-side history: never cached.
    if req.session.is_some() || control == Control::NoStore {
        ctx.cache = "bypass";
        lookups("bypass");
        return Box::pin(forward::serve(
            shared, session, ctx, config, scenario, req, vars,
        ))
        .await;
    }
    let client_name = client.map(|c| c.name.as_str());
    let raw = cache::raw_key(scenario, client_name, hints.user_profile.as_deref(), &body);
    drop(body);
    let key = shared
        .cache
        .key_for(raw, || cache::key(scenario, client_name, req));
    let flight = match control {
        Control::Refresh => {
            ctx.cache = "bypass";
            lookups("bypass");
            None
        }
        Control::Normal | Control::MaxAge(_) => {
            let max_age = match control {
                Control::MaxAge(n) => Some(n),
                _ => None,
            };
            match shared.cache.lookup(&key, max_age) {
                Lookup::Hit(entry) => {
                    lookups("hit");
                    return write_hit(session, ctx, &entry, req).await;
                }
                Lookup::Follow(rx) => {
                    // Wait for the identical request in flight, as long as a first token may take.
                    let limit = scenario
                        .targets
                        .first()
                        .map_or(Duration::from_secs(60), |t| t.timeouts.first_token);
                    if let Some(entry) = cache::follow(rx, limit).await {
                        lookups("coalesced");
                        return write_hit(session, ctx, &entry, req).await;
                    }
                    ctx.cache = "miss";
                    lookups("miss");
                    None
                }
                Lookup::Lead(flight) => {
                    ctx.cache = "miss";
                    lookups("miss");
                    Some(flight)
                }
            }
        }
        Control::NoStore => None,
    };
    ctx.capture = Some(cache::Capture {
        slot: Some((key, ttl)),
        ..Default::default()
    });
    let result = Box::pin(forward::serve(
        shared, session, ctx, config, scenario, req, vars,
    ))
    .await;
    let entry = ctx.capture.take().and_then(|c| c.stored);
    if let Some(f) = flight {
        f.finish(entry);
    }
    result
}

/// Answers from the cache: a `chat.completion`, or the answer replayed as an SSE stream.
async fn write_hit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    entry: &cache::Entry,
    req: &ChatRequest,
) -> Result<(), GatewayError> {
    ctx.cache = "hit";
    let body = cache::render(entry, req.stream, req.include_usage);
    let ct = if req.stream {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    let age = entry.age().as_secs().to_string();
    let ct = http::HeaderValue::from_static(ct);
    let _ = exchange::write_full(session, ctx, 200, ct, body, &[("age", age)]).await;
    Ok(())
}
