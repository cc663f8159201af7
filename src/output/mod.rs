//! Structured output: the JSON an answer must be, and the checks that hold the gateway to it.
//! A scenario's `output:` schema (compiled at load) or a client's own `response_format`
//! (`json_schema`, or `json_object`) makes a chat request *validated*: the answer is collected,
//! its JSON value extracted (`extract.rs`), validated, repaired by asking the same target again
//! (`request.rs` builds the upstream requests), and only then sent (`forward::validated`).
//!
//! This module is pure: no I/O, no config types. The config compiles [`Schema`]s through it;
//! the pipeline asks [`expected`] what a request must answer.

pub mod extract;
pub mod request;

use crate::error::GatewayError;
use crate::protocol::ChatRequest;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// Repair attempts when neither the scenario nor anything else says how many.
pub const DEFAULT_REPAIR_ATTEMPTS: u32 = 1;

/// A compiled JSON Schema and its source (sent to upstreams that take `response_format`).
pub struct Schema {
    validator: jsonschema::Validator,
    /// The schema as written.
    pub json: Value,
    /// The `json_schema.name` upstreams get: `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema").field("name", &self.name).finish()
    }
}

impl Schema {
    /// Compiles `json` (draft 2020-12 unless its `$schema` says another draft); the error
    /// names where in the schema it is wrong. No reference is fetched: `$ref` may point only
    /// inside the schema.
    pub fn compile(json: Value, name: &str) -> Result<Schema, String> {
        let validator = jsonschema::options().build(&json).map_err(|e| {
            let at = e.instance_path().as_str();
            let at = if at.is_empty() { "/" } else { at };
            format!("not a valid JSON Schema at {at}: {}", schema_reason(&e))
        })?;
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        Ok(Schema {
            validator,
            json,
            name: if name.is_empty() {
                "output".into()
            } else {
                name
            },
        })
    }
}

/// The reason of a schema's own error (the schema is config, never patient data: shown whole).
fn schema_reason(e: &jsonschema::ValidationError<'_>) -> String {
    let text = e.to_string();
    text.chars().take(300).collect()
}

/// What an answer must be.
#[derive(Debug, Clone)]
pub enum Shape {
    Schema(Arc<Schema>),
    /// `response_format: {"type": "json_object"}`: any JSON object.
    Object,
}

/// A scenario's `output:`, compiled.
#[derive(Debug)]
pub struct OutputSpec {
    pub schema: Arc<Schema>,
    pub repair_attempts: u32,
}

/// Where the expectation comes from, which decides what an OpenAI-compatible upstream is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's own `response_format`: forwarded as the client wrote it.
    Client,
    /// The scenario's `output:`: sent as a `json_schema` response format.
    Scenario,
}

/// What a validated request's answer must be, and how hard the gateway tries.
#[derive(Debug, Clone)]
pub struct Expected {
    pub shape: Shape,
    pub repair_attempts: u32,
    pub origin: Origin,
}

/// One way an answer fails its shape: where (a JSON pointer, `/` for the whole value) and why.
/// Never carries the answer's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

fn invalid_format(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(message, Some(param))
}

/// What `req` must answer: the client's `response_format` (its schema wins), else the
/// scenario's `output:`; `None` for a request that is not validated. A client schema that
/// does not compile is the client's error (400).
pub fn expected(
    scenario: Option<&OutputSpec>,
    req: &ChatRequest,
) -> Result<Option<Expected>, GatewayError> {
    let repair_attempts = scenario.map_or(DEFAULT_REPAIR_ATTEMPTS, |s| s.repair_attempts);
    let own = req
        .rest
        .iter()
        .find(|(k, _)| k == "response_format")
        .map(|(_, v)| v);
    if let Some(raw) = own {
        let format: Value = serde_json::from_str(raw.get()).map_err(|_| {
            invalid_format("`response_format` must be an object", "response_format")
        })?;
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                return Ok(Some(Expected {
                    shape: Shape::Object,
                    repair_attempts,
                    origin: Origin::Client,
                }))
            }
            Some("json_schema") => {
                let spec = format.get("json_schema").ok_or_else(|| {
                    invalid_format(
                        "`response_format.json_schema` is required for type json_schema",
                        "response_format.json_schema",
                    )
                })?;
                let schema = spec.get("schema").cloned().ok_or_else(|| {
                    invalid_format(
                        "`response_format.json_schema.schema` is required",
                        "response_format.json_schema.schema",
                    )
                })?;
                let name = spec.get("name").and_then(Value::as_str).unwrap_or("output");
                let schema = Schema::compile(schema, name).map_err(|e| {
                    invalid_format(
                        format!("`response_format.json_schema.schema` is {e}"),
                        "response_format.json_schema.schema",
                    )
                })?;
                return Ok(Some(Expected {
                    shape: Shape::Schema(Arc::new(schema)),
                    repair_attempts,
                    origin: Origin::Client,
                }));
            }
            // `text` (or anything the upstream judges) asks for no JSON.
            _ => {}
        }
    }
    Ok(scenario.map(|s| Expected {
        shape: Shape::Schema(s.schema.clone()),
        repair_attempts: s.repair_attempts,
        origin: Origin::Scenario,
    }))
}

/// Refuses what a validated answer cannot be combined with: tool calls and several choices
/// (the gateway checks one JSON answer), before anything is reserved or contacted.
pub fn check_request(req: &ChatRequest) -> Result<(), GatewayError> {
    use crate::protocol::Feature;
    for (feature, param) in [(Feature::Tools, "tools"), (Feature::N, "n")] {
        if req.features.contains(feature) {
            return Err(GatewayError::Mapped {
                status: 400,
                message: format!(
                    "`{param}` cannot be combined with a validated JSON answer (a \
                     response_format of type json_schema or json_object, or the scenario's \
                     output schema): the gateway checks one JSON answer"
                ),
                error_type: "invalid_request_error".into(),
                code: "unsupported_parameter".into(),
                param: Some(param.into()),
                should_retry: Some(false),
                retry_after: None,
            });
        }
    }
    Ok(())
}

/// The `invalid_output` error: 502, listing where and why the last answer failed (never the
/// answer itself).
pub fn invalid_output(scenario: &str, attempts: u32, violations: &[Violation]) -> GatewayError {
    let list = violations
        .iter()
        .take(10)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let more = violations.len().saturating_sub(10);
    let more = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    GatewayError::Mapped {
        status: 502,
        message: format!(
            "scenario {scenario}: no target produced valid structured output \
             ({attempts} answers checked); last answer: {list}{more}"
        ),
        error_type: "api_error".into(),
        code: "invalid_output".into(),
        param: None,
        should_retry: Some(true),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RequestHints;
    use serde_json::json;

    fn req(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes(), &RequestHints::default()).unwrap()
    }

    #[test]
    fn a_bad_schema_names_where() {
        let e = Schema::compile(
            json!({"type": "object", "properties": {"a": {"type": 5}}}),
            "x",
        )
        .unwrap_err();
        assert!(e.contains("/properties/a/type"), "{e}");
    }

    #[test]
    fn names_are_made_safe_for_upstreams() {
        let s = Schema::compile(json!({"type": "object"}), "beauty plan/v2").unwrap();
        assert_eq!(s.name, "beauty_plan_v2");
    }

    #[test]
    fn the_client_schema_wins_over_the_scenario() {
        let scenario = OutputSpec {
            schema: Arc::new(Schema::compile(json!({"type": "array"}), "s").unwrap()),
            repair_attempts: 2,
        };
        let r = req(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}}));
        let e = expected(Some(&scenario), &r).unwrap().unwrap();
        assert_eq!(e.origin, Origin::Client);
        assert_eq!(e.repair_attempts, 2);
        let Shape::Schema(s) = e.shape else { panic!() };
        assert_eq!(s.json, json!({"type": "object"}));

        let r = req(json!({"messages": [{"role": "user", "content": "x"}]}));
        let e = expected(Some(&scenario), &r).unwrap().unwrap();
        assert_eq!(e.origin, Origin::Scenario);
        let r = req(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}}),
        );
        assert!(expected(None, &r).unwrap().is_none());
        let r = req(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
        );
        assert!(matches!(
            expected(None, &r).unwrap().unwrap().shape,
            Shape::Object
        ));
    }

    #[test]
    fn a_client_schema_that_does_not_compile_is_a_400() {
        let r = req(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "nope"}}}}));
        let e = expected(None, &r).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("not a valid JSON Schema"), "{e}");
    }

    #[test]
    fn invalid_output_lists_paths_and_reasons() {
        let v = vec![Violation {
            path: "/score".into(),
            reason: "required property is missing".into(),
        }];
        let e = invalid_output("sentiment", 2, &v);
        assert_eq!(e.status(), 502);
        assert_eq!(e.code(), "invalid_output");
        assert!(e
            .to_string()
            .contains("/score: required property is missing"));
    }
}
