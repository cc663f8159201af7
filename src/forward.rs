//! The upstream call: resolve, connect (pooled), send the encoded request, wait for the answer
//! within the target's deadlines, and relay it downstream — a stream chunk by chunk as it
//! arrives, a JSON answer in one piece.
//!
//! Downstream headers are held until the upstream has produced its first body bytes, so an
//! upstream that accepts the request but never answers still gets the client a real 504 rather
//! than a 200 followed by silence. Once bytes went downstream a failure can only be reported in
//! the stream: an error event followed by `data: [DONE]`, never a silent close.

use crate::config::Target;
use crate::error::GatewayError;
use crate::exchange::{self, RequestCtx, SSE_DONE};
use crate::net;
use crate::protocol::sse::{SseEvent, SseParser};
use crate::providers::UpstreamCall;
use crate::state::Shared;
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout_at;

/// The largest non-streamed answer the gateway holds in memory.
const MAX_RESPONSE: usize = 64 << 20;
/// The largest upstream error body read to extract a message.
const MAX_ERROR_BODY: usize = 64 << 10;

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
}

struct InflightGuard<'a>(&'a prometheus::IntGauge);
impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Awaits `fut` until `deadline`, adding the wait to the request's upstream time.
async fn waited<T>(
    ctx: &mut RequestCtx,
    deadline: Instant,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let t0 = Instant::now();
    let r = timeout_at(deadline.into(), fut).await.ok();
    ctx.upstream_wait += t0.elapsed();
    r
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

/// The request head as HTTP/1.1 bytes. It is written together with the body in one flush:
/// pingora's client flushes its header separately, which costs the upstream an extra wakeup per
/// request. Every value here comes from validated config or was checked to be printable ASCII.
fn request_head(target: &Target, call: &UpstreamCall, request_id: &str) -> Vec<u8> {
    let url = &target.provider.url;
    let mut h = String::with_capacity(256 + call.path.len());
    let _ = write!(
        h,
        "POST {} HTTP/1.1\r\nhost: {}\r\n",
        call.path,
        url.host_header()
    );
    if let Some(key) = &target.provider.api_key {
        let _ = write!(h, "authorization: Bearer {}\r\n", key.expose());
    }
    let accept = if call.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let _ = write!(
        h,
        "content-type: application/json\r\ncontent-length: {}\r\naccept: {accept}\r\n\
         user-agent: ai-gateway/{}\r\nx-request-id: {request_id}\r\n\r\n",
        call.body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    h.into_bytes()
}

enum SendError {
    Timeout,
    Io(String),
}

/// Sends the request on `stream` and reads the response head (skipping 1xx).
async fn send_and_read_header(
    mut stream: Stream,
    head: &[u8],
    body: &Bytes,
    first_token_deadline: Instant,
) -> Result<HttpSession, SendError> {
    let io = |e: std::io::Error| SendError::Io(e.to_string());
    let exchange = async {
        // Pooled streams are unbuffered: one buffer makes one segment for typical requests; a
        // large body is not worth copying.
        if body.len() <= 64 * 1024 {
            let mut one = Vec::with_capacity(head.len() + body.len());
            one.extend_from_slice(head);
            one.extend_from_slice(body);
            stream.write_all(&one).await.map_err(io)?;
        } else {
            stream.write_all(head).await.map_err(io)?;
            stream.write_all(body).await.map_err(io)?;
        }
        stream.flush().await.map_err(io)?;
        let mut up = HttpSession::new(stream);
        loop {
            up.read_response()
                .await
                .map_err(|e| SendError::Io(e.to_string()))?;
            if up.resp_header().is_some_and(|h| h.status.as_u16() >= 200) {
                return Ok(up);
            }
        }
    };
    match timeout_at(first_token_deadline.into(), exchange).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Timeout),
    }
}

/// Returns a fully read connection to the pool; anything else is closed.
async fn release(shared: &Shared, mut up: HttpSession, peer: &HttpPeer) {
    if !up.is_body_done() {
        up.shutdown().await;
        return;
    }
    up.respect_keepalive();
    if let Some(stream) = up.reuse().await {
        shared
            .transport
            .release_stream(stream, peer.reuse_hash(), Some(net::POOL_IDLE));
    }
}

fn record(shared: &Shared, provider: &str, outcome: Outcome) {
    shared
        .metrics
        .upstream_attempts_total
        .with_label_values(&[provider, outcome.label()])
        .inc();
}

#[derive(serde::Deserialize)]
struct UsageView {
    usage: Option<Usage>,
}
#[derive(serde::Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

fn take_usage(ctx: &mut RequestCtx, json: &[u8]) {
    if let Ok(UsageView { usage: Some(u) }) = serde_json::from_slice::<UsageView>(json) {
        ctx.prompt_tokens = u.prompt_tokens.or(ctx.prompt_tokens);
        ctx.completion_tokens = u.completion_tokens.or(ctx.completion_tokens);
    }
}

/// Calls `target` with `call` and answers the client. An `Err` means nothing was written
/// downstream yet; the caller renders it as an HTTP error.
pub async fn forward(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    call: UpstreamCall,
) -> Result<(), GatewayError> {
    let provider = &target.provider;
    let t = target.timeouts;
    let start = Instant::now();
    let deadline = start + t.total;
    let first_token_deadline = (start + t.first_token).min(deadline);
    ctx.provider = Some(provider.name.clone());
    ctx.attempts += 1;
    let gauge = shared
        .metrics
        .inflight_requests
        .with_label_values(&[&provider.name]);
    gauge.inc();
    let _inflight = InflightGuard(&gauge);

    let url = &provider.url;
    let addr = match waited(
        ctx,
        start + t.connect,
        shared.resolver.resolve(&url.host, url.port),
    )
    .await
    {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            record(shared, &provider.name, Outcome::ConnectError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: {e}",
                provider.name
            )));
        }
        None => {
            record(shared, &provider.name, Outcome::Timeout);
            return Err(GatewayError::UpstreamTimeout(format!(
                "provider {}: DNS lookup did not finish within connect timeout {:?}",
                provider.name, t.connect
            )));
        }
    };
    let peer = net::peer(url, addr, &t);
    let head = request_head(target, &call, &ctx.request_id);

    // A pooled connection the upstream already closed fails on first use; that is not the
    // upstream's fault and nothing was processed, so try again on another connection.
    let mut stale_left = 2;
    let mut up = loop {
        let connected = waited(ctx, deadline, shared.transport.get_stream(&peer)).await;
        let (stream, reused) = match connected {
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                let timed_out = matches!(
                    e.etype(),
                    pingora::ErrorType::ConnectTimedout | pingora::ErrorType::TLSHandshakeTimedout
                );
                record(
                    shared,
                    &provider.name,
                    if timed_out {
                        Outcome::Timeout
                    } else {
                        Outcome::ConnectError
                    },
                );
                return Err(if timed_out {
                    GatewayError::UpstreamTimeout(format!(
                        "provider {}: no connection within connect timeout {:?}",
                        provider.name, t.connect
                    ))
                } else {
                    GatewayError::UpstreamError(format!(
                        "provider {}: cannot connect: {}",
                        provider.name,
                        e.etype().as_str()
                    ))
                });
            }
            None => {
                record(shared, &provider.name, Outcome::Timeout);
                return Err(GatewayError::UpstreamTimeout(format!(
                    "provider {}: total timeout {:?} passed while connecting",
                    provider.name, t.total
                )));
            }
        };
        let t0 = Instant::now();
        let sent = send_and_read_header(stream, &head, &call.body, first_token_deadline).await;
        ctx.upstream_wait += t0.elapsed();
        match sent {
            Ok(up) => break up,
            Err(SendError::Io(_)) if reused && stale_left > 0 => {
                stale_left -= 1;
                continue;
            }
            Err(SendError::Io(e)) => {
                record(shared, &provider.name, Outcome::ConnectError);
                return Err(GatewayError::UpstreamError(format!(
                    "provider {}: connection failed before an answer: {}",
                    provider.name,
                    sanitize(&e)
                )));
            }
            Err(SendError::Timeout) => {
                record(shared, &provider.name, Outcome::Timeout);
                return Err(GatewayError::UpstreamTimeout(format!(
                    "provider {} sent no answer within first_token timeout {:?}",
                    provider.name,
                    first_token_deadline - start
                )));
            }
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
    let retry_after = resp
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    if !(200..300).contains(&status) {
        let body = read_all(ctx, &mut up, deadline, t.idle, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let (message, etype, param, code) = upstream_error_fields(&body);
        let message = sanitize(message.as_deref().unwrap_or("no error message"));
        let outcome = match status {
            429 => Outcome::Status429,
            500..=599 => Outcome::Status5xx,
            _ => Outcome::Status4xx,
        };
        record(shared, &provider.name, outcome);
        release(shared, up, &peer).await;
        if status >= 500 || !(400..500).contains(&status) {
            return Err(GatewayError::UpstreamError(format!(
                "provider {} answered {status}: {message}",
                provider.name
            )));
        }
        let _ = retry_after; // 429 rests and Retry-After handling belong to routing.
        return Err(GatewayError::UpstreamClientError {
            status,
            message,
            error_type: etype,
            param,
            code,
        });
    }

    let is_sse = content_type.starts_with("text/event-stream");
    if call.stream && is_sse {
        relay_stream(
            shared,
            session,
            ctx,
            target,
            up,
            &peer,
            start,
            first_token_deadline,
            deadline,
        )
        .await
    } else {
        let body = match read_all(ctx, &mut up, first_token_deadline, t.idle, MAX_RESPONSE).await {
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
        ctx.ttft = Some(start.elapsed());
        take_usage(ctx, &body);
        release(shared, up, &peer).await;
        let ct = if is_sse {
            "application/json".to_owned()
        } else {
            content_type
        };
        // A failed downstream write means the client left; nothing more to do for it.
        if exchange::write_full(session, ctx, 200, &ct, body, &[])
            .await
            .is_err()
        {
            ctx.status = 499;
        }
        Ok(())
    }
}

enum ReadError {
    Timeout,
    Io(String),
    TooLarge,
}

/// Reads the rest of the body: the first piece by `first_deadline`, then at most `idle` between
/// pieces. The overall cap protects memory from a misbehaving upstream.
async fn read_all(
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    first_deadline: Instant,
    idle: Duration,
    cap: usize,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    let mut deadline = first_deadline;
    loop {
        match waited(ctx, deadline, up.read_body_bytes()).await {
            None => return Err(ReadError::Timeout),
            Some(Err(e)) => return Err(ReadError::Io(e.to_string())),
            Some(Ok(None)) => return Ok(buf.freeze()),
            Some(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > cap {
                    return Err(ReadError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
                deadline = Instant::now() + idle;
            }
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

#[allow(clippy::too_many_arguments)]
async fn relay_stream(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &Target,
    mut up: HttpSession,
    peer: &HttpPeer,
    start: Instant,
    first_token_deadline: Instant,
    deadline: Instant,
) -> Result<(), GatewayError> {
    let provider = &target.provider;
    let idle = target.timeouts.idle;
    let first = match waited(ctx, first_token_deadline, up.read_body_bytes()).await {
        Some(Ok(Some(chunk))) => chunk,
        Some(Ok(None)) => {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: stream ended before any event",
                provider.name
            )));
        }
        Some(Err(e)) => {
            record(shared, &provider.name, Outcome::StreamError);
            return Err(GatewayError::UpstreamError(format!(
                "provider {}: stream failed before any event: {}",
                provider.name,
                sanitize(&e.to_string())
            )));
        }
        None => {
            record(shared, &provider.name, Outcome::Timeout);
            up.shutdown().await;
            return Err(GatewayError::UpstreamTimeout(format!(
                "provider {} sent no stream event within first_token timeout {:?}",
                provider.name,
                first_token_deadline - start
            )));
        }
    };
    record(shared, &provider.name, Outcome::Ok);
    ctx.ttft = Some(start.elapsed());
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
        let until = (Instant::now() + idle).min(deadline);
        match waited(ctx, until, up.read_body_bytes()).await {
            Some(Ok(Some(chunk))) => {
                if chunk.is_empty() {
                    continue;
                }
                watch.feed(ctx, &chunk);
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    // The client left: stop paying for tokens nobody reads.
                    ctx.status = 499;
                    up.shutdown().await;
                    return Ok(());
                }
            }
            Some(Ok(None)) if watch.done => break None,
            Some(Ok(None)) => {
                break Some(GatewayError::StreamIncomplete(format!(
                    "provider {} ended the stream without [DONE]",
                    provider.name
                )))
            }
            Some(Err(e)) => {
                break Some(GatewayError::StreamIncomplete(format!(
                    "provider {} stream failed: {}",
                    provider.name,
                    sanitize(&e.to_string())
                )))
            }
            None => {
                let what = if Instant::now() >= deadline {
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
        release(shared, up, peer).await;
    }
    let tail = (!tail.is_empty()).then(|| tail.freeze());
    if session.write_response_body(tail, true).await.is_err() {
        ctx.status = 499;
    }
    Ok(())
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
