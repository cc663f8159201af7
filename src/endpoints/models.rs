//! `GET /v1/models`: every scenario name and alias, as OpenAI model objects; and
//! `GET /v1/models/{id}`: the one object for a name or alias, or 404 `model_not_found`.

use crate::config::Scenario;
use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::filters::auth;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::{json, Value};

/// The OpenAI model object for `id`, a name or alias of `scenario`.
fn object(id: &str, scenario: &Scenario, created: u64) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "ai-gateway",
        "scenario": scenario.name,
    })
}

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
            data.push(object(id, s, state.loaded_at));
        }
    }
    let body = json!({"object": "list", "data": data}).to_string();
    let _ = downstream::write_json(session, ctx, 200, Bytes::from(body)).await;
    Ok(())
}

/// `id` is already percent-decoded.
pub async fn retrieve(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    id: &str,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    auth::authenticate(config, downstream::authorization(session))?;
    let scenario = config
        .models
        .get(id)
        .and_then(|&i| config.scenarios.get_index(i))
        .map(|(_, s)| s)
        .ok_or_else(|| GatewayError::unknown_model(id))?;
    let body = object(id, scenario, state.loaded_at).to_string();
    let _ = downstream::write_json(session, ctx, 200, Bytes::from(body)).await;
    Ok(())
}
