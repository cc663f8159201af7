//! The provider boundary: what every upstream protocol does, in one trait, and the one place
//! that dispatches on the configured provider type.
//!
//! A provider says which operations it serves, how it authenticates, how a request becomes its
//! upstream call, how the answer is opened (network or in process), how an error answer maps to
//! a gateway error (which carries its failover decision), and, for answers that are not
//! OpenAI-shaped, a [`Decoder`] that turns its stream into provider-neutral [`Event`]s plus the
//! hooks that run when such an answer ends or is abandoned. The attempt loop and the relays
//! (`forward`) only ever talk to [`Dispatch`], so they name no provider.
//!
//! Dispatch is an enum, not a trait object: every call is static and nothing is boxed per
//! request.

pub mod anthropic;
pub mod dify;
pub mod mock;
pub mod openai;

use crate::config::{Config, Provider as ProviderConfig, ProviderKind, Target};
use crate::error::GatewayError;
pub use crate::output::request::Telling;
use crate::protocol::chunks::{ToolCallPiece, Usage};
use crate::protocol::sse::SseEvent;
use crate::protocol::{ChatRequest, Features};
use crate::stores::Conversations;
use crate::upstream::{Auth, Conn, OpenError, Upstream};
use bytes::Bytes;
use std::future::Future;
use std::time::Instant;

/// What a client asks a provider to do (defined with the request, which carries it).
pub use crate::protocol::Operation;

/// A piece of an answer, whatever protocol it came in.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Reasoning(String),
    /// The signature of the thinking so far (Anthropic): a Messages client must send it back
    /// with the thinking block.
    Signature(String),
    ToolCall(ToolCallPiece),
    /// The terminal event: finish reason and usage (integers always present).
    Finish {
        reason: &'static str,
        usage: Usage,
    },
    Error(GatewayError),
    /// The stop string that ended the answer, when the upstream names it (before `Finish`).
    StopSequence(String),
    /// A keep-alive: never data for the client, at most an SSE comment.
    Ping,
}

/// Variables every template sees (DESIGN §1.6).
pub struct TemplateVars<'a> {
    pub scenario: &'a str,
    pub user: &'a str,
}

/// What building a call may use besides the request.
pub struct BuildCx<'a> {
    pub config: &'a Config,
    pub upstream: &'a Upstream,
    pub conversations: &'a Conversations,
    pub vars: &'a TemplateVars<'a>,
    /// Features the target drops (`accept_unsupported`): their fields are not sent.
    pub drop: Features,
}

/// What a hook may use when an answer ends or is abandoned.
pub struct HookCx<'a> {
    pub upstream: &'a Upstream,
    pub conversations: &'a Conversations,
    pub provider: &'a ProviderConfig,
}

/// Everything the forwarder sends, already encoded.
pub struct UpstreamCall {
    pub path: String,
    pub body: Bytes,
    /// Whether the upstream answers with SSE.
    pub stream: bool,
    /// Set when the answer is not OpenAI-shaped: it is decoded and re-encoded, not relayed.
    pub decoder: Option<Decoder>,
    /// Headers of this call besides the provider's own (e.g. a client's allowed
    /// `anthropic-beta`).
    pub headers: Vec<(&'static str, String)>,
}

/// When an attempt must have its answer head.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Connecting and everything else.
    pub total: Instant,
    /// The response head (the first token, for an upstream that streams).
    pub head: Instant,
}

/// The contract every provider implements.
pub trait Provider {
    fn supports(&self, op: Operation) -> bool;

    /// The request features this provider serves as asked; routing skips it for a request
    /// using any other (unless the target drops that feature).
    fn features(&self) -> Features;

    fn auth(&self) -> Auth<'_>;

    /// How a validated request tells this provider what JSON to answer: `response_format`
    /// where it serves one, else an instruction in the system prompt.
    fn telling(&self) -> Telling {
        if self
            .features()
            .contains(crate::protocol::Feature::ResponseFormat)
        {
            Telling::Native
        } else {
            Telling::Instruction
        }
    }

    /// The upstream call for `req` on `target`.
    fn build<'a>(
        &'a self,
        cx: &'a BuildCx<'a>,
        target: &'a Target,
        req: &'a ChatRequest,
    ) -> impl Future<Output = Result<UpstreamCall, GatewayError>> + Send + 'a;

    /// Sends the call and waits for the answer head; over HTTP on the shared client unless
    /// the provider answers otherwise.
    fn open<'a>(
        &'a self,
        upstream: &'a Upstream,
        target: &'a Target,
        call: &'a UpstreamCall,
        request_id: &'a str,
        deadlines: Deadlines,
    ) -> impl Future<Output = Result<Conn, OpenError>> + Send + 'a {
        open_http(upstream, target, call, request_id, self.auth(), deadlines)
    }

    /// The gateway error for an upstream error answer received before the first byte.
    fn map_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError;

    /// After an error answer: whether the same target is asked again with `call` changed
    /// (Dify: a conversation it forgot is started afresh).
    fn recover<'a>(
        &'a self,
        cx: &'a HookCx<'a>,
        call: &'a mut UpstreamCall,
        error: &'a GatewayError,
    ) -> impl Future<Output = bool> + Send + 'a {
        let _ = (cx, call, error);
        std::future::ready(false)
    }
}

/// The configured provider of a target, ready to call.
pub enum Dispatch<'a> {
    OpenAi(openai::OpenAi<'a>),
    Dify(dify::Dify<'a>),
    Anthropic(anthropic::Anthropic<'a>),
    Mock(mock::Mock<'a>),
}

/// The one `match` on the provider type.
pub fn of(p: &ProviderConfig) -> Dispatch<'_> {
    match &p.kind {
        ProviderKind::OpenAi => Dispatch::OpenAi(openai::OpenAi(p)),
        ProviderKind::Dify(settings) => Dispatch::Dify(dify::Dify { p, settings }),
        ProviderKind::Anthropic(settings) => {
            Dispatch::Anthropic(anthropic::Anthropic::new(p, settings))
        }
        ProviderKind::Mock(settings) => Dispatch::Mock(mock::Mock { p, settings }),
    }
}

macro_rules! each {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Dispatch::OpenAi($p) => $e,
            Dispatch::Dify($p) => $e,
            Dispatch::Anthropic($p) => $e,
            Dispatch::Mock($p) => $e,
        }
    };
}

impl Provider for Dispatch<'_> {
    fn supports(&self, op: Operation) -> bool {
        each!(self, p => p.supports(op))
    }

    fn features(&self) -> Features {
        each!(self, p => p.features())
    }

    fn auth(&self) -> Auth<'_> {
        each!(self, p => p.auth())
    }

    fn telling(&self) -> Telling {
        each!(self, p => p.telling())
    }

    async fn build<'a>(
        &'a self,
        cx: &'a BuildCx<'a>,
        target: &'a Target,
        req: &'a ChatRequest,
    ) -> Result<UpstreamCall, GatewayError> {
        each!(self, p => p.build(cx, target, req).await)
    }

    async fn open<'a>(
        &'a self,
        upstream: &'a Upstream,
        target: &'a Target,
        call: &'a UpstreamCall,
        request_id: &'a str,
        deadlines: Deadlines,
    ) -> Result<Conn, OpenError> {
        each!(self, p => p.open(upstream, target, call, request_id, deadlines).await)
    }

    fn map_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
        each!(self, p => p.map_error(status, body, retry_after))
    }

    async fn recover<'a>(
        &'a self,
        cx: &'a HookCx<'a>,
        call: &'a mut UpstreamCall,
        error: &'a GatewayError,
    ) -> bool {
        each!(self, p => p.recover(cx, call, error).await)
    }
}

/// Decoders of answers that are not OpenAI-shaped, one variant per protocol.
pub enum Decoder {
    Dify(dify::DifyStream),
    Anthropic(anthropic::AnthropicStream),
    /// OpenAI chunks, decoded only for a client of another dialect.
    OpenAi(openai::stream::OpenAiStream),
}

/// Where a decoded answer comes from: what the relay puts in every chunk.
pub struct StreamMeta<'a> {
    pub id: Option<&'a str>,
    pub created: Option<u64>,
}

impl Decoder {
    /// Turns one upstream SSE event into answer events (no I/O: unit-testable on recordings).
    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        match self {
            Decoder::Dify(d) => d.on_event(ev, out),
            Decoder::Anthropic(d) => d.on_event(ev, out),
            Decoder::OpenAi(d) => d.on_event(ev, out),
        }
    }

    /// Turns a whole (non-stream) answer into the events its stream would have given, the
    /// terminal one included.
    pub fn on_body(&mut self, body: &[u8], out: &mut Vec<Event>) {
        match self {
            Decoder::Anthropic(d) => d.on_body(body, out),
            Decoder::OpenAi(d) => d.on_body(body, out),
            // Dify calls always stream (`build` never asks for a blocking answer).
            Decoder::Dify(_) => out.push(Event::Error(GatewayError::UpstreamError(
                "a Dify app answered with a whole body to a streaming call".into(),
            ))),
        }
    }

    pub fn meta(&self) -> StreamMeta<'_> {
        match self {
            Decoder::Dify(d) => d.meta(),
            Decoder::Anthropic(d) => d.meta(),
            Decoder::OpenAi(d) => d.meta(),
        }
    }

    /// The text that replaces what was streamed (output moderation), for whole answers.
    pub fn replaced(&self) -> Option<&str> {
        match self {
            Decoder::Dify(d) => d.replaced(),
            Decoder::Anthropic(_) | Decoder::OpenAi(_) => None,
        }
    }

    /// The answer is complete; runs before its last bytes go to the client, so a follow-up
    /// request already sees what it changed (e.g. the conversation to continue).
    pub async fn on_finish(&self, cx: &HookCx<'_>) {
        match self {
            Decoder::Dify(d) => d.on_finish(cx).await,
            Decoder::Anthropic(_) | Decoder::OpenAi(_) => {}
        }
    }

    /// Nobody reads the answer any more (client left, deadline, shutdown): stop the upstream
    /// work where the protocol allows it.
    pub async fn on_abandon(&self, cx: &HookCx<'_>) {
        match self {
            Decoder::Dify(d) => d.on_abandon(cx).await,
            // Closing the connection is how these streams are stopped.
            Decoder::Anthropic(_) | Decoder::OpenAi(_) => {}
        }
    }
}

/// The model a call names upstream: the target's, else the client's (a 400 when neither).
pub fn upstream_model<'a>(
    target: &'a Target,
    req: &'a ChatRequest,
) -> Result<&'a str, GatewayError> {
    target
        .model
        .as_deref()
        .or(req.model.as_deref())
        .ok_or_else(|| {
            GatewayError::invalid_request(
                "`model` is required: this target has no upstream model configured",
                Some("model"),
            )
        })
}

/// Renders the target's system prompt for this request, if it has one.
pub fn render_system_prompt(
    config: &Config,
    target: &Target,
    req: &ChatRequest,
    vars: &TemplateVars<'_>,
) -> Result<Option<String>, GatewayError> {
    let Some(name) = &target.system_prompt else {
        return Ok(None);
    };
    let tmpl = config
        .templates
        .get_template(name)
        .map_err(|e| GatewayError::Internal(format!("template {name}: {e}")))?;
    let ctx = minijinja::context! {
        user_profile => minijinja::Value::from_serialize(&req.user_profile),
        scenario => vars.scenario,
        user => vars.user,
    };
    tmpl.render(ctx).map(Some).map_err(|e| {
        GatewayError::invalid_request(
            format!("the system prompt of this scenario cannot be rendered with this request: {e}"),
            Some("metadata.user_profile"),
        )
    })
}

/// Opens an HTTP call on the shared client; what network providers do.
pub(crate) async fn open_http(
    upstream: &Upstream,
    target: &Target,
    call: &UpstreamCall,
    request_id: &str,
    auth: Auth<'_>,
    deadlines: Deadlines,
) -> Result<Conn, OpenError> {
    let provider = &target.provider;
    let request = crate::upstream::Request {
        method: "POST",
        path: &call.path,
        content_type: "application/json",
        accept: if call.stream {
            "text/event-stream"
        } else {
            "application/json"
        },
        body: &call.body,
        request_id,
        auth,
    };
    let head = crate::upstream::head(&provider.url, &request);
    upstream
        .open(
            &provider.url,
            &target.timeouts,
            deadlines.total,
            deadlines.head,
            &head,
            &call.body,
        )
        .await
}
