//! The upstream requests of a validated answer: the client's request made non-streaming (the
//! gateway reads the whole answer before anyone sees it), told what JSON to produce in the way
//! the target's provider understands, and — for a repair — followed by the invalid answer and
//! what is wrong with it.

use super::{Expected, Origin, Shape, Violation};
use crate::protocol::{ChatRequest, Feature, Features};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// How a provider can be told that the answer must be JSON of a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Telling {
    /// It takes `response_format` (OpenAI-compatible upstreams).
    Native,
    /// It takes an instruction in the system prompt (Anthropic).
    Instruction,
    /// It takes neither (a Dify app has its own prompt and inputs): validated after the fact.
    Nothing,
}

/// An answer that failed, and why: the next attempt on the same target is asked to fix it.
#[derive(Debug, Clone)]
pub struct Repair {
    pub answer: String,
    pub violations: Vec<Violation>,
}

fn raw(value: &Value) -> Box<RawValue> {
    // A `Value` always serializes to valid JSON.
    RawValue::from_string(value.to_string()).unwrap_or_else(|_| null())
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}

/// The instruction given to providers that take one.
pub fn instruction(shape: &Shape) -> String {
    match shape {
        Shape::Object => "Answer with a single JSON object and nothing else: no prose, no \
                          Markdown code fence."
            .to_owned(),
        Shape::Schema(s) => format!(
            "Answer with a single JSON value and nothing else (no prose, no Markdown code \
             fence). It must validate against this JSON Schema:\n{}",
            s.json
        ),
    }
}

/// What a repair attempt says after the invalid answer.
pub fn repair_text(violations: &[Violation]) -> String {
    let mut text = String::from(
        "Your previous answer is not valid for the required JSON output. Problems (JSON \
         pointer: reason):\n",
    );
    for v in violations {
        text.push_str("- ");
        text.push_str(&v.to_string());
        text.push('\n');
    }
    text.push_str(
        "Reply with the corrected JSON only: no explanation, no Markdown code fence, nothing \
         before or after it.",
    );
    text
}

/// The request sent upstream for a validated answer after `repairs` failed answers.
pub fn upstream_request(
    req: &ChatRequest,
    expected: &Expected,
    telling: Telling,
    repairs: &[Repair],
) -> ChatRequest {
    let mut messages = Vec::with_capacity(req.messages.len() + 1 + 2 * repairs.len());
    if telling == Telling::Instruction {
        messages.push(raw(
            &json!({"role": "system", "content": instruction(&expected.shape)}),
        ));
    }
    messages.extend(req.messages.iter().cloned());
    for r in repairs {
        messages.push(raw(&json!({"role": "assistant", "content": r.answer})));
        messages.push(raw(
            &json!({"role": "user", "content": repair_text(&r.violations)}),
        ));
    }
    let keep_client_format = telling == Telling::Native && expected.origin == Origin::Client;
    let mut rest: Vec<(String, Box<RawValue>)> = req
        .rest
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "stream" | "stream_options")
                && (k != "response_format" || keep_client_format)
        })
        .cloned()
        .collect();
    if telling == Telling::Native && expected.origin == Origin::Scenario {
        let format = match &expected.shape {
            Shape::Object => json!({"type": "json_object"}),
            Shape::Schema(s) => json!({
                "type": "json_schema",
                "json_schema": {"name": s.name, "schema": s.json},
            }),
        };
        rest.push(("response_format".to_owned(), raw(&format)));
    }
    let mut features = req.features;
    features = features.without(Features::of(&[Feature::Stream, Feature::ResponseFormat]));
    ChatRequest {
        op: req.op,
        model: req.model.clone(),
        messages,
        stream: false,
        include_usage: false,
        user: req.user.clone(),
        metadata: req.metadata.clone(),
        scenario: req.scenario.clone(),
        session: req.session.clone(),
        user_profile: req.user_profile.clone(),
        rest,
        features,
        // The Messages API body as sent cannot carry the instruction or a repair turn: the
        // translated messages are sent instead.
        native: None,
        responses: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Schema;
    use crate::protocol::RequestHints;
    use std::sync::Arc;

    fn req(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes(), &RequestHints::default()).unwrap()
    }

    fn scenario_expected() -> Expected {
        Expected {
            shape: Shape::Schema(Arc::new(
                Schema::compile(json!({"type": "object", "required": ["a"]}), "s").unwrap(),
            )),
            repair_attempts: 1,
            origin: Origin::Scenario,
        }
    }

    fn field<'a>(r: &'a ChatRequest, k: &str) -> Option<&'a str> {
        r.rest.iter().find(|(x, _)| x == k).map(|(_, v)| v.get())
    }

    #[test]
    fn native_targets_get_the_scenario_schema_as_response_format() {
        let r = req(
            json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
            "stream_options": {"include_usage": true}, "temperature": 0.1}),
        );
        let up = upstream_request(&r, &scenario_expected(), Telling::Native, &[]);
        assert!(!up.stream);
        assert_eq!(field(&up, "stream"), None);
        assert_eq!(field(&up, "stream_options"), None);
        assert_eq!(field(&up, "temperature"), Some("0.1"));
        let rf: Value = serde_json::from_str(field(&up, "response_format").unwrap()).unwrap();
        assert_eq!(rf["type"], "json_schema");
        assert_eq!(rf["json_schema"]["schema"]["required"], json!(["a"]));
        assert_eq!(up.messages.len(), 1);
    }

    #[test]
    fn others_get_an_instruction_or_nothing_and_never_the_field() {
        let r = req(json!({"messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"}}));
        let mut e = scenario_expected();
        e.origin = Origin::Client;
        let up = upstream_request(&r, &e, Telling::Instruction, &[]);
        assert_eq!(field(&up, "response_format"), None);
        let first: Value = serde_json::from_str(up.messages[0].get()).unwrap();
        assert_eq!(first["role"], "system");
        assert!(first["content"].as_str().unwrap().contains("\"required\""));
        assert!(!up.features.contains(Feature::ResponseFormat));
        let up = upstream_request(&r, &e, Telling::Nothing, &[]);
        assert_eq!(up.messages.len(), 1);
        assert_eq!(field(&up, "response_format"), None);
        let up = upstream_request(&r, &e, Telling::Native, &[]);
        assert_eq!(
            field(&up, "response_format"),
            Some(r#"{"type":"json_object"}"#)
        );
    }

    #[test]
    fn a_repair_adds_the_answer_and_the_violations() {
        let r = req(json!({"messages": [{"role": "user", "content": "hi"}]}));
        let repairs = [Repair {
            answer: "{\"b\":1}".into(),
            violations: vec![Violation {
                path: "/a".into(),
                reason: "required property is missing".into(),
            }],
        }];
        let up = upstream_request(&r, &scenario_expected(), Telling::Native, &repairs);
        assert_eq!(up.messages.len(), 3);
        let a: Value = serde_json::from_str(up.messages[1].get()).unwrap();
        assert_eq!(a, json!({"role": "assistant", "content": "{\"b\":1}"}));
        let u: Value = serde_json::from_str(up.messages[2].get()).unwrap();
        assert!(u["content"]
            .as_str()
            .unwrap()
            .contains("- /a: required property is missing"));
    }
}
