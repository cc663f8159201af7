//! OpenAI-compatible upstreams: the request body is the client's, with the target's model,
//! system prompt and default params applied and the gateway's own fields removed.
//! Messages are copied as the client's raw JSON text, never re-encoded; the answer is relayed
//! as it is.

pub mod errors;

use super::{BuildCx, Operation, Provider, UpstreamCall};
use crate::config::{Provider as ProviderConfig, Target};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use crate::upstream::Auth;
use bytes::Bytes;

pub struct OpenAi<'a>(pub &'a ProviderConfig);

impl Provider for OpenAi<'_> {
    fn supports(&self, op: Operation) -> bool {
        matches!(op, Operation::Chat)
    }

    fn auth(&self) -> Auth<'_> {
        self.0
            .api_key
            .as_ref()
            .map_or(Auth::None, |k| Auth::Bearer(k.expose()))
    }

    async fn build<'a>(
        &'a self,
        cx: &'a BuildCx<'a>,
        target: &'a Target,
        req: &'a ChatRequest,
    ) -> Result<UpstreamCall, GatewayError> {
        let system = super::render_system_prompt(cx.config, target, req, cx.vars)?;
        build_call(target, req, system.as_deref())
    }

    fn map_error(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> GatewayError {
        errors::map(&self.0.name, status, body, retry_after)
    }
}

fn push_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    // serde_json escapes the key exactly as JSON requires; a String cannot fail to serialize.
    out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
    out.push(b':');
}

pub fn build_body(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
) -> Result<Vec<u8>, GatewayError> {
    let model = target
        .model
        .as_deref()
        .or(req.model.as_deref())
        .ok_or_else(|| {
            GatewayError::invalid_request(
                "`model` is required: this target has no upstream model configured",
                Some("model"),
            )
        })?;
    Ok(build_body_with_model(target, req, system, model))
}

/// The upstream body with `model` as the upstream model.
pub fn build_body_with_model(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
    model: &str,
) -> Vec<u8> {
    let size = req
        .messages
        .iter()
        .map(|m| m.get().len() + 1)
        .sum::<usize>()
        + req
            .rest
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
        + system.map_or(0, |s| s.len() + 32)
        + 256;
    let mut out = Vec::with_capacity(size);
    let mut first = true;
    out.push(b'{');
    push_key(&mut out, &mut first, "model");
    out.extend_from_slice(serde_json::to_string(model).unwrap_or_default().as_bytes());
    push_key(&mut out, &mut first, "messages");
    out.push(b'[');
    let mut first_msg = true;
    if let Some(text) = system {
        let msg = serde_json::json!({"role": "system", "content": text});
        out.extend_from_slice(msg.to_string().as_bytes());
        first_msg = false;
    }
    for m in &req.messages {
        if !first_msg {
            out.push(b',');
        }
        first_msg = false;
        out.extend_from_slice(m.get().as_bytes());
    }
    out.push(b']');
    for (k, v) in &req.rest {
        push_key(&mut out, &mut first, k);
        out.extend_from_slice(v.get().as_bytes());
    }
    if !req.metadata.is_empty() {
        push_key(&mut out, &mut first, "metadata");
        out.extend_from_slice(
            serde_json::Value::Object(req.metadata.clone())
                .to_string()
                .as_bytes(),
        );
    }
    for (k, v) in &target.params {
        if k != "model" && !req.has_field(k) {
            push_key(&mut out, &mut first, k);
            out.extend_from_slice(v.to_string().as_bytes());
        }
    }
    out.push(b'}');
    out
}

pub fn build_call(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
) -> Result<UpstreamCall, GatewayError> {
    let body = build_body(target, req, system)?;
    Ok(UpstreamCall {
        path: format!("{}/chat/completions", target.provider.url.base_path),
        body: Bytes::from(body),
        stream: req.stream,
        decoder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::RequestHints;
    use serde_json::Value;
    use std::path::Path;

    const YAML: &str = r#"
providers:
  p: { type: openai, base_url: "http://127.0.0.1:1/v1", api_key: k }
scenarios:
  s:
    targets:
      - provider: p
        model: up-model
        params: { temperature: 0.2, max_tokens: 99 }
"#;

    #[test]
    fn body_applies_target_and_keeps_client_fields() {
        let cfg = Config::from_str_at(YAML, Path::new("t.yaml")).unwrap();
        let target = &cfg.scenarios[0].targets[0];
        let req = ChatRequest::parse(
            br#"{"model":"s","messages":[{"role":"user","content":"a\u00e9"}],"temperature":0.9,
                "metadata":{"scenario":"s","user_profile":{"x":1},"trace":"t"},"user":"u1"}"#,
            &RequestHints::default(),
        )
        .unwrap();
        let body = build_body(target, &req, Some("be kind")).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains(r#"{"role":"user","content":"a\u00e9"}"#),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["model"], "up-model");
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][0]["content"], "be kind");
        assert_eq!(v["temperature"], 0.9);
        assert_eq!(v["max_tokens"], 99);
        assert_eq!(v["user"], "u1");
        assert_eq!(v["metadata"], serde_json::json!({"trace": "t"}));
    }
}
