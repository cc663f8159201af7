//! The request validation of the mock Anthropic API: what the real API refuses, with its messages.

use super::*;

const MESSAGES_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
    "inference_geo",
];

const COUNT_TOKENS_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
];

const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "thinking",
    "redacted_thinking",
    "tool_use",
    "tool_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];

const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

fn tag_error(at: &str, tag: &str, expected: &[&str]) -> String {
    let expected = expected
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{at}: Input tag '{tag}' found using 'type' does not match any of the expected tags: {expected}")
}

fn is_int(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

/// Validates a request body as the real API does; the error message on failure.
pub(super) fn validate(req: &Value, endpoint: Endpoint) -> Result<(), String> {
    let Some(obj) = req.as_object() else {
        return Err("Input should be a valid dictionary or object".into());
    };
    let fields = match endpoint {
        Endpoint::Messages => MESSAGES_FIELDS,
        Endpoint::CountTokens => COUNT_TOKENS_FIELDS,
    };
    if let Some(extra) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    match obj.get("model") {
        None => return Err("model: Field required".into()),
        Some(m) if !m.is_string() => return Err("model: Input should be a valid string".into()),
        Some(_) => {}
    }
    let mut max_tokens = None;
    if endpoint == Endpoint::Messages {
        match obj.get("max_tokens") {
            None => return Err("max_tokens: Field required".into()),
            Some(v) if !is_int(v) => {
                return Err("max_tokens: Input should be a valid integer".into())
            }
            Some(v) if v.as_i64().is_some_and(|n| n < 1) => {
                return Err("max_tokens: Input should be greater than or equal to 1".into())
            }
            Some(v) => max_tokens = v.as_u64(),
        }
    }
    let messages = match obj.get("messages") {
        None => return Err("messages: Field required".into()),
        Some(Value::Array(m)) => m,
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    validate_options(obj, max_tokens)?;
    // Shape of every message and block first, then what they say.
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = m.as_object() else {
            return Err(format!(
                "messages.{i}: Input should be a valid dictionary or object"
            ));
        };
        if let Some(extra) = m
            .keys()
            .find(|k| !["role", "content"].contains(&k.as_str()))
        {
            return Err(format!(
                "messages.{i}.{extra}: Extra inputs are not permitted"
            ));
        }
        match m.get("role").and_then(Value::as_str) {
            None if !m.contains_key("role") => {
                return Err(format!("messages.{i}.role: Field required"))
            }
            Some("user" | "assistant") => {}
            Some("system") => return Err("messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".into()),
            _ => return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'")),
        }
        match m.get("content") {
            None => return Err(format!("messages.{i}.content: Field required")),
            Some(Value::String(_)) => {}
            Some(Value::Array(blocks)) => {
                for (j, b) in blocks.iter().enumerate() {
                    validate_block(&format!("messages.{i}.content.{j}"), b)?;
                }
            }
            Some(_) => {
                return Err(format!(
                    "messages.{i}.content: Input should be a valid string"
                ))
            }
        }
    }
    let last = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        let final_assistant = i == last && m["role"] == "assistant";
        let empty = match &m["content"] {
            Value::String(s) => s.is_empty(),
            Value::Array(b) => b.is_empty(),
            _ => false,
        };
        if empty && !final_assistant {
            return Err("messages: all messages must have non-empty content except for the optional final assistant message".into());
        }
        if has_empty_text(&m["content"]) {
            return Err("messages: text content blocks must be non-empty".into());
        }
        if m["role"] == "user" {
            let previous = if i > 0 && messages[i - 1]["role"] == "assistant" {
                ids(&messages[i - 1]["content"], "tool_use", "id")
            } else {
                Vec::new()
            };
            for (j, b) in blocks_of(&m["content"]).iter().enumerate() {
                if b["type"] == "tool_result" {
                    let id = b["tool_use_id"].as_str().unwrap_or_default();
                    if !previous.iter().any(|p| p == id) {
                        return Err(format!("messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
                    }
                }
            }
        }
        if m["role"] == "assistant" && i < last {
            let answered = if messages[i + 1]["role"] == "user" {
                ids(&messages[i + 1]["content"], "tool_result", "tool_use_id")
            } else {
                Vec::new()
            };
            let missing: Vec<String> = ids(&m["content"], "tool_use", "id")
                .into_iter()
                .filter(|id| !answered.contains(id))
                .collect();
            if !missing.is_empty() {
                return Err(format!("messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.", missing.join(", ")));
            }
        }
        if final_assistant {
            let tail = match &m["content"] {
                Value::String(s) => Some(s.as_str()),
                Value::Array(b) => b
                    .last()
                    .filter(|b| b["type"] == "text")
                    .and_then(|b| b["text"].as_str()),
                _ => None,
            };
            if tail.is_some_and(|t| t.ends_with(char::is_whitespace)) {
                return Err(
                    "messages: final assistant content cannot end with trailing whitespace".into(),
                );
            }
        }
    }
    Ok(())
}

fn blocks_of(content: &Value) -> &[Value] {
    content.as_array().map_or(&[], Vec::as_slice)
}

/// The `field` of every block of type `kind`.
fn ids(content: &Value, kind: &str, field: &str) -> Vec<String> {
    blocks_of(content)
        .iter()
        .filter(|b| b["type"] == kind)
        .filter_map(|b| b[field].as_str().map(str::to_owned))
        .collect()
}

/// A text block with empty text, here or inside a tool_result's content.
fn has_empty_text(content: &Value) -> bool {
    blocks_of(content).iter().any(|b| {
        (b["type"] == "text" && b["text"].as_str().is_some_and(str::is_empty))
            || (b["type"] == "tool_result" && has_empty_text(&b["content"]))
    })
}

fn validate_block(at: &str, b: &Value) -> Result<(), String> {
    let Some(obj) = b.as_object() else {
        return Err(format!(
            "{at}: Input should be a valid dictionary or object"
        ));
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(format!(
            "{at}: Unable to extract tag using discriminator 'type'"
        ));
    };
    let string = |field: &str| -> Result<(), String> {
        match obj.get(field) {
            None => Err(format!("{at}.{kind}.{field}: Field required")),
            Some(v) if !v.is_string() => Err(format!(
                "{at}.{kind}.{field}: Input should be a valid string"
            )),
            Some(_) => Ok(()),
        }
    };
    match kind {
        "text" => string("text"),
        "image" => {
            let source = &b["source"];
            match source["type"].as_str() {
                _ if !source.is_object() => Err(format!("{at}.image.source: Field required")),
                Some("base64") => {
                    let media = source["media_type"].as_str().unwrap_or_default();
                    if !IMAGE_TYPES.contains(&media) {
                        return Err(format!("{at}.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"));
                    }
                    if !source["data"].is_string() {
                        return Err(format!("{at}.image.source.base64.data: Field required"));
                    }
                    Ok(())
                }
                Some("url") if source["url"].is_string() => Ok(()),
                Some("url") => Err(format!("{at}.image.source.url.url: Field required")),
                Some("file") => Ok(()),
                other => Err(tag_error(
                    &format!("{at}.image.source"),
                    other.unwrap_or_default(),
                    &["base64", "url", "file"],
                )),
            }
        }
        "tool_use" => {
            string("id")?;
            string("name")?;
            if !b["input"].is_object() {
                return Err(format!(
                    "{at}.tool_use.input: Input should be a valid dictionary"
                ));
            }
            Ok(())
        }
        "tool_result" => {
            string("tool_use_id")?;
            match obj.get("content") {
                None | Some(Value::String(_)) => Ok(()),
                Some(Value::Array(inner)) => {
                    for (k, ib) in inner.iter().enumerate() {
                        validate_block(&format!("{at}.tool_result.content.{k}"), ib)?;
                    }
                    Ok(())
                }
                Some(_) => Err(format!(
                    "{at}.tool_result.content: Input should be a valid list"
                )),
            }
        }
        "thinking" => {
            string("thinking")?;
            string("signature")
        }
        "redacted_thinking" => string("data"),
        k if BLOCK_TYPES.contains(&k) => Ok(()),
        other => Err(tag_error(at, other, BLOCK_TYPES)),
    }
}

/// The optional top-level parameters, with the ranges Anthropic allows.
fn validate_options(obj: &Map<String, Value>, max_tokens: Option<u64>) -> Result<(), String> {
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                if b["type"] != "text" {
                    return Err(tag_error(
                        &format!("system.{i}"),
                        b["type"].as_str().unwrap_or_default(),
                        &["text"],
                    ));
                }
                validate_block(&format!("system.{i}"), b)?;
            }
            if has_empty_text(&Value::Array(blocks.clone())) {
                return Err("system: text content blocks must be non-empty".into());
            }
        }
        Some(_) => return Err("system: Input should be a valid list".into()),
    }
    let thinking_on = obj
        .get("thinking")
        .is_some_and(|t| t["type"] == "enabled" || t["type"] == "adaptive");
    for (field, high) in [("temperature", 1.0), ("top_p", 1.0)] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                None => return Err(format!("{field}: Input should be a valid number")),
                Some(x) if x < 0.0 => {
                    return Err(format!(
                        "{field}: Input should be greater than or equal to 0"
                    ))
                }
                Some(x) if x > high => {
                    return Err(format!("{field}: Input should be less than or equal to 1"))
                }
                Some(x) if field == "temperature" && thinking_on && x != 1.0 => {
                    return Err(
                        "`temperature` may only be set to 1 when thinking is enabled.".into(),
                    )
                }
                Some(_) => {}
            },
        }
    }
    if let Some(v) = obj.get("top_k") {
        if !is_int(v) || v.as_i64().is_some_and(|n| n < 0) {
            return Err("top_k: Input should be a valid integer greater than or equal to 0".into());
        }
    }
    if let Some(v) = obj.get("stream") {
        if !v.is_boolean() {
            return Err("stream: Input should be a valid boolean".into());
        }
    }
    if let Some(v) = obj.get("stop_sequences") {
        match v.as_array() {
            Some(list) if list.iter().all(Value::is_string) => {}
            _ => return Err("stop_sequences: Input should be a valid list of strings".into()),
        }
    }
    if let Some(v) = obj.get("metadata") {
        let Some(m) = v.as_object() else {
            return Err("metadata: Input should be a valid dictionary or object".into());
        };
        if let Some(extra) = m.keys().find(|k| k.as_str() != "user_id") {
            return Err(format!("metadata.{extra}: Extra inputs are not permitted"));
        }
    }
    if let Some(v) = obj.get("tools") {
        let Some(tools) = v.as_array() else {
            return Err("tools: Input should be a valid list".into());
        };
        for (i, t) in tools.iter().enumerate() {
            if !t.is_object() {
                return Err(format!(
                    "tools.{i}: Input should be a valid dictionary or object"
                ));
            }
            let kind = t["type"].as_str().unwrap_or("custom");
            // Server tools are versioned by date: `web_search_20250305`, `bash_20250124`, …
            let server = kind.len() > 9
                && kind[kind.len() - 9..].starts_with('_')
                && kind[kind.len() - 8..].bytes().all(|c| c.is_ascii_digit());
            if kind != "custom" && !server {
                return Err(tag_error(
                    &format!("tools.{i}"),
                    kind,
                    &["custom", "<server tool>_<date>"],
                ));
            }
            if !t["name"].is_string() {
                return Err(format!("tools.{i}.{kind}.name: Field required"));
            }
            if kind == "custom" && !t["input_schema"].is_object() {
                return Err(format!("tools.{i}.custom.input_schema: Field required"));
            }
        }
    }
    if let Some(v) = obj.get("tool_choice") {
        if !v.is_object() {
            return Err("tool_choice: Input should be a valid dictionary or object".into());
        }
        match v["type"].as_str() {
            Some("auto" | "any" | "none") => {}
            Some("tool") if v["name"].is_string() => {}
            Some("tool") => return Err("tool_choice.tool.name: Field required".into()),
            other => {
                return Err(tag_error(
                    "tool_choice",
                    other.unwrap_or_default(),
                    &["auto", "any", "tool", "none"],
                ))
            }
        }
    }
    if let Some(v) = obj.get("thinking") {
        match v["type"].as_str() {
            Some("disabled" | "adaptive") => {}
            Some("enabled") => {
                let Some(budget) = v["budget_tokens"].as_u64() else {
                    return Err("thinking.enabled.budget_tokens: Field required".into());
                };
                if budget < 1024 {
                    return Err("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into());
                }
                if max_tokens.is_some_and(|m| m <= budget) {
                    return Err(
                        "`max_tokens` must be greater than `thinking.budget_tokens`.".into(),
                    );
                }
            }
            other => {
                return Err(tag_error(
                    "thinking",
                    other.unwrap_or_default(),
                    &["enabled", "disabled", "adaptive"],
                ))
            }
        }
    }
    Ok(())
}
