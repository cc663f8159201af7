//! The downstream half of a request: per-request context, reading what the client sent (headers,
//! the bounded body), the response headers the contract promises (§1.4), and writing JSON
//! bodies, SSE events and errors to the client.

use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use std::time::{Duration, Instant};

/// A static value is not copied into the header (`HeaderValue::from_str` allocates).
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What the response cache did for a request (`x-gateway-cache`, metrics, access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// The scenario has no cache.
    Off,
    Hit,
    Miss,
    /// The client's `Cache-Control` or a session skipped the lookup.
    Bypass,
}

impl CacheState {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheState::Off => "off",
            CacheState::Hit => "hit",
            CacheState::Miss => "miss",
            CacheState::Bypass => "bypass",
        }
    }
}

/// The API shape a client speaks: its answers and errors are written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    OpenAi,
    /// The Messages API (`/v1/messages`).
    Anthropic,
    /// The Responses API (`/v1/responses`): OpenAI-shaped errors, answers as response objects
    /// and events.
    Responses,
}

/// What one request accumulates on its way; read afterwards for metrics and the access log.
pub struct RequestCtx {
    pub started: Instant,
    pub request_id: String,
    pub client: Option<String>,
    pub scenario: Option<String>,
    /// `<experiment>/<variant>` when an experiment variant serves the request
    /// (`x-gateway-variant`, metrics, access log).
    pub variant: Option<String>,
    pub provider: Option<String>,
    pub attempts: u32,
    pub cache: CacheState,
    pub session: Option<String>,
    /// Status sent downstream; 499 when the client went away first.
    pub status: u16,
    /// Time spent waiting on upstreams (DNS, connect, send, reads) — excluded from overhead.
    pub upstream_wait: Duration,
    pub ttft: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Prompt tokens read from the upstream's prompt cache (part of `prompt_tokens`).
    pub cached_tokens: Option<u64>,
    /// Completion tokens spent reasoning (part of `completion_tokens`).
    pub reasoning_tokens: Option<u64>,
    /// The upstream reported no usage: the token counts are the gateway's estimate.
    pub usage_estimated: bool,
    /// The `endpoint` label this request is counted under in the request metrics; `None` for
    /// requests that are not counted (admin, models, health).
    pub endpoint: Option<&'static str>,
    /// Set when the answer may be cached: the forwarder fills it as the answer is produced.
    pub capture: Option<crate::cache::Capture>,
    /// The content delivered to the client (chat requests): what an answer whose upstream
    /// reports no usage is counted from.
    pub delivered: Option<String>,
    /// The answering target's price, for spend.
    pub cost: Option<crate::config::Cost>,
    /// Headers every response of this request carries (rate-limit state).
    pub extra_headers: Vec<(&'static str, String)>,
    /// USD charged to a limited client (with estimates where the upstream reported no usage);
    /// `None` = computed from usage and cost when metrics are recorded.
    pub spent: Option<f64>,
    /// The client's API shape (answers and errors).
    pub dialect: Dialect,
    /// Request features the answering target dropped (`x-gateway-dropped`, access log).
    pub dropped: crate::protocol::Features,
    /// Whether the client asked for a stream (access log).
    pub stream: Option<bool>,
    /// The error code answered, if the request failed (access log).
    pub error: Option<String>,
    /// Fires at the shutdown grace deadline: open answers end now.
    pub drain: Option<tokio::sync::watch::Receiver<bool>>,
    /// Holds the request in the in-flight count until the context is dropped.
    pub inflight: Option<crate::lifecycle::InFlight>,
    /// Set while a validated answer is collected: the relay's complete body lands here
    /// instead of going to the client, who gets it only once it is checked.
    pub held: Option<Option<Bytes>>,
    /// Set for an attempt whose target got pseudonymized data: the placeholders the answer is
    /// restored from.
    pub restore: Option<std::sync::Arc<crate::privacy::Mapping>>,
    /// Personal data found in the request, as `kind:count,…` (access log; never values).
    pub pii: Option<String>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            client: None,
            scenario: None,
            variant: None,
            provider: None,
            attempts: 0,
            cache: CacheState::Off,
            session: None,
            status: 0,
            upstream_wait: Duration::ZERO,
            ttft: None,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            reasoning_tokens: None,
            usage_estimated: false,
            endpoint: None,
            capture: None,
            delivered: None,
            cost: None,
            extra_headers: Vec::new(),
            spent: None,
            dialect: Dialect::OpenAi,
            dropped: crate::protocol::Features::NONE,
            stream: None,
            error: None,
            drain: None,
            held: None,
            restore: None,
            pii: None,
            inflight: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// A header value we echo back only when it is short printable ASCII.
pub fn echoable(value: &str) -> bool {
    !value.is_empty() && value.len() <= 256 && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A response header carrying the gateway's own headers.
pub fn response_header(status: u16, ctx: &RequestCtx) -> Result<ResponseHeader, GatewayError> {
    let bad = |e: pingora::BError| GatewayError::Internal(format!("response header: {e}"));
    let mut h = ResponseHeader::build_no_case(status, Some(10)).map_err(bad)?;
    h.insert_header("x-request-id", ctx.request_id.as_str())
        .map_err(bad)?;
    if ctx.endpoint.is_some() {
        h.insert_header(
            "x-gateway-cache",
            HeaderValue::from_static(ctx.cache.as_str()),
        )
        .map_err(bad)?;
    }
    if let Some(s) = &ctx.scenario {
        h.insert_header("x-gateway-scenario", s.as_str())
            .map_err(bad)?;
    }
    if let Some(v) = &ctx.variant {
        h.insert_header("x-gateway-variant", v.as_str())
            .map_err(bad)?;
    }
    if let Some(p) = &ctx.provider {
        h.insert_header("x-gateway-provider", p.as_str())
            .map_err(bad)?;
    }
    if ctx.attempts > 0 {
        h.insert_header("x-gateway-attempts", ctx.attempts.to_string())
            .map_err(bad)?;
    }
    if let Some(s) = &ctx.session {
        h.insert_header("x-gateway-session", s.as_str())
            .map_err(bad)?;
    }
    if !ctx.dropped.is_empty() {
        h.insert_header("x-gateway-dropped", ctx.dropped.to_string())
            .map_err(bad)?;
    }
    for (k, v) in &ctx.extra_headers {
        h.insert_header(*k, v.as_str()).map_err(bad)?;
    }
    Ok(h)
}

/// Writes a complete response with a known length.
pub async fn write_full(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: impl TryInto<HeaderValue> + Send,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    if let Some(slot) = &mut ctx.held {
        *slot = Some(body);
        return Ok(());
    }
    let mut h = match response_header(status, ctx) {
        Ok(h) => h,
        Err(_) => ResponseHeader::build_no_case(status, None)?,
    };
    h.insert_header("content-type", content_type)?;
    h.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        h.insert_header(*k, v.as_str())?;
    }
    ctx.status = status;
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(body, true).await
}

pub async fn write_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Bytes,
) -> pingora::Result<()> {
    write_full(session, ctx, status, JSON, body, &[]).await
}

/// The answer to a request whose HTTP framing pingora could not parse: an OpenAI-shaped 400,
/// then the connection closes (nothing after the bad bytes can be trusted).
pub async fn write_malformed(session: &mut Session) {
    let body = GatewayError::invalid_request("malformed HTTP request", None).body();
    let Ok(mut h) = ResponseHeader::build_no_case(400, Some(2)) else {
        return;
    };
    if h.insert_header("content-type", JSON).is_ok()
        && h.insert_header("content-length", body.len().to_string())
            .is_ok()
    {
        let _ = session.write_error_response(h, body).await;
    }
}

/// The liveness answer of both listeners.
pub async fn write_health(session: &mut Session, ctx: &mut RequestCtx) {
    let _ = write_json(
        session,
        ctx,
        200,
        Bytes::from_static(b"{\"status\":\"ok\"}"),
    )
    .await;
}

/// Writes `err` in the client's error shape with its status and retry hints.
pub async fn write_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &GatewayError,
) -> pingora::Result<()> {
    ctx.error = Some(err.code().chars().take(64).collect());
    let mut extra = Vec::new();
    if let Some(secs) = err.retry_after() {
        extra.push(("retry-after", secs.to_string()));
    }
    if let Some(retry) = err.should_retry() {
        extra.push(("x-should-retry", retry.to_string()));
    }
    let body = match ctx.dialect {
        Dialect::OpenAi | Dialect::Responses => err.body(),
        Dialect::Anthropic => crate::protocol::anthropic::error::body(err),
    };
    write_full(session, ctx, err.status(), JSON, body, &extra).await
}

/// Headers for an SSE response; chunked so pingora flushes every event as it is written.
pub fn sse_header(ctx: &RequestCtx) -> Result<ResponseHeader, GatewayError> {
    let bad = |e: pingora::BError| GatewayError::Internal(format!("response header: {e}"));
    let mut h = response_header(200, ctx)?;
    h.insert_header("content-type", "text/event-stream; charset=utf-8")
        .map_err(bad)?;
    h.insert_header("cache-control", "no-cache").map_err(bad)?;
    h.insert_header("transfer-encoding", "chunked")
        .map_err(bad)?;
    Ok(h)
}

/// A request header as UTF-8 text: profile values carry names in Chinese, which `to_str`
/// (visible ASCII only) would drop.
pub fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// The raw `Authorization` header value, for the key checks of both listeners.
pub fn authorization(session: &Session) -> Option<&[u8]> {
    session
        .req_header()
        .headers
        .get("authorization")
        .map(|v| v.as_bytes())
}

/// The client's `x-request-id` when it is safe to echo, else a fresh one.
pub fn request_id(session: &Session) -> String {
    match session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if echoable(id) && id.len() <= 128 => id.to_owned(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// How much of an oversized body is read and discarded so the client sees the 413: HTTP/1.1
/// clients (httpx, the OpenAI SDKs) finish sending before they read the answer, and a connection
/// closed under them surfaces as a connection error instead of the status.
const MAX_DRAIN: usize = 64 << 20;

fn expects_continue(session: &Session) -> bool {
    let req = session.req_header();
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads the whole request body; over `limit` the rest is drained (up to [`MAX_DRAIN`], never
/// kept) and the request is refused.
pub async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > limit as u64);
    // `Expect: 100-continue` (curl sends it for bodies over 1 MiB, and waits a second for the
    // answer otherwise): a body that is too large is refused before it is sent, any other is
    // invited.
    let expects_continue = expects_continue(session);
    if declared.is_some_and(|n| n > limit.saturating_add(MAX_DRAIN) as u64)
        || (over && expects_continue)
    {
        session.set_keepalive(None);
        return Err(GatewayError::RequestTooLarge { limit });
    }
    if expects_continue {
        let invite = pingora::http::ResponseHeader::build_no_case(100, Some(0))
            .map_err(|e| GatewayError::Internal(format!("100 Continue: {e}")))?;
        if session
            .write_response_header(Box::new(invite))
            .await
            .is_err()
        {
            session.set_keepalive(None);
            return Err(GatewayError::invalid_request(
                "could not read the request body: the connection closed",
                None,
            ));
        }
    }
    let capacity = if over {
        0
    } else {
        declared.map_or(16 * 1024, |n| n as usize)
    };
    let mut buf = BytesMut::with_capacity(capacity);
    let mut seen = 0usize;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                if seen > limit {
                    over = true;
                    buf = BytesMut::new();
                }
                if seen > limit.saturating_add(MAX_DRAIN) {
                    session.set_keepalive(None);
                    break;
                }
                if !over {
                    buf.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return Err(GatewayError::invalid_request(
                    format!("could not read the request body: {}", e.etype().as_str()),
                    None,
                ));
            }
        }
    }
    if over {
        return Err(GatewayError::RequestTooLarge { limit });
    }
    Ok(buf.freeze())
}
