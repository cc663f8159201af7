//! OpenAI response objects the gateway builds itself (translated upstreams): stream chunks with
//! one `id` / `created` / `model` for the whole response, and the aggregated `chat.completion`.

use bytes::Bytes;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens read from the upstream's prompt cache (part of `prompt_tokens`); shown as
    /// `prompt_tokens_details.cached_tokens` when not zero.
    pub cached_tokens: u64,
}

impl Usage {
    fn to_json(self) -> Value {
        let mut v = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        });
        if self.cached_tokens > 0 {
            v["prompt_tokens_details"] = json!({"cached_tokens": self.cached_tokens});
        }
        v
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

impl ToolCallPiece {
    /// Adds `piece` to the whole calls in `calls`: a new index starts a call, a known one gets
    /// more arguments (and its id or name, if it had none yet).
    pub fn join(calls: &mut Vec<ToolCallPiece>, piece: &ToolCallPiece) {
        match calls.iter_mut().find(|c| c.index == piece.index) {
            Some(c) => {
                c.arguments.push_str(&piece.arguments);
                if c.id.is_none() {
                    c.id.clone_from(&piece.id);
                }
                if c.name.is_none() {
                    c.name.clone_from(&piece.name);
                }
            }
            None => calls.push(piece.clone()),
        }
    }
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

    /// A whole non-stream answer; `tool_calls` are whole calls (pieces joined), in order.
    pub fn completion(
        &self,
        content: &str,
        reasoning: &str,
        tool_calls: &[ToolCallPiece],
        finish: &str,
        usage: Usage,
    ) -> Bytes {
        let mut message = json!({"role": "assistant", "content": content, "refusal": null});
        if !reasoning.is_empty() {
            message["reasoning_content"] = Value::String(reasoning.to_owned());
        }
        if !tool_calls.is_empty() {
            if content.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id.as_deref().unwrap_or_default(),
                        "type": "function",
                        "function": {
                            "name": c.name.as_deref().unwrap_or_default(),
                            "arguments": c.arguments,
                        },
                    })
                })
                .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> ChunkWriter {
        ChunkWriter {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            include_usage: true,
        }
    }

    fn json_of(b: &Bytes) -> Value {
        let text = std::str::from_utf8(b).unwrap();
        let text = text.strip_prefix("data: ").unwrap_or(text).trim_end();
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn cached_tokens_show_only_when_there_are_some() {
        let mut u = Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
            total_tokens: 12,
            cached_tokens: 0,
        };
        let plain = json_of(&writer().usage(u));
        assert_eq!(
            plain["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12})
        );
        u.cached_tokens = 8;
        let cached = json_of(&writer().completion("a", "", &[], "stop", u));
        assert_eq!(cached["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
        assert_eq!(cached["usage"]["prompt_tokens"], 10);
    }

    #[test]
    fn a_completion_carries_whole_tool_calls() {
        let mut calls = Vec::new();
        for piece in [
            ToolCallPiece {
                index: 0,
                id: Some("toolu_1".into()),
                name: Some("get_weather".into()),
                arguments: String::new(),
            },
            ToolCallPiece {
                index: 0,
                arguments: "{\"city\":".into(),
                ..Default::default()
            },
            ToolCallPiece {
                index: 1,
                id: Some("toolu_2".into()),
                name: Some("now".into()),
                arguments: "{}".into(),
            },
            ToolCallPiece {
                index: 0,
                arguments: "\"Paris\"}".into(),
                ..Default::default()
            },
        ] {
            ToolCallPiece::join(&mut calls, &piece);
        }
        let v = json_of(&writer().completion("", "", &calls, "tool_calls", Usage::default()));
        let m = &v["choices"][0]["message"];
        assert!(m["content"].is_null(), "{m}");
        assert_eq!(
            m["tool_calls"],
            json!([
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            ])
        );
        let text = json_of(&writer().completion("hi", "", &[], "stop", Usage::default()));
        assert_eq!(text["choices"][0]["message"]["content"], "hi");
        assert!(text["choices"][0]["message"].get("tool_calls").is_none());
    }
}
