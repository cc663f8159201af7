//! `POST /v1/chat/completions`: authenticate, read and parse the OpenAI request, then the shared
//! pipeline (`pipeline.rs`) serves it. `POST /v1/embeddings` and `POST /v1/completions` are the
//! same door with another operation: their bodies are checked, then relayed as sent.

use super::pipeline;
use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::filters::auth;
use crate::protocol::{ChatRequest, Operation};
use crate::state::Shared;
use pingora::protocols::http::ServerSession as Session;

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    handle_op(shared, session, ctx, Operation::Chat).await
}

/// An OpenAI door for `op`: chat, embeddings or completions.
pub async fn handle_op(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    op: Operation,
) -> Result<(), GatewayError> {
    // One snapshot for the whole request: a reload mid-request never mixes two configs.
    let state = shared.snapshot();
    let config = &state.config;
    let client = auth::authenticate(config, downstream::authorization(session))?;
    ctx.client = client.map(|c| c.name.clone());

    let hints = pipeline::hints(session);
    let body = downstream::read_body(session, config.max_body).await?;
    let req = ChatRequest::parse_op(&body, &hints, op)?;
    pipeline::serve(shared, session, ctx, config, client, req, &hints, body).await
}
