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
use crate::error::GatewayError;
use crate::exchange::{self, RequestCtx, SSE_DONE};
use crate::protocol::chunks::ChunkWriter;
use crate::protocol::sse::{SseEvent, SseParser};
use crate::providers::dify::{
    self,
    translate::{Out, Translator},
    DifyCall,
};
use crate::providers::UpstreamCall;
use crate::state::Shared;
use crate::upstream::{self, OpenError, ReadError};
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

/// The largest non-streamed answer the gateway holds in memory.
const MAX_RESPONSE: usize = 64 << 20;
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
        match session.as_downstream_mut().read_body_or_idle(true).await {
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
    };
    ctx.upstream_wait += t0.elapsed();
    step
}

/// Calls `target` with `call` and answers the client. An `Err` means nothing was written
/// downstream yet; the caller renders it as an HTTP error.
pub async fn forward(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    mut call: UpstreamCall,
) -> Result<(), GatewayError> {
    let provider = &target.provider;
    let t = target.timeouts;
    let start = Instant::now();
    let deadline = start + t.total;
    let first_token_deadline = (start + t.first_token).min(deadline);
    ctx.provider = Some(provider.name.clone());
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
        let opened = upstream::open(
            shared,
            provider,
            &t,
            deadline,
            first_token_deadline,
            &head,
            &call.body,
        )
        .await;
        ctx.upstream_wait += t0.elapsed();
        let (mut up, peer) = match opened {
            Ok(x) => x,
            Err(OpenError::Connect(e)) => {
                record(shared, &provider.name, Outcome::ConnectError);
                return Err(GatewayError::UpstreamError(format!(
                    "provider {}: {}",
                    provider.name,
                    sanitize(&e)
                )));
            }
            Err(OpenError::Io(e)) => {
                record(shared, &provider.name, Outcome::ConnectError);
                return Err(GatewayError::UpstreamError(format!(
                    "provider {}: connection failed before an answer: {}",
                    provider.name,
                    sanitize(&e)
                )));
            }
            Err(OpenError::ConnectTimeout) => {
                record(shared, &provider.name, Outcome::Timeout);
                return Err(GatewayError::UpstreamTimeout(format!(
                    "provider {}: no connection within connect timeout {:?}",
                    provider.name, t.connect
                )));
            }
            Err(OpenError::Timeout) => {
                record(shared, &provider.name, Outcome::Timeout);
                return Err(GatewayError::UpstreamTimeout(format!(
                    "provider {} sent no answer within first_token timeout {:?}",
                    provider.name,
                    first_token_deadline - start
                )));
            }
        };
        let Some(resp) = up.resp_header() else {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: no response header",
                provider.name
            )));
        };
        let status = resp.status.as_u16();
        let content_type = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();

        if !(200..300).contains(&status) {
            let body = upstream::read_all(&mut up, deadline, t.idle, MAX_ERROR_BODY)
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
                return Err(err);
            }
            return Err(openai_error(&provider.name, status, &body));
        }

        if let Some(d) = call.dify.take() {
            if !content_type.starts_with("text/event-stream") {
                record(shared, &provider.name, Outcome::StreamError);
                upstream::release(shared, up, &peer).await;
                return Err(GatewayError::UpstreamError(format!(
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
            return relay_dify(shared, session, ctx, target, d, up, &peer, times).await;
        }
        let times = Times {
            start,
            first_token_deadline,
            deadline,
            idle: t.idle,
        };
        return if call.stream && content_type.starts_with("text/event-stream") {
            relay_stream(shared, session, ctx, target, up, &peer, times).await
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
            )
            .await
        };
    }
}

/// An OpenAI-compatible upstream's error answer, as the client sees it.
fn openai_error(provider: &str, status: u16, body: &[u8]) -> GatewayError {
    let (message, etype, param, code) = upstream_error_fields(body);
    let message = sanitize(message.as_deref().unwrap_or("no error message"));
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
) -> Result<(), GatewayError> {
    let provider = &target.provider;
    let t0 = Instant::now();
    let read = upstream::read_all(
        &mut up,
        times.first_token_deadline,
        times.idle,
        MAX_RESPONSE,
    )
    .await;
    ctx.upstream_wait += t0.elapsed();
    let body = match read {
        Ok(b) => b,
        Err(ReadError::Timeout) => {
            record(shared, &provider.name, Outcome::Timeout);
            return Err(GatewayError::UpstreamTimeout(format!(
                "provider {} did not finish its answer in time",
                provider.name
            )));
        }
        Err(ReadError::Io(e)) => {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: answer cut off: {}",
                provider.name,
                sanitize(&e)
            )));
        }
        Err(ReadError::TooLarge) => {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: answer larger than {MAX_RESPONSE} bytes",
                provider.name
            )));
        }
    };
    record(shared, &provider.name, Outcome::Ok);
    ctx.ttft = Some(times.start.elapsed());
    take_usage(ctx, &body);
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

/// Watches a relayed OpenAI stream without altering it: whether it ended properly and what
/// usage it reported.
#[derive(Default)]
struct StreamWatch {
    parser: SseParser,
    events: Vec<SseEvent>,
    done: bool,
    broken: bool,
}

impl StreamWatch {
    fn feed(&mut self, ctx: &mut RequestCtx, chunk: &[u8]) {
        if self.broken {
            return;
        }
        if self.parser.push(chunk, &mut self.events).is_err() {
            // Relaying continues; we only lose the ability to observe the stream.
            self.broken = true;
        }
        for ev in self.events.drain(..) {
            if ev.is_done() {
                self.done = true;
            } else if ev.data.contains("\"usage\"") {
                take_usage(ctx, ev.data.as_bytes());
            }
        }
    }
}

async fn relay_stream(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    mut up: HttpSession,
    peer: &HttpPeer,
    times: Times,
) -> Result<(), GatewayError> {
    let provider = &target.provider;
    let first = match next(ctx, session, &mut up, times.first_token_deadline).await {
        Step::Chunk(chunk) => chunk,
        Step::Eof => {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: stream ended before any event",
                provider.name
            )));
        }
        Step::Failed(e) => {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: stream failed before any event: {}",
                provider.name,
                sanitize(&e)
            )));
        }
        Step::TimedOut => {
            record(shared, &provider.name, Outcome::Timeout);
            up.shutdown().await;
            return Err(GatewayError::UpstreamTimeout(format!(
                "provider {} sent no stream event within first_token timeout {:?}",
                provider.name,
                times.first_token_deadline - times.start
            )));
        }
        Step::ClientGone => {
            ctx.status = 499;
            up.shutdown().await;
            return Ok(());
        }
    };
    record(shared, &provider.name, Outcome::Ok);
    ctx.ttft = Some(times.start.elapsed());
    let header = exchange::sse_header(ctx)?;
    ctx.status = 200;
    let mut watch = StreamWatch::default();
    watch.feed(ctx, &first);
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
        || session
            .write_response_body(Some(first), false)
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
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
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
        tail.extend_from_slice(&err.sse_event());
        if !watch.done {
            tail.extend_from_slice(SSE_DONE);
        }
        up.shutdown().await;
    } else {
        upstream::release(shared, up, peer).await;
    }
    let tail = (!tail.is_empty()).then(|| tail.freeze());
    if session.write_response_body(tail, true).await.is_err() {
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
) -> Result<(), GatewayError> {
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
            Step::TimedOut if !started => {
                record(shared, &provider.name, Outcome::Timeout);
                up.shutdown().await;
                stop_dify_task(shared, target, &call, tr.task_id.as_deref()).await;
                return Err(GatewayError::UpstreamTimeout(format!(
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
                    record(shared, &provider.name, Outcome::StreamError);
                    return Err(GatewayError::UpstreamError(e.to_string()));
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
                record(shared, &provider.name, Outcome::StreamError);
                return Err(e);
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
                        return Err(e);
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
                        out.ctx.ttft = Some(times.start.elapsed());
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
                            } else {
                                out.content.push_str(&text);
                            }
                        }
                        Out::Reasoning(text) => {
                            if out.client_stream {
                                out.pending.extend_from_slice(&out.writer.reasoning(&text));
                            } else {
                                out.reasoning.push_str(&text);
                            }
                        }
                        Out::Finish { reason, usage } => {
                            done = true;
                            out.ctx.prompt_tokens = Some(usage.prompt_tokens);
                            out.ctx.completion_tokens = Some(usage.completion_tokens);
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
            if session
                .write_response_header(Box::new(h), false)
                .await
                .is_err()
            {
                return client_left(shared, target, &call, &tr, &mut out, up).await;
            }
        }
        if !out.pending.is_empty() {
            let bytes = out.pending.split().freeze();
            if session
                .write_response_body(Some(bytes), done)
                .await
                .is_err()
            {
                return client_left(shared, target, &call, &tr, &mut out, up).await;
            }
        }
    }

    // The answer is complete: remember the conversation for the session's next turn.
    if let (Some(key), Some(conv)) = (&call.conversation_key, &tr.conversation_id) {
        shared.conversations.insert(key.clone(), conv.clone());
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
    match upstream::read_all(&mut up, Instant::now() + DRAIN_LIMIT, DRAIN_LIMIT, 1 << 20).await {
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
) -> Result<(), GatewayError> {
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
) -> Result<(), GatewayError> {
    record(shared, provider, Outcome::StreamError);
    if !out.client_stream {
        return Err(err);
    }
    if let Some(h) = header {
        if session
            .write_response_header(Box::new(h), false)
            .await
            .is_err()
        {
            out.ctx.status = 499;
            return Ok(());
        }
    }
    out.pending.extend_from_slice(&err.sse_event());
    out.pending.extend_from_slice(SSE_DONE);
    let bytes = out.pending.split().freeze();
    if session
        .write_response_body(Some(bytes), true)
        .await
        .is_err()
    {
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
        assert_eq!(
            sanitize("token app-0123456789abcdef0123 here"),
            "token *** here"
        );
    }
}
