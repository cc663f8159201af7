//! Claude through Anthropic's Messages API (`POST {base_url}/messages`).
//!
//! `turns.rs` maps the OpenAI messages onto a system text and alternating turns of content
//! blocks, `request.rs` the rest of the request (tools, tool choice, limits), `translate.rs` turns the Messages event stream into answer events,
//! `errors.rs` maps Anthropic's error answers. The call always streams: a non-stream client gets
//! one `chat.completion` assembled from the events by the translated relay, as for Dify. See
//! docs/anthropic.md for the mapping.

pub mod errors;
pub mod native;
pub mod request;
pub mod translate;
pub mod turns;

use super::{BuildCx, Deadlines, Event, Operation, Provider, StreamMeta, UpstreamCall};
use crate::config::{AnthropicSettings, Provider as ProviderConfig, Target};
use crate::error::GatewayError;
use crate::protocol::sse::SseEvent;
use crate::protocol::{ChatRequest, Feature, Features};
use crate::upstream::{Auth, Conn, OpenError, Upstream};
use translate::Translator;

pub struct Anthropic<'a> {
    pub p: &'a ProviderConfig,
    pub settings: &'a AnthropicSettings,
    /// The headers every call carries besides the key.
    headers: [(&'static str, &'a str); 1],
}

impl<'a> Anthropic<'a> {
    pub fn new(p: &'a ProviderConfig, settings: &'a AnthropicSettings) -> Self {
        Anthropic {
            p,
            settings,
            headers: [("anthropic-version", settings.version.as_str())],
        }
    }
}

impl Provider for Anthropic<'_> {
    fn supports(&self, op: Operation) -> bool {
        matches!(op, Operation::Chat)
    }

    /// Streamed text, tool calls (and answering their results), images in. Not `n`,
    /// `logprobs`, audio, nor a JSON `response_format`: the Messages API has no such fields.
    fn features(&self) -> Features {
        Features::of(&[
            Feature::Stream,
            Feature::Tools,
            Feature::ToolHistory,
            Feature::Images,
        ])
    }

    /// The key goes in `x-api-key`, never in `Authorization`.
    fn auth(&self) -> Auth<'_> {
        match &self.p.api_key {
            Some(k) => Auth::Header {
                name: "x-api-key",
                value: k.expose(),
                extra: &self.headers,
            },
            None => Auth::None,
        }
    }

    async fn build<'a>(
        &'a self,
        cx: &'a BuildCx<'a>,
        target: &'a Target,
        req: &'a ChatRequest,
    ) -> Result<UpstreamCall, GatewayError> {
        let system = super::render_system_prompt(cx.config, target, req, cx.vars)?;
        let Some(n) = &req.native else {
            return request::build_call(target, req, system.as_deref(), cx.drop);
        };
        let body = native::body(target, n, system.as_deref(), req.stream)?;
        let mut call = request::build_call_with(target, body, req.stream);
        if let Some(b) = native::beta(self.settings, n) {
            call.headers.push(("anthropic-beta", b));
        }
        Ok(call)
    }

    async fn open<'a>(
        &'a self,
        upstream: &'a Upstream,
        target: &'a Target,
        call: &'a UpstreamCall,
        request_id: &'a str,
        deadlines: Deadlines,
    ) -> Result<Conn, OpenError> {
        if call.headers.is_empty() {
            return super::open_http(upstream, target, call, request_id, self.auth(), deadlines)
                .await;
        }
        let mut extra: Vec<(&'static str, &str)> = self.headers.to_vec();
        extra.extend(call.headers.iter().map(|(k, v)| (*k, v.as_str())));
        let auth = match &self.p.api_key {
            Some(k) => Auth::Header {
                name: "x-api-key",
                value: k.expose(),
                extra: &extra,
            },
            None => Auth::None,
        };
        super::open_http(upstream, target, call, request_id, auth, deadlines).await
    }

    fn map_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
        errors::map(&self.p.name, status, body, retry_after)
    }
}

/// A Messages answer being decoded. Nothing is left to do when it ends, and closing the
/// connection is how a Messages stream is stopped, so it has no hooks of its own.
pub struct AnthropicStream {
    tr: Translator,
}

impl AnthropicStream {
    pub fn new(provider: &str) -> Self {
        AnthropicStream {
            tr: Translator::new(provider),
        }
    }

    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<Event>) {
        self.tr.on_event(ev, out);
    }

    pub fn on_body(&mut self, body: &[u8], out: &mut Vec<Event>) {
        self.tr.on_message(body, out);
    }

    pub fn meta(&self) -> StreamMeta<'_> {
        StreamMeta {
            id: self.tr.id.as_deref(),
            created: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ProviderKind};
    use crate::upstream::{head, Request};
    use bytes::Bytes;
    use std::path::Path;

    #[test]
    fn the_key_goes_in_x_api_key_with_the_version_and_never_as_bearer() {
        let yaml = r#"
providers:
  c: { type: anthropic, base_url: "https://api.anthropic.com/v1", api_key: sk-ant-k, version: "2024-01-01" }
scenarios:
  s: { targets: [{ provider: c, model: claude-sonnet-4-5 }] }
"#;
        let cfg = Config::from_str_at(yaml, Path::new("t.yaml")).unwrap();
        let p = &cfg.providers["c"];
        let ProviderKind::Anthropic(settings) = &p.kind else {
            panic!("{:?}", p.kind)
        };
        let a = Anthropic::new(p, settings);
        let body = Bytes::from_static(b"{}");
        let h = head(
            &p.url,
            &Request {
                method: "POST",
                path: "/v1/messages",
                content_type: "application/json",
                accept: "text/event-stream",
                body: &body,
                request_id: "r1",
                auth: a.auth(),
            },
        );
        let h = String::from_utf8(h).unwrap();
        assert!(h.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{h}");
        assert!(h.contains("\r\nx-api-key: sk-ant-k\r\n"), "{h}");
        assert!(h.contains("\r\nanthropic-version: 2024-01-01\r\n"), "{h}");
        assert!(!h.to_ascii_lowercase().contains("authorization"), "{h}");
        assert!(a.features().contains(Feature::Tools));
        assert!(!a.features().contains(Feature::ResponseFormat));
    }
}
