//! The client's dialect of a translated answer: neutral events written as OpenAI chunks (or one
//! `chat.completion`), as Anthropic Messages events (or one `message`), or as Responses API
//! events (or one `response`). The translated relay talks only to [`Encoder`], so one relay
//! serves every (upstream, client) pair.

use crate::conversations::ConversationKey;
use crate::downstream::Dialect;
use crate::error::GatewayError;
use crate::protocol::anthropic::encode::{self as messages, MessagesWriter};
use crate::protocol::chunks::{ChunkWriter, ToolCallPiece, Usage};
use crate::protocol::responses::encode::ResponsesWriter;
use crate::protocol::responses::stored::StorePlan;
use crate::protocol::responses::ResponseMeta;
use crate::protocol::SSE_DONE;
use bytes::{Bytes, BytesMut};
use std::time::Duration;

pub enum Encoder {
    OpenAi(ChunkWriter),
    Anthropic {
        writer: MessagesWriter,
        model: String,
        created: u64,
        /// Prompt tokens as the gateway estimates them: `message_start` needs a count before
        /// the upstream reports one.
        input_estimate: u64,
    },
    /// Its id and creation time are the gateway's (fixed before the upstream was called).
    Responses {
        writer: Box<ResponsesWriter>,
        model: String,
        created: u64,
        store: Option<StorePlan>,
    },
}

/// What the client asked for, as the encoder writes it.
pub struct View<'a> {
    pub dialect: Dialect,
    /// `model` echoed in the answer: what the client asked for.
    pub model: String,
    pub include_usage: bool,
    pub stream: bool,
    /// The gateway's prompt estimate (Anthropic's `message_start` carries one).
    pub input_estimate: u64,
    /// A `/v1/responses` request's id and echoed fields.
    pub responses: Option<&'a ResponseMeta>,
}

impl Encoder {
    pub fn new(view: View<'_>) -> Self {
        let View {
            dialect,
            model,
            include_usage,
            stream,
            input_estimate,
            responses,
        } = view;
        match dialect {
            Dialect::Responses => {
                let (id, created, echo, store) = match responses {
                    Some(m) => (m.id.clone(), m.created_at, m.echo.clone(), m.store.clone()),
                    None => (
                        crate::protocol::responses::new_id(),
                        0,
                        Default::default(),
                        None,
                    ),
                };
                Encoder::Responses {
                    writer: Box::new(ResponsesWriter::new(
                        id,
                        model.clone(),
                        created,
                        echo,
                        stream,
                    )),
                    model,
                    created,
                    store,
                }
            }
            Dialect::OpenAi => Encoder::OpenAi(ChunkWriter {
                id: String::new(),
                created: 0,
                model,
                include_usage,
            }),
            Dialect::Anthropic => Encoder::Anthropic {
                writer: MessagesWriter::new(String::new(), model.clone()),
                model,
                created: 0,
                input_estimate,
            },
        }
    }

    /// The answer's id and creation time, known once the upstream answered.
    pub fn set_origin(&mut self, id: String, at: u64) {
        match self {
            Encoder::OpenAi(w) => {
                w.id = id;
                w.created = at;
            }
            Encoder::Anthropic {
                writer,
                model,
                created,
                ..
            } => {
                *writer = MessagesWriter::new(id, model.clone());
                *created = at;
            }
            // The response id was given to the client's request before any upstream answered.
            Encoder::Responses { .. } => {}
        }
    }

    pub fn model(&self) -> &str {
        match self {
            Encoder::OpenAi(w) => &w.model,
            Encoder::Anthropic { model, .. } | Encoder::Responses { model, .. } => model,
        }
    }

    pub fn created(&self) -> u64 {
        match self {
            Encoder::OpenAi(w) => w.created,
            Encoder::Anthropic { created, .. } | Encoder::Responses { created, .. } => *created,
        }
    }

    /// The first bytes of a stream: the role chunk, or `message_start`.
    pub fn begin(&mut self, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(w) => out.extend_from_slice(&w.role()),
            Encoder::Anthropic {
                writer,
                input_estimate,
                ..
            } => writer.start(*input_estimate, out),
            Encoder::Responses { writer, .. } => writer.start(out),
        }
    }

    pub fn text(&mut self, text: &str, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(w) => out.extend_from_slice(&w.content(text)),
            Encoder::Anthropic { writer, .. } => writer.text(text, out),
            Encoder::Responses { writer, .. } => writer.text(text, out),
        }
    }

    pub fn reasoning(&mut self, text: &str, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(w) => out.extend_from_slice(&w.reasoning(text)),
            Encoder::Anthropic { writer, .. } => writer.thinking(text, out),
            Encoder::Responses { writer, .. } => writer.reasoning(text, out),
        }
    }

    /// The reasoning's signature: only Anthropic clients have a place for it.
    pub fn signature(&mut self, sig: &str, out: &mut BytesMut) {
        if let Encoder::Anthropic { writer, .. } = self {
            writer.signature(sig, out);
        }
    }

    pub fn tool_call(&mut self, piece: &ToolCallPiece, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(w) => out.extend_from_slice(&w.tool_call(piece)),
            Encoder::Anthropic { writer, .. } => writer.tool_call(piece, out),
            Encoder::Responses { writer, .. } => writer.tool_call(piece, out),
        }
    }

    /// A keep-alive: an SSE comment, or Anthropic's `ping` event.
    pub fn ping(&mut self, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(_) | Encoder::Responses { .. } => out.extend_from_slice(b": ping\n\n"),
            Encoder::Anthropic { writer, .. } => writer.ping(out),
        }
    }

    /// The end of a stream: finish reason (and usage), then `[DONE]` or `message_stop`.
    pub fn finish(
        &mut self,
        reason: &str,
        stop_sequence: Option<&str>,
        usage: Usage,
        out: &mut BytesMut,
    ) {
        match self {
            Encoder::OpenAi(w) => {
                out.extend_from_slice(&w.finish(reason));
                if w.include_usage {
                    out.extend_from_slice(&w.usage(usage));
                }
                out.extend_from_slice(SSE_DONE);
            }
            Encoder::Anthropic { writer, .. } => writer.finish(reason, stop_sequence, usage, out),
            Encoder::Responses { writer, .. } => writer.finish(reason, usage, out),
        }
    }

    /// A failure after the stream started: an error event, then the stream's end.
    pub fn error(&mut self, err: &GatewayError, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(_) => {
                out.extend_from_slice(&err.sse_event());
                out.extend_from_slice(SSE_DONE);
            }
            Encoder::Anthropic { writer, .. } => writer.error(err, out),
            Encoder::Responses { writer, .. } => writer.error(err, out),
        }
    }

    /// What to store for a finished Responses answer that is to be stored: the key, the
    /// record and how long to keep it.
    pub fn stored_record(&self) -> Option<(ConversationKey, String, Duration)> {
        match self {
            Encoder::Responses {
                writer,
                store: Some(plan),
                ..
            } if writer.is_ended() => match plan.record(writer.response()) {
                Some(record) => Some((plan.key.clone(), record, plan.ttl)),
                None => {
                    log::warn!(
                        "response {} not stored: its conversation is larger than {} bytes",
                        plan.key.session,
                        crate::protocol::responses::stored::MAX_RECORD
                    );
                    None
                }
            },
            _ => None,
        }
    }

    /// A whole non-stream answer.
    pub fn completion(
        &mut self,
        content: &str,
        thinking: (&str, &str),
        tool_calls: &[ToolCallPiece],
        reason: &str,
        stop_sequence: Option<&str>,
        usage: Usage,
    ) -> Bytes {
        match self {
            Encoder::OpenAi(w) => w.completion(content, thinking.0, tool_calls, reason, usage),
            Encoder::Responses { writer, .. } => {
                writer.complete(content, thinking.0, tool_calls, reason, usage);
                writer.to_bytes()
            }
            Encoder::Anthropic { writer, model, .. } => {
                let calls: Vec<(String, String, String)> = tool_calls
                    .iter()
                    .map(|c| {
                        (
                            c.id.clone().unwrap_or_default(),
                            c.name.clone().unwrap_or_default(),
                            c.arguments.clone(),
                        )
                    })
                    .collect();
                messages::message(
                    writer.id(),
                    model,
                    content,
                    thinking,
                    &calls,
                    reason,
                    stop_sequence,
                    usage,
                )
            }
        }
    }
}
