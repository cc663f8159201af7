//! Dify Service API upstreams (chat, agent, chatflow, workflow, completion apps).
//!
//! `turns.rs` reduces the OpenAI messages to Dify's turns (tool calls and results rendered as
//! text), `request.rs` maps them onto Dify's request (with `upload.rs` for inline images),
//! `translate.rs` turns Dify's event stream into answer events, `errors.rs` maps Dify's error
//! table. Dify's own needs at the end of an answer are hooks of its decoder: the conversation
//! is remembered when the answer completes, the task is stopped when nobody reads it any more.
//! See docs/dify.md for the mapping.

pub mod errors;
pub mod request;
mod think;
pub mod translate;
pub mod turns;
pub mod upload;

use super::{
    BuildCx, Decoder, Event, HookCx, Operation, Provider, StreamMeta, Telling, UpstreamCall,
};
use crate::config::{DifyApp, DifySettings, Provider as ProviderConfig, Target};
use crate::conversations::{ConversationKey, ConversationStore, CONVERSATION_IDLE};
use crate::error::{sanitize, GatewayError};
use crate::protocol::sse::SseEvent;
use crate::protocol::{ChatRequest, Feature, Features};
use crate::upstream::Auth;
use bytes::Bytes;
use std::time::Duration;
use translate::Translator;

pub use request::{body, generate_path, has_conversations, stop_path};
pub use turns::{query_text, turns};

/// How long a stop call may take after the client left.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Dify<'a> {
    pub p: &'a ProviderConfig,
    pub settings: &'a DifySettings,
}

fn auth(p: &ProviderConfig) -> Auth<'_> {
    p.api_key
        .as_ref()
        .map_or(Auth::None, |k| Auth::Bearer(k.expose()))
}

impl Provider for Dify<'_> {
    fn supports(&self, op: Operation) -> bool {
        matches!(op, Operation::Chat)
    }

    /// A Dify app takes a query, inputs and files: streamed text with images in. Tool calls
    /// in the history are rendered into the query text; answering a tool result is not served.
    fn features(&self) -> Features {
        Features::of(&[Feature::Stream, Feature::Images])
    }

    /// An app's prompt and inputs are its own: a JSON instruction would land in the user's
    /// query (or a workflow input), so the answer is only validated after the fact.
    fn telling(&self) -> Telling {
        Telling::Nothing
    }

    fn auth(&self) -> Auth<'_> {
        auth(self.p)
    }

    async fn build<'a>(
        &'a self,
        cx: &'a BuildCx<'a>,
        target: &'a Target,
        req: &'a ChatRequest,
    ) -> Result<UpstreamCall, GatewayError> {
        request::build_call(cx, target, self.settings, req).await
    }

    fn map_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
        let mut error = errors::map_body(&self.p.name, status, body);
        // Dify itself sends no Retry-After, but a proxy in front of it may: it knows best how
        // long the target should rest.
        if let (
            GatewayError::Mapped {
                status: 429,
                retry_after: rest,
                ..
            },
            Some(secs),
        ) = (&mut error, retry_after)
        {
            *rest = Some(secs);
        }
        error
    }

    /// The session's conversation is gone on Dify's side: forget it and start a new one, once,
    /// with the history rendered into the query.
    async fn recover<'a>(
        &'a self,
        cx: &'a HookCx<'a>,
        call: &'a mut UpstreamCall,
        error: &'a GatewayError,
    ) -> bool {
        if error.code() != "conversation_not_found" {
            return false;
        }
        let Some(Decoder::Dify(d)) = &mut call.decoder else {
            return false;
        };
        let (Some(key), Some(fresh)) = (
            d.call.conversation_key.as_ref(),
            d.call.fallback_body.take(),
        ) else {
            return false;
        };
        cx.conversations.remove(key).await;
        call.body = fresh;
        true
    }
}

/// What the hooks need to know about the call that produced a Dify answer.
pub struct DifyCall {
    pub app: DifyApp,
    /// The Dify `user` (also needed to stop the task).
    pub user: String,
    /// Where to remember the conversation this answer belongs to.
    pub conversation_key: Option<ConversationKey>,
    /// The same request as a new conversation, for when Dify no longer knows ours.
    pub fallback_body: Option<Bytes>,
}

/// A Dify answer being decoded: the translator plus the call it answers.
pub struct DifyStream {
    call: DifyCall,
    tr: Translator,
}

impl DifyStream {
    pub fn new(call: DifyCall, tr: Translator) -> Self {
        DifyStream { call, tr }
    }

    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        self.tr.on_event(ev, out);
    }

    pub fn meta(&self) -> StreamMeta<'_> {
        StreamMeta {
            id: self.tr.id.as_deref(),
            created: self.tr.created,
        }
    }

    pub fn replaced(&self) -> Option<&str> {
        self.tr.replaced()
    }

    pub async fn on_finish(&self, cx: &HookCx<'_>) {
        if let (Some(key), Some(conv)) = (&self.call.conversation_key, &self.tr.conversation_id) {
            cx.conversations
                .put(key.clone(), conv.clone(), CONVERSATION_IDLE)
                .await;
        }
    }

    /// Tells Dify to stop generating (the worker would run on otherwise).
    pub async fn on_abandon(&self, cx: &HookCx<'_>) {
        if self.tr.finished {
            return;
        }
        let Some(task) = self.tr.task_id.as_deref() else {
            return;
        };
        let p = cx.provider;
        let path = stop_path(&p.url.base_path, self.call.app, task);
        let body = Bytes::from(serde_json::json!({"user": self.call.user}).to_string());
        if let Err(e) = cx
            .upstream
            .simple_call(
                &p.url,
                auth(p),
                &p.timeouts,
                &path,
                "application/json",
                body,
                STOP_TIMEOUT,
            )
            .await
        {
            log::warn!(
                "dify provider {}: stop call for task {task} failed: {}",
                p.name,
                sanitize(&e)
            );
        }
    }
}
