//! Answers in another protocol, decoded into provider-neutral events and written in the
//! client's dialect (`encode.rs`): OpenAI chunks or one `chat.completion`, Anthropic events or
//! one `message`. The provider's
//! decoder supplies the events and its hooks (remember state when the answer completes, stop
//! the upstream's work when it is abandoned); this relay names no provider.

use super::encode::{Encoder, View};
use super::failure::{fail, Failure, Outcome};
use super::relay::Attempt;
use super::wait::{client_gone, next, Step};
use super::Job;
use crate::conversations::ConversationStore;
use crate::downstream::{self, Dialect, RequestCtx};
use crate::error::{sanitize, GatewayError};
use crate::privacy::restore::AnswerRestorer;
use crate::protocol::chunks::{ToolCallPiece, Usage};
use crate::protocol::sse::SseParser;
use crate::protocol::Answer;
use crate::providers::{Decoder, Event};
use crate::upstream::{self, Conn, ReadError};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use std::time::{Duration, Instant};

/// The most answer text kept for an aggregated answer or the cache.
const MAX_RESPONSE: usize = 64 << 20;
/// How long to wait for the end of an upstream body that is no longer needed before closing
/// the connection instead of pooling it.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// What the client asked for, as the written answer must reflect it.
pub fn client_view<'a>(job: &'a Job<'_>, dialect: Dialect) -> View<'a> {
    View {
        dialect,
        model: job
            .req
            .model
            .clone()
            .unwrap_or_else(|| job.scenario.name.clone()),
        include_usage: job.req.include_usage,
        stream: job.req.stream,
        // Only a streamed Anthropic answer needs it, before the upstream's count.
        input_estimate: match dialect {
            Dialect::Anthropic if job.req.stream => crate::limits::prompt_tokens(&job.req.messages),
            _ => 0,
        },
        responses: job.req.responses.as_deref(),
    }
}

/// Where a translated answer stands.
struct Out<'a> {
    enc: Encoder,
    /// The stop string that ended the answer, when the upstream said which.
    stop_sequence: Option<String>,
    client_stream: bool,
    headers_sent: bool,
    content: String,
    reasoning: String,
    /// The thinking's signature, for a non-stream answer.
    signature: String,
    /// Whole tool calls, for a non-stream answer.
    tool_calls: Vec<ToolCallPiece>,
    /// The answer grew past MAX_RESPONSE: no longer kept (a non-stream answer fails).
    overflow: bool,
    /// The answer has parts the cache's neutral answer cannot hold (tool calls): not stored.
    uncacheable: bool,
    pending: BytesMut,
    ctx: &'a mut RequestCtx,
    /// Placeholders back to their values (privacy: pseudonymize), as the answer arrives.
    restore: Option<AnswerRestorer>,
}

impl Out<'_> {
    fn ensure_started(&mut self) -> Result<Option<ResponseHeader>, GatewayError> {
        if self.headers_sent || !self.client_stream {
            return Ok(None);
        }
        self.headers_sent = true;
        self.ctx.status = 200;
        self.enc.begin(&mut self.pending);
        downstream::sse_header(self.ctx).map(Some)
    }

    fn kept(&self) -> usize {
        self.content.len()
            + self.reasoning.len()
            + self
                .tool_calls
                .iter()
                .map(|c| c.arguments.len())
                .sum::<usize>()
    }

    /// Keeps `text` for the whole answer unless that would pass the bound.
    fn keep(&mut self, text: &str, reasoning: bool) {
        if self.kept() + text.len() > MAX_RESPONSE {
            self.overflow = true;
        } else if reasoning {
            self.reasoning.push_str(text);
        } else {
            self.content.push_str(text);
            if let Some(d) = &mut self.ctx.delivered {
                d.push_str(text);
            }
        }
    }
}

/// How the read loop ended early.
enum Stop {
    /// Answer the attempt with this.
    Return(Result<(), Failure>),
    /// The answer started: end it with this error (or fail the attempt if nothing was sent).
    /// `abandon`: the upstream may still be working on it, so its work is stopped.
    Error { error: GatewayError, abandon: bool },
}

pub async fn relay(
    a: &mut Attempt<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: Conn,
    mut decoder: Decoder,
    client: View<'_>,
    whole: bool,
) -> Result<(), Failure> {
    let client_stream = client.stream;
    let enc = Encoder::new(client);
    let mut out = Out {
        enc,
        stop_sequence: None,
        client_stream,
        headers_sent: false,
        content: String::new(),
        reasoning: String::new(),
        signature: String::new(),
        tool_calls: Vec::new(),
        overflow: false,
        uncacheable: false,
        pending: BytesMut::new(),
        restore: ctx.restore.clone().map(AnswerRestorer::new),
        ctx,
    };
    let mut header: Option<ResponseHeader> = None;
    let read = if whole {
        read_whole(a, session, &mut out, &mut up, &mut decoder).await
    } else {
        read_loop(a, session, &mut out, &mut up, &mut decoder, &mut header).await
    };
    match read {
        Ok(()) => {}
        Err(Stop::Return(r)) => return r,
        Err(Stop::Error { error, abandon }) => {
            up.shutdown().await;
            if abandon {
                decoder.on_abandon(&a.hooks()).await;
            }
            return finish_with_error(a, session, &mut out, error, header.take()).await;
        }
    }
    if !out.client_stream {
        let body = out.pending.split().freeze();
        if downstream::write_json(session, out.ctx, 200, body)
            .await
            .is_err()
        {
            out.ctx.status = 499;
        }
    }
    if whole {
        a.release(up).await;
        return Ok(());
    }
    // The client has its answer. The upstream closes the stream right after the terminal event
    // (or after trailing events); reading that end keeps the connection for the next request.
    let until = Instant::now() + DRAIN_LIMIT;
    match upstream::read_all(&mut up, until, DRAIN_LIMIT, until, 1 << 20).await {
        Ok(_) => a.release(up).await,
        Err(_) => up.shutdown().await,
    }
    Ok(())
}

/// Reads, decodes and writes until the terminal event.
async fn read_loop(
    a: &mut Attempt<'_>,
    session: &mut Session,
    out: &mut Out<'_>,
    up: &mut Conn,
    decoder: &mut Decoder,
    header: &mut Option<ResponseHeader>,
) -> Result<(), Stop> {
    let times = a.times;
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    let mut items = Vec::new();
    let mut started = false;
    let mut done = false;
    while !done {
        let until = if started {
            (Instant::now() + times.idle).min(times.deadline)
        } else {
            times.first_token_deadline
        };
        let step = next(out.ctx, session, up, until).await;
        let chunk = chunk_or_stop(a, out, up, decoder, step, started).await?;
        if let Err(e) = parser.push(&chunk, &mut events) {
            let e = GatewayError::UpstreamError(format!("provider {}: {e}", a.name()));
            if !started {
                up.shutdown().await;
                return Err(Stop::Return(a.failed(Outcome::StreamError, e)));
            }
            return Err(Stop::Error {
                error: e,
                abandon: false,
            });
        }
        for ev in events.drain(..) {
            decoder.on_event(&ev, &mut items);
        }
        for item in items.drain(..) {
            done |= on_event(a, out, up, decoder, item, &mut started, header).await?;
        }
        if done && !out.client_stream {
            break;
        }
        if let Some(h) = header.take() {
            if session.write_response_header(Box::new(h)).await.is_err() {
                return Err(client_left(a, out, up, decoder).await);
            }
        }
        if !out.pending.is_empty() {
            let bytes = out.pending.split().freeze();
            if session.write_response_body(bytes, done).await.is_err() {
                return Err(client_left(a, out, up, decoder).await);
            }
        }
    }
    Ok(())
}

/// Reads a whole (non-stream) answer and decodes it into the same events as a stream; the
/// client does not stream either, so nothing is written until the relay writes the answer.
async fn read_whole(
    a: &mut Attempt<'_>,
    session: &mut Session,
    out: &mut Out<'_>,
    up: &mut Conn,
    decoder: &mut Decoder,
) -> Result<(), Stop> {
    let times = a.times;
    let t0 = Instant::now();
    let read = tokio::select! {
        r = upstream::read_all(up, times.first_token_deadline, times.idle, times.deadline, MAX_RESPONSE) => r,
        _ = client_gone(session) => return Err(client_left(a, out, up, decoder).await),
        _ = crate::lifecycle::deadline_passed(&mut out.ctx.drain) => {
            up.shutdown().await;
            return Err(Stop::Return(fail(GatewayError::ShuttingDown)));
        }
    };
    out.ctx.upstream_wait += t0.elapsed();
    let target = a.target;
    let name = &target.provider.name;
    let failed = match read {
        Ok(body) => {
            let mut items = Vec::new();
            decoder.on_body(&body, &mut items);
            let mut started = false;
            let mut none = None;
            for item in items {
                if on_event(a, out, up, decoder, item, &mut started, &mut none).await? {
                    return Ok(());
                }
            }
            (
                Outcome::StreamError,
                GatewayError::UpstreamError(format!("provider {name}: the answer has no end")),
            )
        }
        Err(ReadError::Timeout) => (
            Outcome::Timeout,
            GatewayError::UpstreamTimeout(format!(
                "provider {name} did not finish its answer in time"
            )),
        ),
        Err(ReadError::Io(e)) => (
            Outcome::StreamError,
            GatewayError::UpstreamError(format!(
                "provider {name}: answer cut off: {}",
                sanitize(&e)
            )),
        ),
        Err(ReadError::TooLarge) => (
            Outcome::StreamError,
            GatewayError::UpstreamError(format!(
                "provider {name}: answer larger than {MAX_RESPONSE} bytes"
            )),
        ),
    };
    up.shutdown().await;
    Err(Stop::Return(a.failed(failed.0, failed.1)))
}

/// The next upstream bytes, or how the wait for them ended the answer.
async fn chunk_or_stop(
    a: &mut Attempt<'_>,
    out: &mut Out<'_>,
    up: &mut Conn,
    decoder: &Decoder,
    step: Step,
    started: bool,
) -> Result<Bytes, Stop> {
    let target = a.target;
    let name = &target.provider.name;
    let times = a.times;
    match step {
        Step::Chunk(c) => Ok(c),
        Step::ClientGone => {
            out.ctx.status = 499;
            up.shutdown().await;
            decoder.on_abandon(&a.hooks()).await;
            Err(Stop::Return(Ok(())))
        }
        Step::Draining if !started => {
            up.shutdown().await;
            decoder.on_abandon(&a.hooks()).await;
            Err(Stop::Return(fail(GatewayError::ShuttingDown)))
        }
        Step::Draining => Err(Stop::Error {
            error: GatewayError::ShuttingDown,
            abandon: true,
        }),
        Step::TimedOut if !started => {
            up.shutdown().await;
            decoder.on_abandon(&a.hooks()).await;
            Err(Stop::Return(a.failed(
                Outcome::Timeout,
                GatewayError::UpstreamTimeout(format!(
                    "provider {name} produced no answer within first_token timeout {:?}",
                    times.first_token_deadline - times.start
                )),
            )))
        }
        Step::TimedOut => {
            let what = if Instant::now() >= times.deadline {
                "total"
            } else {
                "idle"
            };
            Err(Stop::Error {
                error: GatewayError::UpstreamTimeout(format!(
                    "provider {name} stream exceeded the {what} timeout"
                )),
                abandon: true,
            })
        }
        Step::Eof | Step::Failed(_) => {
            let e = format!("provider {name} ended the stream before its terminal event");
            if !started {
                up.shutdown().await;
                return Err(Stop::Return(
                    a.failed(Outcome::StreamError, GatewayError::UpstreamError(e)),
                ));
            }
            Err(Stop::Error {
                error: GatewayError::StreamIncomplete(e),
                abandon: false,
            })
        }
    }
}

/// Writes one decoded event into the answer; `Ok(true)` at the terminal event.
async fn on_event(
    a: &mut Attempt<'_>,
    out: &mut Out<'_>,
    up: &mut Conn,
    decoder: &Decoder,
    item: Event,
    started: &mut bool,
    header: &mut Option<ResponseHeader>,
) -> Result<bool, Stop> {
    let item = match item {
        Event::Ping => {
            if out.headers_sent {
                out.enc.ping(&mut out.pending);
            }
            return Ok(false);
        }
        Event::Error(e) if !*started => {
            up.shutdown().await;
            return Err(Stop::Return(a.failed(Outcome::of_status(e.status()), e)));
        }
        Event::Error(e) => {
            return Err(Stop::Error {
                error: e,
                abandon: false,
            })
        }
        other => other,
    };
    let Some(item) = restored(out, item) else {
        // Held back: it may be the start of a placeholder.
        return Ok(false);
    };
    if !*started {
        *started = true;
        a.established(out.ctx);
        let meta = decoder.meta();
        let id = meta
            .id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("chatcmpl-{}", out.ctx.request_id));
        let created = meta.created.unwrap_or_else(now_secs);
        out.enc.set_origin(id, created);
    }
    if let Some(h) = out.ensure_started().map_err(|e| Stop::Return(fail(e)))? {
        *header = Some(h);
    }
    match item {
        Event::Text(text) => {
            if out.client_stream {
                out.enc.text(&text, &mut out.pending);
            }
            out.keep(&text, false);
        }
        Event::Reasoning(text) => {
            if out.client_stream {
                out.enc.reasoning(&text, &mut out.pending);
            }
            out.keep(&text, true);
        }
        Event::ToolCall(piece) => {
            // Tool calls are not part of the normalized answer: never cached.
            out.uncacheable = true;
            if out.client_stream {
                out.enc.tool_call(&piece, &mut out.pending);
            } else if out.kept() + piece.arguments.len() > MAX_RESPONSE {
                out.overflow = true;
            } else {
                ToolCallPiece::join(&mut out.tool_calls, &piece);
            }
        }
        Event::Finish { reason, usage } => {
            finish(a, out, up, decoder, reason, usage).await?;
            return Ok(true);
        }
        Event::Signature(sig) => {
            // A replayed answer could not carry it, and a thinking block sent back without
            // it is refused upstream.
            out.uncacheable = true;
            if out.client_stream {
                out.enc.signature(&sig, &mut out.pending);
            } else {
                out.signature.push_str(&sig);
            }
        }
        Event::StopSequence(s) => out.stop_sequence = Some(s),
        Event::Ping | Event::Error(_) => {}
    }
    Ok(false)
}

/// `item` with its placeholders restored; `None` when all of its text is held back.
fn restored(out: &mut Out<'_>, item: Event) -> Option<Event> {
    let Some(r) = &mut out.restore else {
        return Some(item);
    };
    let item = match item {
        Event::Text(t) => Event::Text(r.text.push(&t)),
        Event::Reasoning(t) => Event::Reasoning(r.reasoning.push(&t)),
        Event::ToolCall(mut piece) => {
            piece.arguments = r.tool(piece.index, &piece.arguments);
            return Some(Event::ToolCall(piece));
        }
        other => return Some(other),
    };
    match &item {
        Event::Text(t) | Event::Reasoning(t) if t.is_empty() => None,
        _ => Some(item),
    }
}

/// What the restorers still hold when the answer ends (a placeholder never completed),
/// written before the end like any text.
fn flush_restored(out: &mut Out<'_>) {
    let Some(r) = &mut out.restore else {
        return;
    };
    let (text, reasoning, tools) = (r.text.finish(), r.reasoning.finish(), r.finish_tools());
    if !reasoning.is_empty() {
        if out.client_stream {
            out.enc.reasoning(&reasoning, &mut out.pending);
        }
        out.keep(&reasoning, true);
    }
    if !text.is_empty() {
        if out.client_stream {
            out.enc.text(&text, &mut out.pending);
        }
        out.keep(&text, false);
    }
    for (index, arguments) in tools {
        let piece = ToolCallPiece {
            index,
            id: None,
            name: None,
            arguments,
        };
        if out.client_stream {
            out.enc.tool_call(&piece, &mut out.pending);
        } else {
            ToolCallPiece::join(&mut out.tool_calls, &piece);
        }
    }
}

/// The terminal event: usage, the provider's hook, the cache, and the answer's last bytes.
async fn finish(
    a: &mut Attempt<'_>,
    out: &mut Out<'_>,
    up: &mut Conn,
    decoder: &Decoder,
    reason: &'static str,
    usage: Usage,
) -> Result<(), Stop> {
    flush_restored(out);
    if out.overflow && !out.client_stream {
        up.shutdown().await;
        return Err(Stop::Return(fail(GatewayError::UpstreamError(format!(
            "provider {}: answer larger than {MAX_RESPONSE} bytes",
            a.name()
        )))));
    }
    out.ctx.prompt_tokens = Some(usage.prompt_tokens);
    out.ctx.completion_tokens = Some(usage.completion_tokens);
    out.ctx.cached_tokens = Some(usage.cached_tokens);
    out.ctx.reasoning_tokens = Some(usage.reasoning_tokens);
    // Before the last bytes go out: the session's next turn may follow at once.
    decoder.on_finish(&a.hooks()).await;
    let content = decoder
        .replaced()
        .map_or(out.content.as_str(), |r| r)
        .to_owned();
    if let Some(c) = out
        .ctx
        .capture
        .as_mut()
        .filter(|_| !out.overflow && !out.uncacheable)
    {
        c.answer = Answer {
            content: content.clone(),
            reasoning: out.reasoning.clone(),
            finish_reason: reason.to_owned(),
            usage,
            model: out.enc.model().to_owned(),
            created: out.enc.created(),
        };
        c.complete = true;
        c.commit(&a.shared.cache).await;
    }
    let stop = out.stop_sequence.as_deref();
    if out.client_stream {
        out.enc.finish(reason, stop, usage, &mut out.pending);
    } else {
        let body = out.enc.completion(
            &content,
            (&out.reasoning, &out.signature),
            &out.tool_calls,
            reason,
            stop,
            usage,
        );
        out.pending.extend_from_slice(&body);
    }
    // Before the last bytes go out: the client's next request may name this response.
    if let Some((key, record, ttl)) = out.enc.stored_record() {
        a.shared.conversations.put(key, record, ttl).await;
    }
    Ok(())
}

async fn client_left(a: &Attempt<'_>, out: &mut Out<'_>, up: &mut Conn, decoder: &Decoder) -> Stop {
    out.ctx.status = 499;
    up.shutdown().await;
    decoder.on_abandon(&a.hooks()).await;
    Stop::Return(Ok(()))
}

/// Ends a started translated answer with an error: in the stream (error event + `[DONE]`), or
/// as the HTTP error of a non-stream answer (nothing was sent yet).
async fn finish_with_error(
    a: &Attempt<'_>,
    session: &mut Session,
    out: &mut Out<'_>,
    err: GatewayError,
    header: Option<ResponseHeader>,
) -> Result<(), Failure> {
    a.record(Outcome::StreamError);
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
    out.enc.error(&err, &mut out.pending);
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
