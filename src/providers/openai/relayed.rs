//! Embeddings and (legacy) completions calls: the client's body with the target's model, sent
//! to `{base_url}/embeddings` or `{base_url}/completions`. Every other field is copied as the
//! client's raw JSON text in the client's order; the target's system prompt and `params` are
//! chat settings and do not apply.

use super::push_key;
use crate::config::Target;
use crate::error::GatewayError;
use crate::protocol::{ChatRequest, Operation};
use crate::providers::UpstreamCall;
use bytes::Bytes;

/// The upstream path of a relayed operation, under the provider's base path.
fn path(op: Operation) -> &'static str {
    match op {
        Operation::Chat => "/chat/completions",
        Operation::Embeddings => "/embeddings",
        Operation::Completions => "/completions",
    }
}

/// The upstream body: `model` first (the target's, else the client's), then the client's fields.
pub fn body(req: &ChatRequest, model: &str) -> Vec<u8> {
    let size = req
        .rest
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum::<usize>()
        + model.len()
        + 64;
    let mut out = Vec::with_capacity(size);
    let mut first = true;
    out.push(b'{');
    push_key(&mut out, &mut first, "model");
    out.extend_from_slice(serde_json::to_string(model).unwrap_or_default().as_bytes());
    for (k, v) in &req.rest {
        push_key(&mut out, &mut first, k);
        out.extend_from_slice(v.get().as_bytes());
    }
    // What is left of `metadata` once the gateway's own keys are out, as for chat.
    if !req.metadata.is_empty() {
        push_key(&mut out, &mut first, "metadata");
        out.extend_from_slice(
            serde_json::Value::Object(req.metadata.clone())
                .to_string()
                .as_bytes(),
        );
    }
    out.push(b'}');
    out
}

pub fn call(target: &Target, req: &ChatRequest) -> Result<UpstreamCall, GatewayError> {
    let model = crate::providers::upstream_model(target, req)?;
    Ok(UpstreamCall {
        headers: Vec::new(),
        path: format!("{}{}", target.provider.url.base_path, path(req.op)),
        body: Bytes::from(body(req, model)),
        stream: req.stream,
        decoder: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::RequestHints;
    use std::path::Path;

    #[test]
    fn the_model_is_replaced_and_the_rest_kept_byte_for_byte() {
        let cfg = Config::from_str_at(
            "providers:\n  p: { type: openai, base_url: 'http://x/v1', api_key: k }\nscenarios:\n  s:\n    targets: [{ provider: p, model: up-embed, params: { temperature: 0.2 } }]\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let target = &cfg.scenarios[0].targets[0];
        let req = ChatRequest::parse_op(
            br#"{"input":["a\u00e9", "b"],"model":"s","encoding_format":"base64","dimensions":8,"metadata":{"scenario":"s"}}"#,
            &RequestHints::default(),
            Operation::Embeddings,
        )
        .unwrap();
        let c = call(target, &req).unwrap();
        assert_eq!(c.path, "/v1/embeddings");
        assert!(!c.stream);
        assert_eq!(
            std::str::from_utf8(&c.body).unwrap(),
            r#"{"model":"up-embed","input":["a\u00e9", "b"],"encoding_format":"base64","dimensions":8}"#
        );
    }
}
