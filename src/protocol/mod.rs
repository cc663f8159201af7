//! OpenAI wire formats: the chat-completions request as the gateway reads it, and the
//! Server-Sent Events framing of streamed answers.

pub mod chunks;
pub mod request;
pub mod sse;

pub use request::{ChatRequest, RequestHints};
