//! The response object as it stands — its items, status, error and usage — and its typed JSON
//! views, shared by the response events, the whole answer and storage.

use crate::protocol::chunks::Usage;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

/// Fields of the response object the writer owns: an echoed field of the same name is dropped.
const OWN_FIELDS: &[&str] = &[
    "id",
    "object",
    "created_at",
    "status",
    "error",
    "incomplete_details",
    "model",
    "output",
    "output_text",
    "usage",
];

/// Echoed fields and their values when the request did not set them: the ones the SDK's
/// `Response` requires (`parallel_tool_calls`, `tool_choice`, `tools`, and the nullable
/// `instructions`, `metadata`, `temperature`, `top_p`) and the others OpenAI always returns.
/// `store` defaults to true, as in the API (a response is kept unless `store: false`).
const ECHO_DEFAULTS: &[(&str, DefaultValue)] = &[
    ("background", DefaultValue::False),
    ("instructions", DefaultValue::Null),
    ("max_output_tokens", DefaultValue::Null),
    ("metadata", DefaultValue::EmptyObject),
    ("parallel_tool_calls", DefaultValue::True),
    ("previous_response_id", DefaultValue::Null),
    ("reasoning", DefaultValue::Reasoning),
    ("store", DefaultValue::True),
    ("temperature", DefaultValue::Null),
    ("text", DefaultValue::TextFormat),
    ("tool_choice", DefaultValue::Auto),
    ("tools", DefaultValue::EmptyArray),
    ("top_p", DefaultValue::Null),
    ("truncation", DefaultValue::Disabled),
    ("user", DefaultValue::Null),
];

/// A default of `ECHO_DEFAULTS` (a constant table cannot hold `Value`s).
#[derive(Debug, Clone, Copy)]
enum DefaultValue {
    Null,
    True,
    False,
    EmptyObject,
    EmptyArray,
    Auto,
    Disabled,
    /// `{"effort": null, "summary": null}`
    Reasoning,
    /// `{"format": {"type": "text"}}`
    TextFormat,
}

/// `echo` without the writer's own fields, with defaults for the fields it lacks.
pub(super) fn echo_fields(mut echo: Map<String, Value>) -> Map<String, Value> {
    for key in OWN_FIELDS {
        echo.remove(*key);
    }
    for (key, default) in ECHO_DEFAULTS {
        if !echo.contains_key(*key) {
            echo.insert((*key).to_owned(), default.value());
        }
    }
    echo
}

impl DefaultValue {
    fn value(self) -> Value {
        match self {
            DefaultValue::Null => Value::Null,
            DefaultValue::True => Value::Bool(true),
            DefaultValue::False => Value::Bool(false),
            DefaultValue::EmptyObject => Value::Object(Map::new()),
            DefaultValue::EmptyArray => Value::Array(Vec::new()),
            DefaultValue::Auto => Value::String("auto".into()),
            DefaultValue::Disabled => Value::String("disabled".into()),
            DefaultValue::Reasoning => serde_json::json!({"effort": null, "summary": null}),
            DefaultValue::TextFormat => serde_json::json!({"format": {"type": "text"}}),
        }
    }
}

/// The response's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }
}

/// What an output item holds.
#[derive(Debug)]
pub(super) enum Kind {
    Reasoning,
    Message,
    /// A function call: the upstream's OpenAI `index` and id (to tell calls apart), the
    /// `call_id` the client sees, and the function's name.
    Call {
        index: u32,
        upstream_id: Option<String>,
        call_id: String,
        name: String,
    },
}

/// One output item: `text` is the message text, the reasoning text or the call's arguments.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) kind: Kind,
    pub(super) id: String,
    pub(super) text: String,
    pub(super) status: Status,
}

impl Item {
    pub(super) fn is_call(&self, index: u32, id: Option<&str>) -> bool {
        match &self.kind {
            Kind::Call {
                index: i,
                upstream_id,
                ..
            } => *i == index && id.is_none_or(|id| upstream_id.as_deref() == Some(id)),
            _ => false,
        }
    }
}

/// The response as it stands.
#[derive(Debug)]
pub(super) struct State {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created_at: u64,
    pub(super) echo: Map<String, Value>,
    pub(super) items: Vec<Item>,
    pub(super) status: Status,
    pub(super) incomplete_reason: Option<&'static str>,
    pub(super) error: Option<(&'static str, String)>,
    pub(super) usage: Option<Usage>,
}

impl State {
    pub(super) fn view(&self) -> ResponseOut<'_> {
        ResponseOut {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status: self.status.as_str(),
            error: self.error.as_ref().map(|(code, message)| ErrorOut {
                code,
                message: message.as_str(),
            }),
            incomplete_details: self
                .incomplete_reason
                .map(|reason| IncompleteOut { reason }),
            model: &self.model,
            output: OutputOut(&self.items),
            usage: self.usage.map(usage_out),
            echo: &self.echo,
        }
    }
}

fn usage_out(u: Usage) -> UsageOut {
    UsageOut {
        input_tokens: u.prompt_tokens,
        input_tokens_details: InputDetailsOut {
            cached_tokens: u.cached_tokens.min(u.prompt_tokens),
            // Not reported by the providers the gateway reads; the SDK requires the field.
            cache_write_tokens: 0,
        },
        output_tokens: u.completion_tokens,
        output_tokens_details: OutputDetailsOut {
            reasoning_tokens: u.reasoning_tokens.min(u.completion_tokens),
        },
        total_tokens: if u.total_tokens > 0 {
            u.total_tokens
        } else {
            u.prompt_tokens + u.completion_tokens
        },
    }
}

pub(super) fn item_out(item: &Item) -> ItemOut<'_> {
    let text = item.text.as_str();
    match &item.kind {
        Kind::Reasoning => ItemOut::Reasoning {
            id: &item.id,
            summary: [],
            content: Parts(part_out(item).filter(|_| !text.is_empty())),
        },
        Kind::Message => ItemOut::Message {
            id: &item.id,
            status: item.status.as_str(),
            role: "assistant",
            content: Parts(part_out(item).filter(|_| !text.is_empty())),
        },
        Kind::Call { call_id, name, .. } => ItemOut::FunctionCall {
            id: &item.id,
            call_id,
            name,
            arguments: text,
            status: item.status.as_str(),
        },
    }
}

/// The item's content part (with the text so far), for reasoning and messages.
pub(super) fn part_out(item: &Item) -> Option<PartOut<'_>> {
    let text = item.text.as_str();
    match item.kind {
        Kind::Reasoning => Some(PartOut::ReasoningText { text }),
        Kind::Message => Some(PartOut::OutputText {
            text,
            annotations: [],
            logprobs: [],
        }),
        Kind::Call { .. } => None,
    }
}

#[derive(Serialize)]
pub(super) struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<ErrorOut<'a>>,
    incomplete_details: Option<IncompleteOut>,
    model: &'a str,
    output: OutputOut<'a>,
    usage: Option<UsageOut>,
    #[serde(flatten)]
    echo: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    code: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct IncompleteOut {
    reason: &'static str,
}

#[derive(Serialize)]
struct UsageOut {
    input_tokens: u64,
    input_tokens_details: InputDetailsOut,
    output_tokens: u64,
    output_tokens_details: OutputDetailsOut,
    total_tokens: u64,
}

#[derive(Serialize)]
struct InputDetailsOut {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

#[derive(Serialize)]
struct OutputDetailsOut {
    reasoning_tokens: u64,
}

/// The output items, serialized one by one from the writer's state.
struct OutputOut<'a>(&'a [Item]);

impl Serialize for OutputOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&item_out(item))?;
        }
        seq.end()
    }
}

/// A content list of zero or one part.
pub(super) struct Parts<'a>(Option<PartOut<'a>>);

impl Serialize for Parts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ItemOut<'a> {
    Reasoning {
        id: &'a str,
        summary: [(); 0],
        content: Parts<'a>,
    },
    Message {
        id: &'a str,
        status: &'static str,
        role: &'static str,
        content: Parts<'a>,
    },
    FunctionCall {
        id: &'a str,
        call_id: &'a str,
        name: &'a str,
        arguments: &'a str,
        status: &'static str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum PartOut<'a> {
    OutputText {
        text: &'a str,
        annotations: [(); 0],
        logprobs: [(); 0],
    },
    ReasoningText {
        text: &'a str,
    },
}
