//! Dify request mapping: the OpenAI messages become Dify's `query` / `inputs` / `files`; a
//! session continues its Dify conversation and sends only the new turn, otherwise earlier turns
//! are rendered into the query. The call is always `response_mode: streaming`.

use super::translate::Translator;
use super::{DifyCall, DifyStream};
use crate::config::{Config, DifyApp, DifySettings, Target};
use crate::conversations::{ConversationKey, ConversationStore};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use crate::providers::{BuildCx, Decoder, UpstreamCall};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Builds the Dify generate call for `req` (uploading inline images first).
pub async fn build_call(
    cx: &BuildCx<'_>,
    target: &Target,
    settings: &DifySettings,
    req: &ChatRequest,
) -> Result<UpstreamCall, GatewayError> {
    let provider = &target.provider;
    let vars = cx.vars;
    let system_prompt = super::super::render_system_prompt(cx.config, target, req, vars)?;
    let t = turns(req, system_prompt.as_deref())?;
    let user = vars.user.to_owned();
    let conversational = has_conversations(settings.app);
    let conversation_key =
        req.session
            .as_ref()
            .filter(|_| conversational)
            .map(|s| ConversationKey {
                target: provider.name.clone(),
                user: user.clone(),
                session: s.clone(),
            });
    let existing = match &conversation_key {
        Some(k) => cx.conversations.get(k).await,
        None => None,
    };
    let mut files = Vec::new();
    for image in &t.images {
        files.push(match image {
            ImagePart::Remote(url) => {
                json!({"type": "image", "transfer_method": "remote_url", "url": url})
            }
            ImagePart::Inline { mime, data } => {
                let id = super::upload::upload(cx.upstream, provider, &user, mime, data).await?;
                json!({"type": "image", "transfer_method": "local_file", "upload_file_id": id})
            }
        });
    }
    let ctx = minijinja::context! {
        user_profile => minijinja::Value::from_serialize(&req.user_profile),
        scenario => vars.scenario,
        user => vars.user,
    };
    let inputs = inputs(cx.config, target, settings, &ctx)?;
    let fresh_text = query_text(&t, settings, true, true);
    let (text, fallback) = match &existing {
        Some(_) => {
            let fresh = body(
                settings,
                inputs.clone(),
                fresh_text,
                &t.system,
                &user,
                None,
                files.clone(),
            );
            (
                query_text(&t, settings, false, false),
                Some(Bytes::from(fresh.to_string())),
            )
        }
        None => (fresh_text, None),
    };
    let b = body(
        settings,
        inputs,
        text,
        &t.system,
        &user,
        existing.as_deref(),
        files,
    );
    let url = &provider.url;
    let origin = format!(
        "{}://{}",
        if url.tls { "https" } else { "http" },
        url.host_header()
    );
    let call = DifyCall {
        app: settings.app,
        user,
        conversation_key,
        fallback_body: fallback,
    };
    Ok(UpstreamCall {
        path: generate_path(&url.base_path, settings.app),
        body: Bytes::from(b.to_string()),
        stream: true,
        decoder: Some(Decoder::Dify(DifyStream::new(
            call,
            Translator::new(
                settings.app,
                settings.reasoning,
                settings.output.clone(),
                &provider.name,
                origin,
            ),
        ))),
    })
}

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

pub fn turns(req: &ChatRequest, prompt: Option<&str>) -> Result<Turns, GatewayError> {
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
    if let Some(p) = prompt.filter(|p| !p.trim().is_empty()) {
        system.push(p.trim().to_owned());
    }
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        match role {
            "system" | "developer" => {
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
            }
            _ => {}
        }
    }
    t.system = system.join("\n\n");
    Ok(t)
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

/// Renders the provider's and the target's `inputs` templates (the target's win).
pub fn inputs(
    config: &Config,
    target: &Target,
    settings: &DifySettings,
    ctx: &minijinja::Value,
) -> Result<Map<String, Value>, GatewayError> {
    let mut out = Map::new();
    for (var, name) in settings.inputs.iter().chain(target.inputs.iter()) {
        let tmpl = config
            .templates
            .get_template(name)
            .map_err(|e| GatewayError::Internal(format!("template {name}: {e}")))?;
        let text = tmpl.render(ctx).map_err(|e| {
            GatewayError::invalid_request(
                format!("Dify input {var:?} cannot be rendered with this request: {e}"),
                Some("metadata.user_profile"),
            )
        })?;
        out.insert(var.clone(), Value::String(text));
    }
    Ok(out)
}

pub fn generate_path(base: &str, app: DifyApp) -> String {
    match app {
        DifyApp::Chat | DifyApp::Agent | DifyApp::Chatflow => format!("{base}/chat-messages"),
        DifyApp::Completion => format!("{base}/completion-messages"),
        DifyApp::Workflow => format!("{base}/workflows/run"),
    }
}

pub fn stop_path(base: &str, app: DifyApp, task_id: &str) -> String {
    match app {
        DifyApp::Chat | DifyApp::Agent | DifyApp::Chatflow => {
            format!("{base}/chat-messages/{task_id}/stop")
        }
        DifyApp::Completion => format!("{base}/completion-messages/{task_id}/stop"),
        DifyApp::Workflow => format!("{base}/workflows/tasks/{task_id}/stop"),
    }
}

/// Whether the mode keeps conversations.
pub fn has_conversations(app: DifyApp) -> bool {
    matches!(app, DifyApp::Chat | DifyApp::Agent | DifyApp::Chatflow)
}

/// The JSON body of the generate call.
pub fn body(
    settings: &DifySettings,
    mut inputs: Map<String, Value>,
    text: String,
    system: &str,
    user: &str,
    conversation_id: Option<&str>,
    files: Vec<Value>,
) -> Value {
    if let Some(var) = &settings.system_input {
        if !system.is_empty() {
            inputs.insert(var.clone(), Value::String(system.to_owned()));
        }
    }
    match settings.app {
        DifyApp::Chat | DifyApp::Agent | DifyApp::Chatflow => json!({
            "inputs": inputs,
            "query": text,
            "response_mode": "streaming",
            "user": user,
            "conversation_id": conversation_id.unwrap_or(""),
            "files": files,
            "auto_generate_name": false,
        }),
        DifyApp::Completion => {
            inputs.insert(settings.query_input.clone(), Value::String(text.clone()));
            json!({"inputs": inputs, "query": text, "response_mode": "streaming", "user": user, "files": files})
        }
        DifyApp::Workflow => {
            inputs.insert(settings.query_input.clone(), Value::String(text));
            json!({"inputs": inputs, "response_mode": "streaming", "user": user, "files": files})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let t = turns(&r, Some("Prompt.")).unwrap();
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
        let t = turns(&r, None).unwrap();
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
        assert!(turns(&bad, None).is_err());
        assert!(turns(
            &req(r#"{"messages":[{"role":"system","content":"x"}]}"#),
            None
        )
        .is_err());
    }

    #[test]
    fn bodies_per_mode() {
        let b = body(
            &settings(DifyApp::Chat, Some("persona")),
            Map::new(),
            "q".into(),
            "sys",
            "u",
            Some("c1"),
            vec![],
        );
        assert_eq!(b["query"], "q");
        assert_eq!(b["inputs"]["persona"], "sys");
        assert_eq!(b["conversation_id"], "c1");
        assert_eq!(b["auto_generate_name"], false);
        assert_eq!(b["response_mode"], "streaming");
        let mut wf = settings(DifyApp::Workflow, None);
        wf.query_input = "requirements".into();
        let b = body(&wf, Map::new(), "q".into(), "", "u", None, vec![]);
        assert_eq!(b["inputs"]["requirements"], "q");
        assert!(b.get("query").is_none() && b.get("conversation_id").is_none());
        assert_eq!(generate_path("/v1", DifyApp::Workflow), "/v1/workflows/run");
        assert_eq!(
            stop_path("/v1", DifyApp::Agent, "t1"),
            "/v1/chat-messages/t1/stop"
        );
        assert_eq!(
            stop_path("/v1", DifyApp::Workflow, "t1"),
            "/v1/workflows/tasks/t1/stop"
        );
    }
}
