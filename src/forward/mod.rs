//! Forwarding a request to the upstreams: the attempt loop. It names no provider: each target's
//! provider (`providers::of`) builds and opens the call, maps error answers, and decides through
//! the error it returns whether routing fails over, rests the target or answers the client.
//!
//! - `attempt.rs`: one attempt — open, status, hand the answer to a relay;
//! - `passthrough.rs`: OpenAI-shaped answers, relayed byte for byte while being observed;
//! - `translated.rs`: any other protocol, decoded into events and written as OpenAI chunks;
//! - `relay.rs`: what every relay gets of a started attempt;
//! - `failure.rs`: outcomes and failures; `wait.rs`: reads that watch client and shutdown.
//!
//! Downstream headers are held until the upstream has produced its first content (or terminal)
//! event, so an upstream that accepts the request but never answers still gets the client a real
//! 504 rather than a 200 followed by silence. Once bytes went downstream a failure can only be
//! reported in the stream: an error event followed by `data: [DONE]`, never a silent close.

mod attempt;
mod encode;
pub mod failure;
mod passthrough;
mod privacy;
mod relay;
mod translated;
mod validated;
mod wait;

use crate::config::{Config, Scenario, Target};
use crate::downstream::{Dialect, RequestCtx};
use crate::error::{Failover, GatewayError};
use crate::protocol::{ChatRequest, Features, Operation};
use crate::providers::openai::stream::OpenAiStream;
use crate::providers::{self, BuildCx, Decoder, Provider, TemplateVars};
use crate::routing::Skip;
use crate::state::Shared;
use failure::{Failure, Outcome};
use pingora::protocols::http::ServerSession as Session;
use std::time::{Duration, Instant};

/// What is being forwarded: the request and the config it is served with.
pub struct Job<'a> {
    pub config: &'a Config,
    pub scenario: &'a Scenario,
    pub req: &'a ChatRequest,
    pub vars: &'a TemplateVars<'a>,
    /// Set for a validated request (structured output): what its answer must be.
    pub output: Option<&'a crate::output::Expected>,
}

/// The attempt loop (DESIGN §1.7): the scenario's candidates in strategy order, one pass,
/// failing over before the first byte on connect errors, timeouts, 5xx, 429 and streams that
/// break before their first content; skipping targets whose breaker is open, that rest after a
/// 429, or whose provider is at `max_concurrency`; bounded by `retry.attempts` and the global
/// retry budget. A single-target scenario retries that target with jittered backoff.
pub async fn serve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
) -> Result<(), GatewayError> {
    let router = &shared.router;
    let scenario = job.scenario;
    router.budget.record_request(Instant::now());
    let plan = router.plan(scenario, job.req.model.as_deref())?;
    let n = plan.candidates.len();
    let cap = plan.candidates[0].target.retry.attempts.max(1) as usize;
    let mut skips: Vec<Skip> = Vec::new();
    let mut last: Option<GatewayError> = None;
    let mut previous: Option<usize> = None;
    let mut made = 0usize;
    // One pass over the chain; a lone target may be tried up to `attempts` times.
    let order = (0..if n == 1 { cap } else { n }).map(move |i| if n == 1 { 0 } else { i });
    let mut cx = BuildCx {
        config: job.config,
        upstream: &shared.upstream,
        conversations: &shared.conversations,
        vars: job.vars,
        drop: Features::NONE,
    };
    // Candidates already counted as unsupported (a lone candidate is visited more than once).
    let mut unsupported = 0u64;
    let mut tally = validated::Tally::default();
    let mut private = privacy::Private::new(
        job.req,
        crate::downstream::header(session, "x-gateway-pii-names"),
    );
    for idx in order {
        if made == cap {
            break;
        }
        let c = &plan.candidates[idx];
        let provider = providers::of(&c.target.provider);
        if !provider.supports(job.req.op) {
            // Not an attempt: this target never serves the operation (`check_operation` made
            // sure another one of the scenario does).
            continue;
        }
        let drop = match fit(c.target, job.req.features) {
            Ok(drop) => drop,
            Err(_) => {
                let bit = 1u64 << idx.min(63);
                if unsupported & bit == 0 {
                    unsupported |= bit;
                    failure::record(shared, &c.target.provider.name, Outcome::Unsupported);
                }
                continue;
            }
        };
        let req = match private
            .prepare(shared, &scenario.name, ctx, c.target.privacy)
            .await
        {
            privacy::Prepared::Plain => job.req,
            privacy::Prepared::Rewritten(req) => req,
            privacy::Prepared::Blocked => {
                // Not an attempt: this target may not receive the request's personal data.
                failure::record(shared, &c.target.provider.name, Outcome::Unsupported);
                continue;
            }
        };
        let job = &Job {
            config: job.config,
            scenario: job.scenario,
            req,
            vars: job.vars,
            output: job.output,
        };
        let mut guard = match router.admit(c, Instant::now()) {
            Ok(g) => g,
            Err(skip) => {
                skips.push(skip);
                continue;
            }
        };
        if let Some(prev) = previous {
            if !router.budget.try_retry(Instant::now()) {
                break;
            }
            if prev == idx {
                let r = c.target.retry;
                let exp = r
                    .backoff
                    .saturating_mul(1u32 << (made - 1).min(16) as u32)
                    .min(r.max_backoff);
                // Full jitter in [50 %, 100 %]: retries of many clients do not line up.
                tokio::time::sleep(exp.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
            } else {
                let from = &plan.candidates[prev];
                shared
                    .metrics
                    .fallbacks_total
                    .with_label_values(&[
                        &scenario.name,
                        &from.target.provider.name,
                        &c.target.provider.name,
                    ])
                    .inc();
            }
        }
        made += 1;
        previous = Some(idx);
        cx.drop = drop;
        ctx.dropped = drop;
        if !drop.is_empty() {
            // A cache hit could not say what was dropped to produce the answer: not stored.
            ctx.capture = None;
        }
        let result = match job.output {
            Some(expected) => {
                validated::run(
                    shared, session, ctx, job, &cx, c.target, &provider, &mut guard, expected,
                    &mut tally,
                )
                .await
            }
            None => {
                let mut call = provider.build(&cx, c.target, job.req).await?;
                decode_if_needed(ctx, &mut call, &c.target.provider.name);
                if let Some(c) = &mut ctx.capture {
                    c.reset();
                }
                attempt::run(
                    shared, session, ctx, job, c.target, &provider, call, &mut guard,
                )
                .await
            }
        };
        if job.output.is_some() {
            tally.settle(ctx);
        }
        match result {
            Ok(()) => return Ok(()),
            Err(Failure {
                mut error,
                failover,
            }) => {
                error.scrub(&job.config.secrets());
                let text = error.to_string();
                match failover {
                    Failover::Final => return Err(*error),
                    Failover::Broken => guard.failure(&text),
                    Failover::Limited(d) => guard.rest(Instant::now() + d, &text),
                    Failover::Next => {}
                }
                log::debug!(
                    "request {}: target {} failed: {text}",
                    ctx.request_id,
                    c.label()
                );
                last = Some(*error);
                if failover == Failover::Next && n == 1 {
                    // Its repairs were its retries: asking the lone target again from the
                    // start would only repeat them.
                    break;
                }
            }
        }
    }
    if tally.invalid {
        shared
            .metrics
            .output_validations_total
            .with_label_values(&[&scenario.name, "invalid"])
            .inc();
    }
    if let Some(e) = last {
        return Err(e);
    }
    if let (0, Some(report)) = (made, &private.blocked) {
        return Err(report.blocked(&scenario.name));
    }
    if made == 0 && skips.is_empty() {
        // Every usable target was skipped as unsupported: those that could serve the request
        // have no key (`check_features` let it through for them).
        let asked = match job.req.op {
            Operation::Chat => job.req.features.to_string(),
            op => op.as_str().to_owned(),
        };
        return Err(GatewayError::UpstreamError(format!(
            "no target of scenario {} can serve this request: the targets that support what it \
             asks for ({asked}) are not usable (no api_key)",
            scenario.name
        )));
    }
    Err(unavailable(scenario, &skips))
}

/// An OpenAI-shaped answer is decoded and re-encoded, rather than relayed as it is, for a
/// client of another dialect and for a streamed answer whose placeholders are to be restored
/// (a whole answer has them restored in its bytes by the passthrough relay, when the values
/// allow it).
fn decode_if_needed(ctx: &RequestCtx, call: &mut providers::UpstreamCall, provider: &str) {
    let restore = ctx
        .restore
        .as_ref()
        .is_some_and(|m| call.stream || !m.json_plain());
    if call.decoder.is_none() && (ctx.dialect != Dialect::OpenAi || restore) {
        call.decoder = Some(Decoder::OpenAi(OpenAiStream::new(provider)));
    }
}

/// Whether `target` can serve a request using `needs`: `Ok` with the features it drops to do
/// so, or `Err` with those it can neither serve nor drop.
fn fit(target: &Target, needs: Features) -> Result<Features, Features> {
    let missing = needs.without(providers::of(&target.provider).features());
    let unserved = missing.without(target.accept_unsupported);
    if unserved.is_empty() {
        Ok(missing)
    } else {
        Err(unserved)
    }
}

/// Refuses, before anything is reserved or contacted, a request for an operation no target of
/// its scenario serves (embeddings on a Dify-only scenario): 400 `unsupported_operation` naming
/// the scenario and the operation.
pub fn check_operation(scenario: &Scenario, op: Operation) -> Result<(), GatewayError> {
    if scenario
        .targets
        .iter()
        .any(|t| providers::of(&t.provider).supports(op))
    {
        return Ok(());
    }
    let considered = scenario
        .targets
        .iter()
        .map(|t| format!("{} ({})", t.provider.name, t.provider.type_name()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(GatewayError::Mapped {
        status: 400,
        message: format!(
            "scenario {} cannot serve {}: none of its targets supports that operation \
             (considered: {considered}); use a scenario with an OpenAI-compatible target",
            scenario.name,
            op.as_str(),
        ),
        error_type: "invalid_request_error".into(),
        code: "unsupported_operation".into(),
        param: Some("model".into()),
        should_retry: Some(false),
        retry_after: None,
    })
}

/// Refuses, before anything is reserved or contacted, a request that no target of its scenario
/// can serve as asked: 400 `unsupported_parameter` naming the field, the scenario and the
/// targets considered. Never a 200 that silently ignored what the client asked for.
pub fn check_features(
    shared: &Shared,
    scenario: &Scenario,
    req: &ChatRequest,
) -> Result<(), GatewayError> {
    let mut unserved = Features::NONE;
    for t in &scenario.targets {
        match fit(t, req.features) {
            Ok(_) => return Ok(()),
            Err(u) => unserved = unserved.or(u),
        }
    }
    if scenario.targets.is_empty() {
        return Ok(());
    }
    for t in &scenario.targets {
        failure::record(shared, &t.provider.name, Outcome::Unsupported);
    }
    let considered = scenario
        .targets
        .iter()
        .map(|t| match &t.model {
            Some(m) => format!("{} ({}, {m})", t.provider.name, t.provider.type_name()),
            None => format!("{} ({})", t.provider.name, t.provider.type_name()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let first = unserved
        .iter()
        .next()
        .unwrap_or(crate::protocol::Feature::Stream);
    Err(GatewayError::Mapped {
        status: 400,
        message: format!(
            "scenario {} cannot serve `{}` ({unserved} asked): no target supports it (considered: {considered}); \
             use a scenario with a target that does, or let a target drop it with accept_unsupported",
            scenario.name,
            first.param(),
        ),
        error_type: "invalid_request_error".into(),
        code: "unsupported_parameter".into(),
        param: Some(first.param().to_owned()),
        should_retry: Some(false),
        retry_after: None,
    })
}

/// Nothing could be tried: 429 when every target rests after a 429, else 503; `Retry-After`
/// is the soonest time something can serve again.
fn unavailable(scenario: &Scenario, skips: &[Skip]) -> GatewayError {
    let now = Instant::now();
    let soonest = skips
        .iter()
        .map(|s| match s {
            Skip::Open { retry_at } => retry_at.saturating_duration_since(now),
            Skip::Resting { until } => until.saturating_duration_since(now),
            Skip::Full => Duration::from_secs(1),
        })
        .min()
        .unwrap_or(Duration::from_secs(1));
    let secs = soonest.as_secs_f64().ceil().max(1.0) as u64;
    if !skips.is_empty() && skips.iter().all(|s| matches!(s, Skip::Resting { .. })) {
        return GatewayError::Mapped {
            status: 429,
            message: format!("every target of scenario {} is rate limited", scenario.name),
            error_type: "rate_limit_error".into(),
            code: "rate_limited".into(),
            param: None,
            should_retry: Some(true),
            retry_after: Some(secs),
        };
    }
    GatewayError::UpstreamUnavailable {
        message: format!(
            "no target of scenario {} is available (circuit open or at max_concurrency)",
            scenario.name
        ),
        retry_after: Duration::from_secs(secs),
    }
}
