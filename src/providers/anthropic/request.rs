//! OpenAI chat request → Anthropic Messages request.
//!
//! Every system and developer message becomes the one top-level `system` text (after the
//! target's prompt); the other messages become alternating user / assistant turns of content
//! blocks (text, images, `tool_use`, `tool_result`); tools, tool choice, stop sequences and
//! limits are renamed. Message text is borrowed from the client's raw JSON where it needs no
//! unescaping, so an inline image is copied once, into the upstream body.
//!
//! Not sent: fields of features routing already judged (`n: 1`, `logprobs: false`,
//! `response_format: text` ask for nothing) and OpenAI sampling knobs Anthropic has no
//! counterpart for (see `NOT_SENT`). Any other field, the client's or the target's `params`,
//! reaches Anthropic as it is (`top_k`, `thinking`, …), for Anthropic to judge.

use super::turns::{turns, Turn};
use super::AnthropicStream;
use crate::config::{SystemPromptMode, Target};
use crate::error::GatewayError;
use crate::protocol::{ChatRequest, Features};
use crate::providers::{Decoder, UpstreamCall};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;

/// `max_tokens` when neither the client nor the target's `params` set one (Anthropic
/// requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The longest tool name Anthropic accepts.
pub const MAX_TOOL_NAME: usize = 64;

/// Fields this module maps itself.
const MAPPED: [&str; 13] = [
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "stream",
    "stream_options",
];

/// Fields never sent: features routing judged (a value that reaches here asks for nothing or
/// was dropped by the target), and OpenAI knobs without an Anthropic counterpart.
pub const NOT_SENT: [&str; 18] = [
    "n",
    "logprobs",
    "top_logprobs",
    "response_format",
    "audio",
    "modalities",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "seed",
    "store",
    "service_tier",
    "reasoning_effort",
    "prediction",
    "verbosity",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
];

/// Messages-API names the gateway writes itself from their OpenAI counterparts.
const RESERVED: [(&str, &str); 2] = [
    ("system", "send system messages instead"),
    ("stop_sequences", "send `stop` instead"),
];

fn invalid(message: String, param: &str) -> GatewayError {
    GatewayError::invalid_request(message, Some(param))
}

/// The request's fields: the client's, then the target's `params` for what the client did not
/// set; `null` counts as not set, and fields of dropped features are gone.
struct Fields<'a> {
    client: Vec<(&'a str, &'a RawValue)>,
    defaults: Vec<(&'a str, Box<RawValue>)>,
}

impl<'a> Fields<'a> {
    fn new(target: &'a Target, req: &'a ChatRequest, drop: Features) -> Self {
        let keep = |k: &str, v: &str| v != "null" && !drop.owns_field(k);
        let client = req
            .rest
            .iter()
            .filter(|(k, v)| keep(k, v.get()))
            .map(|(k, v)| (k.as_str(), &**v))
            .collect();
        let defaults = target
            .params
            .iter()
            .filter(|(k, v)| k.as_str() != "model" && !req.has_field(k) && !v.is_null())
            .filter(|(k, _)| !drop.owns_field(k))
            .filter_map(|(k, v)| Some((k.as_str(), serde_json::value::to_raw_value(v).ok()?)))
            .collect();
        Fields { client, defaults }
    }

    fn client(&self, key: &str) -> Option<&RawValue> {
        self.client.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn default(&self, key: &str) -> Option<&RawValue> {
        self.defaults
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| &**v)
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.client(key).or_else(|| self.default(key))
    }

    fn all(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        let defaults = self.defaults.iter().map(|(k, v)| (*k, &**v));
        self.client.iter().copied().chain(defaults)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    stream: bool,
}

pub fn build_call(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
    drop: Features,
) -> Result<UpstreamCall, GatewayError> {
    Ok(build_call_with(
        target,
        build_body(target, req, system, drop)?,
        req.stream,
    ))
}

/// The Messages call carrying `body`: streamed when the client streams, else one whole answer
/// (fewer bytes to parse; it is decoded the same way).
pub fn build_call_with(target: &Target, body: Vec<u8>, stream: bool) -> UpstreamCall {
    UpstreamCall {
        headers: Vec::new(),
        path: format!("{}/messages", target.provider.url.base_path),
        body: Bytes::from(body),
        stream,
        decoder: Some(Decoder::Anthropic(AnthropicStream::new(
            &target.provider.name,
        ))),
    }
}

/// The Messages request body for `req` on `target`; `system` is the target's rendered prompt.
pub fn build_body(
    target: &Target,
    req: &ChatRequest,
    system: Option<&str>,
    drop: Features,
) -> Result<Vec<u8>, GatewayError> {
    let model = crate::providers::upstream_model(target, req)?;
    let fields = Fields::new(target, req, drop);
    for (key, why) in RESERVED {
        if fields.get(key).is_some() {
            return Err(invalid(
                format!("`{key}` is not a chat-completions field: {why}"),
                key,
            ));
        }
    }
    let prompt = system.filter(|p| !p.trim().is_empty());
    let keep_client_system =
        prompt.is_none() || target.system_prompt_mode != SystemPromptMode::Replace;
    let (client_system, messages) = turns(&req.messages, keep_client_system)?;
    let system_text = prompt
        .map(|p| Cow::Borrowed(p.trim()))
        .into_iter()
        .chain(client_system)
        .collect::<Vec<_>>()
        .join("\n\n");
    let tools = tools(&fields)?;
    let tool_choice = match &tools {
        Some(_) => tool_choice(&fields)?,
        None => None,
    };
    let body = Body {
        model,
        max_tokens: max_tokens(&fields)?,
        system: (!system_text.is_empty()).then_some(system_text),
        messages,
        temperature: fields.get("temperature"),
        top_p: fields.get("top_p"),
        stop_sequences: stop(&fields)?,
        tools,
        tool_choice,
        metadata: req
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| json!({"user_id": u})),
        stream: req.stream,
    };
    let size = req.messages.iter().map(|m| m.get().len()).sum::<usize>() + 512;
    let mut out = Vec::with_capacity(size);
    serde_json::to_writer(&mut out, &body)
        .map_err(|e| GatewayError::Internal(format!("anthropic request body: {e}")))?;
    // Fields Anthropic may know that the gateway does not map: as they are.
    out.pop();
    for (key, raw) in fields.all() {
        if MAPPED.contains(&key) || NOT_SENT.contains(&key) {
            continue;
        }
        out.push(b',');
        out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

fn max_tokens(fields: &Fields) -> Result<u64, GatewayError> {
    let (key, raw) = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|k| fields.client(k).map(|v| (k, v)))
        .or_else(|| {
            ["max_completion_tokens", "max_tokens"]
                .into_iter()
                .find_map(|k| fields.default(k).map(|v| (k, v)))
        })
        .map_or((None, None), |(k, v)| (Some(k), Some(v)));
    let Some(raw) = raw else {
        return Ok(DEFAULT_MAX_TOKENS);
    };
    let key = key.unwrap_or("max_tokens");
    match serde_json::from_str::<u64>(raw.get()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(format!("`{key}` must be a positive integer"), key)),
    }
}

fn stop(fields: &Fields) -> Result<Option<Vec<String>>, GatewayError> {
    let Some(raw) = fields.get("stop") else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stop {
        One(String),
        Many(Vec<String>),
    }
    match serde_json::from_str::<Stop>(raw.get()) {
        Ok(Stop::One(s)) => Ok(Some(vec![s])),
        Ok(Stop::Many(list)) if list.is_empty() => Ok(None),
        Ok(Stop::Many(list)) => Ok(Some(list)),
        Err(_) => Err(invalid(
            "`stop` must be a string or a list of strings".into(),
            "stop",
        )),
    }
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDef<'a>>,
}

#[derive(Deserialize)]
struct FunctionDef<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    input_schema: Cow<'a, RawValue>,
}

/// `tools` (or legacy `functions`) as Anthropic tools; `None` when there are none.
fn tools<'a>(fields: &'a Fields) -> Result<Option<Vec<ToolOut<'a>>>, GatewayError> {
    let defs: Vec<(String, FunctionDef)> = if let Some(raw) = fields.get("tools") {
        let list: Vec<ToolIn> = serde_json::from_str(raw.get()).map_err(|e| {
            invalid(
                format!("`tools` must be a list of function tools: {e}"),
                "tools",
            )
        })?;
        let mut defs = Vec::with_capacity(list.len());
        for (i, t) in list.into_iter().enumerate() {
            let kind = t.kind.as_deref().unwrap_or("function");
            match t.function {
                Some(f) if kind == "function" => defs.push((format!("tools[{i}].function.name"), f)),
                _ => {
                    return Err(invalid(
                        format!("tools[{i}]: only `function` tools are translated for Anthropic (got {kind:?})"),
                        &format!("tools[{i}]"),
                    ))
                }
            }
        }
        defs
    } else if let Some(raw) = fields.get("functions") {
        let list: Vec<FunctionDef> = serde_json::from_str(raw.get()).map_err(|e| {
            invalid(
                format!("`functions` must be a list of functions: {e}"),
                "functions",
            )
        })?;
        list.into_iter()
            .enumerate()
            .map(|(i, f)| (format!("functions[{i}].name"), f))
            .collect()
    } else {
        return Ok(None);
    };
    if defs.is_empty() {
        return Ok(None);
    }
    let default_schema =
        || Cow::Owned(RawValue::from_string(r#"{"type":"object"}"#.into()).unwrap_or_default());
    defs.into_iter()
        .map(|(param, f)| {
            let length = f.name.chars().count();
            if length > MAX_TOOL_NAME {
                return Err(invalid(
                    format!(
                        "tool name {:?} is {length} characters long; Anthropic accepts at most {MAX_TOOL_NAME}",
                        f.name
                    ),
                    &param,
                ));
            }
            Ok(ToolOut {
                name: f.name,
                description: f.description.filter(|d| !d.is_empty()),
                input_schema: f
                    .parameters
                    .filter(|p| p.get() != "null")
                    .map_or_else(default_schema, Cow::Borrowed),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `tool_choice` (or legacy `function_call`) and `parallel_tool_calls` as Anthropic's
/// `tool_choice`.
fn tool_choice(fields: &Fields) -> Result<Option<Value>, GatewayError> {
    let (param, raw) = match fields.get("tool_choice") {
        Some(raw) => ("tool_choice", Some(raw)),
        None => ("function_call", fields.get("function_call")),
    };
    let bad = || {
        invalid(
            format!("`{param}` must be \"auto\", \"required\", \"none\" or name a function"),
            param,
        )
    };
    let mut choice = match raw {
        None => None,
        Some(raw) => {
            let v: Value = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            let named = v["function"]["name"].as_str().or(v["name"].as_str());
            Some(match (v.as_str(), named) {
                (Some("auto"), _) => json!({"type": "auto"}),
                (Some("required"), _) => json!({"type": "any"}),
                (Some("none"), _) => json!({"type": "none"}),
                (None, Some(name)) => json!({"type": "tool", "name": name}),
                _ => return Err(bad()),
            })
        }
    };
    let parallel = fields.get("parallel_tool_calls").map(RawValue::get);
    if parallel == Some("false") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    Ok(choice)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
