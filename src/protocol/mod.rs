//! OpenAI wire formats: the chat-completions request as the gateway reads it, the
//! Server-Sent Events framing of streamed answers, the chunks the gateway writes itself, the
//! observation of relayed OpenAI streams, and the neutral complete [`Answer`].

pub mod answer;
pub mod chunks;
pub mod request;
pub mod sse;
pub mod watch;

pub use answer::Answer;
pub use request::{ChatRequest, RequestHints};
pub use sse::SSE_DONE;
