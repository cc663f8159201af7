//! A `/v1/messages` request to an Anthropic target goes natively: the client's own Messages
//! body, not a translation of its translation. Only what the gateway owns changes — the
//! target's model, its system prompt, `params` under the client's values, the gateway's
//! `metadata` keys removed, `stream` as the client asked — so `thinking`, `cache_control`, `top_k` and signed
//! thinking blocks reach Claude as the client sent them. `anthropic-beta` values are forwarded
//! when the provider's `beta` allow-list names them; others are dropped.

use crate::config::{AnthropicSettings, SystemPromptMode, Target};
use crate::error::GatewayError;
use crate::protocol::request::{NativeMessages, GATEWAY_METADATA_KEYS};
use serde_json::{json, Map, Value};

/// The upstream body for a native request.
pub fn body(
    target: &Target,
    native: &NativeMessages,
    system: Option<&str>,
    stream: bool,
) -> Result<Vec<u8>, GatewayError> {
    let bad =
        |e: serde_json::Error| GatewayError::invalid_request(format!("request body: {e}"), None);
    let mut v: Map<String, Value> = serde_json::from_slice(&native.body).map_err(bad)?;
    if let Some(m) = &target.model {
        v.insert("model".into(), Value::String(m.clone()));
    }
    if let Some(Value::Object(meta)) = v.get_mut("metadata") {
        for k in GATEWAY_METADATA_KEYS {
            meta.remove(k);
        }
        if meta.is_empty() {
            v.remove("metadata");
        }
    }
    v.insert("stream".into(), Value::Bool(stream));
    if let Some(prompt) = system.filter(|p| !p.trim().is_empty()) {
        let joined = match (target.system_prompt_mode, v.remove("system")) {
            (SystemPromptMode::Replace, _) | (_, None) => json!(prompt),
            (_, Some(Value::String(own))) if own.is_empty() => json!(prompt),
            (_, Some(Value::String(own))) => json!(format!("{prompt}\n\n{own}")),
            (_, Some(Value::Array(mut blocks))) => {
                blocks.insert(0, json!({"type": "text", "text": prompt}));
                Value::Array(blocks)
            }
            (_, Some(other)) => other,
        };
        v.insert("system".into(), joined);
    }
    for (k, val) in &target.params {
        if k != "model" && !v.contains_key(k) {
            v.insert(k.clone(), val.clone());
        }
    }
    serde_json::to_vec(&v).map_err(bad)
}

/// The client's `anthropic-beta` values that the provider allows, comma-joined.
pub fn beta(settings: &AnthropicSettings, native: &NativeMessages) -> Option<String> {
    let asked = native.beta.as_deref()?;
    let allowed: Vec<&str> = asked
        .split(',')
        .map(str::trim)
        .filter(|b| settings.beta.iter().any(|a| a == b))
        .collect();
    (!allowed.is_empty()).then(|| allowed.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use bytes::Bytes;
    use std::path::Path;

    #[test]
    fn only_what_the_gateway_owns_changes() {
        let cfg = Config::from_str_at(
            r#"
providers:
  c: { type: anthropic, base_url: "http://127.0.0.1:1/v1", api_key: k, beta: [prompt-caching-2024-07-31] }
scenarios:
  s: { targets: [{ provider: c, model: claude-up, params: { max_tokens: 99, top_k: 5 } }] }
"#,
            Path::new("t.yaml"),
        )
        .unwrap();
        let target = &cfg.scenarios[0].targets[0];
        let native = NativeMessages {
            body: Bytes::from_static(
                br#"{"model":"s","max_tokens":10,"stream":false,"thinking":{"type":"enabled","budget_tokens":2000},
                    "system":[{"type":"text","text":"Own.","cache_control":{"type":"ephemeral"}}],
                    "metadata":{"scenario":"s","user_id":"u"},
                    "messages":[{"role":"user","content":"hi"}]}"#,
            ),
            beta: Some("prompt-caching-2024-07-31, other-beta".into()),
        };
        let v: Value =
            serde_json::from_slice(&body(target, &native, Some("Gateway."), true).unwrap())
                .unwrap();
        assert_eq!(v["model"], "claude-up");
        assert_eq!(v["stream"], true, "the request's choice, not the body's");
        assert_eq!(v["max_tokens"], 10, "the client's value wins over params");
        assert_eq!(v["top_k"], 5);
        assert_eq!(v["thinking"]["budget_tokens"], 2000);
        assert_eq!(v["metadata"], json!({"user_id": "u"}));
        assert_eq!(v["system"][0]["text"], "Gateway.");
        assert_eq!(v["system"][1]["cache_control"]["type"], "ephemeral");
        let crate::config::ProviderKind::Anthropic(settings) = &target.provider.kind else {
            panic!("an anthropic provider")
        };
        assert_eq!(
            beta(settings, &native).as_deref(),
            Some("prompt-caching-2024-07-31")
        );
    }
}
