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
#[path = "request_tests.rs"]
mod tests;
