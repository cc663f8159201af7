//! OpenAI-shaped answers, relayed byte for byte: a stream chunk by chunk as it arrives (headers
//! held until the first content event), or one JSON answer. Each is observed once on the way
//! (`protocol::watch`) for usage, the delivered text and the cache. The gateway asks upstream
//! streams for usage; when the client did not, that usage is observed and then taken out of
//! the relayed bytes (`protocol::strip`). A stream always ends with `data: [DONE]`: the
//! upstream's, or the gateway's after an error event, or the gateway's for an upstream that
//! finished its answer and ended its body without one.

use super::failure::{fail, Failure, Outcome};
use super::relay::Attempt;
use super::wait::{client_gone, next, Step};
use crate::downstream::{self, RequestCtx};
use crate::error::{sanitize, GatewayError};
use crate::protocol::strip::UsageStrip;
use crate::protocol::watch::{self, StreamWatch, Tokens};
use crate::protocol::SSE_DONE;
use crate::upstream::{self, Conn, ReadError};
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession as Session;
use std::time::Instant;

/// The largest non-streamed answer the gateway holds in memory.
const MAX_RESPONSE: usize = 64 << 20;
/// The most stream bytes held back (role chunks, comments) while waiting for the first content.
const MAX_HELD: usize = 1 << 20;

fn take_tokens(ctx: &mut RequestCtx, t: Tokens) {
    ctx.prompt_tokens = t.prompt.or(ctx.prompt_tokens);
    ctx.completion_tokens = t.completion.or(ctx.completion_tokens);
    ctx.cached_tokens = t.cached.or(ctx.cached_tokens);
    ctx.reasoning_tokens = t.reasoning.or(ctx.reasoning_tokens);
}

/// The bytes to relay: all of them, or what is left once the usage is taken out.
fn relayed(strip: &mut Option<UsageStrip>, chunk: Bytes) -> Bytes {
    match strip {
        Some(s) => s.push(chunk),
        None => chunk,
    }
}

pub async fn json(
    a: &mut Attempt<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: Conn,
) -> Result<(), Failure> {
    let target = a.target;
    let name = &target.provider.name;
    let content_type = up
        .header("content-type")
        .unwrap_or("application/json")
        .to_owned();
    let times = a.times;
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
            return a.failed(
                Outcome::Timeout,
                GatewayError::UpstreamTimeout(format!(
                    "provider {name} did not finish its answer in time"
                )),
            );
        }
        Err(ReadError::Io(e)) => {
            return a.failed(
                Outcome::StreamError,
                GatewayError::UpstreamError(format!(
                    "provider {name}: answer cut off: {}",
                    sanitize(&e)
                )),
            );
        }
        Err(ReadError::TooLarge) => {
            return a.failed(
                Outcome::StreamError,
                GatewayError::UpstreamError(format!(
                    "provider {name}: answer larger than {MAX_RESPONSE} bytes"
                )),
            );
        }
    };
    a.established(ctx);
    // Placeholders back to their values (privacy), before the cache or the client sees it.
    let body = match (&ctx.restore, std::str::from_utf8(&body)) {
        (Some(map), Ok(text)) if text.contains('[') => {
            Bytes::from(crate::privacy::restore::Restorer::restore(map, text))
        }
        _ => body,
    };
    // One look at the answer serves usage and the cache.
    let seen = watch::completion(&body, ctx.capture.is_some());
    take_tokens(ctx, seen.tokens);
    if let Some(c) = &mut ctx.capture {
        if c.raw {
            if seen.whole {
                c.body = Some(body.clone());
                c.complete = true;
            }
        } else if let Some(answer) = seen.answer {
            c.answer = answer;
            c.complete = true;
        }
        c.commit(&a.shared.cache).await;
    }
    // Only needed to charge an answer whose upstream reported no usage: a second look.
    if let (Some(d), None) = (&mut ctx.delivered, ctx.completion_tokens) {
        d.push_str(&watch::completion(&body, true).text);
    }
    a.release(up).await;
    let ct = if content_type.starts_with("text/event-stream") {
        "application/json".to_owned()
    } else {
        content_type
    };
    // A failed downstream write means the client left; nothing more to do for it.
    if downstream::write_full(session, ctx, 200, ct, body, &[])
        .await
        .is_err()
    {
        ctx.status = 499;
    }
    Ok(())
}

/// Waits for the first content event, holding what came before it. `Ok(None)`: the client left
/// and the attempt is over.
async fn first_content(
    a: &mut Attempt<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut Conn,
    watch: &mut StreamWatch,
    strip: &mut Option<UsageStrip>,
) -> Result<Option<BytesMut>, Failure> {
    let target = a.target;
    let name = &target.provider.name;
    let times = a.times;
    let mut held = BytesMut::new();
    while !watch.established {
        match next(ctx, session, up, times.first_token_deadline).await {
            Step::Chunk(chunk) => {
                watch.feed(&chunk, ctx.delivered.as_mut());
                take_tokens(ctx, watch.tokens);
                held.extend_from_slice(&relayed(strip, chunk));
                if held.len() > MAX_HELD {
                    up.shutdown().await;
                    return a.failed(
                        Outcome::StreamError,
                        GatewayError::UpstreamError(format!(
                            "provider {name}: more than {MAX_HELD} bytes of stream before any content"
                        )),
                    );
                }
                if let Some(e) = watch.early_error.take() {
                    up.shutdown().await;
                    return a.failed(
                        Outcome::StreamError,
                        GatewayError::UpstreamError(format!(
                            "provider {name}: stream failed before any content: {}",
                            sanitize(&e)
                        )),
                    );
                }
            }
            Step::Eof | Step::Failed(_) => {
                up.shutdown().await;
                return a.failed(
                    Outcome::StreamError,
                    GatewayError::UpstreamError(format!(
                        "provider {name}: stream ended before any content"
                    )),
                );
            }
            Step::TimedOut => {
                up.shutdown().await;
                return a.failed(
                    Outcome::Timeout,
                    GatewayError::UpstreamTimeout(format!(
                        "provider {name} sent no content within first_token timeout {:?}",
                        times.first_token_deadline - times.start
                    )),
                );
            }
            Step::ClientGone => {
                ctx.status = 499;
                up.shutdown().await;
                return Ok(None);
            }
            Step::Draining => {
                up.shutdown().await;
                return fail(GatewayError::ShuttingDown);
            }
        }
    }
    Ok(Some(held))
}

/// `strip_usage`: the client did not ask for usage, so the usage the gateway asked for is
/// taken out of what it sees.
pub async fn stream(
    a: &mut Attempt<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: Conn,
    strip_usage: bool,
) -> Result<(), Failure> {
    let target = a.target;
    let name = &target.provider.name;
    let times = a.times;
    let mut watch = StreamWatch::new(ctx.capture.is_some());
    let mut strip = strip_usage.then(UsageStrip::new);
    // Hold the client's headers until the first content (or terminal) event: a stream that
    // dies before it is still a clean failover.
    let Some(held) = first_content(a, session, ctx, &mut up, &mut watch, &mut strip).await? else {
        return Ok(());
    };
    a.established(ctx);
    let header = downstream::sse_header(ctx)?;
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
                watch.feed(&chunk, ctx.delivered.as_mut());
                take_tokens(ctx, watch.tokens);
                if watch.done {
                    // Stored before the client sees [DONE]: its next request may follow at once
                    // and must find the answer.
                    commit(a, ctx, &mut watch).await;
                }
                let chunk = relayed(&mut strip, chunk);
                if chunk.is_empty() {
                    continue;
                }
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
                let rest = strip.as_mut().map(UsageStrip::finish).unwrap_or_default();
                if session.write_response_body(rest, true).await.is_err() {
                    ctx.status = 499;
                }
                return Ok(());
            }
            Step::Draining => break Some(GatewayError::ShuttingDown),
            // Whether that was the whole answer is for the watch to say, below.
            Step::Eof => break None,
            Step::Failed(e) => {
                break Some(GatewayError::StreamIncomplete(format!(
                    "provider {name} stream failed: {}",
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
                    "provider {name} stream exceeded the {what} timeout"
                )));
            }
        }
    };
    let eof = failure.is_none();
    // Whatever the gateway appends must be an event of its own, not the end of the upstream's.
    let close = watch.end(eof, ctx.delivered.as_mut());
    let mut tail = BytesMut::new();
    match &mut strip {
        Some(s) => {
            tail.extend_from_slice(&s.push(Bytes::from_static(close)));
            tail.extend_from_slice(&s.finish());
        }
        None => tail.extend_from_slice(close),
    }
    take_tokens(ctx, watch.tokens);
    let failure = failure.or_else(|| {
        (!watch.complete()).then(|| {
            GatewayError::StreamIncomplete(format!(
                "provider {name} ended the stream without [DONE] before its answer was complete"
            ))
        })
    });
    if let Some(err) = &failure {
        a.record(Outcome::StreamError);
        ctx.error = Some(err.code().to_owned());
        tail.extend_from_slice(&err.sse_event());
        up.shutdown().await;
    } else {
        a.release(up).await;
        commit(a, ctx, &mut watch).await;
    }
    if !watch.done {
        tail.extend_from_slice(SSE_DONE);
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

/// Stores the streamed answer in the cache when it is complete (once).
async fn commit(a: &Attempt<'_>, ctx: &mut RequestCtx, watch: &mut StreamWatch) {
    if let Some(c) = ctx.capture.as_mut().filter(|c| c.stored.is_none()) {
        if let Some(answer) = watch.complete_answer() {
            c.answer = answer;
            c.complete = true;
        }
        c.commit(&a.shared.cache).await;
    }
}
