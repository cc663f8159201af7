//! Dify Service API upstreams (chat, agent, chatflow, workflow, completion apps).
//!
//! Request side: the OpenAI messages become Dify's `query` / `inputs` / `files`, with one Dify
//! conversation kept per (provider, user, session) so a multi-turn chat sends only the new turn.
//! The call is always `response_mode: streaming`; `translate.rs` turns the event stream back into
//! OpenAI chunks (or one aggregated completion). See docs/dify.md for the mapping.

pub mod translate;

use super::{TemplateVars, UpstreamCall};
use crate::config::{Config, DifyApp, DifySettings, Target};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use crate::state::Shared;
use crate::upstream;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// What the forwarder needs to translate a Dify answer and keep the conversation.
pub struct DifyCall {
    pub app: DifyApp,
    pub reasoning: bool,
    pub output: Option<String>,
    /// The Dify `user` (also needed to stop the task).
    pub user: String,
    /// Where to remember the conversation this answer belongs to.
    pub conversation_key: Option<(String, String, String)>,
    /// The same request as a new conversation, for when Dify no longer knows ours.
    pub fallback_body: Option<Bytes>,
    /// `model` echoed in every chunk: what the client asked for.
    pub model: String,
    pub include_usage: bool,
    pub client_stream: bool,
    /// `scheme://host[:port]` of the provider, for host-relative file URLs.
    pub origin: String,
}

/// How long an image upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

async fn upload(
    shared: &Shared,
    target: &Target,
    user: &str,
    mime: &str,
    data: &[u8],
) -> Result<String, GatewayError> {
    let provider = &target.provider;
    let mime: String = mime
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "/+.-".contains(*c))
        .collect();
    let ext = mime
        .rsplit('/')
        .next()
        .filter(|e| !e.is_empty())
        .unwrap_or("bin");
    let boundary = format!("ai-gateway-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"user\"\r\n\r\n{user}\r\n\
             --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"image.{ext}\"\r\n\
             content-type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let path = format!("{}/files/upload", provider.url.base_path);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, answer) = upstream::simple_call(
        shared,
        provider,
        &path,
        &content_type,
        Bytes::from(body),
        UPLOAD_TIMEOUT,
    )
    .await
    .map_err(|e| {
        GatewayError::UpstreamError(format!(
            "dify provider {}: image upload failed: {}",
            provider.name,
            crate::forward::sanitize(&e)
        ))
    })?;
    if !(200..300).contains(&status) {
        return Err(map_error_body(&provider.name, status, &answer));
    }
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    v["id"].as_str().map(str::to_owned).ok_or_else(|| {
        GatewayError::UpstreamError(format!(
            "dify provider {}: upload answer has no file id",
            provider.name
        ))
    })
}

/// Builds the Dify generate call for `req` (uploading inline images first).
#[allow(clippy::too_many_arguments)]
pub async fn build_call(
    shared: &Shared,
    config: &Config,
    target: &Target,
    settings: &DifySettings,
    req: &ChatRequest,
    vars: &TemplateVars<'_>,
    system_prompt: Option<String>,
) -> Result<UpstreamCall, GatewayError> {
    let provider = &target.provider;
    let t = turns(req, system_prompt.as_deref())?;
    let user = vars.user.to_owned();
    let conversational = has_conversations(settings.app);
    let conversation_key = req
        .session
        .as_ref()
        .filter(|_| conversational)
        .map(|s| (provider.name.clone(), user.clone(), s.clone()));
    let existing = conversation_key
        .as_ref()
        .and_then(|k| shared.conversations.get(k));
    let mut files = Vec::new();
    for image in &t.images {
        files.push(match image {
            ImagePart::Remote(url) => {
                json!({"type": "image", "transfer_method": "remote_url", "url": url})
            }
            ImagePart::Inline { mime, data } => {
                let id = upload(shared, target, &user, mime, data).await?;
                json!({"type": "image", "transfer_method": "local_file", "upload_file_id": id})
            }
        });
    }
    let ctx = minijinja::context! {
        user_profile => minijinja::Value::from_serialize(&req.user_profile),
        scenario => vars.scenario,
        user => vars.user,
    };
    let inputs = inputs(config, target, settings, &ctx)?;
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
    Ok(UpstreamCall {
        path: generate_path(&url.base_path, settings.app),
        body: Bytes::from(b.to_string()),
        stream: true,
        dify: Some(DifyCall {
            app: settings.app,
            reasoning: settings.reasoning,
            output: settings.output.clone(),
            user,
            conversation_key,
            fallback_body: fallback,
            model: req
                .model
                .clone()
                .unwrap_or_else(|| vars.scenario.to_owned()),
            include_usage: req.include_usage,
            client_stream: req.stream,
            origin,
        }),
    })
}

/// Conversations remembered at most (least recently used go first) and how long an unused one
/// is kept. Dify keeps the conversation itself; this only maps a client session onto it.
pub const MAX_CONVERSATIONS: u64 = 100_000;
pub const CONVERSATION_IDLE: Duration = Duration::from_secs(24 * 3600);

/// (provider, user, session) → Dify `conversation_id`.
pub type Conversations = moka::sync::Cache<(String, String, String), String>;

pub fn new_conversations() -> Conversations {
    moka::sync::Cache::builder()
        .max_capacity(MAX_CONVERSATIONS)
        .time_to_idle(CONVERSATION_IDLE)
        .build()
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

/// Maps a Dify error (status, `code`, `message`, `params`) to the client-facing error (spec §8).
pub fn map_error(
    provider: &str,
    status: u16,
    code: &str,
    message: &str,
    params: Option<&str>,
) -> GatewayError {
    let msg = crate::forward::sanitize(message);
    let mapped =
        |status: u16, etype: &str, code: &str, retry: Option<bool>, retry_after: Option<u64>| {
            GatewayError::Mapped {
                status,
                message: format!("dify provider {provider}: {msg}"),
                error_type: etype.to_owned(),
                code: code.to_owned(),
                param: params.map(str::to_owned),
                should_retry: retry,
                retry_after,
            }
        };
    match (status, code) {
        (404, "not_found") if message.contains("Conversation") => mapped(
            404,
            "invalid_request_error",
            "conversation_not_found",
            Some(false),
            None,
        ),
        (400, "invalid_param" | "bad_request") => mapped(
            400,
            "invalid_request_error",
            "invalid_param",
            Some(false),
            None,
        ),
        (400, "conversation_completed") => mapped(
            400,
            "invalid_request_error",
            "conversation_completed",
            Some(false),
            None,
        ),
        (400, "not_chat_app" | "not_workflow_app" | "not_completion_app" | "app_unavailable")
        | (401, _)
        | (403, _) => mapped(
            502,
            "server_error",
            "upstream_misconfigured",
            Some(false),
            None,
        ),
        (400, "provider_not_initialize" | "model_currently_not_support") => mapped(
            503,
            "server_error",
            "upstream_unavailable",
            Some(false),
            None,
        ),
        (400, "provider_quota_exceeded") | (429, "rate_limit_error") => mapped(
            429,
            "insufficient_quota",
            "insufficient_quota",
            Some(false),
            None,
        ),
        (429, _) => mapped(429, "requests", "rate_limit_exceeded", Some(true), Some(1)),
        (400, "completion_request_error")
            if message.to_ascii_lowercase().contains("rate limit") =>
        {
            mapped(429, "requests", "rate_limit_exceeded", Some(true), Some(1))
        }
        (400, "completion_request_error") => {
            mapped(502, "server_error", "upstream_error", Some(true), None)
        }
        (413 | 415, _) => mapped(400, "invalid_request_error", code, Some(false), None),
        (400..=499, _) => mapped(status, "invalid_request_error", code, Some(false), None),
        _ => mapped(502, "server_error", "upstream_error", Some(true), None),
    }
}

/// Maps a Dify error body received before the first byte.
pub fn map_error_body(provider: &str, status: u16, body: &[u8]) -> GatewayError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["code"].as_str().unwrap_or("");
    let message = v["message"]
        .as_str()
        .unwrap_or("no error message (not a Dify error body)");
    map_error(provider, status, code, message, v["params"].as_str())
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

    #[test]
    fn errors_map_per_spec() {
        let e = map_error("d", 400, "provider_quota_exceeded", "quota", None);
        assert_eq!(
            (e.status(), e.code(), e.should_retry()),
            (429, "insufficient_quota", Some(false))
        );
        let e = map_error("d", 429, "too_many_requests", "busy", None);
        assert_eq!((e.status(), e.retry_after()), (429, Some(1)));
        let fake = ["app", "-0123456789abcdefghijkl"].concat();
        let e = map_error("d", 401, "unauthorized", &format!("bad key {fake}"), None);
        assert_eq!((e.status(), e.should_retry()), (502, Some(false)));
        assert!(!e.to_string().contains("app-0123456789"));
        let e = map_error(
            "d",
            400,
            "invalid_param",
            "Arg user must be provided.",
            Some("user"),
        );
        assert_eq!((e.status(), e.code()), (400, "invalid_param"));
        assert_eq!(e.to_json()["error"]["param"], "user");
        assert_eq!(
            map_error(
                "d",
                400,
                "completion_request_error",
                "[openai] Rate Limit Error",
                None
            )
            .status(),
            429
        );
        assert_eq!(
            map_error("d", 500, "internal_server_error", "x", None).status(),
            502
        );
        assert_eq!(
            map_error_body("d", 502, b"<html>bad gateway</html>").status(),
            502
        );
    }
}
