//! The OpenAI Responses API (`/v1/responses`) as a front door: its requests as the gateway's
//! chat request (`request`, `items`), stored responses for `previous_response_id`
//! (`stored`), and the answer writer (`encode`).

pub mod encode;
pub mod items;
pub mod request;
pub mod stored;

use serde_json::{Map, Value};

/// What the answer writer needs besides the answer: the response's id and creation time,
/// fixed before the upstream is called (a stored response is found by it), and the request
/// fields the response object repeats.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created_at: u64,
    pub echo: Map<String, Value>,
    /// Set when the response is stored (`store` is not false).
    pub store: Option<stored::StorePlan>,
}

/// A new response id: `resp_` and 32 hex digits.
pub fn new_id() -> String {
    format!("resp_{}", uuid::Uuid::new_v4().simple())
}

/// A stored answer (cache hit) replayed as this request's response: one object, or its events.
pub fn replay(a: &crate::protocol::Answer, meta: &ResponseMeta, stream: bool) -> bytes::Bytes {
    let mut w = encode::ResponsesWriter::new(
        meta.id.clone(),
        a.model.clone(),
        meta.created_at,
        meta.echo.clone(),
        stream,
    );
    if !stream {
        w.complete(&a.content, &a.reasoning, &[], &a.finish_reason, a.usage);
        return w.to_bytes();
    }
    let mut out = bytes::BytesMut::new();
    w.start(&mut out);
    w.reasoning(&a.reasoning, &mut out);
    w.text(&a.content, &mut out);
    w.finish(&a.finish_reason, a.usage, &mut out);
    out.freeze()
}
