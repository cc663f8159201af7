//! `GET /v1/models`: every scenario name and alias, as OpenAI model objects.

use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::filters::auth;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    auth::authenticate(config, downstream::authorization(session))?;
    let mut data = Vec::new();
    for s in config.scenarios.values() {
        for id in std::iter::once(&s.name).chain(s.models.iter()) {
            data.push(json!({
                "id": id,
                "object": "model",
                "created": state.loaded_at,
                "owned_by": "ai-gateway",
                "scenario": s.name,
            }));
        }
    }
    let body = json!({"object": "list", "data": data}).to_string();
    let _ = downstream::write_json(session, ctx, 200, Bytes::from(body)).await;
    Ok(())
}
