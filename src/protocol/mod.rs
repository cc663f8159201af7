//! OpenAI wire formats: the chat-completions request as the gateway reads it, the
//! Server-Sent Events framing of streamed answers, the chunks the gateway writes itself, the
//! observation of relayed OpenAI streams (and the removal of the usage a client did not ask
//! for), the request features routing compares, the operations (chat, embeddings,
//! completions), and the neutral complete [`Answer`].

pub mod answer;
pub mod anthropic;
pub mod chunks;
pub mod features;
pub mod ops;
pub mod request;
pub mod responses;
pub mod sse;
pub mod strip;
pub mod watch;

pub use answer::Answer;
pub use features::{Feature, Features};
pub use ops::Operation;
pub use request::{ChatRequest, RequestHints};
pub use sse::SSE_DONE;
