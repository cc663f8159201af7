//! OpenAI-compatible upstreams: the request body is the client's, with the target's model,
//! system prompt and default params applied and the gateway's own fields removed.
//! Messages are copied as the client's raw JSON text, never re-encoded; the answer is relayed
//! as it is. A stream always asks for `stream_options.include_usage`, so that limits, spend
//! and metrics count the upstream's real tokens (the relay takes that usage out again for a
//! client that did not ask for it). Embeddings and
//! completions calls are built in `relayed.rs`.

pub mod errors;
mod relayed;
pub mod stream;

use super::{BuildCx, Operation, Provider, UpstreamCall};
use crate::config::{Provider as ProviderConfig, SystemPromptMode, Target};
use crate::error::GatewayError;
use crate::protocol::{ChatRequest, Features};
use crate::upstream::Auth;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub struct OpenAi<'a>(pub &'a ProviderConfig);

impl Provider for OpenAi<'_> {
    /// Chat, embeddings and completions: the OpenAI API has all three.
    fn supports(&self, op: Operation) -> bool {
        matches!(
            op,
            Operation::Chat | Operation::Embeddings | Operation::Completions
        )
    }

    /// Everything: the request reaches the upstream as the client sent it.
    fn features(&self) -> Features {
        Features::ALL
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
        if req.op != Operation::Chat {
            return relayed::call(target, req);
        }
        let system = super::render_system_prompt(cx.config, target, req, cx.vars)?;
        build_call(target, req, system.as_deref(), cx.drop)
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
    drop: Features,
) -> Result<Vec<u8>, GatewayError> {
    let model = super::upstream_model(target, req)?;
    Ok(build_body_with_model(target, req, system, model, drop))
}

/// The text of a client system or developer message; `None` for any other message.
fn client_system_text(message: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct View {
        role: String,
        #[serde(default)]
        content: Value,
    }
    let v: View = serde_json::from_str(message.get()).ok()?;
    if v.role != "system" && v.role != "developer" {
        return None;
    }
    Some(match v.content {
        Value::String(s) => s,
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    })
}

/// The system message the upstream gets first, and whether the client's own system messages
/// are left out of the list (`replace`, or `merge` which folded them into the first).
fn system_message(
    mode: SystemPromptMode,
    prompt: Option<&str>,
    req: &ChatRequest,
) -> (Option<String>, bool) {
    let Some(prompt) = prompt else {
        return (None, false);
    };
    let message = |text: &str| serde_json::json!({"role": "system", "content": text}).to_string();
    match mode {
        SystemPromptMode::Prepend => (Some(message(prompt)), false),
        SystemPromptMode::Replace => (Some(message(prompt)), true),
        SystemPromptMode::Merge => {
            let mut text = prompt.to_owned();
            for own in req.messages.iter().filter_map(|m| client_system_text(m)) {
                if !own.is_empty() {
                    text.push_str("\n\n");
                    text.push_str(&own);
                }
            }
            (Some(message(&text)), true)
        }
    }
}

/// The `stream_options` of a stream: the client's (else the target's param) with
/// `include_usage: true`, its other options kept.
fn stream_options(target: &Target, req: &ChatRequest) -> String {
    let own = req
        .rest
        .iter()
        .find(|(k, _)| k == "stream_options")
        .and_then(|(_, v)| serde_json::from_str::<Map<String, Value>>(v.get()).ok())
        .or_else(|| target.params.get("stream_options")?.as_object().cloned());
    let mut options = own.unwrap_or_default();
    options.insert("include_usage".into(), Value::Bool(true));
    Value::Object(options).to_string()
}

/// The upstream body with `model` as the upstream model, without the fields of `drop`.
pub fn build_body_with_model(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
    model: &str,
    drop: Features,
) -> Vec<u8> {
    let (first, skip_client_system) = system_message(target.system_prompt_mode, system, req);
    let stream_options =
        (req.stream && !drop.owns_field("stream_options")).then(|| stream_options(target, req));
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
        + first.as_ref().map_or(0, |s| s.len() + 1)
        + 256;
    let mut out = Vec::with_capacity(size);
    let mut first_key = true;
    out.push(b'{');
    push_key(&mut out, &mut first_key, "model");
    out.extend_from_slice(serde_json::to_string(model).unwrap_or_default().as_bytes());
    push_key(&mut out, &mut first_key, "messages");
    out.push(b'[');
    let mut first_msg = true;
    if let Some(msg) = &first {
        out.extend_from_slice(msg.as_bytes());
        first_msg = false;
    }
    for m in &req.messages {
        if skip_client_system && client_system_text(m).is_some() {
            continue;
        }
        if !first_msg {
            out.push(b',');
        }
        first_msg = false;
        out.extend_from_slice(m.get().as_bytes());
    }
    out.push(b']');
    for (k, v) in &req.rest {
        if drop.owns_field(k) || (k == "stream_options" && stream_options.is_some()) {
            continue;
        }
        push_key(&mut out, &mut first_key, k);
        out.extend_from_slice(v.get().as_bytes());
    }
    if !req.metadata.is_empty() {
        push_key(&mut out, &mut first_key, "metadata");
        out.extend_from_slice(
            serde_json::Value::Object(req.metadata.clone())
                .to_string()
                .as_bytes(),
        );
    }
    for (k, v) in &target.params {
        let ours = k == "model" || (k == "stream_options" && stream_options.is_some());
        if !ours && !req.has_field(k) && !drop.owns_field(k) {
            push_key(&mut out, &mut first_key, k);
            out.extend_from_slice(v.to_string().as_bytes());
        }
    }
    if let Some(options) = &stream_options {
        push_key(&mut out, &mut first_key, "stream_options");
        out.extend_from_slice(options.as_bytes());
    }
    out.push(b'}');
    out
}

pub fn build_call(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
    drop: Features,
) -> Result<UpstreamCall, GatewayError> {
    let body = build_body(target, req, system, drop)?;
    Ok(UpstreamCall {
        headers: Vec::new(),
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
        let body = build_body(target, &req, Some("be kind"), Features::NONE).unwrap();
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

    #[test]
    fn a_stream_always_asks_for_usage_and_keeps_the_clients_other_options() {
        let cfg = Config::from_str_at(YAML, Path::new("t.yaml")).unwrap();
        let target = &cfg.scenarios[0].targets[0];
        let body = |req: &str| -> Value {
            let req = ChatRequest::parse(req.as_bytes(), &RequestHints::default()).unwrap();
            serde_json::from_slice(&build_body(target, &req, None, Features::NONE).unwrap())
                .unwrap()
        };
        let plain = body(r#"{"stream":true,"messages":[{"role":"user","content":"q"}]}"#);
        assert_eq!(
            plain["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        let own = body(
            r#"{"stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true},"messages":[{"role":"user","content":"q"}]}"#,
        );
        assert_eq!(
            own["stream_options"],
            serde_json::json!({"include_usage": true, "continuous_usage_stats": true})
        );
        let whole = body(r#"{"messages":[{"role":"user","content":"q"}]}"#);
        assert!(whole.get("stream_options").is_none(), "{whole}");
    }

    #[test]
    fn system_prompt_modes_and_dropped_fields() {
        let yaml = |mode: &str| {
            format!(
                r#"
providers:
  p: {{ type: openai, base_url: "http://127.0.0.1:1/v1", api_key: k }}
scenarios:
  s:
    targets:
      - {{ provider: p, model: m, system_prompt: "Gateway.", system_prompt_mode: {mode}, params: {{ n: 3 }} }}
"#
            )
        };
        let req = ChatRequest::parse(
            br#"{"messages":[{"role":"system","content":"Client."},{"role":"developer","content":[{"type":"text","text":"Dev."}]},{"role":"user","content":"q"}],
                "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto","temperature":1}"#,
            &RequestHints::default(),
        )
        .unwrap();
        let body = |mode: &str, drop: Features| -> Value {
            let cfg = Config::from_str_at(&yaml(mode), Path::new("t.yaml")).unwrap();
            let target = &cfg.scenarios[0].targets[0];
            serde_json::from_slice(&build_body(target, &req, Some("Gateway."), drop).unwrap())
                .unwrap()
        };
        let roles = |v: &Value| -> Vec<String> {
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["role"].as_str().unwrap().to_owned())
                .collect()
        };
        let prepend = body("prepend", Features::NONE);
        assert_eq!(roles(&prepend), ["system", "system", "developer", "user"]);
        assert_eq!(prepend["n"], 3);
        let replace = body("replace", Features::NONE);
        assert_eq!(roles(&replace), ["system", "user"]);
        assert_eq!(replace["messages"][0]["content"], "Gateway.");
        let merge = body("merge", Features::NONE);
        assert_eq!(roles(&merge), ["system", "user"]);
        assert_eq!(
            merge["messages"][0]["content"],
            "Gateway.\n\nClient.\n\nDev."
        );

        let mut drop = Features::NONE;
        drop.insert(crate::protocol::Feature::Tools);
        drop.insert(crate::protocol::Feature::N);
        let dropped = body("prepend", drop);
        assert!(dropped.get("tools").is_none() && dropped.get("tool_choice").is_none());
        assert!(
            dropped.get("n").is_none(),
            "a target param of a dropped feature is not sent"
        );
        assert_eq!(dropped["temperature"], 1);
    }
}
