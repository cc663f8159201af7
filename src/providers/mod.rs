//! Upstream protocols: how a chat request becomes an upstream call for each provider type.
//! The request path asks for an [`UpstreamCall`]; the provider decides path, body and framing.

pub mod openai;

use crate::config::{Config, ProviderKind, Target};
use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use bytes::Bytes;

/// Everything the forwarder sends, already encoded.
pub struct UpstreamCall {
    pub path: String,
    pub body: Bytes,
    /// Whether the upstream answers with SSE.
    pub stream: bool,
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

pub fn build_call(
    config: &Config,
    target: &Target,
    req: &ChatRequest,
    vars: &TemplateVars<'_>,
) -> Result<UpstreamCall, GatewayError> {
    match &target.provider.kind {
        ProviderKind::OpenAi => {
            let system = render_system_prompt(config, target, req, vars)?;
            openai::build_call(target, req, system.as_deref())
        }
        ProviderKind::Dify(_) => Err(GatewayError::UpstreamError(format!(
            "provider {} (dify) is not served by this build yet",
            target.provider.name
        ))),
    }
}
