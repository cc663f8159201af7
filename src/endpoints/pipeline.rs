//! The pipeline every front door shares once a request is parsed, top to bottom: resolve the
//! scenario → refuse what no target can serve (the operation, then the features) → reserve
//! client limits → answer from the cache or forward to the upstreams (storing the answer when
//! allowed) → settle the limits with what was used. Answers and errors are written in the
//! client's dialect (`ctx.dialect`). Embeddings and completions take the same path: their
//! operation rides on the request (`ChatRequest::op`).

use crate::cache::{self, Control, Lookup};
use crate::config::{Client, Config};
use crate::downstream::{self, CacheState, Dialect, RequestCtx};
use crate::error::GatewayError;
use crate::filters::{demand, scenario};
use crate::forward::{self, Job};
use crate::limits::{self, Used};
use crate::protocol::anthropic::encode as messages;
use crate::protocol::{ChatRequest, Operation, RequestHints};
use crate::providers::TemplateVars;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use std::time::Duration;

/// The gateway's request hints from headers (scenario, session, user profile).
pub(crate) fn hints(session: &Session) -> RequestHints {
    RequestHints {
        scenario: downstream::header(session, "x-gateway-scenario").map(str::to_owned),
        session: downstream::header(session, "x-gateway-session").map(str::to_owned),
        user_profile: downstream::header(session, "x-gateway-user-profile").map(str::to_owned),
    }
}

/// Everything after parsing, whichever dialect the request came in: scenario, features,
/// limits, cache, upstreams. `body` is the client's own bytes (the cache's raw key).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &Config,
    client: Option<&Client>,
    req: ChatRequest,
    hints: &RequestHints,
    body: Bytes,
) -> Result<(), GatewayError> {
    ctx.stream = Some(req.stream);
    ctx.session = req.session.clone().filter(|s| downstream::echoable(s));

    let idx = scenario::resolve(
        config,
        &req,
        hints.scenario.as_deref(),
        &session.req_header().headers,
        client,
    )?;
    let scenario = &config.scenarios[idx];
    ctx.scenario = Some(scenario.name.clone());
    forward::check_operation(scenario, req.op)?;
    forward::check_features(shared, scenario, &req)?;

    let default_user =
        client.map_or_else(|| "gateway".to_owned(), |c| format!("gateway-{}", c.name));
    let vars = TemplateVars {
        scenario: &scenario.name,
        user: req.user.as_deref().unwrap_or(&default_user),
    };
    let job = Job {
        config,
        scenario,
        req: &req,
        vars: &vars,
    };

    // Client limits: reserve before anything is contacted, settle with what was really used.
    let Some(c) = client.filter(|c| demand::is_limited(c)) else {
        return answer(shared, session, ctx, &job, client, hints, body).await;
    };
    let estimate = demand::estimate(config, scenario, c, &req);
    let ticket = match shared.limits.admit(c, estimate.demand).await {
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
    if estimate.counts_tokens {
        ctx.delivered = Some(String::new());
    }
    let result = answer(shared, session, ctx, &job, client, hints, body).await;
    // Cache hits and failures before any content cost nothing. Without upstream usage, the
    // prompt estimate and the text really delivered are charged.
    let (prompt, completion) = if ctx.cache == CacheState::Hit || ctx.ttft.is_none() {
        (0, 0)
    } else {
        match (ctx.prompt_tokens, ctx.completion_tokens) {
            (Some(p), Some(c)) => (p, c),
            // Embeddings have no completion: their usage is complete without it.
            (Some(p), None) if req.op == Operation::Embeddings => (p, 0),
            _ => (
                estimate.prompt_tokens,
                ctx.delivered.as_deref().map_or(0, limits::count_tokens),
            ),
        }
    };
    let spent = limits::usd(ctx.cost, prompt, completion);
    ctx.spent = Some(spent);
    shared
        .limits
        .settle(
            ticket,
            Used {
                tokens: prompt + completion,
                usd: spent,
            },
        )
        .await;
    result
}

/// The answer itself: from the cache, or from the upstreams (storing it when allowed).
async fn answer(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
    client: Option<&Client>,
    hints: &RequestHints,
    body: Bytes,
) -> Result<(), GatewayError> {
    let scenario = job.scenario;
    let Some(ttl) = scenario.cache_ttl else {
        ctx.cache = CacheState::Off;
        return forward(shared, session, ctx, job).await;
    };
    let lookups = |result: &str| {
        shared
            .metrics
            .cache_lookups_total
            .with_label_values(&[&scenario.name, result])
            .inc();
    };
    let control = cache::control(downstream::header(session, "cache-control"));
    // A session's turns depend on upstream-side history: never cached. A relayed stream
    // (completions) has no answer to store.
    let relayed = job.req.op != Operation::Chat;
    if job.req.session.is_some() || control == Control::NoStore || (relayed && job.req.stream) {
        ctx.cache = CacheState::Bypass;
        lookups("bypass");
        return forward(shared, session, ctx, job).await;
    }
    let client_name = client.map(|c| c.name.as_str());
    let raw = cache::raw_key(
        job.req.op,
        scenario,
        client_name,
        hints.user_profile.as_deref(),
        &body,
    );
    drop(body);
    let key = shared
        .cache
        .key_for(raw, || cache::key(scenario, client_name, job.req));
    let flight = match control {
        Control::Refresh => {
            ctx.cache = CacheState::Bypass;
            lookups("bypass");
            None
        }
        Control::Normal | Control::MaxAge(_) => {
            let max_age = match control {
                Control::MaxAge(n) => Some(n),
                _ => None,
            };
            match shared.cache.lookup(&key, max_age).await {
                Lookup::Hit(entry) => {
                    lookups("hit");
                    return write_hit(session, ctx, &entry, job.req).await;
                }
                Lookup::Follow(rx) => {
                    // Wait for the identical request in flight, as long as a first token may
                    // take.
                    let limit = scenario
                        .targets
                        .first()
                        .map_or(Duration::from_secs(60), |t| t.timeouts.first_token);
                    if let Some(entry) = cache::follow(rx, limit).await {
                        lookups("coalesced");
                        return write_hit(session, ctx, &entry, job.req).await;
                    }
                    ctx.cache = CacheState::Miss;
                    lookups("miss");
                    None
                }
                Lookup::Lead(flight) => {
                    ctx.cache = CacheState::Miss;
                    lookups("miss");
                    Some(flight)
                }
            }
        }
        Control::NoStore => None,
    };
    ctx.capture = Some(cache::Capture {
        slot: Some((key, ttl)),
        raw: relayed,
        ..Default::default()
    });
    let result = forward(shared, session, ctx, job).await;
    let entry = ctx.capture.take().and_then(|c| c.stored);
    if let Some(f) = flight {
        f.finish(entry);
    }
    result
}

/// The upstream path, boxed: its future is large, and keeping it out of the request future
/// keeps a cache hit's future small (it is moved on every request).
async fn forward(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
) -> Result<(), GatewayError> {
    Box::pin(forward::serve(shared, session, ctx, job)).await
}

/// Answers from the cache: a `chat.completion`, or the answer replayed as an SSE stream, or
/// the upstream's own bytes (embeddings, completions).
async fn write_hit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    entry: &cache::Entry,
    req: &ChatRequest,
) -> Result<(), GatewayError> {
    ctx.cache = CacheState::Hit;
    let age = entry.age().as_secs().to_string();
    if let Some(body) = &entry.body {
        let ct = http::HeaderValue::from_static("application/json");
        let _ = downstream::write_full(session, ctx, 200, ct, body.clone(), &[("age", age)]).await;
        return Ok(());
    }
    let body = match ctx.dialect {
        Dialect::OpenAi => cache::render(entry, req.stream, req.include_usage),
        Dialect::Anthropic => messages::replay(&entry.answer, &entry.id, req.stream),
    };
    let ct = if req.stream {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    let ct = http::HeaderValue::from_static(ct);
    let _ = downstream::write_full(session, ctx, 200, ct, body, &[("age", age)]).await;
    Ok(())
}
