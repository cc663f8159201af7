//! OpenAI response objects the gateway builds itself (translated upstreams): stream chunks with
//! one `id` / `created` / `model` for the whole response, and the aggregated `chat.completion`.

use bytes::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens read from the upstream's prompt cache (part of `prompt_tokens`); shown as
    /// `prompt_tokens_details.cached_tokens` when not zero.
    pub cached_tokens: u64,
    /// Completion tokens the model spent reasoning (part of `completion_tokens`); shown as
    /// `completion_tokens_details.reasoning_tokens` when not zero.
    pub reasoning_tokens: u64,
}

/// Usage as OpenAI writes it.
#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<CachedOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<ReasoningOut>,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
}

impl Usage {
    fn out(self) -> UsageOut {
        UsageOut {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            prompt_tokens_details: (self.cached_tokens > 0).then_some(CachedOut {
                cached_tokens: self.cached_tokens,
            }),
            completion_tokens_details: (self.reasoning_tokens > 0).then_some(ReasoningOut {
                reasoning_tokens: self.reasoning_tokens,
            }),
        }
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

// The objects are written through typed views rather than `json!` trees: one buffer per
// chunk instead of a map, a key and a value allocated per field.

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolDeltaOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolDeltaOut<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: (),
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: (),
    choices: &'a [ChoiceOut<'a>],
    /// `Some(None)`: `"usage": null` (a content chunk of a stream that ends with usage).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

#[derive(Serialize)]
struct WholeChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: (),
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: (),
    choices: [WholeChoiceOut<'a>; 1],
    usage: UsageOut,
}

/// `data: <json>\n\n`.
fn sse_data(v: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    // Serializing these views into a Vec cannot fail (no maps with non-string keys, no I/O).
    let _ = serde_json::to_writer(&mut buf, v);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

impl ChunkWriter {
    fn chunk(&self, delta: DeltaOut<'_>, finish: Option<&str>) -> Bytes {
        sse_data(&ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: (),
            choices: &[ChoiceOut {
                index: 0,
                delta,
                logprobs: (),
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
        })
    }

    pub fn role(&self) -> Bytes {
        self.chunk(
            DeltaOut {
                role: Some("assistant"),
                content: Some(""),
                ..Default::default()
            },
            None,
        )
    }

    pub fn content(&self, text: &str) -> Bytes {
        self.chunk(
            DeltaOut {
                content: Some(text),
                ..Default::default()
            },
            None,
        )
    }

    pub fn reasoning(&self, text: &str) -> Bytes {
        self.chunk(
            DeltaOut {
                reasoning_content: Some(text),
                ..Default::default()
            },
            None,
        )
    }

    /// A piece of a tool call: the first piece of a call carries its id and name, later ones
    /// only more of the arguments.
    pub fn tool_call(&self, piece: &ToolCallPiece) -> Bytes {
        let call = ToolDeltaOut {
            index: piece.index,
            id: piece.id.as_deref(),
            kind: piece.id.as_ref().map(|_| "function"),
            function: FunctionOut {
                name: piece.name.as_deref(),
                arguments: &piece.arguments,
            },
        };
        self.chunk(
            DeltaOut {
                tool_calls: Some([call]),
                ..Default::default()
            },
            None,
        )
    }

    pub fn finish(&self, reason: &str) -> Bytes {
        self.chunk(DeltaOut::default(), Some(reason))
    }

    /// The usage chunk (only when the client asked with `stream_options.include_usage`).
    pub fn usage(&self, usage: Usage) -> Bytes {
        sse_data(&ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: (),
            choices: &[],
            usage: Some(Some(usage.out())),
        })
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
        let message = MessageOut {
            role: "assistant",
            // Only tool calls: `content` is null, as OpenAI sends it.
            content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
            refusal: (),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: tool_calls
                .iter()
                .map(|c| ToolCallOut {
                    id: c.id.as_deref().unwrap_or_default(),
                    kind: "function",
                    function: FunctionOut {
                        name: Some(c.name.as_deref().unwrap_or_default()),
                        arguments: &c.arguments,
                    },
                })
                .collect(),
        };
        let v = CompletionOut {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: (),
            choices: [WholeChoiceOut {
                index: 0,
                message,
                logprobs: (),
                finish_reason: finish,
            }],
            usage: usage.out(),
        };
        let mut buf = Vec::with_capacity(256 + content.len() + reasoning.len());
        // As in `sse_data`: cannot fail.
        let _ = serde_json::to_writer(&mut buf, &v);
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
    fn cached_and_reasoning_tokens_show_only_when_there_are_some() {
        let mut u = Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
            total_tokens: 12,
            ..Usage::default()
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
        assert!(cached["usage"].get("completion_tokens_details").is_none());
        u.reasoning_tokens = 1;
        let reasoned = json_of(&writer().usage(u));
        assert_eq!(
            reasoned["usage"]["completion_tokens_details"],
            json!({"reasoning_tokens": 1})
        );
        assert_eq!(reasoned["usage"]["completion_tokens"], 2);
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
