//! The pipeline every front door shares once a request is parsed, top to bottom: resolve the
//! scenario (and, for an experiment, its variant, remembered for feedback) → refuse what no
//! target can serve (the operation, then the features) → reserve client limits → answer from
//! the cache or forward to the upstreams (storing the answer when allowed) → settle the limits
//! with what was used (the upstream's usage, else the gateway's estimate). Answers and errors
//! are written in the client's dialect (`ctx.dialect`). Embeddings and completions take the
//! same path: their operation rides on the request (`ChatRequest::op`).

use crate::cache::{self, Control, Lookup};
use crate::config::{Client, Config, Scenario};
use crate::downstream::{self, CacheState, Dialect, RequestCtx};
use crate::error::GatewayError;
use crate::experiments;
use crate::filters::{demand, experiment, scenario};
use crate::forward::{self, Job};
use crate::limits::{self, Used};
use crate::output;
use crate::protocol::anthropic::encode as messages;
use crate::protocol::{ops, ChatRequest, Feature, Features, Operation, RequestHints};
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
    mut req: ChatRequest,
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
    let scenario = variant_of(session, ctx, scenario, client, &req)?;
    // Structured output: the gateway itself serves `response_format` (validating the answer),
    // so no target is skipped or refused for it.
    let expected = match req.op {
        Operation::Chat => output::expected(scenario.output.as_deref(), &req)?,
        _ => None,
    };
    if expected.is_some() {
        output::check_request(&req)?;
        req.features = req
            .features
            .without(Features::of(&[Feature::ResponseFormat]));
    }
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
        output: expected.as_ref(),
    };

    // Client limits: reserve before anything is contacted, settle with what was really used.
    let mut admitted = None;
    if let Some(c) = client.filter(|c| demand::is_limited(c)) {
        let estimate = demand::estimate(config, scenario, c, &req);
        match shared.limits.admit(c, estimate.demand).await {
            Ok((ticket, headers)) => {
                ctx.extra_headers = headers;
                admitted = Some((
                    ticket,
                    estimate.counts_tokens.then_some(estimate.prompt_tokens),
                ));
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
        }
    }
    // What reached the client: charged when the upstream reports no usage.
    ctx.delivered = Some(String::new());
    // Recorded while the answer is produced, so feedback sent right after the answer finds it.
    let record = ctx.variant.clone().map(|variant| {
        let r = experiments::Record {
            scenario: scenario.name.clone(),
            variant,
        };
        (r, ctx.request_id.clone())
    });
    let remember = async {
        if let Some((r, request_id)) = &record {
            let client = client.map(|c| c.name.as_str());
            experiments::remember(&shared.feedback, client, request_id, r).await;
        }
    };
    let (_, result) = tokio::join!(
        remember,
        answer(shared, session, ctx, &job, client, hints, body)
    );
    estimate_missing_usage(ctx, &req, admitted.as_ref().and_then(|a| a.1));
    let Some((ticket, _)) = admitted else {
        return result;
    };
    // Cache hits and failures before any content cost nothing.
    let (prompt, completion) = if ctx.cache == CacheState::Hit || ctx.ttft.is_none() {
        (0, 0)
    } else {
        (
            ctx.prompt_tokens.unwrap_or(0),
            ctx.completion_tokens.unwrap_or(0),
        )
    };
    let cached = ctx.cached_tokens.unwrap_or(0);
    // A validated answer's spend is summed per attempt (its targets may differ in price).
    let spent = ctx
        .spent
        .unwrap_or_else(|| limits::usd_cached(ctx.cost, prompt, cached, completion));
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

/// The scenario that serves the request: `scenario` itself, or for an experiment the chosen
/// variant's (whose `<experiment>/<variant>` goes into `ctx.variant`). A forced variant
/// (`x-gateway-variant`) from a client without `pick_variant` is refused, whatever the scenario.
fn variant_of<'c>(
    session: &Session,
    ctx: &mut RequestCtx,
    scenario: &'c Scenario,
    client: Option<&Client>,
    req: &ChatRequest,
) -> Result<&'c Scenario, GatewayError> {
    // Present but not text still counts as sent: refused, or an unknown variant.
    let forced = session
        .req_header()
        .headers
        .get(experiment::HEADER)
        .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or_default());
    experiment::check_forcing(client, forced)?;
    let Some(e) = &scenario.experiment else {
        return Ok(scenario);
    };
    let keys = experiment::Keys {
        user: req.user.as_deref(),
        session: req.session.as_deref(),
    };
    let variant = experiment::choose(e, keys, forced)?;
    ctx.variant.clone_from(&variant.scenario.variant);
    Ok(&variant.scenario)
}

/// An upstream answer without usage (an upstream that ignores `include_usage`, a stream cut
/// before its usage chunk) is counted from the gateway's estimate: the prompt as the tokenizer
/// counts it (`prompt_estimate` when the limits already counted it), and the text the client
/// received. Limits, spend and `tokens_total` all use it; `usage_estimated_total` counts it.
fn estimate_missing_usage(ctx: &mut RequestCtx, req: &ChatRequest, prompt_estimate: Option<u64>) {
    let answered = ctx.ttft.is_some() && ctx.cache != CacheState::Hit;
    // Embeddings have no completion: their usage is complete without it.
    let complete = ctx.prompt_tokens.is_some()
        && (ctx.completion_tokens.is_some() || req.op == Operation::Embeddings);
    if !answered || complete {
        return;
    }
    ctx.usage_estimated = true;
    if ctx.prompt_tokens.is_none() {
        ctx.prompt_tokens = Some(prompt_estimate.unwrap_or_else(|| match req.op {
            Operation::Chat => limits::prompt_tokens(&req.messages),
            op => ops::prompt_tokens(op, &req.rest, limits::count_tokens),
        }));
    }
    if ctx.completion_tokens.is_none() {
        ctx.completion_tokens = Some(ctx.delivered.as_deref().map_or(0, limits::count_tokens));
    }
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
            // Wait for an identical request in flight (here or on another replica) as long as
            // a first token may take.
            let patience = scenario
                .targets
                .first()
                .map_or(Duration::from_secs(60), |t| t.timeouts.first_token);
            match shared.cache.lookup(&key, max_age, patience).await {
                Lookup::Hit(entry) => {
                    lookups("hit");
                    return write_hit(session, ctx, &entry, job).await;
                }
                Lookup::Joined(entry) => {
                    lookups("coalesced");
                    return write_hit(session, ctx, &entry, job).await;
                }
                Lookup::Follow(rx) => {
                    if let Some(entry) = cache::follow(rx, patience).await {
                        lookups("coalesced");
                        return write_hit(session, ctx, &entry, job).await;
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
    job: &Job<'_>,
) -> Result<(), GatewayError> {
    let req = job.req;
    ctx.cache = CacheState::Hit;
    if job.output.is_some() {
        // Only validated answers are stored.
        ctx.extra_headers
            .push(("x-gateway-output", "valid".to_owned()));
    }
    let age = entry.age().as_secs().to_string();
    if let Some(body) = &entry.body {
        let ct = http::HeaderValue::from_static("application/json");
        let _ = downstream::write_full(session, ctx, 200, ct, body.clone(), &[("age", age)]).await;
        return Ok(());
    }
    let body = match ctx.dialect {
        Dialect::OpenAi => cache::render(entry, req.stream, req.include_usage),
        Dialect::Anthropic => messages::replay(&entry.answer, &entry.id, req.stream),
        Dialect::Responses => match req.responses.as_deref() {
            Some(meta) => crate::protocol::responses::replay(&entry.answer, meta, req.stream),
            None => cache::render(entry, req.stream, req.include_usage),
        },
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
