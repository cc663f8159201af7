//! Patient privacy: personal data found in what a target would receive is replaced by
//! placeholders before it leaves (`pseudonymize`, `mask`), or the request is refused (`block`);
//! pseudonymized values are put back into the answer, streamed or not (`restore.rs`).
//!
//! - `detect.rs`: the detectors (one compiled regex for the shapes, checksums where the data
//!   has one, literal profile names);
//! - this module: a target's effective setting, the placeholders of a conversation
//!   ([`Mapping`]), and the rewrite of a chat request's texts ([`rewrite`]);
//! - `restore.rs`: placeholders back to values, holding back a placeholder cut across chunks.
//!
//! Values are never logged or exported: metrics and the access log carry kinds and counts.

pub mod detect;
pub mod restore;

use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use detect::{Detector, Kind, Kinds};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// What is done with detected values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Placeholders out, values back in the answer.
    Pseudonymize,
    /// Placeholders out, never restored.
    Mask,
    /// The request is refused (400 `pii_detected`).
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pseudonymize => "pseudonymize",
            Action::Mask => "mask",
            Action::Block => "block",
        }
    }
}

/// A target's effective privacy (target over provider over scenario over defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Privacy {
    pub kinds: Kinds,
    pub action: Action,
}

/// One placeholder and the value it stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    placeholder: String,
    value: String,
    /// The value's identity: digits only for numbers, lower case for e-mail, so `138 0013 8000`
    /// and `13800138000` share a placeholder.
    key: String,
}

/// The placeholders of one conversation (a session, else one request): the same value always
/// gets the same placeholder, numbered per kind in order of first appearance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mapping {
    entries: Vec<Entry>,
}

fn identity(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Phone => {
            let digits: String = value.chars().filter(char::is_ascii_digit).collect();
            match digits.len() {
                13 if digits.starts_with("86") => digits[2..].to_owned(),
                _ => digits,
            }
        }
        Kind::Id | Kind::Card => value
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect(),
        Kind::Email => value.to_ascii_lowercase(),
        Kind::Name => value.to_owned(),
    }
}

impl Mapping {
    /// The placeholder of `value` (found as `kind`), made when it is new.
    pub fn placeholder(&mut self, kind: Kind, value: &str) -> String {
        let key = format!("{}:{}", kind.tag(), identity(kind, value));
        if let Some(e) = self.entries.iter().find(|e| e.key == key) {
            return e.placeholder.clone();
        }
        let prefix = format!("[{}_", kind.tag());
        let n = self
            .entries
            .iter()
            .filter(|e| e.placeholder.starts_with(&prefix))
            .count()
            + 1;
        let placeholder = format!("{prefix}{n}]");
        self.entries.push(Entry {
            placeholder: placeholder.clone(),
            value: value.to_owned(),
            key,
        });
        placeholder
    }

    /// The value a placeholder stands for.
    pub fn value_of(&self, placeholder: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.placeholder == placeholder)
            .map(|e| e.value.as_str())
    }

    /// The longest placeholder's length: what a restorer may hold back.
    pub fn longest(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.placeholder.len())
            .max()
            .unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every value can be written into JSON text as it is (no quote, backslash or
    /// control character): then placeholders can be restored in an answer's JSON bytes
    /// directly, even inside a tool call's JSON-in-a-string arguments.
    pub fn json_plain(&self) -> bool {
        self.entries.iter().all(|e| {
            !e.value
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What one rewrite found, per kind (metrics, the access log and `block`'s error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    counts: [u32; Kind::ALL.len()],
}

impl Report {
    fn add(&mut self, kind: Kind) {
        self.counts[kind as usize] += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    /// `(kind, count)` for every kind found.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u32)> + '_ {
        Kind::ALL
            .iter()
            .map(|k| (*k, self.counts[*k as usize]))
            .filter(|(_, n)| *n > 0)
    }

    /// `cn_mobile:2,profile_names:1`: kinds and counts, never values.
    pub fn summary(&self) -> String {
        self.iter()
            .map(|(k, n)| format!("{}:{n}", k.config_name()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `block` refusal: 400 `pii_detected` naming the kinds found.
    pub fn blocked(&self, scenario: &str) -> GatewayError {
        let kinds: Vec<&str> = self.iter().map(|(k, _)| k.config_name()).collect();
        GatewayError::Mapped {
            status: 400,
            message: format!(
                "the request contains personal data ({}) that scenario {scenario} does not \
                 send to its targets; remove it and try again",
                kinds.join(", ")
            ),
            error_type: "invalid_request_error".into(),
            code: "pii_detected".into(),
            param: Some("messages".into()),
            should_retry: Some(false),
            retry_after: None,
        }
    }
}

/// Names to look for, besides the shapes: the profile's `name` / `names` and the client's
/// `x-gateway-pii-names` header (comma-separated).
pub fn names<'a>(profile: &'a Value, header: Option<&'a str>) -> Vec<&'a str> {
    let mut out = Vec::new();
    for key in ["name", "names"] {
        match profile.get(key) {
            Some(Value::String(s)) => out.push(s.as_str()),
            Some(Value::Array(list)) => out.extend(list.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    if let Some(h) = header {
        out.extend(h.split(',').map(str::trim).filter(|n| !n.is_empty()));
    }
    out
}

/// `text` with every finding replaced by its placeholder; `None` when nothing was found.
fn replace(
    text: &str,
    detector: &Detector,
    mapping: &mut Mapping,
    report: &mut Report,
) -> Option<String> {
    let found = detector.find(text);
    if found.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        out.push_str(&text[at..f.start]);
        out.push_str(&mapping.placeholder(f.kind, &text[f.start..f.end]));
        report.add(f.kind);
        at = f.end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// Every string in `v` rewritten in place; whether anything changed.
fn replace_all(
    v: &mut Value,
    detector: &Detector,
    mapping: &mut Mapping,
    report: &mut Report,
) -> bool {
    match v {
        Value::String(s) => match replace(s, detector, mapping, report) {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |c, i| replace_all(i, detector, mapping, report) | c),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |c, i| replace_all(i, detector, mapping, report) | c),
        _ => false,
    }
}

/// The texts of one message the upstream reads: its content (a string, or the `text` of
/// its parts), and the arguments of earlier tool calls. Images and audio are not inspected.
fn rewrite_message(
    raw: &RawValue,
    detector: &Detector,
    mapping: &mut Mapping,
    report: &mut Report,
) -> Option<Box<RawValue>> {
    let mut m: Value = serde_json::from_str(raw.get()).ok()?;
    let mut changed = false;
    if let Some(content) = m.get_mut("content") {
        match content {
            Value::String(_) => changed |= replace_all(content, detector, mapping, report),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(text) = p.get_mut("text") {
                        changed |= replace_all(text, detector, mapping, report);
                    }
                    // Anthropic-shaped tool results carry their own content.
                    if let Some(inner) = p.get_mut("content") {
                        changed |= replace_all(inner, detector, mapping, report);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for c in calls {
            if let Some(args) = c.pointer_mut("/function/arguments") {
                changed |= replace_all(args, detector, mapping, report);
            }
        }
    }
    if !changed {
        return None;
    }
    serde_json::value::to_raw_value(&m).ok()
}

/// The request as a target under privacy receives it: the same request with every message
/// text and every `user_profile` value (the system prompt's and Dify inputs' variables)
/// rewritten. `native` (a Messages API body sent as is) is dropped: the rewritten messages are
/// translated instead.
pub fn rewrite(
    req: &ChatRequest,
    detector: &Detector,
    mapping: &mut Mapping,
) -> (ChatRequest, Report) {
    let mut report = Report::default();
    let messages = req
        .messages
        .iter()
        .map(|m| rewrite_message(m, detector, mapping, &mut report).unwrap_or_else(|| m.clone()))
        .collect();
    let mut user_profile = req.user_profile.clone();
    replace_all(&mut user_profile, detector, mapping, &mut report);
    let rewritten = ChatRequest {
        op: req.op,
        model: req.model.clone(),
        messages,
        stream: req.stream,
        include_usage: req.include_usage,
        user: req.user.clone(),
        metadata: req.metadata.clone(),
        scenario: req.scenario.clone(),
        session: req.session.clone(),
        user_profile,
        rest: req.rest.clone(),
        features: req.features,
        native: None,
        responses: req.responses.clone(),
    };
    (rewritten, report)
}

/// Whether `kinds` asks for nothing (privacy with an empty `detect`).
pub fn detects_nothing(kinds: Kinds) -> bool {
    kinds.is_empty()
}
