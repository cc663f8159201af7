//! Upstream protocols: how a chat request becomes an upstream call for each provider type.
//! The request path asks for an [`UpstreamCall`]; the provider decides path, body and framing.

pub mod dify;
pub mod openai;

use crate::config::{Config, ProviderKind, Target};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use crate::state::Shared;
use bytes::Bytes;

/// Everything the forwarder sends, already encoded.
pub struct UpstreamCall {
    pub path: String,
    pub body: Bytes,
    /// Whether the upstream answers with SSE.
    pub stream: bool,
    /// Set for Dify targets: the answer is translated, not relayed.
    pub dify: Option<dify::DifyCall>,
}

/// Variables every template sees (DESIGN §1.6).
pub struct TemplateVars<'a> {
    pub scenario: &'a str,
    pub user: &'a str,
}

pub fn render_system_prompt(
    config: &Config,
    target: &Target,
    req: &ChatRequest,
    vars: &TemplateVars<'_>,
) -> Result<Option<String>, GatewayError> {
    let Some(name) = &target.system_prompt else {
        return Ok(None);
    };
    let tmpl = config
        .templates
        .get_template(name)
        .map_err(|e| GatewayError::Internal(format!("template {name}: {e}")))?;
    let ctx = minijinja::context! {
        user_profile => minijinja::Value::from_serialize(&req.user_profile),
        scenario => vars.scenario,
        user => vars.user,
    };
    tmpl.render(ctx).map(Some).map_err(|e| {
        GatewayError::invalid_request(
            format!("the system prompt of this scenario cannot be rendered with this request: {e}"),
            Some("metadata.user_profile"),
        )
    })
}

pub async fn build_call(
    shared: &Shared,
    config: &Config,
    target: &Target,
    req: &ChatRequest,
    vars: &TemplateVars<'_>,
) -> Result<UpstreamCall, GatewayError> {
    let system = render_system_prompt(config, target, req, vars)?;
    match &target.provider.kind {
        ProviderKind::OpenAi => openai::build_call(target, req, system.as_deref()),
        ProviderKind::Dify(settings) => {
            dify::build_call(shared, config, target, settings, req, vars, system).await
        }
    }
}
