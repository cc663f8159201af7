//! The client's messages as the Messages API takes them: system and developer texts apart (they
//! become the top-level `system`), the rest as alternating user / assistant turns of content
//! blocks.
//!
//! - user content: text blocks and images (`data:` URLs inline as base64, http(s) by URL);
//! - assistant content: text blocks, then one `tool_use` block per tool call, its `input`
//!   parsed from the call's arguments string (arguments that are not a JSON object are a 400
//!   naming the message, never a silent `{}`);
//! - tool results (`role: tool`): `tool_result` blocks in a user turn, consecutive ones in one;
//! - legacy `function_call` / `role: function` turns: the same, with an id made up per call;
//! - empty or blank text makes no block (Anthropic rejects empty text blocks), a turn without
//!   blocks is left out, and consecutive turns of one role are merged (Anthropic requires the
//!   roles to alternate), `tool_result` blocks first in a user turn.

use crate::error::GatewayError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: Source<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Box<RawValue>,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
}

#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source<'a> {
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url {
        url: Cow<'a, str>,
    },
}

#[derive(Serialize, Debug)]
pub struct Turn<'a> {
    pub role: &'static str,
    pub content: Vec<Block<'a>>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCallIn<'a>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    function: FunctionCallIn<'a>,
}

#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
}

/// A JSON string, borrowed from the request when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct ImageUrlIn<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
}

fn invalid(message: String, param: String) -> GatewayError {
    GatewayError::invalid_request(message, Some(&param))
}

/// `c[start..end]`, still borrowed when `c` is.
fn slice<'a>(c: &Cow<'a, str>, start: usize, end: usize) -> Cow<'a, str> {
    match c {
        Cow::Borrowed(s) => Cow::Borrowed(&s[start..end]),
        Cow::Owned(s) => Cow::Owned(s[start..end].to_owned()),
    }
}

fn has_text(t: &str) -> bool {
    !t.trim().is_empty()
}

/// A message's content: absent, one string, or parts.
enum Content<'a> {
    None,
    Text(Cow<'a, str>),
    Parts(Vec<PartIn<'a>>),
}

fn content<'a>(raw: Option<&'a RawValue>, i: usize) -> Result<Content<'a>, GatewayError> {
    let Some(raw) = raw else {
        return Ok(Content::None);
    };
    let bad = |e: serde_json::Error| {
        invalid(
            format!("messages[{i}].content must be a string or a list of content parts: {e}"),
            format!("messages[{i}].content"),
        )
    };
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(Content::Text(
            serde_json::from_str::<Text>(raw.get()).map_err(bad)?.0,
        )),
        Some(b'[') => Ok(Content::Parts(
            serde_json::from_str(raw.get()).map_err(bad)?,
        )),
        _ => Err(invalid(
            format!("messages[{i}].content must be a string or a list of content parts"),
            format!("messages[{i}].content"),
        )),
    }
}

fn unsupported_part(i: usize, j: usize, kind: &str) -> GatewayError {
    invalid(
        format!("messages[{i}].content[{j}]: content parts of type {kind:?} are not translated for Anthropic"),
        format!("messages[{i}].content[{j}]"),
    )
}

/// The texts of a content that may hold only text (system, assistant, tool messages).
fn texts(c: Content<'_>, i: usize) -> Result<Vec<Cow<'_, str>>, GatewayError> {
    Ok(match c {
        Content::None => Vec::new(),
        Content::Text(t) => vec![t],
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.into_iter().enumerate() {
                match p.kind.as_ref() {
                    "text" => out.extend(p.text),
                    "refusal" => out.extend(p.refusal),
                    other => return Err(unsupported_part(i, j, other)),
                }
            }
            out
        }
    })
}

fn image<'a>(raw: Option<&'a RawValue>, i: usize, j: usize) -> Result<Block<'a>, GatewayError> {
    let param = || format!("messages[{i}].content[{j}].image_url");
    let url = match raw.map(RawValue::get) {
        Some(t) if t.starts_with('"') => serde_json::from_str::<Text>(t).ok().map(|t| t.0),
        Some(t) => serde_json::from_str::<ImageUrlIn>(t).ok().map(|u| u.url),
        None => None,
    }
    .ok_or_else(|| invalid(format!("{} must have a url", param()), param()))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let comma = rest
            .find(',')
            .ok_or_else(|| invalid(format!("{}: malformed data: URL", param()), param()))?;
        let meta = &rest[..comma];
        let Some(media_type) = meta.strip_suffix(";base64") else {
            return Err(invalid(
                format!("{}: image data: URLs must be base64", param()),
                param(),
            ));
        };
        let start = "data:".len();
        return Ok(Block::Image {
            source: Source::Base64 {
                media_type: slice(&url, start, start + media_type.len()),
                data: slice(&url, start + comma + 1, url.len()),
            },
        });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Block::Image {
            source: Source::Url { url },
        });
    }
    Err(invalid(
        format!("{} must be an http(s) or data: URL", param()),
        param(),
    ))
}

fn user_blocks(c: Content<'_>, i: usize) -> Result<Vec<Block<'_>>, GatewayError> {
    Ok(match c {
        Content::None => Vec::new(),
        Content::Text(t) => has_text(&t)
            .then_some(Block::Text { text: t })
            .into_iter()
            .collect(),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.into_iter().enumerate() {
                match p.kind.as_ref() {
                    "text" => out.extend(
                        p.text
                            .filter(|t| has_text(t))
                            .map(|text| Block::Text { text }),
                    ),
                    "image_url" => out.push(image(p.image_url, i, j)?),
                    other => return Err(unsupported_part(i, j, other)),
                }
            }
            out
        }
    })
}

/// A tool call's `input`: its arguments string, which must hold a JSON object.
fn input(args: &str, i: usize, call: &str) -> Result<Box<RawValue>, GatewayError> {
    serde_json::from_str::<Box<RawValue>>(args.trim())
        .ok()
        .filter(|raw| raw.get().starts_with('{'))
        .ok_or_else(|| {
            invalid(
                format!("messages[{i}]: the arguments of tool call {call:?} are not a JSON object"),
                format!("messages[{i}]"),
            )
        })
}

fn push<'a>(turns: &mut Vec<Turn<'a>>, role: &'static str, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(t) if t.role == role => t.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

/// The client's system texts (each non-blank one, in order; none when `keep_system` is false)
/// and the turns.
pub fn turns(
    messages: &[Box<RawValue>],
    keep_system: bool,
) -> Result<(Vec<Cow<'_, str>>, Vec<Turn<'_>>), GatewayError> {
    let mut system = Vec::new();
    let mut out: Vec<Turn> = Vec::with_capacity(messages.len());
    // Legacy function calls awaiting their result: (name, made-up id).
    let mut legacy: Vec<(Cow<str>, String)> = Vec::new();
    for (i, raw) in messages.iter().enumerate() {
        let m: MessageIn = serde_json::from_str(raw.get())
            .map_err(|e| invalid(format!("messages[{i}]: {e}"), format!("messages[{i}]")))?;
        let c = content(m.content, i)?;
        match m.role.as_ref() {
            "system" | "developer" => {
                let text = texts(c, i)?.join("\n");
                if keep_system && has_text(&text) {
                    system.push(Cow::Owned(text));
                }
            }
            "user" => push(&mut out, "user", user_blocks(c, i)?),
            "assistant" => {
                let mut blocks: Vec<Block> = texts(c, i)?
                    .into_iter()
                    .filter(|t| has_text(t))
                    .map(|text| Block::Text { text })
                    .collect();
                for call in m.tool_calls.into_iter().flatten() {
                    let input = input(&call.function.arguments, i, &call.id)?;
                    blocks.push(Block::ToolUse {
                        id: call.id,
                        name: call.function.name,
                        input,
                    });
                }
                if let Some(f) = m.function_call {
                    let id = format!("call_{i}");
                    let input = input(&f.arguments, i, &id)?;
                    legacy.push((f.name.clone(), id.clone()));
                    blocks.push(Block::ToolUse {
                        id: Cow::Owned(id),
                        name: f.name,
                        input,
                    });
                }
                push(&mut out, "assistant", blocks);
            }
            "tool" => {
                let id = m.tool_call_id.filter(|id| !id.is_empty()).ok_or_else(|| {
                    invalid(
                        format!("messages[{i}]: a tool message needs its tool_call_id"),
                        format!("messages[{i}].tool_call_id"),
                    )
                })?;
                let text = texts(c, i)?.join("\n");
                let block = Block::ToolResult {
                    tool_use_id: id,
                    content: has_text(&text).then_some(text),
                };
                push(&mut out, "user", vec![block]);
            }
            "function" => {
                let name = m.name.unwrap_or_default();
                let at = legacy.iter().rposition(|(n, _)| *n == name).ok_or_else(|| {
                    invalid(
                        format!("messages[{i}]: a function result without an earlier function_call {name:?}"),
                        format!("messages[{i}]"),
                    )
                })?;
                let (_, id) = legacy.remove(at);
                let text = texts(c, i)?.join("\n");
                let block = Block::ToolResult {
                    tool_use_id: Cow::Owned(id),
                    content: has_text(&text).then_some(text),
                };
                push(&mut out, "user", vec![block]);
            }
            other => {
                return Err(invalid(
                    format!("messages[{i}].role {other:?} is not a chat-completions role"),
                    format!("messages[{i}].role"),
                ))
            }
        }
    }
    for t in out.iter_mut().filter(|t| t.role == "user") {
        // Stable: results stay in call order, the user's own blocks after them.
        t.content
            .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
    }
    if out.is_empty() {
        return Err(invalid(
            "messages: there is nothing to send to Anthropic besides system text; add a user message"
                .into(),
            "messages".into(),
        ));
    }
    Ok((system, out))
}
