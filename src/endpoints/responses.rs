//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: the OpenAI Responses API as a
//! front door. A request becomes the gateway's chat request (`protocol::responses::request`),
//! served by the shared pipeline like any chat request — scenario, features, limits, cache,
//! routing — with the answer written as a Responses object or event stream
//! (`Dialect::Responses`).
//!
//! Stored continuation: unless the request says `store: false`, the response is kept in the
//! conversation store for `responses.ttl`, scoped to the client that created it (another
//! client's id is unknown). A follow-up naming it in `previous_response_id` gets its
//! conversation replayed before the new input, and shares its session, so a Dify target
//! continues its own conversation (Dify keeps the memory; only the new turn is sent).

use super::pipeline;
use crate::config::Config;
use crate::conversations::ConversationStore;
use crate::downstream::{self, RequestCtx};
use crate::error::GatewayError;
use crate::filters::auth;
use crate::protocol::responses::request::convert;
use crate::protocol::responses::stored::{key, StorePlan, Stored};
use crate::protocol::responses::{new_id, ResponseMeta};
use crate::protocol::ChatRequest;
use crate::state::Shared;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;

/// Whose stored responses: the client's name (`-` when the gateway has no client keys).
fn owner(config: &Config, session: &Session, ctx: &mut RequestCtx) -> Result<String, GatewayError> {
    let client = auth::authenticate(config, downstream::authorization(session))?;
    ctx.client = client.map(|c| c.name.clone());
    Ok(client.map_or_else(|| "-".to_owned(), |c| c.name.clone()))
}

fn not_found(id: &str) -> GatewayError {
    GatewayError::Mapped {
        status: 404,
        message: format!("Response with id {id:?} not found."),
        error_type: "invalid_request_error".into(),
        code: "not_found".into(),
        param: None,
        should_retry: Some(false),
        retry_after: None,
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn handle(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let config = &state.config;
    let client = auth::authenticate(config, downstream::authorization(session))?;
    ctx.client = client.map(|c| c.name.clone());
    let owner = client.map_or("-", |c| c.name.as_str());

    let hints = pipeline::hints(session);
    let body = downstream::read_body(session, config.max_body).await?;
    let mut conv = convert(&body)?;

    let previous = match &conv.previous_response_id {
        Some(id) => {
            let found = shared.conversations.get(&key(owner, id)).await;
            let stored = found.as_deref().and_then(Stored::from_json).ok_or_else(|| {
                GatewayError::invalid_request(
                    format!("Previous response with id {id:?} not found (unknown, expired or not stored)."),
                    Some("previous_response_id"),
                )
            })?;
            Some(stored)
        }
        None => None,
    };
    let id = new_id();
    let history = previous
        .as_ref()
        .map(|p| p.messages.clone())
        .unwrap_or_default();
    let chat = conv.chat_body(history.clone())?;
    let mut req = ChatRequest::parse(&chat, &hints)?;
    // A stored response starts (or continues) a chain with one session, so upstream-side
    // state carries over to the next response; a client's own session wins.
    let chain = previous
        .map(|p| p.session)
        .or_else(|| conv.store.then(|| format!("responses-{id}")));
    if req.session.is_none() {
        req.session.clone_from(&chain);
    }
    let store = conv.store.then(|| {
        let mut messages = history;
        messages.append(&mut conv.input_messages);
        StorePlan {
            key: key(owner, &id),
            ttl: config.responses_ttl,
            session: chain.unwrap_or_default(),
            messages,
        }
    });
    req.responses = Some(Box::new(ResponseMeta {
        id,
        created_at: now_secs(),
        echo: std::mem::take(&mut conv.echo),
        store,
    }));
    pipeline::serve(shared, session, ctx, config, client, req, &hints, body).await
}

/// `GET /v1/responses/{id}`: the stored response; `DELETE`: forget it.
pub async fn stored(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    id: &str,
) -> Result<(), GatewayError> {
    let state = shared.snapshot();
    let owner = owner(&state.config, session, ctx)?;
    let k = key(&owner, id);
    let found = shared.conversations.get(&k).await;
    let stored = found
        .as_deref()
        .and_then(Stored::from_json)
        .ok_or_else(|| not_found(id))?;
    let body = if session.req_header().method == http::Method::DELETE {
        shared.conversations.remove(&k).await;
        json!({"id": id, "object": "response", "deleted": true}).to_string()
    } else {
        stored.response.to_string()
    };
    let _ = downstream::write_json(session, ctx, 200, Bytes::from(body)).await;
    Ok(())
}
