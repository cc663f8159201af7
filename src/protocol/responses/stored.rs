//! A stored response: what a follow-up's `previous_response_id` continues and
//! `GET /v1/responses/{id}` returns. Kept as JSON text in the conversation store, so any backend
//! that stores strings can hold it.

use crate::conversations::ConversationKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Where a stored response lives: apart from Dify conversations (no provider is named
/// `/v1/responses`), per client (`owner`).
pub fn key(owner: &str, id: &str) -> ConversationKey {
    ConversationKey {
        target: "/v1/responses".to_owned(),
        user: owner.to_owned(),
        session: id.to_owned(),
    }
}

/// How a response will be stored once it is complete. The relay stores it before the
/// answer's last bytes go out, so a follow-up sent the moment the client has the answer
/// already finds it.
#[derive(Debug, Clone)]
pub struct StorePlan {
    pub key: ConversationKey,
    pub ttl: Duration,
    pub session: String,
    /// The conversation before this response's output: history and this request's input.
    pub messages: Vec<Value>,
}

/// The largest stored record: a chain's history grows with every turn, and the store must not
/// grow without bound with it. A response whose record would be larger is not stored (a
/// follow-up naming it gets the 400 of an unknown id).
pub const MAX_RECORD: usize = 16 << 20;

impl StorePlan {
    /// The stored record of `response`, as the conversation store keeps it; `None` when it
    /// would pass [`MAX_RECORD`].
    pub fn record(&self, response: Value) -> Option<String> {
        let mut messages = self.messages.clone();
        messages.extend(assistant_turn(&response));
        let text = Stored {
            session: self.session.clone(),
            messages,
            response,
        }
        .to_json();
        (text.len() <= MAX_RECORD).then_some(text)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    /// The chain's session: every response continuing this one shares it, so upstream-side
    /// state (a Dify conversation) carries over.
    pub session: String,
    /// The conversation so far as chat messages, every turn's input and output, without
    /// `instructions` (each request brings its own, as at OpenAI).
    pub messages: Vec<Value>,
    /// The response object as the client got it.
    pub response: Value,
}

impl Stored {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<Stored> {
        serde_json::from_str(text).ok()
    }
}

/// The assistant turn a response's output adds to the conversation: its text as `content`,
/// its function calls as `tool_calls`. `None` when the output has neither.
pub fn assistant_turn(response: &Value) -> Option<Value> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in response["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(t) = part["text"].as_str() {
                        text.push_str(t);
                    }
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            })),
            _ => {}
        }
    }
    if text.is_empty() && calls.is_empty() {
        return None;
    }
    let mut turn = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        turn["tool_calls"] = Value::Array(calls);
    }
    Some(turn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assistant_turn_has_the_text_and_the_calls() {
        let response = json!({"output": [
            {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "hm"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "Let me "}, {"type": "output_text", "text": "check."}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}]});
        assert_eq!(
            assistant_turn(&response),
            Some(
                json!({"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
            )
        );
        assert_eq!(assistant_turn(&json!({"output": []})), None);
        let s = Stored {
            session: "s".into(),
            messages: vec![json!({"role": "user", "content": "q"})],
            response,
        };
        let back = Stored::from_json(&s.to_json()).unwrap();
        assert_eq!(back.messages, s.messages);
    }

    #[test]
    fn a_record_past_the_bound_is_not_kept() {
        let plan = |text: String| StorePlan {
            key: key("app", "resp_1"),
            ttl: Duration::from_secs(60),
            session: "s".into(),
            messages: vec![json!({"role": "user", "content": text})],
        };
        let answer = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}]});
        let kept = plan("q".into()).record(answer.clone()).unwrap();
        let back = Stored::from_json(&kept).unwrap();
        assert_eq!(back.messages.len(), 2, "the input and the answer");
        assert!(plan("x".repeat(MAX_RECORD)).record(answer).is_none());
    }
}
