//! The OpenAI Responses API (`POST /v1/responses`) as another front door.
//!
//! - [`encode`]: provider-neutral answer events become the Responses API answer, streamed
//!   (`response.created` … `response.completed`) or whole, by [`ResponsesWriter`].

pub mod encode;

pub use encode::ResponsesWriter;
