//! The chat-completions request as the gateway sees it — and, with its [`Operation`], the
//! embeddings and completions requests, which share its routing fields and keep every other
//! field raw (`protocol::ops` checks them).
//!
//! Only the fields the gateway acts on are decoded; everything else (including every message) is
//! kept as the client's raw JSON text, so a large history or a base64 image reaches the upstream
//! byte for byte and is never re-serialized.

use super::features::{Feature, Features};
use super::ops::{self, Operation};
use crate::error::GatewayError;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// Keys of `metadata` that belong to the gateway and are stripped before forwarding.
pub const GATEWAY_METADATA_KEYS: [&str; 3] = ["scenario", "session_id", "user_profile"];

/// A JSON object as an ordered list of (key, raw value).
struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What the gateway reads of a message: its role and the features it uses. The content is
/// looked into only when it is an array of parts.
#[derive(Deserialize)]
struct MessageView<'a> {
    role: Option<Value>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartView<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// What the gateway reads from headers for the same purposes as body fields (§1.3).
#[derive(Debug, Default, Clone)]
pub struct RequestHints {
    pub scenario: Option<String>,
    pub session: Option<String>,
    pub user_profile: Option<String>,
}

#[derive(Debug)]
pub struct ChatRequest {
    /// What the client asks for: a chat answer, embeddings or a (legacy) completion.
    pub op: Operation,
    pub model: Option<String>,
    /// Empty unless `op` is [`Operation::Chat`].
    pub messages: Vec<Box<RawValue>>,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    /// `metadata` minus the gateway's own keys (forwarded when not empty).
    pub metadata: Map<String, Value>,
    /// `metadata.scenario`.
    pub scenario: Option<String>,
    /// `metadata.session_id`, else the `x-gateway-session` header.
    pub session: Option<String>,
    /// `metadata.user_profile`, else the `x-gateway-user-profile` header; always an object.
    pub user_profile: Value,
    /// Every other top-level field, raw, in client order (`stream`, `temperature`, `tools`, …).
    pub rest: Vec<(String, Box<RawValue>)>,
    /// What the request uses that a provider may not serve.
    pub features: Features,
    /// Set for a `/v1/messages` request: its own body, for an Anthropic target to take as is.
    pub native: Option<NativeMessages>,
    /// Set for a `/v1/responses` request: the response's id and what its object repeats.
    pub responses: Option<Box<crate::protocol::responses::ResponseMeta>>,
}

/// A Messages API request as the client sent it.
#[derive(Debug, Clone)]
pub struct NativeMessages {
    pub body: bytes::Bytes,
    /// The client's `anthropic-beta` header.
    pub beta: Option<String>,
}

fn invalid(msg: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(msg, Some(param))
}

/// Every message is an object with a string role; the rest of it is the upstream's to judge.
/// Notes the features the messages use.
fn check_messages(messages: &[Box<RawValue>], features: &mut Features) -> Result<(), GatewayError> {
    if messages.is_empty() {
        return Err(invalid("`messages` must not be empty", "messages"));
    }
    let last = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        let view: MessageView = serde_json::from_str(m.get()).map_err(|_| {
            invalid(
                format!("messages[{i}] must be an object"),
                &format!("messages[{i}]"),
            )
        })?;
        let Some(Value::String(role)) = &view.role else {
            return Err(invalid(
                format!("messages[{i}].role must be a string"),
                &format!("messages[{i}].role"),
            ));
        };
        // Answering a tool result is continuing a tool call; earlier tool turns are history
        // every provider can be told about.
        if i == last && matches!(role.as_str(), "tool" | "function") {
            features.insert(Feature::ToolHistory);
        }
        if let Some(content) = view.content.filter(|c| c.get().starts_with('[')) {
            // Parts of unknown shape are the upstream's to judge, as anything else it gets.
            let parts: Vec<PartView> = serde_json::from_str(content.get()).unwrap_or_default();
            for p in parts {
                match p.kind.as_deref() {
                    Some("image_url") => features.insert(Feature::Images),
                    Some("input_audio") => features.insert(Feature::Audio),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// The feature a top-level field asks for, if its value asks for one (`n: 1`, `logprobs:
/// false`, `response_format: {"type": "text"}` and empty tool lists ask for nothing).
fn field_feature(key: &str, raw: &RawValue) -> Option<Feature> {
    let text = raw.get();
    match key {
        "tools" | "functions" => {
            (text.starts_with('[') && !is_empty_array(text)).then_some(Feature::Tools)
        }
        "response_format" => {
            #[derive(Deserialize)]
            struct Format<'a> {
                #[serde(borrow, rename = "type")]
                kind: Option<std::borrow::Cow<'a, str>>,
            }
            let f: Format = serde_json::from_str(text).ok()?;
            matches!(f.kind.as_deref(), Some("json_object" | "json_schema"))
                .then_some(Feature::ResponseFormat)
        }
        "n" => serde_json::from_str::<f64>(text)
            .is_ok_and(|n| n > 1.0)
            .then_some(Feature::N),
        "logprobs" => (text == "true").then_some(Feature::Logprobs),
        "top_logprobs" => (text != "null").then_some(Feature::Logprobs),
        "audio" => (text != "null").then_some(Feature::Audio),
        "modalities" => serde_json::from_str::<Vec<std::borrow::Cow<str>>>(text)
            .is_ok_and(|m| m.iter().any(|x| x == "audio"))
            .then_some(Feature::Audio),
        _ => None,
    }
}

fn is_empty_array(text: &str) -> bool {
    text[1..].trim_start().starts_with(']')
}

/// The gateway's own keys of `metadata` (removed from it), with the header hints as fallbacks.
fn gateway_metadata(
    metadata: &mut Map<String, Value>,
    hints: &RequestHints,
) -> Result<(Option<String>, Option<String>, Value), GatewayError> {
    let scenario = match metadata.remove("scenario") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(invalid(
                "`metadata.scenario` must be a string",
                "metadata.scenario",
            ))
        }
    };
    let session = match metadata.remove("session_id") {
        None | Some(Value::Null) => hints.session.clone(),
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(invalid(
                "`metadata.session_id` must be a string",
                "metadata.session_id",
            ))
        }
    };
    let user_profile = match metadata.remove("user_profile") {
        Some(v @ Value::Object(_)) => v,
        Some(Value::Null) | None => match &hints.user_profile {
            None => Value::Object(Map::new()),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(invalid(
                        "header x-gateway-user-profile must be a JSON object",
                        "x-gateway-user-profile",
                    ))
                }
            },
        },
        Some(_) => {
            return Err(invalid(
                "`metadata.user_profile` must be an object",
                "metadata.user_profile",
            ))
        }
    };
    Ok((scenario, session, user_profile))
}

impl ChatRequest {
    pub fn parse(body: &[u8], hints: &RequestHints) -> Result<ChatRequest, GatewayError> {
        Self::parse_op(body, hints, Operation::Chat)
    }

    /// Parses a request of operation `op`. Embeddings and completions keep every field but
    /// `model` and `metadata` raw in `rest` (their `messages`, if any, too); they use no
    /// request features but streaming, and no session.
    pub fn parse_op(
        body: &[u8],
        hints: &RequestHints,
        op: Operation,
    ) -> Result<ChatRequest, GatewayError> {
        let chat = op == Operation::Chat;
        let obj: RawObject = serde_json::from_slice(body).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                GatewayError::invalid_request("request body must be a JSON object", None)
            } else {
                GatewayError::InvalidJson(e.to_string())
            }
        })?;
        let mut model = None;
        let mut messages = None;
        let mut metadata = Map::new();
        let mut stream = false;
        let mut include_usage = false;
        let mut user = None;
        let mut rest = Vec::with_capacity(obj.0.len());
        let mut features = Features::NONE;
        for (key, raw) in obj.0 {
            match key.as_str() {
                "model" => {
                    model = Some(
                        serde_json::from_str::<String>(raw.get())
                            .map_err(|_| invalid("`model` must be a string", "model"))?,
                    );
                }
                "messages" if chat => {
                    messages = Some(
                        serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
                            .map_err(|_| invalid("`messages` must be an array", "messages"))?,
                    );
                }
                "metadata" => {
                    let v: Value = serde_json::from_str(raw.get())
                        .map_err(|_| invalid("`metadata` must be an object", "metadata"))?;
                    match v {
                        Value::Object(m) => metadata = m,
                        Value::Null => {}
                        _ => return Err(invalid("`metadata` must be an object", "metadata")),
                    }
                }
                other => {
                    match other {
                        "stream" => {
                            stream = serde_json::from_str::<Option<bool>>(raw.get())
                                .map_err(|_| invalid("`stream` must be a boolean", "stream"))?
                                .unwrap_or(false);
                        }
                        "stream_options" => {
                            let v: Value = serde_json::from_str(raw.get()).map_err(|_| {
                                invalid("`stream_options` must be an object", "stream_options")
                            })?;
                            include_usage = v
                                .get("include_usage")
                                .and_then(Value::as_bool)
                                .unwrap_or(false);
                        }
                        "user" => {
                            user = serde_json::from_str::<Option<String>>(raw.get())
                                .map_err(|_| invalid("`user` must be a string", "user"))?;
                        }
                        _ => {}
                    }
                    if let Some(f) = field_feature(other, &raw).filter(|_| chat) {
                        features.insert(f);
                    }
                    rest.push((key, raw));
                }
            }
        }
        let messages = if chat {
            let messages = messages.ok_or_else(|| invalid("`messages` is required", "messages"))?;
            check_messages(&messages, &mut features)?;
            messages
        } else {
            ops::check(op, &rest, stream)?;
            Vec::new()
        };
        if stream {
            features.insert(Feature::Stream);
        }
        let (scenario, session, user_profile) = gateway_metadata(&mut metadata, hints)?;
        // A session names an upstream conversation: only chat has one.
        let session = session.filter(|_| chat);
        debug_assert!(GATEWAY_METADATA_KEYS
            .iter()
            .all(|k| !metadata.contains_key(*k)));

        Ok(ChatRequest {
            op,
            model,
            messages,
            stream,
            include_usage,
            user,
            metadata,
            scenario,
            session,
            user_profile,
            rest,
            features,
            native: None,
            responses: None,
        })
    }

    /// Whether the client sent this top-level field (used to merge target `params` under it).
    pub fn has_field(&self, key: &str) -> bool {
        match key {
            "model" => self.model.is_some(),
            "messages" => true,
            "metadata" => !self.metadata.is_empty(),
            _ => self.rest.iter().any(|(k, _)| k == key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, GatewayError> {
        ChatRequest::parse(body.as_bytes(), &RequestHints::default())
    }

    #[test]
    fn reads_gateway_fields_and_keeps_the_rest_raw() {
        let r = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,
               "stream_options":{"include_usage":true},"temperature":0.50,
               "metadata":{"scenario":"s","session_id":"x","user_profile":{"a":1},"keep":"me"}}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.scenario.as_deref(), Some("s"));
        assert_eq!(r.session.as_deref(), Some("x"));
        assert_eq!(r.user_profile["a"], 1);
        assert_eq!(r.metadata.len(), 1);
        assert_eq!(
            r.messages[0].get(),
            r#"{"role":"user","content":"hi \u00e9"}"#
        );
        let temp = r.rest.iter().find(|(k, _)| k == "temperature").unwrap();
        assert_eq!(temp.1.get(), "0.50");
    }

    #[test]
    fn rejects_bad_shapes_with_codes() {
        assert_eq!(parse("{nope").unwrap_err().code(), "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code(), "invalid_request");
        assert_eq!(
            parse(r#"{"model":"m"}"#).unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            parse(r#"{"messages":[]}"#).unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            parse(r#"{"messages":[{"content":"x"}]}"#)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            parse(r#"{"messages":[{"role":"user"}],"model":3}"#)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn features_are_what_the_values_ask_for() {
        let f = |body: &str| parse(body).unwrap().features.to_string();
        let user = r#""messages":[{"role":"user","content":"x"}]"#;
        assert_eq!(f(&format!("{{{user}}}")), "");
        assert_eq!(
            f(&format!(
                r#"{{{user},"tools":[{{"type":"function"}}],"n":2,"logprobs":true,"stream":true,"response_format":{{"type":"json_object"}}}}"#
            )),
            "tools,response_format,n,logprobs,stream"
        );
        assert_eq!(
            f(&format!(
                r#"{{{user},"tools":[ ],"n":1,"logprobs":false,"top_logprobs":null,"response_format":{{"type":"text"}}}}"#
            )),
            ""
        );
        assert_eq!(
            f(
                r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]}"#
            ),
            "images"
        );
        let history = r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}"#;
        assert_eq!(f(&format!("{history}]}}")), "tool_history");
        assert_eq!(
            f(&format!(r#"{history},{{"role":"user","content":"b"}}]}}"#)),
            ""
        );
        assert_eq!(
            f(&format!(r#"{{{user},"modalities":["text","audio"]}}"#)),
            "audio"
        );
    }

    #[test]
    fn profile_header_is_used_when_body_has_none() {
        let hints = RequestHints {
            user_profile: Some(r#"{"skin_type":"dry"}"#.into()),
            ..Default::default()
        };
        let r =
            ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}]}"#, &hints).unwrap();
        assert_eq!(r.user_profile["skin_type"], "dry");
        let bad = RequestHints {
            user_profile: Some("[1]".into()),
            ..Default::default()
        };
        assert!(
            ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}]}"#, &bad).is_err()
        );
    }
}
