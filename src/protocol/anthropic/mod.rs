//! The Anthropic Messages API (`POST /v1/messages`) as a second front door.
//!
//! Anthropic SDK clients point their base URL at the gateway; the gateway's pipeline keeps
//! working on an OpenAI chat-completions request and on provider-neutral answer events. This
//! module is the translation at both ends, pure code without I/O:
//!
//! - [`request`]: an Anthropic Messages request body becomes the equivalent OpenAI
//!   chat-completions body ([`to_openai`]), which [`ChatRequest::parse`] accepts; the prompt
//!   estimate for `/v1/messages/count_tokens` ([`estimate_input_tokens`]) counts the converted
//!   request exactly as client limits do.
//! - [`encode`]: provider-neutral events become the Anthropic answer, streamed
//!   (`message_start`, content blocks, `message_delta`, `message_stop`) by [`MessagesWriter`] or
//!   whole by [`encode::message`].
//! - [`error`]: a [`GatewayError`] as an Anthropic error body (`{"type":"error","error":{…}}`).
//!
//! [`ChatRequest::parse`]: crate::protocol::ChatRequest::parse
//! [`GatewayError`]: crate::error::GatewayError

pub mod encode;
pub mod error;
pub mod request;

pub use encode::MessagesWriter;
pub use request::{estimate_input_tokens, to_openai};
