//! The client's messages reduced to what a Dify app takes: one system text, earlier turns as
//! (role, text) — tool calls and tool results included, in a stable text form — the last user
//! message as the query, and its images. A session continues a Dify conversation and sends only
//! the new turn; without one, earlier turns are rendered into the query as a transcript.

use crate::config::{DifySettings, SystemPromptMode};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use serde_json::Value;
use std::collections::HashMap;

/// An image the client sent: a URL Dify can fetch, or inline data to upload first.
#[derive(Debug, Clone, PartialEq)]
pub enum ImagePart {
    Remote(String),
    Inline { mime: String, data: Vec<u8> },
}

/// The client's messages, reduced to what Dify takes.
#[derive(Debug, Default, PartialEq)]
pub struct Turns {
    /// System and developer text, joined.
    pub system: String,
    /// Earlier user/assistant turns as (role, text), before the last user message.
    pub history: Vec<(String, String)>,
    /// The last user message's text.
    pub query: String,
    pub images: Vec<ImagePart>,
}

fn text_of(content: &Value, images: Option<&mut Vec<ImagePart>>) -> Result<String, GatewayError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            let mut images = images;
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            texts.push(t.to_owned());
                        }
                    }
                    Some("image_url") => {
                        let url = p
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if let Some(list) = images.as_deref_mut() {
                            list.push(image_part(url)?);
                        }
                    }
                    _ => {}
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(GatewayError::invalid_request(
            "message content must be a string or an array of parts",
            Some("messages"),
        )),
    }
}

fn image_part(url: &str) -> Result<ImagePart, GatewayError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            GatewayError::invalid_request("malformed data: URL in image_url", Some("messages"))
        })?;
        let mime = meta.split(';').next().unwrap_or("image/png").to_owned();
        if !meta.ends_with(";base64") {
            return Err(GatewayError::invalid_request(
                "image data: URLs must be base64",
                Some("messages"),
            ));
        }
        let data = base64_decode(data).ok_or_else(|| {
            GatewayError::invalid_request("image data: URL is not valid base64", Some("messages"))
        })?;
        return Ok(ImagePart::Inline { mime, data });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(ImagePart::Remote(url.to_owned()));
    }
    Err(GatewayError::invalid_request(
        "image_url must be an http(s) or data: URL",
        Some("messages"),
    ))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// Splits the client's messages into what Dify takes. `prompt` is the target's rendered
/// system prompt; with `SystemPromptMode::Replace` the client's own system messages are left
/// out, otherwise they follow it in the one system text Dify has.
pub fn turns(
    req: &ChatRequest,
    prompt: Option<&str>,
    mode: SystemPromptMode,
) -> Result<Turns, GatewayError> {
    let msgs: Vec<Value> = req
        .messages
        .iter()
        .map(|m| serde_json::from_str(m.get()))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            GatewayError::invalid_request(format!("bad message: {e}"), Some("messages"))
        })?;
    let last_user = msgs
        .iter()
        .rposition(|m| m["role"] == "user")
        .ok_or_else(|| {
            GatewayError::invalid_request(
                "a Dify app needs at least one user message",
                Some("messages"),
            )
        })?;
    let mut t = Turns::default();
    let mut system = Vec::new();
    let prompt = prompt.filter(|p| !p.trim().is_empty());
    if let Some(p) = prompt {
        system.push(p.trim().to_owned());
    }
    let keep_client_system = prompt.is_none() || mode != SystemPromptMode::Replace;
    // Tool names by call id, for results that carry only the id.
    let mut tool_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        match role {
            "system" | "developer" if keep_client_system => {
                let s = text_of(&m["content"], None)?;
                if !s.is_empty() {
                    system.push(s);
                }
            }
            "user" if i == last_user => t.query = text_of(&m["content"], Some(&mut t.images))?,
            "user" | "assistant" if i < last_user => {
                let s = text_of(&m["content"], None)?;
                if !s.is_empty() {
                    t.history.push((role.to_owned(), s));
                }
                if role == "assistant" {
                    tool_calls(m, &mut tool_names, &mut t.history);
                }
            }
            "tool" | "function" if i < last_user => {
                let id = m["tool_call_id"].as_str();
                let name = m["name"]
                    .as_str()
                    .or_else(|| id.and_then(|id| tool_names.get(id).copied()))
                    .unwrap_or("unknown");
                let result = text_of(&m["content"], None)?;
                let head = match id {
                    Some(id) => format!("[result of tool {name}, call {id}]"),
                    None => format!("[result of tool {name}]"),
                };
                t.history
                    .push(("tool".to_owned(), format!("{head} {result}")));
            }
            _ => {}
        }
    }
    t.system = system.join("\n\n");
    Ok(t)
}

/// An assistant turn's tool calls, each as one history line (documented in
/// docs/compatibility.md): `[calls tool NAME with arguments ARGS, call ID]`.
fn tool_calls<'m>(
    m: &'m Value,
    names: &mut HashMap<&'m str, &'m str>,
    history: &mut Vec<(String, String)>,
) {
    let calls = m["tool_calls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let legacy = m.get("function_call").filter(|f| f.is_object());
    for f in calls
        .iter()
        .map(|c| (&c["function"], c["id"].as_str()))
        .chain(legacy.map(|f| (f, None)))
    {
        let (function, id) = f;
        let name = function["name"].as_str().unwrap_or("unknown");
        let arguments = match &function["arguments"] {
            Value::String(s) => s.clone(),
            Value::Null => "{}".to_owned(),
            other => other.to_string(),
        };
        let line = match id {
            Some(id) => {
                names.insert(id, name);
                format!("[calls tool {name} with arguments {arguments}, call {id}]")
            }
            None => format!("[calls tool {name} with arguments {arguments}]"),
        };
        history.push(("assistant".to_owned(), line));
    }
}

/// The text Dify receives as the user's turn.
/// - `first_turn`: a new Dify conversation, so a system text without `system_input` is prefixed.
/// - `with_history`: earlier turns are rendered as a transcript (no session to carry them).
pub fn query_text(
    t: &Turns,
    settings: &DifySettings,
    first_turn: bool,
    with_history: bool,
) -> String {
    let mut out = String::new();
    if first_turn && settings.system_input.is_none() && !t.system.is_empty() {
        out.push_str(&t.system);
        out.push_str("\n\n");
    }
    if with_history && !t.history.is_empty() {
        out.push_str("Conversation so far:\n");
        for (role, text) in &t.history {
            out.push_str(role);
            out.push_str(": ");
            out.push_str(text);
            out.push('\n');
        }
        out.push_str("\nCurrent message:\n");
    }
    out.push_str(&t.query);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DifyApp;
    use crate::protocol::RequestHints;

    fn settings(app: DifyApp, system_input: Option<&str>) -> DifySettings {
        DifySettings {
            app,
            query_input: "query".into(),
            output: None,
            inputs: Default::default(),
            system_input: system_input.map(str::to_owned),
            reasoning: false,
        }
    }

    fn req(body: &str) -> ChatRequest {
        ChatRequest::parse(body.as_bytes(), &RequestHints::default()).unwrap()
    }

    #[test]
    fn turns_split_system_history_and_the_last_user_message() {
        let r = req(
            r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"},
            {"role":"assistant","content":"hello"},{"role":"user","content":[{"type":"text","text":"a"},
            {"type":"image_url","image_url":{"url":"https://x/i.png"}},{"type":"text","text":"b"}]}]}"#,
        );
        let t = turns(&r, Some("Prompt."), SystemPromptMode::Prepend).unwrap();
        assert_eq!(t.system, "Prompt.\n\nBe brief.");
        assert_eq!(
            t.history,
            vec![
                ("user".into(), "hi".into()),
                ("assistant".into(), "hello".into())
            ]
        );
        assert_eq!(t.query, "a\nb");
        assert_eq!(t.images, vec![ImagePart::Remote("https://x/i.png".into())]);
        let s = settings(DifyApp::Chat, None);
        assert_eq!(
            query_text(&t, &s, true, true),
            "Prompt.\n\nBe brief.\n\nConversation so far:\nuser: hi\nassistant: hello\n\nCurrent message:\na\nb"
        );
        assert_eq!(query_text(&t, &s, false, false), "a\nb");
        assert_eq!(
            query_text(&t, &settings(DifyApp::Chat, Some("persona")), true, false),
            "a\nb"
        );
    }

    #[test]
    fn data_urls_are_decoded_for_upload() {
        let r = req(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,aGVsbG8="}}]}]}"#,
        );
        let t = turns(&r, None, SystemPromptMode::Prepend).unwrap();
        assert_eq!(
            t.images,
            vec![ImagePart::Inline {
                mime: "image/png".into(),
                data: b"hello".to_vec()
            }]
        );
        let bad = req(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]}"#,
        );
        assert!(turns(&bad, None, SystemPromptMode::Prepend).is_err());
        assert!(turns(
            &req(r#"{"messages":[{"role":"system","content":"x"}]}"#),
            None,
            SystemPromptMode::Prepend
        )
        .is_err());
    }

    #[test]
    fn tool_calls_and_results_are_rendered_into_the_history() {
        let r = req(
            r#"{"messages":[{"role":"user","content":"Weather in Paris?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
              "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"{\"temp\":20}"},
            {"role":"assistant","content":"It is 20 degrees."},
            {"role":"user","content":"And tomorrow?"}]}"#,
        );
        let t = turns(&r, None, SystemPromptMode::Prepend).unwrap();
        assert_eq!(
            query_text(&t, &settings(DifyApp::Chat, None), true, true),
            "Conversation so far:\nuser: Weather in Paris?\n\
             assistant: [calls tool get_weather with arguments {\"city\":\"Paris\"}, call call_1]\n\
             tool: [result of tool get_weather, call call_1] {\"temp\":20}\n\
             assistant: It is 20 degrees.\n\nCurrent message:\nAnd tomorrow?"
        );
    }

    #[test]
    fn replace_leaves_out_the_client_system_text() {
        let r = req(
            r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}]}"#,
        );
        let replaced = turns(&r, Some("Prompt."), SystemPromptMode::Replace).unwrap();
        assert_eq!(replaced.system, "Prompt.");
        let merged = turns(&r, Some("Prompt."), SystemPromptMode::Merge).unwrap();
        assert_eq!(merged.system, "Prompt.\n\nBe brief.");
        let own = turns(&r, None, SystemPromptMode::Replace).unwrap();
        assert_eq!(
            own.system, "Be brief.",
            "no target prompt: nothing replaces the client's"
        );
    }
}
