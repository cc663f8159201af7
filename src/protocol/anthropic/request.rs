//! An Anthropic Messages request as the equivalent OpenAI chat-completions request.
//!
//! [`to_openai`] turns the body of `POST /v1/messages` into a chat-completions body that
//! [`ChatRequest::parse`] accepts, so the rest of the pipeline (scenarios, routing, limits,
//! providers) is the same for both front doors. Every shape is checked on the way: a request the
//! gateway cannot forward faithfully is refused with a 400 `invalid_request` whose `param` names
//! the field (`messages[2].content[0].type`), never silently cut down.
//!
//! # Mapping
//!
//! | Anthropic | OpenAI |
//! |---|---|
//! | `system` (string, or text blocks joined with a blank line) | one leading `system` message |
//! | `text` blocks | text parts; a message of text only has a plain string `content` (blocks joined with a blank line); empty text blocks are skipped |
//! | `image` block, `base64` source | `image_url` part with a `data:<media_type>;base64,<data>` URL |
//! | `image` block, `url` source | `image_url` part with that http(s) URL |
//! | assistant `tool_use` blocks | the assistant message's `tool_calls` (`arguments` = `input` as a JSON string); its text is the `content`, `null` when there is none |
//! | user `tool_result` blocks | one `role: tool` message each, before the rest of that user turn; `is_error: true` prefixes the content with `Error: ` |
//! | `tools` (custom tools) | `tools: [{type: function, function: {name, description, parameters}}]` |
//! | `tool_choice` `auto` / `any` / `tool` / `none` | `"auto"` / `"required"` / `{"type":"function","function":{"name"}}` / `"none"` |
//! | `tool_choice.disable_parallel_tool_use: true` | `parallel_tool_calls: false` |
//! | `stop_sequences` | `stop` |
//! | `max_tokens` (required) | `max_tokens` |
//! | `temperature`, `top_p`, `model` | the same |
//! | `stream` | `stream`, plus `stream_options: {include_usage: true}` when true |
//! | `metadata.user_id` | `user` |
//! | `metadata.scenario` / `session_id` / `user_profile` (the gateway's own keys) | the same keys of `metadata` |
//!
//! # Refused (400)
//!
//! `document` (PDF, text), `search_result`, `container_upload`, server tool blocks
//! (`server_tool_use`, `web_search_tool_result`, …) and any other block type the table does not
//! name; images from a `file` source (the Files API) or in assistant messages; images inside a
//! `tool_result` (OpenAI tool messages carry text only); tools whose `type` is not `custom` (the
//! server tools `web_search_20250305`, `bash_20250124`, `text_editor_…`, …); a missing
//! `max_tokens`.
//!
//! # Dropped (documented, not refused)
//!
//! - `thinking` and `redacted_thinking` blocks in assistant history: their signatures mean
//!   nothing to another provider, and OpenAI has no place for them. An assistant turn left with
//!   neither text nor tool calls is omitted.
//! - `cache_control` and `citations` on any block or tool.
//! - `top_k` (OpenAI has no such parameter) and the `thinking` parameter.
//! - Keys of `metadata` other than `user_id` and the gateway's own.
//! - `tool_choice` and `disable_parallel_tool_use` when the request declares no tools (OpenAI
//!   refuses a tool choice without tools).
//! - Every other top-level field (`service_tier`, `container`, `mcp_servers`,
//!   `context_management`, …): nothing unknown is passed on.
//!
//! [`ChatRequest::parse`]: crate::protocol::ChatRequest::parse

use crate::error::GatewayError;
use crate::limits;
use crate::protocol::request::GATEWAY_METADATA_KEYS;
use crate::protocol::{ChatRequest, RequestHints};
use serde_json::{json, Map, Value};

/// Converts an Anthropic Messages request body into the equivalent OpenAI chat-completions
/// request body.
pub fn to_openai(body: &[u8]) -> Result<Vec<u8>, GatewayError> {
    encode(convert(body, Mode::Messages)?)
}

/// Input tokens of an Anthropic Messages request (`/v1/messages/count_tokens`), counted as
/// client limits count the prompt: [`limits::prompt_tokens`] over the converted request's
/// messages. `max_tokens` is not needed here (count_tokens requests have none).
pub fn estimate_input_tokens(body: &[u8]) -> Result<u64, GatewayError> {
    let converted = encode(convert(body, Mode::CountTokens)?)?;
    let req = ChatRequest::parse(&converted, &RequestHints::default())?;
    Ok(limits::prompt_tokens(&req.messages))
}

/// What the body is for: a message to create, or only tokens to count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Messages,
    CountTokens,
}

fn encode(v: Map<String, Value>) -> Result<Vec<u8>, GatewayError> {
    serde_json::to_vec(&v).map_err(|e| GatewayError::Internal(e.to_string()))
}

fn invalid(msg: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(msg, Some(param))
}

fn convert(body: &[u8], mode: Mode) -> Result<Map<String, Value>, GatewayError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = root else {
        return Err(GatewayError::invalid_request(
            "request body must be a JSON object",
            None,
        ));
    };
    let mut out = Map::new();

    match obj.remove("model") {
        None | Some(Value::Null) => {}
        Some(m @ Value::String(_)) => {
            out.insert("model".into(), m);
        }
        Some(_) => return Err(invalid("`model` must be a string", "model")),
    }

    let mut messages = Vec::new();
    if let Some(system) = system(obj.remove("system"))? {
        messages.push(json!({"role": "system", "content": system}));
    }
    let input = match obj.remove("messages") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(invalid("`messages` is required", "messages")),
        Some(_) => return Err(invalid("`messages` must be an array", "messages")),
    };
    if input.is_empty() {
        return Err(invalid("`messages` must not be empty", "messages"));
    }
    for (i, m) in input.into_iter().enumerate() {
        message(i, m, &mut messages)?;
    }
    if messages.is_empty() {
        return Err(invalid(
            "`messages` has no content to send: every message is empty",
            "messages",
        ));
    }
    out.insert("messages".into(), Value::Array(messages));

    match (obj.remove("max_tokens"), mode) {
        (_, Mode::CountTokens) => {}
        (None | Some(Value::Null), Mode::Messages) => {
            return Err(invalid("`max_tokens` is required", "max_tokens"))
        }
        (Some(Value::Number(n)), Mode::Messages) if n.as_u64().is_some_and(|n| n >= 1) => {
            out.insert("max_tokens".into(), Value::Number(n));
        }
        (Some(_), Mode::Messages) => {
            return Err(invalid(
                "`max_tokens` must be a positive integer",
                "max_tokens",
            ))
        }
    }

    for key in ["temperature", "top_p"] {
        match obj.remove(key) {
            None | Some(Value::Null) => {}
            Some(n @ Value::Number(_)) => {
                out.insert(key.into(), n);
            }
            Some(_) => return Err(invalid(format!("`{key}` must be a number"), key)),
        }
    }

    match obj.remove("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(seqs)) => {
            for (k, s) in seqs.iter().enumerate() {
                if !s.is_string() {
                    let p = format!("stop_sequences[{k}]");
                    return Err(invalid(format!("`{p}` must be a string"), &p));
                }
            }
            if !seqs.is_empty() {
                out.insert("stop".into(), Value::Array(seqs));
            }
        }
        Some(_) => {
            return Err(invalid(
                "`stop_sequences` must be an array of strings",
                "stop_sequences",
            ))
        }
    }

    match obj.remove("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(stream)) => {
            out.insert("stream".into(), Value::Bool(stream));
            if stream {
                out.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        Some(_) => return Err(invalid("`stream` must be a boolean", "stream")),
    }

    match obj.remove("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(mut m)) => {
            match m.remove("user_id") {
                None | Some(Value::Null) => {}
                Some(u @ Value::String(_)) => {
                    out.insert("user".into(), u);
                }
                Some(_) => {
                    return Err(invalid(
                        "`metadata.user_id` must be a string",
                        "metadata.user_id",
                    ))
                }
            }
            // The gateway's own keys; `ChatRequest::parse` checks their shapes.
            let mut gateway = Map::new();
            for key in GATEWAY_METADATA_KEYS {
                if let Some(v) = m.remove(key) {
                    gateway.insert(key.into(), v);
                }
            }
            if !gateway.is_empty() {
                out.insert("metadata".into(), Value::Object(gateway));
            }
        }
        Some(_) => return Err(invalid("`metadata` must be an object", "metadata")),
    }

    let tools = tools(obj.remove("tools"))?;
    let (choice, parallel) = tool_choice(obj.remove("tool_choice"))?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
        if !parallel {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }

    Ok(out)
}

/// `system` as one text, `None` when absent or empty.
fn system(v: Option<Value>) -> Result<Option<String>, GatewayError> {
    let blocks = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => return Ok((!s.is_empty()).then_some(s)),
        Some(Value::Array(blocks)) => blocks,
        Some(_) => {
            return Err(invalid(
                "`system` must be a string or an array of text blocks",
                "system",
            ))
        }
    };
    let mut texts = Vec::with_capacity(blocks.len());
    for (k, b) in blocks.into_iter().enumerate() {
        let p = format!("system[{k}]");
        let Value::Object(mut b) = b else {
            return Err(invalid(format!("`{p}` must be an object"), &p));
        };
        match block_type(&b, &p)?.as_str() {
            "text" => {
                let text = string_field(&mut b, "text", &p)?;
                if !text.is_empty() {
                    texts.push(text);
                }
            }
            other => {
                let tp = format!("{p}.type");
                return Err(invalid(
                    format!("`{tp}` is `{other}`: `system` takes only text blocks"),
                    &tp,
                ));
            }
        }
    }
    Ok((!texts.is_empty()).then(|| texts.join("\n\n")))
}

/// A block's `type`.
fn block_type(b: &Map<String, Value>, p: &str) -> Result<String, GatewayError> {
    match b.get("type") {
        Some(Value::String(t)) => Ok(t.clone()),
        _ => {
            let tp = format!("{p}.type");
            Err(invalid(format!("`{tp}` must be a string"), &tp))
        }
    }
}

/// A required string field of `b`, taken out of it.
fn string_field(b: &mut Map<String, Value>, key: &str, p: &str) -> Result<String, GatewayError> {
    match b.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => {
            let fp = format!("{p}.{key}");
            Err(invalid(format!("`{fp}` must be a string"), &fp))
        }
    }
}

/// Text or image, in the order the client sent them.
enum Part {
    Text(String),
    Image(String),
}

/// Converts `messages[i]` into OpenAI messages appended to `out`.
fn message(i: usize, m: Value, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let p = format!("messages[{i}]");
    let Value::Object(mut m) = m else {
        return Err(invalid(format!("`{p}` must be an object"), &p));
    };
    let assistant = match m.get("role") {
        Some(Value::String(r)) if r == "user" => false,
        Some(Value::String(r)) if r == "assistant" => true,
        _ => {
            let rp = format!("{p}.role");
            return Err(invalid(
                format!("`{rp}` must be \"user\" or \"assistant\""),
                &rp,
            ));
        }
    };
    let role = if assistant { "assistant" } else { "user" };
    let blocks = match m.remove("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            let cp = format!("{p}.content");
            return Err(invalid(
                format!("`{cp}` must be a string or an array of content blocks"),
                &cp,
            ));
        }
    };

    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    let mut tool_messages = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        let bp = format!("{p}.content[{j}]");
        let Value::Object(mut b) = b else {
            return Err(invalid(format!("`{bp}` must be an object"), &bp));
        };
        let kind = block_type(&b, &bp)?;
        let misplaced = |owner: &str| {
            let tp = format!("{bp}.type");
            invalid(
                format!("`{tp}` is `{kind}`, which belongs in {owner} messages"),
                &tp,
            )
        };
        match kind.as_str() {
            "text" => {
                let text = string_field(&mut b, "text", &bp)?;
                if !text.is_empty() {
                    parts.push(Part::Text(text));
                }
            }
            "image" if assistant => return Err(misplaced("user")),
            "image" => parts.push(Part::Image(image_url(&mut b, &bp)?)),
            "tool_use" if !assistant => return Err(misplaced("assistant")),
            "tool_use" => tool_calls.push(tool_call(&mut b, &bp)?),
            "tool_result" if assistant => return Err(misplaced("user")),
            "tool_result" => tool_messages.push(tool_message(&mut b, &bp)?),
            "thinking" | "redacted_thinking" if !assistant => return Err(misplaced("assistant")),
            // Signed by, and meaningful to, the model that wrote them only.
            "thinking" | "redacted_thinking" => {}
            other => {
                let tp = format!("{bp}.type");
                return Err(invalid(
                    format!("`{tp}` is `{other}`, which the gateway does not support"),
                    &tp,
                ));
            }
        }
    }

    // Tool results answer the previous assistant turn's calls: OpenAI wants them right after it.
    out.extend(tool_messages);
    let only_text = parts.iter().all(|p| matches!(p, Part::Text(_)));
    if assistant {
        if parts.is_empty() && tool_calls.is_empty() {
            return Ok(());
        }
        let content = if parts.is_empty() {
            Value::Null
        } else {
            Value::String(join_texts(parts))
        };
        let mut msg = json!({"role": "assistant", "content": content});
        if !tool_calls.is_empty() {
            msg["tool_calls"] = Value::Array(tool_calls);
        }
        out.push(msg);
    } else if parts.is_empty() {
        // Nothing but tool results (or empty text).
    } else if only_text {
        out.push(json!({"role": "user", "content": join_texts(parts)}));
    } else {
        let parts: Vec<Value> = parts
            .into_iter()
            .map(|p| match p {
                Part::Text(text) => json!({"type": "text", "text": text}),
                Part::Image(url) => json!({"type": "image_url", "image_url": {"url": url}}),
            })
            .collect();
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// The texts of parts that are all text, joined with a blank line.
fn join_texts(parts: Vec<Part>) -> String {
    let texts: Vec<String> = parts
        .into_iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t),
            Part::Image(_) => None,
        })
        .collect();
    texts.join("\n\n")
}

/// The URL of an `image` block: a data URL for base64 data, else the http(s) URL.
fn image_url(b: &mut Map<String, Value>, bp: &str) -> Result<String, GatewayError> {
    let sp = format!("{bp}.source");
    let Some(Value::Object(mut source)) = b.remove("source") else {
        return Err(invalid(format!("`{sp}` must be an object"), &sp));
    };
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = string_field(&mut source, "media_type", &sp)?;
            if !media_type.starts_with("image/") {
                let mp = format!("{sp}.media_type");
                return Err(invalid(
                    format!("`{mp}` must be an image type such as image/png"),
                    &mp,
                ));
            }
            let data = string_field(&mut source, "data", &sp)?;
            Ok(format!("data:{media_type};base64,{data}"))
        }
        Some("url") => {
            let url = string_field(&mut source, "url", &sp)?;
            let lower = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                Ok(url)
            } else {
                let up = format!("{sp}.url");
                Err(invalid(format!("`{up}` must be an http(s) URL"), &up))
            }
        }
        Some(other) => {
            let tp = format!("{sp}.type");
            Err(invalid(
                format!("`{tp}` is `{other}`; the gateway takes `base64` and `url` image sources"),
                &tp,
            ))
        }
        None => {
            let tp = format!("{sp}.type");
            Err(invalid(format!("`{tp}` must be a string"), &tp))
        }
    }
}

/// An assistant `tool_use` block as an OpenAI tool call.
fn tool_call(b: &mut Map<String, Value>, bp: &str) -> Result<Value, GatewayError> {
    let id = string_field(b, "id", bp)?;
    let name = string_field(b, "name", bp)?;
    let arguments = match b.remove("input") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(input @ Value::Object(_)) => input.to_string(),
        Some(_) => {
            let ip = format!("{bp}.input");
            return Err(invalid(format!("`{ip}` must be an object"), &ip));
        }
    };
    Ok(json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

/// A user `tool_result` block as an OpenAI tool message.
fn tool_message(b: &mut Map<String, Value>, bp: &str) -> Result<Value, GatewayError> {
    let id = string_field(b, "tool_use_id", bp)?;
    let content = match b.remove("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) => {
            let mut texts = Vec::with_capacity(items.len());
            for (k, item) in items.into_iter().enumerate() {
                let ip = format!("{bp}.content[{k}]");
                let Value::Object(mut item) = item else {
                    return Err(invalid(format!("`{ip}` must be an object"), &ip));
                };
                match block_type(&item, &ip)?.as_str() {
                    "text" => {
                        let text = string_field(&mut item, "text", &ip)?;
                        if !text.is_empty() {
                            texts.push(text);
                        }
                    }
                    other => {
                        let tp = format!("{ip}.type");
                        return Err(invalid(
                            format!(
                                "`{tp}` is `{other}`: tool results can carry only text through the gateway"
                            ),
                            &tp,
                        ));
                    }
                }
            }
            texts.join("\n\n")
        }
        Some(_) => {
            let cp = format!("{bp}.content");
            return Err(invalid(
                format!("`{cp}` must be a string or an array of text blocks"),
                &cp,
            ));
        }
    };
    let content = match b.remove("is_error") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => content,
        Some(Value::Bool(true)) => format!("Error: {content}"),
        Some(_) => {
            let ep = format!("{bp}.is_error");
            return Err(invalid(format!("`{ep}` must be a boolean"), &ep));
        }
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

/// `tools` as OpenAI function tools; only custom tools can be served by another provider.
fn tools(v: Option<Value>) -> Result<Vec<Value>, GatewayError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("`tools` must be an array", "tools")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (k, t) in list.into_iter().enumerate() {
        let p = format!("tools[{k}]");
        let Value::Object(mut t) = t else {
            return Err(invalid(format!("`{p}` must be an object"), &p));
        };
        match t.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "custom" => {}
            Some(other) => {
                let tp = format!("{p}.type");
                let shown = other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned);
                return Err(invalid(
                    format!(
                        "`{tp}` is `{shown}`: Anthropic server tools are not supported by the gateway, only custom tools"
                    ),
                    &tp,
                ));
            }
        }
        let name = string_field(&mut t, "name", &p)?;
        let mut function = json!({"name": name});
        match t.remove("description") {
            None | Some(Value::Null) => {}
            Some(d @ Value::String(_)) => function["description"] = d,
            Some(_) => {
                let dp = format!("{p}.description");
                return Err(invalid(format!("`{dp}` must be a string"), &dp));
            }
        }
        match t.remove("input_schema") {
            Some(schema @ Value::Object(_)) => function["parameters"] = schema,
            _ => {
                let sp = format!("{p}.input_schema");
                return Err(invalid(format!("`{sp}` must be a JSON Schema object"), &sp));
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// `tool_choice` as OpenAI's, and whether parallel tool calls stay allowed.
fn tool_choice(v: Option<Value>) -> Result<(Option<Value>, bool), GatewayError> {
    let mut tc = match v {
        None | Some(Value::Null) => return Ok((None, true)),
        Some(Value::Object(tc)) => tc,
        Some(_) => return Err(invalid("`tool_choice` must be an object", "tool_choice")),
    };
    let choice = match tc.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = string_field(&mut tc, "name", "tool_choice")?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(invalid(
                "`tool_choice.type` must be one of \"auto\", \"any\", \"tool\", \"none\"",
                "tool_choice.type",
            ))
        }
    };
    let parallel = match tc.get("disable_parallel_tool_use") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Bool(true)) => false,
        Some(_) => {
            return Err(invalid(
                "`tool_choice.disable_parallel_tool_use` must be a boolean",
                "tool_choice.disable_parallel_tool_use",
            ))
        }
    };
    Ok((Some(choice), parallel))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The converted body as JSON.
    fn convert(body: Value) -> Value {
        let bytes = to_openai(body.to_string().as_bytes()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The 400's `param`, after checking it is an `invalid_request`.
    fn refused(body: Value) -> String {
        let err = to_openai(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        assert_eq!(err.code(), "invalid_request", "{err}");
        err.to_json()["error"]["param"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn base(messages: Value) -> Value {
        json!({"model": "claude-x", "max_tokens": 100, "messages": messages})
    }

    fn user(content: Value) -> Value {
        base(json!([{"role": "user", "content": content}]))
    }

    #[test]
    fn minimal_request_passes_model_and_max_tokens() {
        let v = convert(user(json!("hi")));
        assert_eq!(
            v,
            json!({"model": "claude-x", "max_tokens": 100,
                   "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn converted_body_is_accepted_by_chat_request_parse() {
        let body = json!({
            "model": "m", "max_tokens": 10, "stream": true,
            "system": "sys",
            "metadata": {"user_id": "u1", "scenario": "s", "session_id": "x",
                         "user_profile": {"skin": "dry"}},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            ],
        });
        let bytes = to_openai(body.to_string().as_bytes()).unwrap();
        let req = ChatRequest::parse(&bytes, &RequestHints::default()).unwrap();
        assert_eq!(req.model.as_deref(), Some("m"));
        assert!(req.stream && req.include_usage);
        assert_eq!(req.user.as_deref(), Some("u1"));
        assert_eq!(req.scenario.as_deref(), Some("s"));
        assert_eq!(req.session.as_deref(), Some("x"));
        assert_eq!(req.user_profile["skin"], "dry");
        assert!(req.metadata.is_empty());
        assert_eq!(req.messages.len(), 5);
        assert_eq!(req.features.to_string(), "tools,images,stream");
    }

    #[test]
    fn system_string_and_blocks() {
        let mut body = user(json!("q"));
        body["system"] = json!("be brief");
        let v = convert(body.clone());
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(v["messages"][1]["role"], "user");

        body["system"] = json!([
            {"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": ""},
            {"type": "text", "text": "two"},
            {"type": "text", "text": "three"}
        ]);
        let v = convert(body.clone());
        assert_eq!(v["messages"][0]["content"], "one\n\ntwo\n\nthree");
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);

        body["system"] = json!("");
        assert_eq!(convert(body.clone())["messages"][0]["role"], "user");
        body["system"] = json!([{"type": "image", "source": {}}]);
        assert_eq!(refused(body.clone()), "system[0].type");
        body["system"] = json!(3);
        assert_eq!(refused(body), "system");
    }

    #[test]
    fn text_blocks_become_a_string_and_empty_ones_are_skipped() {
        let v = convert(user(json!([
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": ""},
            {"type": "text", "text": "b"}
        ])));
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": "a\n\nb"}])
        );
    }

    #[test]
    fn images_become_image_url_parts() {
        let v = convert(user(json!([
            {"type": "text", "text": "what is this?"},
            {"type": "text", "text": ""},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
        ])));
        assert_eq!(
            v["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
            ])
        );
    }

    #[test]
    fn bad_images_are_refused() {
        let img = |source: Value| user(json!([{"type": "image", "source": source}]));
        assert_eq!(
            refused(img(json!({"type": "file", "file_id": "f"}))),
            "messages[0].content[0].source.type"
        );
        assert_eq!(
            refused(img(json!({"type": "url", "url": "file:///etc/passwd"}))),
            "messages[0].content[0].source.url"
        );
        assert_eq!(
            refused(img(
                json!({"type": "base64", "media_type": "application/pdf", "data": "x"})
            )),
            "messages[0].content[0].source.media_type"
        );
        assert_eq!(
            refused(img(json!({"type": "base64", "media_type": "image/png"}))),
            "messages[0].content[0].source.data"
        );
        assert_eq!(refused(img(json!("x"))), "messages[0].content[0].source");
        let assistant = base(json!([
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}
        ]));
        assert_eq!(refused(assistant), "messages[1].content[0].type");
    }

    #[test]
    fn tool_use_becomes_tool_calls_with_string_arguments() {
        let v = convert(base(json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris", "days": [1, 2]}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}
            ]}
        ])));
        let a = &v["messages"][1];
        assert_eq!(a["role"], "assistant");
        assert_eq!(a["content"], "Let me check.");
        let calls = a["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "toolu_1");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args = calls[0]["function"]["arguments"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(args).unwrap(),
            json!({"city": "Paris", "days": [1, 2]})
        );
        assert_eq!(calls[1]["function"]["arguments"], "{}");
    }

    #[test]
    fn tool_use_without_text_has_null_content() {
        let v = convert(base(json!([
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}
        ])));
        assert!(v["messages"][1]["content"].is_null());
        assert_eq!(v["messages"][1]["tool_calls"][0]["id"], "t");
        let bad = base(json!([{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}]));
        assert_eq!(refused(bad), "messages[0].content[0].input");
        let no_name = base(json!([{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "input": {}}]}]));
        assert_eq!(refused(no_name), "messages[0].content[0].name");
    }

    #[test]
    fn tool_results_become_tool_messages_before_the_user_text() {
        let v = convert(base(json!([
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                {"type": "tool_use", "id": "b", "name": "g", "input": {}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "here you go"},
                {"type": "tool_result", "tool_use_id": "a", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "b", "content": [
                    {"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]}
            ]}
        ])));
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "a", "content": "sunny"})
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "b", "content": "line 1\n\nline 2"})
        );
        assert_eq!(m[4], json!({"role": "user", "content": "here you go"}));
    }

    #[test]
    fn tool_result_only_turn_has_no_user_message() {
        let v = convert(base(json!([
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]}
        ])));
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1],
            json!({"role": "tool", "tool_call_id": "a", "content": ""})
        );
    }

    #[test]
    fn tool_result_errors_are_prefixed() {
        let v = convert(user(json!([
            {"type": "tool_result", "tool_use_id": "a", "content": "no such file", "is_error": true},
            {"type": "tool_result", "tool_use_id": "b", "content": "ok", "is_error": false}
        ])));
        assert_eq!(v["messages"][0]["content"], "Error: no such file");
        assert_eq!(v["messages"][1]["content"], "ok");
        assert_eq!(
            refused(user(json!([
                {"type": "tool_result", "tool_use_id": "a", "content": "x", "is_error": "yes"}
            ]))),
            "messages[0].content[0].is_error"
        );
    }

    #[test]
    fn tool_result_with_an_image_is_refused() {
        let body = user(
            json!([{"type": "tool_result", "tool_use_id": "a", "content": [
                {"type": "text", "text": "screenshot"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
            ]}]),
        );
        assert_eq!(refused(body), "messages[0].content[0].content[1].type");
    }

    #[test]
    fn blocks_in_the_wrong_role_are_refused() {
        assert_eq!(
            refused(user(
                json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}])
            )),
            "messages[0].content[0].type"
        );
        let body = base(json!([{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]));
        assert_eq!(refused(body), "messages[0].content[0].type");
        assert_eq!(
            refused(user(
                json!([{"type": "thinking", "thinking": "x", "signature": "s"}])
            )),
            "messages[0].content[0].type"
        );
    }

    #[test]
    fn thinking_history_is_dropped_and_an_empty_assistant_turn_omitted() {
        let v = convert(base(json!([
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "thinking", "thinking": "t", "signature": "s"}]},
            {"role": "user", "content": "b"}
        ])));
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        );
    }

    #[test]
    fn unsupported_blocks_are_refused_by_position() {
        let pdf = json!({"type": "document", "source": {"type": "base64",
                         "media_type": "application/pdf", "data": "JVBERi0"}});
        let body = base(json!([
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "text", "text": "read"}, pdf]}
        ]));
        let err = to_openai(body.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("document"), "{err}");
        assert_eq!(refused(body), "messages[2].content[1].type");

        for kind in [
            "search_result",
            "server_tool_use",
            "web_search_tool_result",
            "container_upload",
            "whatever_next",
        ] {
            let body = user(json!([{"type": kind}]));
            assert_eq!(refused(body), "messages[0].content[0].type", "{kind}");
        }
        let assistant = base(json!([{"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]));
        assert_eq!(refused(assistant), "messages[0].content[0].type");
    }

    #[test]
    fn malformed_messages_are_refused_with_their_param() {
        assert_eq!(
            refused(json!({"max_tokens": 1, "messages": []})),
            "messages"
        );
        assert_eq!(refused(json!({"max_tokens": 1})), "messages");
        assert_eq!(
            refused(json!({"max_tokens": 1, "messages": {}})),
            "messages"
        );
        assert_eq!(refused(base(json!(["x"]))), "messages[0]");
        assert_eq!(
            refused(base(json!([{"role": "system", "content": "x"}]))),
            "messages[0].role"
        );
        assert_eq!(
            refused(base(json!([{"role": "user"}]))),
            "messages[0].content"
        );
        assert_eq!(
            refused(base(json!([{"role": "user", "content": 5}]))),
            "messages[0].content"
        );
        assert_eq!(refused(user(json!([1]))), "messages[0].content[0]");
        assert_eq!(
            refused(user(json!([{"text": "x"}]))),
            "messages[0].content[0].type"
        );
        assert_eq!(
            refused(user(json!([{"type": "text"}]))),
            "messages[0].content[0].text"
        );
        assert_eq!(
            refused(user(json!([{"type": "text", "text": ""}]))),
            "messages"
        );
        assert_eq!(refused(json!({"model": 1})), "model");
    }

    #[test]
    fn bad_json_and_non_objects() {
        let err = to_openai(b"{nope").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        let err = to_openai(b"[1]").unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(to_openai(b"").is_err());
    }

    #[test]
    fn max_tokens_is_required_and_positive() {
        let mut body = user(json!("x"));
        body.as_object_mut().unwrap().remove("max_tokens");
        let err = to_openai(body.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("max_tokens"));
        assert_eq!(refused(body.clone()), "max_tokens");
        for bad in [json!(0), json!(-1), json!(1.5), json!("10")] {
            body["max_tokens"] = bad;
            assert_eq!(refused(body.clone()), "max_tokens");
        }
    }

    #[test]
    fn tools_become_functions() {
        let mut body = user(json!("x"));
        body["tools"] = json!([
            {"name": "get_weather", "description": "Weather for a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
             "cache_control": {"type": "ephemeral"}},
            {"type": "custom", "name": "now", "input_schema": {"type": "object"}}
        ]);
        let v = convert(body);
        assert_eq!(
            v["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather",
                 "description": "Weather for a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
            ])
        );
        assert!(v.get("tool_choice").is_none());
        assert!(v.get("parallel_tool_calls").is_none());
    }

    #[test]
    fn server_tools_and_bad_tools_are_refused() {
        let mut body = user(json!("x"));
        body["tools"] = json!([
            {"name": "f", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
        ]);
        let err = to_openai(body.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("web_search_20250305"), "{err}");
        assert_eq!(refused(body.clone()), "tools[1].type");
        body["tools"] = json!([{"type": "bash_20250124", "name": "bash"}]);
        assert_eq!(refused(body.clone()), "tools[0].type");
        body["tools"] = json!([{"name": "f"}]);
        assert_eq!(refused(body.clone()), "tools[0].input_schema");
        body["tools"] = json!([{"input_schema": {}}]);
        assert_eq!(refused(body.clone()), "tools[0].name");
        body["tools"] = json!({});
        assert_eq!(refused(body), "tools");
    }

    #[test]
    fn tool_choice_mappings() {
        let with = |choice: Value| {
            let mut body = user(json!("x"));
            body["tools"] = json!([{"name": "f", "input_schema": {"type": "object"}}]);
            body["tool_choice"] = choice;
            body
        };
        assert_eq!(
            convert(with(json!({"type": "auto"})))["tool_choice"],
            "auto"
        );
        assert_eq!(
            convert(with(json!({"type": "any"})))["tool_choice"],
            "required"
        );
        assert_eq!(
            convert(with(json!({"type": "none"})))["tool_choice"],
            "none"
        );
        assert_eq!(
            convert(with(json!({"type": "tool", "name": "f"})))["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        let v = convert(with(
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ));
        assert_eq!(v["parallel_tool_calls"], false);
        let v = convert(with(
            json!({"type": "any", "disable_parallel_tool_use": false}),
        ));
        assert!(v.get("parallel_tool_calls").is_none());

        assert_eq!(refused(with(json!({"type": "tool"}))), "tool_choice.name");
        assert_eq!(refused(with(json!({"type": "some"}))), "tool_choice.type");
        assert_eq!(refused(with(json!("auto"))), "tool_choice");

        // Without tools, a tool choice has nothing to choose from.
        let mut body = user(json!("x"));
        body["tool_choice"] = json!({"type": "auto"});
        assert!(convert(body).get("tool_choice").is_none());
    }

    #[test]
    fn sampling_stop_stream_and_dropped_fields() {
        let mut body = user(json!("x"));
        body["temperature"] = json!(0.5);
        body["top_p"] = json!(0.9);
        body["top_k"] = json!(40);
        body["stop_sequences"] = json!(["\n\nHuman:", "END"]);
        body["stream"] = json!(true);
        body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
        body["service_tier"] = json!("auto");
        body["mcp_servers"] = json!([]);
        let v = convert(body.clone());
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["top_p"], 0.9);
        assert_eq!(v["stop"], json!(["\n\nHuman:", "END"]));
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        for dropped in [
            "top_k",
            "thinking",
            "service_tier",
            "mcp_servers",
            "stop_sequences",
        ] {
            assert!(v.get(dropped).is_none(), "{dropped}");
        }

        body["stream"] = json!(false);
        body["stop_sequences"] = json!([]);
        let v = convert(body.clone());
        assert_eq!(v["stream"], false);
        assert!(v.get("stream_options").is_none());
        assert!(v.get("stop").is_none());

        body["stop_sequences"] = json!(["a", 1]);
        assert_eq!(refused(body.clone()), "stop_sequences[1]");
        body["stop_sequences"] = json!("a");
        assert_eq!(refused(body.clone()), "stop_sequences");
        body["stop_sequences"] = Value::Null;
        body["stream"] = json!("yes");
        assert_eq!(refused(body.clone()), "stream");
        body["stream"] = Value::Null;
        body["temperature"] = json!("hot");
        assert_eq!(refused(body), "temperature");
    }

    #[test]
    fn metadata_user_id_and_gateway_keys() {
        let mut body = user(json!("x"));
        body["metadata"] = json!({"user_id": "u-1", "scenario": "support",
            "session_id": "s-1", "user_profile": {"tier": "gold"}, "other": 1});
        let v = convert(body.clone());
        assert_eq!(v["user"], "u-1");
        assert_eq!(
            v["metadata"],
            json!({"scenario": "support", "session_id": "s-1", "user_profile": {"tier": "gold"}})
        );
        body["metadata"] = json!({"user_id": "u-1"});
        let v = convert(body.clone());
        assert!(v.get("metadata").is_none());
        body["metadata"] = json!({"user_id": 7});
        assert_eq!(refused(body.clone()), "metadata.user_id");
        body["metadata"] = json!([]);
        assert_eq!(refused(body), "metadata");
    }

    #[test]
    fn estimate_counts_like_the_limits_do() {
        let body = json!({
            "model": "m",
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
        });
        // No max_tokens: count_tokens requests have none.
        let n = estimate_input_tokens(body.to_string().as_bytes()).unwrap();
        let expected = 3
            + 4
            + limits::count_tokens("You are terse.")
            + 4
            + limits::count_tokens("hello world");
        assert_eq!(n, expected);

        let mut bigger = body.clone();
        bigger["messages"][0]["content"][0]["text"] = json!("hello world, and much more text");
        assert!(estimate_input_tokens(bigger.to_string().as_bytes()).unwrap() > n);

        let pdf = json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]});
        assert!(estimate_input_tokens(pdf.to_string().as_bytes()).is_err());
        let bad_scenario = json!({"metadata": {"scenario": 1},
            "messages": [{"role": "user", "content": "x"}]});
        let err = estimate_input_tokens(bad_scenario.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.to_json()["error"]["param"], json!("metadata.scenario"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        let odd = [
            "null",
            "1",
            "\"s\"",
            "{}",
            r#"{"messages":null,"max_tokens":1}"#,
            r#"{"messages":[null],"max_tokens":1}"#,
            r#"{"messages":[{"role":null,"content":null}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image"}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":3}}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"ht"}}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"é"}}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result"}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":[null]}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":7}]}],"max_tokens":1}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"tools":[null]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"tools":[{"type":5}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"tools":[{"name":"f","description":1,"input_schema":{}}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"system":[null]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1e400}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551616}"#,
        ];
        for body in odd {
            let err = to_openai(body.as_bytes()).unwrap_err();
            assert!(
                matches!(err.status(), 400),
                "{body}: {} {err}",
                err.status()
            );
            let _ = estimate_input_tokens(body.as_bytes());
        }
        let deep = "[".repeat(10_000);
        assert!(to_openai(deep.as_bytes()).is_err());
    }
}
