//! The upstream attempt: send the encoded request, wait for the answer within the target's
//! deadlines, and answer the client — an OpenAI stream relayed chunk by chunk as it arrives, a
//! Dify stream translated event by event, or one JSON answer.
//!
//! Downstream headers are held until the upstream has produced its first content (or terminal)
//! event, so an upstream that accepts the request but never answers still gets the client a real
//! 504 rather than a 200 followed by silence. Once bytes went downstream a failure can only be
//! reported in the stream: an error event followed by `data: [DONE]`, never a silent close.
//! A client that goes away mid-answer is noticed while waiting on the upstream: the upstream is
//! closed (and a Dify task stopped) instead of generating tokens nobody reads.

use crate::config::Target;
use crate::config::{Config, Scenario};
use crate::error::GatewayError;
use crate::exchange::{self, RequestCtx, SSE_DONE};
use crate::protocol::chunks::ChunkWriter;
use crate::protocol::sse::{SseEvent, SseParser};
use crate::protocol::ChatRequest;
use crate::providers::dify::{
    self,
    translate::{Out, Translator},
    DifyCall,
};
use crate::providers::{self, TemplateVars, UpstreamCall};
use crate::routing::{AttemptGuard, Skip};
use crate::state::Shared;
use crate::upstream::{self, OpenError, ReadError};
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::ServerSession as Session;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

/// The largest non-streamed answer the gateway holds in memory.
const MAX_RESPONSE: usize = 64 << 20;
/// The most stream bytes held back (role chunks, comments) while waiting for the first content.
const MAX_HELD: usize = 1 << 20;
/// The largest upstream error body read to extract a message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// How long a Dify stop call may take after the client left.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Classification of an attempt for `upstream_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ConnectError,
    Timeout,
    Status5xx,
    Status429,
    Status4xx,
    StreamError,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Status5xx => "status_5xx",
            Outcome::Status429 => "status_429",
            Outcome::Status4xx => "status_4xx",
            Outcome::StreamError => "stream_error",
        }
    }

    fn of_status(status: u16) -> Outcome {
        match status {
            429 => Outcome::Status429,
            500..=599 => Outcome::Status5xx,
            _ => Outcome::Status4xx,
        }
    }
}

struct InflightGuard<'a>(&'a prometheus::IntGauge);
impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How an attempt that produced nothing for the client failed, and what routing makes of it.
#[derive(Debug)]
pub enum FailKind {
    /// The target is unhealthy (connect, timeout, 5xx, broken stream): fail over, count for
    /// the breaker.
    Broken,
    /// The target is rate limited: fail over, and it rests for the duration.
    Limited(Duration),
    /// The client's request is at fault (or the client left): no retry, no breaker count.
    Final,
}

#[derive(Debug)]
pub struct Failure {
    /// Boxed: the error path is rare and `Result<(), Failure>` stays small on the hot path.
    pub error: Box<GatewayError>,
    pub kind: FailKind,
}

impl From<GatewayError> for Failure {
    fn from(error: GatewayError) -> Self {
        let kind = match &error {
            GatewayError::UpstreamError(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::StreamIncomplete(_) => FailKind::Broken,
            GatewayError::Mapped {
                status: 429,
                code,
                retry_after,
                ..
            } => {
                let default = if code == "insufficient_quota" { 60 } else { 1 };
                FailKind::Limited(Duration::from_secs(retry_after.unwrap_or(default)))
            }
            GatewayError::Mapped { status, .. } if *status >= 500 => FailKind::Broken,
            _ => FailKind::Final,
        };
        Failure {
            error: Box::new(error),
            kind,
        }
    }
}

fn fail<T>(error: GatewayError) -> Result<T, Failure> {
    Err(Failure::from(error))
}

/// Counts the attempt's outcome and fails it.
fn failed<T>(
    shared: &Shared,
    provider: &str,
    outcome: Outcome,
    error: GatewayError,
) -> Result<T, Failure> {
    record(shared, provider, outcome);
    fail(error)
}

fn record(shared: &Shared, provider: &str, outcome: Outcome) {
    shared
        .metrics
        .upstream_attempts_total
        .with_label_values(&[provider, outcome.label()])
        .inc();
}

/// Redacts anything in an upstream message that looks like a credential and bounds its length:
/// providers echo keys in auth errors ("Incorrect API key provided: sk-...").
pub fn sanitize(message: &str) -> String {
    let mut out = Vec::new();
    for word in message.split_whitespace() {
        let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let looks_secret = w.starts_with("sk-")
            || w.starts_with("app-")
            || w.starts_with("Bearer")
            || (w.len() >= 24
                && w.chars().any(|c| c.is_ascii_digit())
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        out.push(if looks_secret { "***" } else { word });
    }
    let mut s = out.join(" ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The OpenAI error fields of an upstream error body, if it has that shape.
fn upstream_error_fields(
    body: &[u8],
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = &v["error"];
    let s = |x: &serde_json::Value| x.as_str().map(str::to_owned);
    let message = s(&e["message"])
        .or_else(|| s(&v["message"]))
        .or_else(|| s(e));
    (
        message,
        s(&e["type"]),
        s(&e["param"]),
        s(&e["code"]).or_else(|| s(&v["code"])),
    )
}

#[derive(serde::Deserialize)]
struct UsageView {
    usage: Option<UsageCounts>,
}
#[derive(serde::Deserialize)]
struct UsageCounts {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

fn take_usage(ctx: &mut RequestCtx, json: &[u8]) {
    if let Ok(UsageView { usage: Some(u) }) = serde_json::from_slice::<UsageView>(json) {
        ctx.prompt_tokens = u.prompt_tokens.or(ctx.prompt_tokens);
        ctx.completion_tokens = u.completion_tokens.or(ctx.completion_tokens);
    }
}

/// Resolves when the client has gone away (or sent something it should not have). A protocol
/// that cannot tell (`Ok(None)`) never resolves, so the answer is not cut short.
async fn client_gone(session: &mut Session) {
    loop {
        match session.read_body_or_idle(true).await {
            Ok(Some(_)) => continue,
            Ok(None) => std::future::pending::<()>().await,
            Err(_) => return,
        }
    }
}

enum Step {
    Chunk(Bytes),
    Eof,
    Failed(String),
    TimedOut,
    ClientGone,
    /// The shutdown grace deadline passed.
    Draining,
}

/// Waits for the next upstream piece until `until`, watching for the client leaving.
async fn next(
    ctx: &mut RequestCtx,
    session: &mut Session,
    up: &mut HttpSession,
    until: Instant,
) -> Step {
    let t0 = Instant::now();
    let step = tokio::select! {
        r = timeout_at(until.into(), up.read_body_bytes()) => match r {
            Ok(Ok(Some(c))) => Step::Chunk(c),
            Ok(Ok(None)) => Step::Eof,
            Ok(Err(e)) => Step::Failed(e.to_string()),
            Err(_) => Step::TimedOut,
        },
        _ = client_gone(session) => Step::ClientGone,
        _ = crate::lifecycle::deadline_passed(&mut ctx.drain) => Step::Draining,
    };
    ctx.upstream_wait += t0.elapsed();
    step
}

/// The attempt loop (DESIGN §1.7): the scenario's candidates in strategy order, one pass,
/// failing over before the first byte on connect errors, timeouts, 5xx, 429 and streams that
/// break before their first content; skipping targets whose breaker is open, that rest after a
/// 429, or whose provider is at `max_concurrency`; bounded by `retry.attempts` and the global
/// retry budget. A single-target scenario retries that target with jittered backoff.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &Config,
    scenario: &Scenario,
    req: &ChatRequest,
    vars: &TemplateVars<'_>,
) -> Result<(), GatewayError> {
    let router = &shared.router;
    router.budget.record_request(Instant::now());
    let plan = router.plan(scenario)?;
    let n = plan.candidates.len();
    let cap = plan.candidates[0].target.retry.attempts.max(1) as usize;
    // One pass over the chain; a lone target may be tried up to `attempts` times.
    let order: Vec<usize> = if n == 1 {
        vec![0; cap]
    } else {
        (0..n).collect()
    };
    let mut skips: Vec<Skip> = Vec::new();
    let mut last: Option<GatewayError> = None;
    let mut previous: Option<usize> = None;
    let mut made = 0usize;
    for idx in order {
        if made == cap {
            break;
        }
        let c = &plan.candidates[idx];
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
        let call = providers::build_call(shared, config, c.target, req, vars).await?;
        if let Some(c) = &mut ctx.capture {
            c.reset();
        }
        match attempt(shared, session, ctx, c.target, call, &mut guard).await {
            Ok(()) => return Ok(()),
            Err(Failure { mut error, kind }) => {
                error.scrub(&config.secrets());
                let text = error.to_string();
                match kind {
                    FailKind::Final => return Err(*error),
                    FailKind::Broken => guard.failure(&text),
                    FailKind::Limited(d) => guard.rest(Instant::now() + d, &text),
                }
                log::debug!(
                    "request {}: target {} failed: {text}",
                    ctx.request_id,
                    c.label()
                );
                last = Some(*error);
            }
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    Err(unavailable(scenario, &skips))
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

/// One attempt: calls `target` with `call` and answers the client. An `Err` means nothing was
/// written downstream yet, so routing may try another target.
async fn attempt(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    mut call: UpstreamCall,
    guard: &mut AttemptGuard,
) -> Result<(), Failure> {
    let provider = &target.provider;
    let t = target.timeouts;
    let start = Instant::now();
    let deadline = start + t.total;
    let first_token_deadline = (start + t.first_token).min(deadline);
    ctx.provider = Some(provider.name.clone());
    ctx.cost = target.cost;
    let gauge = shared
        .metrics
        .inflight_requests
        .with_label_values(&[&provider.name]);
    gauge.inc();
    let _inflight = InflightGuard(&gauge);

    loop {
        ctx.attempts += 1;
        let accept = if call.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let request = upstream::Request {
            method: "POST",
            path: &call.path,
            content_type: "application/json",
            accept,
            body: &call.body,
            request_id: &ctx.request_id,
        };
        let head = upstream::head(provider, &request);
        let t0 = Instant::now();
        let opened = tokio::select! {
            r = upstream::open(shared, provider, &t, deadline, first_token_deadline, &head, &call.body) => r,
            // Leaving before the answer starts cancels the upstream call (dropping it closes
            // the connection); it says nothing about the target's health.
            _ = client_gone(session) => {
                ctx.status = 499;
                return Ok(());
            }
            _ = crate::lifecycle::deadline_passed(&mut ctx.drain) => return fail(GatewayError::ShuttingDown),
        };
        ctx.upstream_wait += t0.elapsed();
        let (mut up, peer) = match opened {
            Ok(x) => x,
            Err(OpenError::Connect(e)) => {
                return failed(
                    shared,
                    &provider.name,
                    Outcome::ConnectError,
                    GatewayError::UpstreamError(format!(
                        "provider {}: {}",
                        provider.name,
                        sanitize(&e)
                    )),
                );
            }
            Err(OpenError::Io(e)) => {
                return failed(
                    shared,
                    &provider.name,
                    Outcome::ConnectError,
                    GatewayError::UpstreamError(format!(
                        "provider {}: connection failed before an answer: {}",
                        provider.name,
                        sanitize(&e)
                    )),
                );
            }
            Err(OpenError::ConnectTimeout) => {
                return failed(
                    shared,
                    &provider.name,
                    Outcome::Timeout,
                    GatewayError::UpstreamTimeout(format!(
                        "provider {}: no connection within connect timeout {:?}",
                        provider.name, t.connect
                    )),
                );
            }
            Err(OpenError::Timeout) => {
                return failed(
                    shared,
                    &provider.name,
                    Outcome::Timeout,
                    GatewayError::UpstreamTimeout(format!(
                        "provider {} sent no answer within first_token timeout {:?}",
                        provider.name,
                        first_token_deadline - start
                    )),
                );
            }
        };
        let Some(resp) = up.resp_header() else {
            return failed(
                shared,
                &provider.name,
                Outcome::StreamError,
                GatewayError::UpstreamError(format!(
                    "provider {}: no response header",
                    provider.name
                )),
            );
        };
        let status = resp.status.as_u16();
        let retry_after = resp
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let content_type = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();

        if !(200..300).contains(&status) {
            let body = upstream::read_all(&mut up, deadline, t.idle, deadline, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            upstream::release(shared, up, &peer).await;
            record(shared, &provider.name, Outcome::of_status(status));
            if let Some(d) = &mut call.dify {
                let err = dify::map_error_body(&provider.name, status, &body);
                // The session's conversation is gone on Dify's side: forget it and start a new
                // one, once, with the history rendered into the query.
                if err.code() == "conversation_not_found" {
                    if let (Some(key), Some(fresh)) =
                        (d.conversation_key.as_ref(), d.fallback_body.take())
                    {
                        shared.conversations.invalidate(key);
                        call.body = fresh;
                        continue;
                    }
                }
                return fail(err);
            }
            return fail(openai_error(&provider.name, status, &body, retry_after));
        }

        if let Some(d) = call.dify.take() {
            if !content_type.starts_with("text/event-stream") {
                record(shared, &provider.name, Outcome::StreamError);
                upstream::release(shared, up, &peer).await;
                return fail(GatewayError::UpstreamError(format!(
                    "dify provider {} answered {content_type} instead of an event stream",
                    provider.name
                )));
            }
            let times = Times {
                start,
                first_token_deadline,
                deadline,
                idle: t.idle,
            };
            return relay_dify(shared, session, ctx, target, d, up, &peer, times, guard).await;
        }
        let times = Times {
            start,
            first_token_deadline,
            deadline,
            idle: t.idle,
        };
        return if call.stream && content_type.starts_with("text/event-stream") {
            relay_stream(shared, session, ctx, target, up, &peer, times, guard).await
        } else {
            relay_json(
                shared,
                session,
                ctx,
                target,
                up,
                &peer,
                times,
                &content_type,
                guard,
            )
            .await
        };
    }
}

/// An OpenAI-compatible upstream's error answer, as the client sees it.
fn openai_error(
    provider: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<u64>,
) -> GatewayError {
    let (message, etype, param, code) = upstream_error_fields(body);
    let message = sanitize(message.as_deref().unwrap_or("no error message"));
    if status == 429 {
        // A rate-limited target rests for Retry-After; the client sees it too if nothing else serves.
        return GatewayError::Mapped {
            status,
            message: format!("provider {provider} is rate limited: {message}"),
            error_type: etype.unwrap_or_else(|| "rate_limit_error".into()),
            code: code.unwrap_or_else(|| "rate_limit_exceeded".into()),
            param,
            should_retry: Some(true),
            retry_after: Some(retry_after.unwrap_or(1)),
        };
    }
    if !(400..500).contains(&status) {
        return GatewayError::UpstreamError(format!(
            "provider {provider} answered {status}: {message}"
        ));
    }
    GatewayError::UpstreamClientError {
        status,
        message,
        error_type: etype,
        param,
        code,
    }
}

#[derive(Clone, Copy)]
struct Times {
    start: Instant,
    first_token_deadline: Instant,
    deadline: Instant,
    idle: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn relay_json(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    mut up: HttpSession,
    peer: &HttpPeer,
    times: Times,
    content_type: &str,
    guard: &mut AttemptGuard,
) -> Result<(), Failure> {
    let provider = &target.provider;
    let t0 = Instant::now();
    let read = tokio::select! {
        r = upstream::read_all(&mut up, times.first_token_deadline, times.idle, times.deadline, MAX_RESPONSE) => r,
        _ = client_gone(session) => {
            ctx.status = 499;
            up.shutdown().await;
            return Ok(());
        }
        _ = crate::lifecycle::deadline_passed(&mut ctx.drain) => {
            up.shutdown().await;
            return fail(GatewayError::ShuttingDown);
        }
    };
    ctx.upstream_wait += t0.elapsed();
    let body = match read {
        Ok(b) => b,
        Err(ReadError::Timeout) => {
            return failed(
                shared,
                &provider.name,
                Outcome::Timeout,
                GatewayError::UpstreamTimeout(format!(
                    "provider {} did not finish its answer in time",
                    provider.name
                )),
            );
        }
        Err(ReadError::Io(e)) => {
            return failed(
                shared,
                &provider.name,
                Outcome::StreamError,
                GatewayError::UpstreamError(format!(
                    "provider {}: answer cut off: {}",
                    provider.name,
                    sanitize(&e)
                )),
            );
        }
        Err(ReadError::TooLarge) => {
            return failed(
                shared,
                &provider.name,
                Outcome::StreamError,
                GatewayError::UpstreamError(format!(
                    "provider {}: answer larger than {MAX_RESPONSE} bytes",
                    provider.name
                )),
            );
        }
    };
    record(shared, &provider.name, Outcome::Ok);
    let ttft = times.start.elapsed();
    ctx.ttft = Some(ttft);
    guard.success(ttft);
    take_usage(ctx, &body);
    if let Some(c) = &mut ctx.capture {
        capture_json(c, &body);
        c.commit(&shared.cache);
    }
    // Only needed to charge an answer whose upstream reported no usage.
    if let (Some(d), None) = (&mut ctx.delivered, ctx.completion_tokens) {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        d.push_str(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    upstream::release(shared, up, peer).await;
    let ct = if content_type.starts_with("text/event-stream") {
        "application/json"
    } else {
        content_type
    };
    // A failed downstream write means the client left; nothing more to do for it.
    if exchange::write_full(session, ctx, 200, ct, body, &[])
        .await
        .is_err()
    {
        ctx.status = 499;
    }
    Ok(())
}

/// A complete single-choice `chat.completion` as a cacheable answer.
fn capture_json(c: &mut crate::cache::Capture, body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let choices = v["choices"].as_array().map_or(&[][..], |c| c.as_slice());
    let [choice] = choices else { return };
    let (Some(finish), Some(content)) = (
        choice["finish_reason"].as_str(),
        choice["message"]["content"].as_str(),
    ) else {
        return;
    };
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    c.answer = crate::cache::Answer {
        content: content.to_owned(),
        reasoning: choice["message"]["reasoning_content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        finish_reason: finish.to_owned(),
        usage: crate::protocol::chunks::Usage {
            prompt_tokens: n(&v["usage"]["prompt_tokens"]),
            completion_tokens: n(&v["usage"]["completion_tokens"]),
            total_tokens: n(&v["usage"]["total_tokens"]),
        },
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        created: n(&v["created"]),
    };
    c.complete = true;
}

/// Adds one streamed OpenAI chunk to a cacheable answer; multi-choice streams are not cached.
fn capture_chunk(a: &mut crate::cache::Answer, multi: &mut bool, data: &str) {
    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    if let Some(m) = v["model"].as_str() {
        a.model = m.to_owned();
    }
    if let Some(c) = v["created"].as_u64() {
        a.created = c;
    }
    if v["usage"].is_object() {
        a.usage = crate::protocol::chunks::Usage {
            prompt_tokens: n(&v["usage"]["prompt_tokens"]),
            completion_tokens: n(&v["usage"]["completion_tokens"]),
            total_tokens: n(&v["usage"]["total_tokens"]),
        };
    }
    for choice in v["choices"].as_array().map_or(&[][..], |c| c.as_slice()) {
        if choice["index"].as_u64().unwrap_or(0) != 0 {
            *multi = true;
        }
        let d = &choice["delta"];
        if d.get("tool_calls").is_some_and(|t| !t.is_null()) {
            *multi = true; // tool calls are not part of the normalized answer
        }
        let (text, thought) = (
            d["content"].as_str().unwrap_or_default(),
            d["reasoning_content"].as_str().unwrap_or_default(),
        );
        // Past the cap the answer is neither cached nor kept: memory stays bounded.
        if a.content.len() + a.reasoning.len() + text.len() + thought.len() > MAX_RESPONSE {
            *multi = true;
            continue;
        }
        a.content.push_str(text);
        a.reasoning.push_str(thought);
        if let Some(f) = choice["finish_reason"].as_str() {
            a.finish_reason = f.to_owned();
        }
    }
}

/// Watches a relayed OpenAI stream without altering it: whether it ended properly and what
/// usage it reported.
#[derive(Default)]
struct StreamWatch {
    parser: SseParser,
    events: Vec<SseEvent>,
    done: bool,
    broken: bool,
    /// A content, finish or terminal event has arrived: the stream is established.
    established: bool,
    /// An in-stream error that arrived before any content.
    early_error: Option<String>,
    /// The answer rebuilt from the chunks, when it may be cached.
    answer: Option<crate::cache::Answer>,
    uncacheable: bool,
}

/// Whether an OpenAI chunk carries content or ends the answer (the role chunk does neither).
fn is_content_event(data: &str) -> Result<bool, String> {
    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    if let Some(e) = v.get("error") {
        return Err(e
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("error event")
            .to_owned());
    }
    let choices = v
        .get("choices")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(v.get("usage").is_some_and(|u| !u.is_null())
        || choices.iter().any(|c| {
            let d = &c["delta"];
            !c["finish_reason"].is_null()
                || d["content"].as_str().is_some_and(|t| !t.is_empty())
                || d["reasoning_content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
                || d.get("tool_calls").is_some_and(|t| !t.is_null())
                || d.get("function_call").is_some_and(|t| !t.is_null())
                || d["refusal"].as_str().is_some_and(|t| !t.is_empty())
        }))
}

impl StreamWatch {
    fn feed(&mut self, ctx: &mut RequestCtx, chunk: &[u8]) {
        if self.broken {
            return;
        }
        if self.parser.push(chunk, &mut self.events).is_err() {
            // Relaying continues; we only lose the ability to observe the stream.
            self.broken = true;
            self.established = true;
        }
        for ev in self.events.drain(..) {
            if ev.is_done() {
                self.done = true;
                self.established = true;
                continue;
            }
            if !self.established && !ev.data.is_empty() {
                match is_content_event(&ev.data) {
                    Ok(found) => self.established = found,
                    Err(e) => self.early_error = Some(e),
                }
            }
            if ev.data.contains("\"usage\"") {
                take_usage(ctx, ev.data.as_bytes());
            }
            if let Some(a) = &mut self.answer {
                let before = a.content.len();
                capture_chunk(a, &mut self.uncacheable, &ev.data);
                if let Some(d) = &mut ctx.delivered {
                    d.push_str(&a.content[before..]);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_stream(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    mut up: HttpSession,
    peer: &HttpPeer,
    times: Times,
    guard: &mut AttemptGuard,
) -> Result<(), Failure> {
    let provider = &target.provider;
    // Hold the client's headers until the first content (or terminal) event: a stream that
    // dies before it is still a clean failover.
    let mut watch = StreamWatch {
        answer: (ctx.capture.is_some() || ctx.delivered.is_some())
            .then(crate::cache::Answer::default),
        ..Default::default()
    };
    let mut held = BytesMut::new();
    while !watch.established {
        match next(ctx, session, &mut up, times.first_token_deadline).await {
            Step::Chunk(chunk) => {
                watch.feed(ctx, &chunk);
                held.extend_from_slice(&chunk);
                if held.len() > MAX_HELD {
                    up.shutdown().await;
                    return failed(
                        shared,
                        &provider.name,
                        Outcome::StreamError,
                        GatewayError::UpstreamError(format!(
                            "provider {}: more than {MAX_HELD} bytes of stream before any content",
                            provider.name
                        )),
                    );
                }
                if let Some(e) = watch.early_error.take() {
                    record(shared, &provider.name, Outcome::StreamError);
                    up.shutdown().await;
                    return fail(GatewayError::UpstreamError(format!(
                        "provider {}: stream failed before any content: {}",
                        provider.name,
                        sanitize(&e)
                    )));
                }
            }
            Step::Eof | Step::Failed(_) => {
                record(shared, &provider.name, Outcome::StreamError);
                up.shutdown().await;
                return fail(GatewayError::UpstreamError(format!(
                    "provider {}: stream ended before any content",
                    provider.name
                )));
            }
            Step::TimedOut => {
                record(shared, &provider.name, Outcome::Timeout);
                up.shutdown().await;
                return fail(GatewayError::UpstreamTimeout(format!(
                    "provider {} sent no content within first_token timeout {:?}",
                    provider.name,
                    times.first_token_deadline - times.start
                )));
            }
            Step::ClientGone => {
                ctx.status = 499;
                up.shutdown().await;
                return Ok(());
            }
            Step::Draining => {
                up.shutdown().await;
                return fail(GatewayError::ShuttingDown);
            }
        }
    }
    record(shared, &provider.name, Outcome::Ok);
    let ttft = times.start.elapsed();
    ctx.ttft = Some(ttft);
    guard.success(ttft);
    let header = exchange::sse_header(ctx)?;
    ctx.status = 200;
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
        || session
            .write_response_body(held.freeze(), false)
            .await
            .is_err()
    {
        ctx.status = 499;
        up.shutdown().await;
        return Ok(());
    }

    let failure = loop {
        let until = (Instant::now() + times.idle).min(times.deadline);
        match next(ctx, session, &mut up, until).await {
            Step::Chunk(chunk) => {
                if chunk.is_empty() {
                    continue;
                }
                watch.feed(ctx, &chunk);
                if session.write_response_body(chunk, false).await.is_err() {
                    ctx.status = 499;
                    up.shutdown().await;
                    return Ok(());
                }
            }
            Step::ClientGone => {
                // The client left: stop paying for tokens nobody reads.
                ctx.status = 499;
                up.shutdown().await;
                return Ok(());
            }
            Step::Draining if watch.done => {
                // Everything was delivered; only the upstream's end of body was outstanding.
                up.shutdown().await;
                if session
                    .write_response_body(Bytes::new(), true)
                    .await
                    .is_err()
                {
                    ctx.status = 499;
                }
                return Ok(());
            }
            Step::Draining => break Some(GatewayError::ShuttingDown),
            Step::Eof if watch.done => break None,
            Step::Eof => {
                break Some(GatewayError::StreamIncomplete(format!(
                    "provider {} ended the stream without [DONE]",
                    provider.name
                )))
            }
            Step::Failed(e) => {
                break Some(GatewayError::StreamIncomplete(format!(
                    "provider {} stream failed: {}",
                    provider.name,
                    sanitize(&e)
                )))
            }
            Step::TimedOut => {
                let what = if Instant::now() >= times.deadline {
                    "total"
                } else {
                    "idle"
                };
                break Some(GatewayError::UpstreamTimeout(format!(
                    "provider {} stream exceeded the {what} timeout",
                    provider.name
                )));
            }
        }
    };
    let mut tail = BytesMut::new();
    if let Some(err) = &failure {
        record(shared, &provider.name, Outcome::StreamError);
        ctx.error = Some(err.code().to_owned());
        tail.extend_from_slice(&err.sse_event());
        if !watch.done {
            tail.extend_from_slice(SSE_DONE);
        }
        up.shutdown().await;
    } else {
        upstream::release(shared, up, peer).await;
        if let (Some(c), Some(a)) = (&mut ctx.capture, watch.answer.take()) {
            c.complete =
                watch.done && !watch.broken && !watch.uncacheable && !a.finish_reason.is_empty();
            c.answer = a;
            c.commit(&shared.cache);
        }
    }
    let tail = (!tail.is_empty()).then(|| tail.freeze());
    if session
        .write_response_body(tail.unwrap_or_default(), true)
        .await
        .is_err()
    {
        ctx.status = 499;
    }
    Ok(())
}

/// Tells Dify to stop generating for a client that left (the worker would run on otherwise).
async fn stop_dify_task(shared: &Shared, target: &Target, call: &DifyCall, task_id: Option<&str>) {
    let Some(task) = task_id else { return };
    let path = dify::stop_path(&target.provider.url.base_path, call.app, task);
    let body = Bytes::from(serde_json::json!({"user": call.user}).to_string());
    if let Err(e) = upstream::simple_call(
        shared,
        &target.provider,
        &path,
        "application/json",
        body,
        STOP_TIMEOUT,
    )
    .await
    {
        log::warn!(
            "dify provider {}: stop call for task {task} failed: {}",
            target.provider.name,
            sanitize(&e)
        );
    }
}

/// Where a translated answer stands.
struct DifyOut<'a> {
    writer: ChunkWriter,
    client_stream: bool,
    headers_sent: bool,
    content: String,
    reasoning: String,
    /// The answer grew past MAX_RESPONSE: no longer kept (a non-stream answer fails).
    overflow: bool,
    pending: BytesMut,
    ctx: &'a mut RequestCtx,
}

impl DifyOut<'_> {
    fn ensure_started(&mut self) -> Result<Option<pingora::http::ResponseHeader>, GatewayError> {
        if self.headers_sent || !self.client_stream {
            return Ok(None);
        }
        self.headers_sent = true;
        self.ctx.status = 200;
        self.pending.extend_from_slice(&self.writer.role());
        exchange::sse_header(self.ctx).map(Some)
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_dify(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    call: DifyCall,
    mut up: HttpSession,
    peer: &HttpPeer,
    times: Times,
    guard: &mut AttemptGuard,
) -> Result<(), Failure> {
    let provider = &target.provider;
    let origin = call.origin.clone();
    let mut tr = Translator::new(
        call.app,
        call.reasoning,
        call.output.clone(),
        &provider.name,
        origin,
    );
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut outs = Vec::new();
    let mut started = false;
    let mut done = false;
    let mut header: Option<pingora::http::ResponseHeader> = None;
    let writer = ChunkWriter {
        id: String::new(),
        created: 0,
        model: call.model.clone(),
        include_usage: call.include_usage,
    };
    let mut out = DifyOut {
        writer,
        client_stream: call.client_stream,
        headers_sent: false,
        content: String::new(),
        reasoning: String::new(),
        overflow: false,
        pending: BytesMut::new(),
        ctx,
    };

    while !done {
        let until = if started {
            (Instant::now() + times.idle).min(times.deadline)
        } else {
            times.first_token_deadline
        };
        let step = next(out.ctx, session, &mut up, until).await;
        let chunk = match step {
            Step::Chunk(c) => c,
            Step::ClientGone => {
                out.ctx.status = 499;
                up.shutdown().await;
                stop_dify_task(shared, target, &call, tr.task_id.as_deref()).await;
                return Ok(());
            }
            Step::Draining => {
                up.shutdown().await;
                stop_dify_task(shared, target, &call, tr.task_id.as_deref()).await;
                if !started {
                    return fail(GatewayError::ShuttingDown);
                }
                return finish_with_error(
                    shared,
                    session,
                    &mut out,
                    &provider.name,
                    GatewayError::ShuttingDown,
                    header.take(),
                )
                .await;
            }
            Step::TimedOut if !started => {
                record(shared, &provider.name, Outcome::Timeout);
                up.shutdown().await;
                stop_dify_task(shared, target, &call, tr.task_id.as_deref()).await;
                return fail(GatewayError::UpstreamTimeout(format!(
                    "dify provider {} produced no answer within first_token timeout {:?}",
                    provider.name,
                    times.first_token_deadline - times.start
                )));
            }
            Step::TimedOut => {
                up.shutdown().await;
                stop_dify_task(shared, target, &call, tr.task_id.as_deref()).await;
                let what = if Instant::now() >= times.deadline {
                    "total"
                } else {
                    "idle"
                };
                let e = GatewayError::UpstreamTimeout(format!(
                    "dify provider {} stream exceeded the {what} timeout",
                    provider.name
                ));
                return finish_with_error(
                    shared,
                    session,
                    &mut out,
                    &provider.name,
                    e,
                    header.take(),
                )
                .await;
            }
            Step::Eof | Step::Failed(_) => {
                let e = GatewayError::StreamIncomplete(format!(
                    "dify provider {} ended the stream before its terminal event",
                    provider.name
                ));
                up.shutdown().await;
                if !started {
                    return failed(
                        shared,
                        &provider.name,
                        Outcome::StreamError,
                        GatewayError::UpstreamError(e.to_string()),
                    );
                }
                return finish_with_error(
                    shared,
                    session,
                    &mut out,
                    &provider.name,
                    e,
                    header.take(),
                )
                .await;
            }
        };
        if let Err(e) = parser.push(&chunk, &mut events) {
            up.shutdown().await;
            let e = GatewayError::UpstreamError(format!("dify provider {}: {e}", provider.name));
            if !started {
                return failed(shared, &provider.name, Outcome::StreamError, e);
            }
            return finish_with_error(shared, session, &mut out, &provider.name, e, header.take())
                .await;
        }
        for ev in events.drain(..) {
            tr.on_event(&ev, &mut outs);
        }
        for item in outs.drain(..) {
            match item {
                Out::Ping => {
                    if out.headers_sent {
                        out.pending.extend_from_slice(b": ping\n\n");
                    }
                }
                Out::Error(e) => {
                    up.shutdown().await;
                    if !started {
                        record(shared, &provider.name, Outcome::of_status(e.status()));
                        return fail(e);
                    }
                    return finish_with_error(
                        shared,
                        session,
                        &mut out,
                        &provider.name,
                        e,
                        header.take(),
                    )
                    .await;
                }
                other => {
                    if !started {
                        started = true;
                        record(shared, &provider.name, Outcome::Ok);
                        let ttft = times.start.elapsed();
                        out.ctx.ttft = Some(ttft);
                        guard.success(ttft);
                        out.writer.id = tr
                            .id
                            .clone()
                            .unwrap_or_else(|| format!("chatcmpl-{}", out.ctx.request_id));
                        out.writer.created = tr.created.unwrap_or_else(now_secs);
                    }
                    if let Some(h) = out.ensure_started()? {
                        header = Some(h);
                    }
                    match other {
                        Out::Content(text) => {
                            if out.client_stream {
                                out.pending.extend_from_slice(&out.writer.content(&text));
                            }
                            if out.content.len() + out.reasoning.len() + text.len() > MAX_RESPONSE {
                                out.overflow = true;
                            } else {
                                out.content.push_str(&text);
                                if let Some(d) = &mut out.ctx.delivered {
                                    d.push_str(&text);
                                }
                            }
                        }
                        Out::Reasoning(text) => {
                            if out.client_stream {
                                out.pending.extend_from_slice(&out.writer.reasoning(&text));
                            }
                            if out.content.len() + out.reasoning.len() + text.len() > MAX_RESPONSE {
                                out.overflow = true;
                            } else {
                                out.reasoning.push_str(&text);
                            }
                        }
                        Out::Finish { reason, usage } => {
                            done = true;
                            if out.overflow && !out.client_stream {
                                up.shutdown().await;
                                return fail(GatewayError::UpstreamError(format!(
                                    "dify provider {}: answer larger than {MAX_RESPONSE} bytes",
                                    provider.name
                                )));
                            }
                            out.ctx.prompt_tokens = Some(usage.prompt_tokens);
                            out.ctx.completion_tokens = Some(usage.completion_tokens);
                            // Remember the conversation before the last bytes go out: the
                            // session's next turn may follow at once.
                            if let (Some(key), Some(conv)) =
                                (&call.conversation_key, &tr.conversation_id)
                            {
                                shared.conversations.insert(key.clone(), conv.clone());
                            }
                            if let Some(c) = out.ctx.capture.as_mut().filter(|_| !out.overflow) {
                                let content =
                                    tr.replaced().map_or(out.content.as_str(), |r| r).to_owned();
                                c.answer = crate::cache::Answer {
                                    content,
                                    reasoning: out.reasoning.clone(),
                                    finish_reason: reason.to_owned(),
                                    usage,
                                    model: out.writer.model.clone(),
                                    created: out.writer.created,
                                };
                                c.complete = true;
                                c.commit(&shared.cache);
                            }
                            if out.client_stream {
                                out.pending.extend_from_slice(&out.writer.finish(reason));
                                if out.writer.include_usage {
                                    out.pending.extend_from_slice(&out.writer.usage(usage));
                                }
                                out.pending.extend_from_slice(SSE_DONE);
                            } else {
                                let content =
                                    tr.replaced().map_or(out.content.as_str(), |r| r).to_owned();
                                let body =
                                    out.writer
                                        .completion(&content, &out.reasoning, reason, usage);
                                out.pending.extend_from_slice(&body);
                            }
                        }
                        Out::Ping | Out::Error(_) => {}
                    }
                }
            }
        }
        if done && !out.client_stream {
            break;
        }
        if let Some(h) = header.take() {
            if session.write_response_header(Box::new(h)).await.is_err() {
                return client_left(shared, target, &call, &tr, &mut out, up).await;
            }
        }
        if !out.pending.is_empty() {
            let bytes = out.pending.split().freeze();
            if session.write_response_body(bytes, done).await.is_err() {
                return client_left(shared, target, &call, &tr, &mut out, up).await;
            }
        }
    }

    if !out.client_stream {
        let body = out.pending.split().freeze();
        if exchange::write_json(session, out.ctx, 200, body)
            .await
            .is_err()
        {
            out.ctx.status = 499;
        }
    }
    // The client has its answer. Dify closes the stream right after the terminal event (or
    // after trailing TTS events); reading that end keeps the connection for the next request.
    drain_and_release(shared, up, peer).await;
    Ok(())
}

/// How long to wait for the end of an upstream body that is no longer needed before closing
/// the connection instead of pooling it.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

async fn drain_and_release(shared: &Shared, mut up: HttpSession, peer: &HttpPeer) {
    let until = Instant::now() + DRAIN_LIMIT;
    match upstream::read_all(&mut up, until, DRAIN_LIMIT, until, 1 << 20).await {
        Ok(_) => upstream::release(shared, up, peer).await,
        Err(_) => up.shutdown().await,
    }
}

async fn client_left(
    shared: &Shared,
    target: &Target,
    call: &DifyCall,
    tr: &Translator,
    out: &mut DifyOut<'_>,
    mut up: HttpSession,
) -> Result<(), Failure> {
    out.ctx.status = 499;
    up.shutdown().await;
    if !tr.finished {
        stop_dify_task(shared, target, call, tr.task_id.as_deref()).await;
    }
    Ok(())
}

/// Ends a started translated answer with an error: in the stream (error event + `[DONE]`), or
/// as the HTTP error of a non-stream answer (nothing was sent yet).
async fn finish_with_error(
    shared: &Shared,
    session: &mut Session,
    out: &mut DifyOut<'_>,
    provider: &str,
    err: GatewayError,
    header: Option<pingora::http::ResponseHeader>,
) -> Result<(), Failure> {
    record(shared, provider, Outcome::StreamError);
    if !out.client_stream {
        return fail(err);
    }
    if let Some(h) = header {
        if session.write_response_header(Box::new(h)).await.is_err() {
            out.ctx.status = 499;
            return Ok(());
        }
    }
    out.ctx.error = Some(err.code().to_owned());
    out.pending.extend_from_slice(&err.sse_event());
    out.pending.extend_from_slice(SSE_DONE);
    let bytes = out.pending.split().freeze();
    if session.write_response_body(bytes, true).await.is_err() {
        out.ctx.status = 499;
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_redacts_keys_and_bounds_length() {
        let s = sanitize(
            "Incorrect API key provided: sk-abc123XYZ. You can find your key at https://x",
        );
        assert!(!s.contains("sk-abc123XYZ"), "{s}");
        assert!(s.contains("Incorrect API key provided"));
        let long = "word ".repeat(200);
        assert!(sanitize(&long).chars().count() <= 301);
        // Built at run time so the repository holds nothing shaped like a real key.
        let fake = ["app", "-0123456789abcdef0123"].concat();
        assert_eq!(sanitize(&format!("token {fake} here")), "token *** here");
    }
}
