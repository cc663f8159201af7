//! Responses API input items, function tools and `tool_choice` in their chat-completions form.
//!
//! - `message` items (or bare `{role, content}`): `input_text` / `output_text` parts → text,
//!   `input_image` with an `image_url` → an `image_url` part; `system` / `developer` roles stay
//!   what they are (the upstream's chat request places them);
//! - `function_call` items → one assistant message's `tool_calls` (consecutive calls, and calls
//!   right after an assistant message, join that message);
//! - `function_call_output` items → `tool` messages;
//! - `reasoning` items are OpenAI's own (encrypted or summarized) and are left out.
//!
//! Anything else — file inputs, image file ids, item references, built-in tool calls — is a
//! 400 naming the item.

use crate::error::GatewayError;
use serde_json::{json, Map, Value};

fn invalid(msg: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(msg, Some(param))
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a str, GatewayError> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        invalid(
            format!("`{at}.{key}` must be a string"),
            &format!("{at}.{key}"),
        )
    })
}

/// Appends the chat messages of input item `i`.
pub fn item(i: usize, item: Value, messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    let at = format!("input[{i}]");
    let Value::Object(obj) = item else {
        return Err(invalid(format!("`{at}` must be an object"), &at));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) if obj.contains_key("role") => "message",
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(invalid(
                format!("`{at}.type` is required"),
                &format!("{at}.type"),
            ))
        }
    };
    match kind {
        "message" => message(&at, &obj, messages),
        "function_call" => {
            let call = json!({
                "id": string_field(&obj, "call_id", &at)?,
                "type": "function",
                "function": {
                    "name": string_field(&obj, "name", &at)?,
                    "arguments": string_field(&obj, "arguments", &at)?,
                },
            });
            match messages.last_mut() {
                Some(Value::Object(last))
                    if last.get("role").and_then(Value::as_str) == Some("assistant") =>
                {
                    match last.get_mut("tool_calls") {
                        Some(Value::Array(calls)) => calls.push(call),
                        _ => {
                            last.insert("tool_calls".into(), json!([call]));
                        }
                    }
                }
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
            Ok(())
        }
        "function_call_output" => {
            let call_id = string_field(&obj, "call_id", &at)?;
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => {
                    return Err(invalid(
                        format!("`{at}.output` must be a string"),
                        &format!("{at}.output"),
                    ))
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            Ok(())
        }
        // OpenAI's own reasoning state (often encrypted): no chat upstream can take it back.
        "reasoning" => Ok(()),
        other => Err(invalid(
            format!("`{at}.type` {other:?} is not supported: the gateway serves message, function_call and function_call_output items"),
            &format!("{at}.type"),
        )),
    }
}

fn message(
    at: &str,
    obj: &Map<String, Value>,
    messages: &mut Vec<Value>,
) -> Result<(), GatewayError> {
    let role = string_field(obj, "role", at)?;
    if !matches!(role, "user" | "assistant" | "system" | "developer") {
        return Err(invalid(
            format!("`{at}.role` must be user, assistant, system or developer"),
            &format!("{at}.role"),
        ));
    }
    let content = match obj.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (k, part) in parts.iter().enumerate() {
                let pat = format!("{at}.content[{k}]");
                if let Some(p) = content_part(&pat, part)? {
                    out.push(p);
                }
            }
            // Text only: one string, which every chat upstream (and an assistant turn) takes.
            if out.iter().all(|p| p["type"] == "text") {
                Value::String(
                    out.iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            } else {
                Value::Array(out)
            }
        }
        _ => {
            return Err(invalid(
                format!("`{at}.content` must be a string or an array of parts"),
                &format!("{at}.content"),
            ))
        }
    };
    messages.push(json!({"role": role, "content": content}));
    Ok(())
}

fn content_part(at: &str, part: &Value) -> Result<Option<Value>, GatewayError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "input_text" | "output_text" | "text" => {
            let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!("`{at}.text` must be a string"), &format!("{at}.text"))
            })?;
            Ok(Some(json!({"type": "text", "text": text})))
        }
        "refusal" => {
            let text = part.get("refusal").and_then(Value::as_str).unwrap_or_default();
            Ok(Some(json!({"type": "text", "text": text})))
        }
        "input_image" => {
            let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                return Err(invalid(
                    format!("`{at}` needs an `image_url` (file ids are not supported)"),
                    &format!("{at}.image_url"),
                ));
            };
            let mut image = json!({"url": url});
            if let Some(d) = part.get("detail").filter(|d| d.is_string()) {
                image["detail"] = d.clone();
            }
            Ok(Some(json!({"type": "image_url", "image_url": image})))
        }
        other => Err(invalid(
            format!("`{at}.type` {other:?} is not supported: the gateway takes input_text, output_text and input_image parts"),
            &format!("{at}.type"),
        )),
    }
}

/// Flat function tools → chat tools; built-in tools are refused.
pub fn tools(tools: Value) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(tools) = tools else {
        return Err(invalid("`tools` must be an array", "tools"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(mut t) = t else {
            return Err(invalid(format!("`{at}` must be an object"), &at));
        };
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(invalid(
                    format!("tool type {other:?} is a built-in tool of OpenAI's; the gateway serves only function tools"),
                    &format!("{at}.type"),
                ))
            }
            None => return Err(invalid(format!("`{at}.type` is required"), &format!("{at}.type"))),
        }
        let name = string_field(&t, "name", &at)?.to_owned();
        let mut function = Map::new();
        function.insert("name".into(), Value::String(name));
        for key in ["description", "parameters", "strict"] {
            if let Some(v) = t.remove(key).filter(|v| !v.is_null()) {
                function.insert(key.into(), v);
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// `auto` / `none` / `required`, or a named function.
pub fn tool_choice(choice: Value) -> Result<Value, GatewayError> {
    match &choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(choice),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = string_field(o, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": …}",
            "tool_choice",
        )),
    }
}
