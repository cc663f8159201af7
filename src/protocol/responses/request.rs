//! A Responses API request (`POST /v1/responses`) as the gateway's chat request.
//!
//! The stateless core maps onto chat completions: `instructions` → a leading system message,
//! `input` (a string or items) → messages, function tools and `tool_choice` → their chat forms,
//! `text.format` → `response_format`, `reasoning.effort` → `reasoning_effort`,
//! `max_output_tokens` → `max_completion_tokens`. What the gateway keeps for itself —
//! `store`, `previous_response_id` — is returned apart ([`Converted`]), never sent upstream.
//!
//! Nothing is dropped silently: built-in tools (`web_search`, `file_search`, …), `background`,
//! stored prompts, conversations, file inputs and unknown fields are a 400 naming the field.
//! A few fields only shape what OpenAI itself returns and are accepted and ignored, as
//! documented in `docs/endpoints.md`: `include`, `truncation`, `reasoning.summary`.

use crate::error::GatewayError;
use serde_json::{json, Map, Value};

/// The chat request body, and what the gateway itself does with the request.
pub struct Converted {
    /// The chat-completions request, without the history of a continued response.
    pub chat: Map<String, Value>,
    /// How many system messages (`instructions`) lead `chat.messages`: a continued response's
    /// history goes after them.
    pub leading_system: usize,
    pub stream: bool,
    /// `store` (default true): the response is kept for `previous_response_id` and `GET`.
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// Request fields the response object repeats (`instructions`, `tools`, `temperature`, …).
    pub echo: Map<String, Value>,
    /// The request's own messages (input items after `instructions`), for a stored
    /// continuation to replay.
    pub input_messages: Vec<Value>,
}

fn invalid(msg: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(msg, Some(param))
}

/// Fields the response object repeats as the client sent them.
const ECHOED: &[&str] = &[
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "max_output_tokens",
    "metadata",
    "text",
    "reasoning",
    "previous_response_id",
    "store",
    "user",
    "truncation",
];

/// Fields accepted and passed to the chat request as they are.
const PASSED: &[&str] = &[
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "metadata",
    "user",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

/// Fields that only shape OpenAI's own output: accepted, nothing to do.
const IGNORED: &[&str] = &["include", "truncation"];

/// What the gateway cannot do for a field, by name.
const REFUSED: &[(&str, &str)] = &[
    (
        "background",
        "background responses are not supported by the gateway",
    ),
    (
        "prompt",
        "stored prompt templates live at OpenAI; send `instructions` and `input` instead",
    ),
    (
        "conversation",
        "the Conversations API is not supported; continue with `previous_response_id`",
    ),
    (
        "max_tool_calls",
        "`max_tool_calls` applies to built-in tools, which the gateway does not run",
    ),
    (
        "top_logprobs",
        "log probabilities are not available through /v1/responses",
    ),
];

pub fn convert(body: &[u8]) -> Result<Converted, GatewayError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = root else {
        return Err(GatewayError::invalid_request(
            "request body must be a JSON object",
            None,
        ));
    };
    let mut echo = Map::new();
    for key in ECHOED {
        if let Some(v) = obj.get(*key).filter(|v| !v.is_null()) {
            echo.insert((*key).to_owned(), v.clone());
        }
    }
    // The gateway's own metadata keys (scenario, session) are not the response's.
    if let Some(Value::Object(m)) = echo.get_mut("metadata") {
        for k in crate::protocol::request::GATEWAY_METADATA_KEYS {
            m.remove(k);
        }
    }
    let mut chat = Map::new();

    match obj.remove("model") {
        None | Some(Value::Null) => {}
        Some(m @ Value::String(_)) => {
            chat.insert("model".into(), m);
        }
        Some(_) => return Err(invalid("`model` must be a string", "model")),
    }

    let mut messages = Vec::new();
    match obj.remove("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(invalid("`instructions` must be a string", "instructions")),
    }
    let system_count = messages.len();
    match obj.remove("input") {
        None | Some(Value::Null) => return Err(invalid("`input` is required", "input")),
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                super::items::item(i, item, &mut messages)?;
            }
        }
        Some(_) => {
            return Err(invalid(
                "`input` must be a string or an array of items",
                "input",
            ))
        }
    }
    let input_messages = messages[system_count..].to_vec();
    if input_messages.is_empty() {
        return Err(invalid("`input` has no items", "input"));
    }
    chat.insert("messages".into(), Value::Array(messages));

    if let Some(tools) = obj.remove("tools").filter(|t| !t.is_null()) {
        let tools = super::items::tools(tools)?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = obj.remove("tool_choice").filter(|t| !t.is_null()) {
        chat.insert("tool_choice".into(), super::items::tool_choice(choice)?);
    }
    match obj.remove("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
            chat.insert("max_completion_tokens".into(), Value::Number(n));
        }
        Some(_) => {
            return Err(invalid(
                "`max_output_tokens` must be a positive integer",
                "max_output_tokens",
            ))
        }
    }
    if let Some(text) = obj.remove("text").filter(|t| !t.is_null()) {
        text_options(text, &mut chat)?;
    }
    if let Some(r) = obj.remove("reasoning").filter(|t| !t.is_null()) {
        let Value::Object(mut r) = r else {
            return Err(invalid("`reasoning` must be an object", "reasoning"));
        };
        match r.remove("effort") {
            None | Some(Value::Null) => {}
            Some(e @ Value::String(_)) => {
                chat.insert("reasoning_effort".into(), e);
            }
            Some(_) => {
                return Err(invalid(
                    "`reasoning.effort` must be a string",
                    "reasoning.effort",
                ))
            }
        }
        // `summary` / `generate_summary` shape OpenAI's reasoning summaries: nothing to map.
        r.remove("summary");
        r.remove("generate_summary");
        if let Some(k) = r.keys().next() {
            return Err(invalid(
                format!("`reasoning.{k}` is not supported"),
                &format!("reasoning.{k}"),
            ));
        }
    }
    let stream = match obj.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(invalid("`stream` must be a boolean", "stream")),
    };
    chat.insert("stream".into(), Value::Bool(stream));
    if stream {
        // Usage closes every response: ask for it.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    // The Responses API streams usage in `response.completed` only; nothing else to remove.
    obj.remove("stream_options");
    let store = match obj.remove("store") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(invalid("`store` must be a boolean", "store")),
    };
    let previous_response_id = match obj.remove("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => {
            return Err(invalid(
                "`previous_response_id` must be a non-empty string",
                "previous_response_id",
            ))
        }
    };
    match obj.remove("background") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => return Err(invalid(REFUSED[0].1, "background")),
    }
    if obj
        .get("top_logprobs")
        .is_some_and(|v| v.is_null() || v.as_u64() == Some(0))
    {
        obj.remove("top_logprobs");
    }
    for (key, why) in REFUSED {
        if obj.get(*key).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!("`{key}` is not supported: {why}"), key));
        }
    }
    for (key, value) in obj {
        if PASSED.contains(&key.as_str()) {
            chat.insert(key, value);
        } else if IGNORED.contains(&key.as_str()) || value.is_null() {
        } else {
            return Err(invalid(
                format!("`{key}` is not a /v1/responses field the gateway supports"),
                &key,
            ));
        }
    }
    Ok(Converted {
        chat,
        leading_system: system_count,
        stream,
        store,
        previous_response_id,
        echo,
        input_messages,
    })
}

impl Converted {
    /// The chat body, with `history` (a continued response's conversation) between the
    /// instructions and this request's input.
    pub fn chat_body(&mut self, history: Vec<Value>) -> Result<Vec<u8>, GatewayError> {
        if !history.is_empty() {
            if let Some(Value::Array(messages)) = self.chat.get_mut("messages") {
                let at = self.leading_system.min(messages.len());
                messages.splice(at..at, history);
            }
        }
        serde_json::to_vec(&self.chat).map_err(|e| GatewayError::Internal(e.to_string()))
    }
}

/// `text.format` → `response_format` (json_schema, json_object; `text` is the default);
/// `text.verbosity` passes as `verbosity`.
fn text_options(text: Value, chat: &mut Map<String, Value>) -> Result<(), GatewayError> {
    let Value::Object(mut text) = text else {
        return Err(invalid("`text` must be an object", "text"));
    };
    if let Some(v) = text.remove("verbosity").filter(|v| !v.is_null()) {
        chat.insert("verbosity".into(), v);
    }
    if let Some(format) = text.remove("format").filter(|v| !v.is_null()) {
        let Value::Object(mut f) = format else {
            return Err(invalid("`text.format` must be an object", "text.format"));
        };
        match f.remove("type").as_ref().and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let name = f.remove("name").unwrap_or_else(|| json!("response"));
                let Some(schema) = f.remove("schema").filter(Value::is_object) else {
                    return Err(invalid(
                        "`text.format.schema` must be a JSON Schema object",
                        "text.format.schema",
                    ));
                };
                let mut js = Map::new();
                js.insert("name".into(), name);
                js.insert("schema".into(), schema);
                for key in ["strict", "description"] {
                    if let Some(v) = f.remove(key).filter(|v| !v.is_null()) {
                        js.insert(key.into(), v);
                    }
                }
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": js}),
                );
            }
            other => {
                return Err(invalid(
                    format!(
                        "`text.format.type` must be text, json_object or json_schema, not {}",
                        other.unwrap_or("missing")
                    ),
                    "text.format.type",
                ))
            }
        }
    }
    if let Some(k) = text.keys().next() {
        return Err(invalid(
            format!("`text.{k}` is not supported"),
            &format!("text.{k}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
