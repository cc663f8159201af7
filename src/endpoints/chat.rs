//! `POST /v1/chat/completions`: authenticate, read and parse the OpenAI request, then the shared
//! pipeline (`pipeline.rs`) serves it.

use super::pipeline;
use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::filters::auth;
use crate::protocol::ChatRequest;
use crate::state::Shared;
use pingora::protocols::http::ServerSession as Session;

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    // One snapshot for the whole request: a reload mid-request never mixes two configs.
    let state = shared.snapshot();
    let config = &state.config;
    let client = auth::authenticate(config, downstream::authorization(session))?;
    ctx.client = client.map(|c| c.name.clone());

    let hints = pipeline::hints(session);
    let body = downstream::read_body(session, config.max_body).await?;
    let req = ChatRequest::parse(&body, &hints)?;
    pipeline::serve(shared, session, ctx, config, client, req, &hints, body).await
}
