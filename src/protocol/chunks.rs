//! OpenAI response objects the gateway builds itself (translated upstreams): stream chunks with
//! one `id` / `created` / `model` for the whole response, and the aggregated `chat.completion`.

use bytes::Bytes;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        })
    }
}

/// One streamed piece of a tool call, provider-neutral.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallPiece {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

pub struct ChunkWriter {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl ChunkWriter {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {c}\n\n"))
    }

    pub fn role(&self) -> Bytes {
        self.chunk(json!({"role": "assistant", "content": ""}), None)
    }

    pub fn content(&self, text: &str) -> Bytes {
        self.chunk(json!({"content": text}), None)
    }

    pub fn reasoning(&self, text: &str) -> Bytes {
        self.chunk(json!({"reasoning_content": text}), None)
    }

    /// A piece of a tool call: the first piece of a call carries its id and name, later ones
    /// only more of the arguments.
    pub fn tool_call(&self, piece: &ToolCallPiece) -> Bytes {
        let mut call = json!({"index": piece.index, "function": {"arguments": piece.arguments}});
        if let Some(id) = &piece.id {
            call["id"] = Value::String(id.clone());
            call["type"] = Value::String("function".into());
        }
        if let Some(name) = &piece.name {
            call["function"]["name"] = Value::String(name.clone());
        }
        self.chunk(json!({"tool_calls": [call]}), None)
    }

    pub fn finish(&self, reason: &str) -> Bytes {
        self.chunk(json!({}), Some(reason))
    }

    /// The usage chunk (only when the client asked with `stream_options.include_usage`).
    pub fn usage(&self, usage: Usage) -> Bytes {
        let c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage.to_json(),
        });
        Bytes::from(format!("data: {c}\n\n"))
    }

    /// A whole non-stream answer.
    pub fn completion(&self, content: &str, reasoning: &str, finish: &str, usage: Usage) -> Bytes {
        let mut message = json!({"role": "assistant", "content": content, "refusal": null});
        if !reasoning.is_empty() {
            message["reasoning_content"] = Value::String(reasoning.to_owned());
        }
        let v = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage.to_json(),
        });
        Bytes::from(v.to_string())
    }
}
