//! Validated answers (structured output) on one target: the answer is collected whole — never
//! streamed to the client as it comes — its JSON checked against what the request expects,
//! repaired by asking the same target again with the answer and what is wrong with it, and only
//! a valid answer is written, in the client's dialect (a stream is replayed from it: the
//! validation costs time to first token). Still invalid after the repairs: the attempt fails
//! with `invalid_output` and [`Failover::Next`], so routing tries the next target.
//!
//! Collecting reuses the ordinary attempt and relays: the request is made non-streaming and
//! OpenAI-shaped, and the relay's one write lands in `RequestCtx::held`.

use super::attempt;
use super::encode::Encoder;
use super::failure::Failure;
use super::{translated, Job};
use crate::config::Target;
use crate::downstream::{self, Dialect, RequestCtx};
use crate::error::{Failover, GatewayError};
use crate::output::extract::check;
use crate::output::request::{upstream_request, Repair};
use crate::output::{self, Expected, Violation};
use crate::protocol::chunks::Usage;
use crate::protocol::Answer;
use crate::providers::{BuildCx, Dispatch, Provider};
use crate::routing::AttemptGuard;
use crate::state::Shared;
use bytes::BytesMut;
use pingora::protocols::http::ServerSession as Session;
use serde_json::Value;

/// Characters per content chunk when a validated answer is replayed as a stream.
const CHUNK_CHARS: usize = 64;

/// What the validated attempts of one request add up to, across its targets: every answer
/// was paid for, valid or not.
#[derive(Default)]
pub struct Tally {
    prompt: u64,
    completion: u64,
    cached: u64,
    reasoning: u64,
    /// Attempts that reported usage, and those that did not.
    reported: u32,
    unreported: u32,
    usd: f64,
    /// Answers checked.
    pub answers: u32,
    /// An answer failed validation.
    pub invalid: bool,
}

impl Tally {
    /// Takes one attempt's usage out of `ctx` (which the relays fill per attempt).
    fn take(&mut self, ctx: &mut RequestCtx, target: &Target) {
        match (ctx.prompt_tokens.take(), ctx.completion_tokens.take()) {
            (None, None) => self.unreported += 1,
            (p, c) => {
                let (p, c) = (p.unwrap_or(0), c.unwrap_or(0));
                let cached = ctx.cached_tokens.unwrap_or(0);
                self.reported += 1;
                self.prompt += p;
                self.completion += c;
                self.cached += cached;
                self.reasoning += ctx.reasoning_tokens.unwrap_or(0);
                self.usd += crate::limits::usd_cached(target.cost, p, cached, c);
            }
        }
        ctx.cached_tokens = None;
        ctx.reasoning_tokens = None;
    }

    /// Puts the sums back into `ctx`, for limits, metrics and the access log. Spend is summed
    /// per attempt (targets may have different prices) when every attempt reported usage;
    /// otherwise it is left to the usual estimate.
    pub fn settle(&self, ctx: &mut RequestCtx) {
        if self.reported == 0 {
            return;
        }
        ctx.prompt_tokens = Some(self.prompt);
        ctx.completion_tokens = Some(self.completion);
        ctx.cached_tokens = (self.cached > 0).then_some(self.cached);
        ctx.reasoning_tokens = (self.reasoning > 0).then_some(self.reasoning);
        if self.unreported == 0 {
            ctx.spent = Some(self.usd);
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            total_tokens: self.prompt + self.completion,
            cached_tokens: self.cached,
            reasoning_tokens: self.reasoning,
        }
    }
}

/// What a collected chat completion holds.
struct Done {
    id: String,
    created: u64,
    content: String,
    reasoning: String,
    finish: String,
}

impl Done {
    fn parse(body: &[u8]) -> Option<Done> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let choice = v.get("choices")?.get(0)?;
        let message = choice.get("message")?;
        let text = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Some(Done {
            id: text(&v, "id"),
            created: v.get("created").and_then(Value::as_u64).unwrap_or(0),
            content: text(message, "content"),
            reasoning: text(message, "reasoning_content"),
            finish: choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .unwrap_or("stop")
                .to_owned(),
        })
    }
}

/// The validated answer of one target: collect, check, repair; write it when valid.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
    cx: &BuildCx<'_>,
    target: &Target,
    provider: &Dispatch<'_>,
    guard: &mut AttemptGuard,
    expected: &Expected,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let telling = provider.telling();
    let mut repairs: Vec<Repair> = Vec::new();
    loop {
        let req = upstream_request(job.req, expected, telling, &repairs);
        let sub = Job {
            config: job.config,
            scenario: job.scenario,
            req: &req,
            vars: job.vars,
            output: job.output,
        };
        let mut call = provider
            .build(cx, target, &req)
            .await
            .map_err(|e| Failure {
                error: Box::new(e),
                failover: Failover::Final,
            })?;
        super::decode_if_needed(ctx, &mut call, &target.provider.name);
        let held = collect(
            shared, session, ctx, &sub, target, provider, call, guard, tally,
        )
        .await?;
        let Some(body) = held else {
            // The client left while the answer was collected.
            return Ok(());
        };
        let Some(done) = Done::parse(&body) else {
            return Err(Failure::from(GatewayError::UpstreamError(format!(
                "provider {}: the answer is not a chat completion",
                target.provider.name
            ))));
        };
        tally.answers += 1;
        let violations: Vec<Violation> = match check(&expected.shape, &done.content) {
            Ok(json) => {
                let json = json.to_owned();
                return deliver(shared, session, ctx, job, &done, &json, tally).await;
            }
            Err(v) => v,
        };
        tally.invalid = true;
        log::debug!(
            "request {}: target {} answered invalid structured output ({} problems)",
            ctx.request_id,
            target.provider.name,
            violations.len()
        );
        if repairs.len() as u32 >= expected.repair_attempts {
            return Err(Failure {
                error: Box::new(output::invalid_output(
                    &job.scenario.name,
                    tally.answers,
                    &violations,
                )),
                failover: Failover::Next,
            });
        }
        repairs.push(Repair {
            answer: done.content,
            violations,
        });
    }
}

/// One attempt whose answer is held rather than written: `Ok(None)` when the client left.
#[allow(clippy::too_many_arguments)]
async fn collect(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
    target: &Target,
    provider: &Dispatch<'_>,
    call: crate::providers::UpstreamCall,
    guard: &mut AttemptGuard,
    tally: &mut Tally,
) -> Result<Option<bytes::Bytes>, Failure> {
    // The relays write OpenAI-shaped JSON into `held`; the client's own dialect is used once
    // the answer is valid. The cache is filled with the valid answer only.
    let dialect = std::mem::replace(&mut ctx.dialect, Dialect::OpenAi);
    let capture = ctx.capture.take();
    ctx.held = Some(None);
    ctx.prompt_tokens = None;
    ctx.completion_tokens = None;
    let result = attempt::run(shared, session, ctx, job, target, provider, call, guard).await;
    ctx.dialect = dialect;
    ctx.capture = capture;
    let held = ctx.held.take().flatten();
    tally.take(ctx, target);
    result.map(|()| held)
}

/// Writes the valid answer in the client's dialect (one object, or a replayed stream), stores
/// it in the cache and, for `/v1/responses`, as a stored response.
async fn deliver(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    job: &Job<'_>,
    done: &Done,
    json: &str,
    tally: &Tally,
) -> Result<(), Failure> {
    let usage = tally.usage();
    let mut enc = Encoder::new(translated::client_view(job, ctx.dialect));
    enc.set_origin(done.id.clone(), done.created);
    let body = if job.req.stream {
        let mut out = BytesMut::with_capacity(json.len() * 3 + 512);
        enc.begin(&mut out);
        if !done.reasoning.is_empty() {
            enc.reasoning(&done.reasoning, &mut out);
        }
        let chars: Vec<char> = json.chars().collect();
        for piece in chars.chunks(CHUNK_CHARS) {
            let piece: String = piece.iter().collect();
            enc.text(&piece, &mut out);
        }
        enc.finish(&done.finish, None, usage, &mut out);
        out.freeze()
    } else {
        enc.completion(json, (&done.reasoning, ""), &[], &done.finish, None, usage)
    };
    if let Some(c) = &mut ctx.capture {
        c.answer = Answer {
            content: json.to_owned(),
            reasoning: done.reasoning.clone(),
            finish_reason: done.finish.clone(),
            usage,
            model: enc.model().to_owned(),
            created: enc.created(),
        };
        c.complete = true;
        c.commit(&shared.cache).await;
    }
    if let Some((key, record, ttl)) = enc.stored_record() {
        use crate::conversations::ConversationStore;
        shared.conversations.put(key, record, ttl).await;
    }
    let result = if tally.invalid { "repaired" } else { "valid" };
    shared
        .metrics
        .output_validations_total
        .with_label_values(&[&job.scenario.name, result])
        .inc();
    ctx.extra_headers
        .push(("x-gateway-output", result.to_owned()));
    // The client's first byte is now: validation is part of its time to first token.
    ctx.ttft = Some(ctx.started.elapsed());
    let ct = if job.req.stream {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    if downstream::write_full(session, ctx, 200, ct, body, &[])
        .await
        .is_err()
    {
        ctx.status = 499;
    }
    Ok(())
}
