//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic Messages API as a
//! second front door. The request is authenticated (`x-api-key` or a bearer token), translated
//! into the gateway's chat request (`protocol::anthropic::request`) and then served exactly as a
//! chat request is — scenario, features, limits, cache, routing — with answers and errors
//! written in Anthropic's shape (`downstream::Dialect::Anthropic`).

use super::pipeline;
use crate::config::{Client, Config};
use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::filters::auth;
use crate::protocol::anthropic;
use crate::protocol::request::NativeMessages;
use crate::protocol::ChatRequest;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;

/// The client, by its key in `x-api-key` (what Anthropic SDKs send) or a bearer token.
fn authenticate<'c>(
    config: &'c Config,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<Option<&'c Client>, GatewayError> {
    let client = auth::authenticate(config, authorization(session).as_deref())?;
    ctx.client = client.map(|c| c.name.clone());
    Ok(client)
}

fn authorization(session: &Session) -> Option<Vec<u8>> {
    match session.req_header().headers.get("x-api-key") {
        Some(key) => {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(key.as_bytes());
            Some(v)
        }
        None => downstream::authorization(session).map(<[u8]>::to_vec),
    }
}

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    let client = authenticate(config, session, ctx)?;
    let hints = pipeline::hints(session);
    let body = downstream::read_body(session, config.max_body).await?;
    // The chat request streams when the client does, with usage asked for: the final
    // `message_delta` needs real usage.
    let converted = anthropic::to_openai(&body)?;
    let mut req = ChatRequest::parse(&converted, &hints)?;
    req.native = Some(NativeMessages {
        body: body.clone(),
        beta: downstream::header(session, "anthropic-beta").map(str::to_owned),
    });
    pipeline::serve(shared, session, ctx, config, client, req, &hints, body).await
}

/// `count_tokens`: the gateway's own prompt estimate (the one limits use); no upstream call.
pub async fn count_tokens(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    authenticate(config, session, ctx)?;
    let body = downstream::read_body(session, config.max_body).await?;
    let n = anthropic::estimate_input_tokens(&body)?;
    let out = json!({"input_tokens": n}).to_string();
    let _ = downstream::write_json(session, ctx, 200, Bytes::from(out)).await;
    Ok(())
}
