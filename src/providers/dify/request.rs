//! Dify request mapping: the turns (`turns.rs`) become Dify's `query` / `inputs` / `files`, a
//! session's conversation is looked up, inline images are uploaded, and the body for the app's
//! endpoint is built. The call is always `response_mode: streaming`.

use super::translate::Translator;
use super::turns::{query_text, turns, ImagePart};
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
    let t = turns(req, system_prompt.as_deref(), target.system_prompt_mode)?;
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
        headers: Vec::new(),
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
