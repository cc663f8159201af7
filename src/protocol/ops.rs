//! The OpenAI operations a request may ask for, and what the gateway checks of the two that are
//! relayed rather than understood: `/v1/embeddings` (`input`) and `/v1/completions` (`prompt`).
//!
//! Their bodies are not interpreted beyond validation of the fields the gateway needs (the
//! prompt, for limits) and of the value shapes OpenAI documents; everything else is the
//! upstream's to judge and reaches it as sent.

use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::value::RawValue;

/// What a client asks a provider to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Operation {
    #[default]
    Chat,
    Embeddings,
    Completions,
}

impl Operation {
    /// The name clients and error messages know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat.completions",
            Operation::Embeddings => "embeddings",
            Operation::Completions => "completions",
        }
    }

    /// The field that carries the prompt, for the operations relayed as they are.
    pub fn prompt_field(self) -> Option<&'static str> {
        match self {
            Operation::Chat => None,
            Operation::Embeddings => Some("input"),
            Operation::Completions => Some("prompt"),
        }
    }
}

/// A prompt as OpenAI takes it: a string, a list of strings, a list of token ids, or a list of
/// token-id lists.
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
}

impl Prompt {
    fn is_empty(&self) -> bool {
        match self {
            Prompt::Text(_) => false,
            Prompt::Texts(v) => v.is_empty(),
            Prompt::Tokens(v) => v.is_empty(),
            Prompt::TokenLists(v) => v.is_empty() || v.iter().any(Vec::is_empty),
        }
    }
}

fn invalid(msg: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(msg, Some(param))
}

fn field<'r>(rest: &'r [(String, Box<RawValue>)], key: &str) -> Option<&'r RawValue> {
    rest.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| &**v)
        .filter(|v| v.get() != "null")
}

/// Checks the fields of an embeddings or completions request the gateway relies on, naming
/// the field that is wrong. `rest` is every top-level field but `model` and `metadata`.
pub fn check(
    op: Operation,
    rest: &[(String, Box<RawValue>)],
    stream: bool,
) -> Result<(), GatewayError> {
    let Some(name) = op.prompt_field() else {
        return Ok(());
    };
    let raw = field(rest, name).ok_or_else(|| invalid(format!("`{name}` is required"), name))?;
    let shape = format!(
        "`{name}` must be a string, an array of strings, an array of token ids or an array of \
         token-id arrays"
    );
    let prompt: Prompt = serde_json::from_str(raw.get()).map_err(|_| invalid(&shape, name))?;
    if prompt.is_empty() {
        return Err(invalid(format!("`{name}` must not be empty"), name));
    }
    match op {
        Operation::Embeddings => {
            if stream {
                return Err(invalid("embeddings cannot be streamed", "stream"));
            }
            if let Some(f) = field(rest, "encoding_format") {
                if !matches!(f.get(), r#""float""# | r#""base64""#) {
                    return Err(invalid(
                        "`encoding_format` must be \"float\" or \"base64\"",
                        "encoding_format",
                    ));
                }
            }
            if let Some(d) = field(rest, "dimensions") {
                if !serde_json::from_str::<u64>(d.get()).is_ok_and(|n| n > 0) {
                    return Err(invalid(
                        "`dimensions` must be a positive integer",
                        "dimensions",
                    ));
                }
            }
        }
        Operation::Completions => {
            if let Some(s) = field(rest, "suffix") {
                if serde_json::from_str::<String>(s.get()).is_err() {
                    return Err(invalid("`suffix` must be a string", "suffix"));
                }
            }
        }
        Operation::Chat => {}
    }
    Ok(())
}

/// The prompt's tokens for a limit estimate: `count` of every text, one per token id.
pub fn prompt_tokens(
    op: Operation,
    rest: &[(String, Box<RawValue>)],
    count: impl Fn(&str) -> u64,
) -> u64 {
    let Some(raw) = op.prompt_field().and_then(|name| field(rest, name)) else {
        return 0;
    };
    match serde_json::from_str::<Prompt>(raw.get()) {
        Ok(Prompt::Text(t)) => count(&t),
        Ok(Prompt::Texts(v)) => v.iter().map(|t| count(t)).sum(),
        Ok(Prompt::Tokens(v)) => v.len() as u64,
        Ok(Prompt::TokenLists(v)) => v.iter().map(|l| l.len() as u64).sum(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(body: &str) -> Vec<(String, Box<RawValue>)> {
        let map: std::collections::BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(body).unwrap();
        map.into_iter().collect()
    }

    fn param(op: Operation, body: &str) -> Option<String> {
        check(op, &rest(body), false).err().map(|e| {
            e.to_json()["error"]["param"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
    }

    #[test]
    fn prompts_of_every_documented_shape_pass() {
        for input in [r#""hi""#, r#"["a","b"]"#, r#"[1,2,3]"#, r#"[[1,2],[3]]"#] {
            let body = format!(r#"{{"input":{input},"encoding_format":"base64","dimensions":8}}"#);
            assert_eq!(param(Operation::Embeddings, &body), None, "{input}");
            let body = format!(r#"{{"prompt":{input},"suffix":"end"}}"#);
            assert_eq!(param(Operation::Completions, &body), None, "{input}");
        }
    }

    #[test]
    fn wrong_or_missing_fields_are_named() {
        let e = Operation::Embeddings;
        assert_eq!(param(e, "{}").as_deref(), Some("input"));
        assert_eq!(param(e, r#"{"input":null}"#).as_deref(), Some("input"));
        assert_eq!(param(e, r#"{"input":3}"#).as_deref(), Some("input"));
        assert_eq!(param(e, r#"{"input":[]}"#).as_deref(), Some("input"));
        assert_eq!(param(e, r#"{"input":[{"a":1}]}"#).as_deref(), Some("input"));
        assert_eq!(
            param(e, r#"{"input":"x","encoding_format":"int8"}"#).as_deref(),
            Some("encoding_format")
        );
        assert_eq!(
            param(e, r#"{"input":"x","dimensions":"8"}"#).as_deref(),
            Some("dimensions")
        );
        let streamed = check(e, &rest(r#"{"input":"x"}"#), true).unwrap_err();
        assert_eq!(streamed.to_json()["error"]["param"], "stream");
        let c = Operation::Completions;
        assert_eq!(param(c, r#"{"input":"x"}"#).as_deref(), Some("prompt"));
        assert_eq!(
            param(c, r#"{"prompt":"x","suffix":1}"#).as_deref(),
            Some("suffix")
        );
    }

    #[test]
    fn prompt_tokens_count_texts_and_ids() {
        let words = |t: &str| t.split_whitespace().count() as u64;
        let n = |op, body: &str| prompt_tokens(op, &rest(body), words);
        assert_eq!(n(Operation::Embeddings, r#"{"input":"a b c"}"#), 3);
        assert_eq!(n(Operation::Embeddings, r#"{"input":["a b","c"]}"#), 3);
        assert_eq!(n(Operation::Completions, r#"{"prompt":[[1,2],[3]]}"#), 3);
        assert_eq!(n(Operation::Chat, r#"{"prompt":"a"}"#), 0);
    }
}
