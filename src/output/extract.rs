//! From an answer's text to its JSON value, and the value checked against its [`Shape`].
//!
//! Models often wrap JSON in a Markdown fence or a sentence. Exactly two things are forgiven,
//! in this order, and nothing more: one surrounding code fence (its info string, e.g. `json`,
//! ignored; a missing closing fence tolerated) and prose before and after a single top-level
//! JSON value (from the first `{` or `[` to the last `}` or `]` of the same kind). What is left
//! must parse as one JSON value; no quote, comma or bracket is ever repaired by the gateway.

use super::{Shape, Violation};
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

/// Violations reported at most per answer.
const MAX_VIOLATIONS: usize = 20;

/// The part of `text` that should be the JSON value.
pub fn extract(text: &str) -> &str {
    let text = unfence(text.trim()).trim();
    let open = text.find(['{', '[']);
    let Some(start) = open else {
        // A scalar (a schema may ask for a string or a number): the text itself.
        return text;
    };
    let close = if text.as_bytes()[start] == b'{' {
        '}'
    } else {
        ']'
    };
    match text.rfind(close) {
        Some(end) if end > start => &text[start..=end],
        _ => &text[start..],
    }
}

/// The inside of one code fence, if `text` has one; else `text`.
fn unfence(text: &str) -> &str {
    let Some(open) = text.find("```") else {
        return text;
    };
    let after = &text[open + 3..];
    // The info string (`json`) runs to the end of the opening line.
    let body = match after.find('\n') {
        Some(nl) => &after[nl + 1..],
        None => after,
    };
    match body.rfind("```") {
        Some(close) => &body[..close],
        None => body,
    }
}

/// The answer's JSON value as text (trimmed of fence and prose) when it has the shape, else
/// why not.
pub fn check<'a>(shape: &Shape, text: &'a str) -> Result<&'a str, Vec<Violation>> {
    let json = extract(text);
    let value: Value = serde_json::from_str(json).map_err(|e| {
        vec![Violation {
            path: "/".into(),
            reason: format!("not valid JSON ({})", parse_reason(&e)),
        }]
    })?;
    match shape {
        Shape::Object => {
            if value.is_object() {
                Ok(json)
            } else {
                Err(vec![Violation {
                    path: "/".into(),
                    reason: "must be a JSON object".into(),
                }])
            }
        }
        Shape::Schema(schema) => {
            let violations: Vec<Violation> = schema
                .validator
                .iter_errors(&value)
                .flat_map(|e| violations(&e))
                .take(MAX_VIOLATIONS)
                .collect();
            if violations.is_empty() {
                Ok(json)
            } else {
                Err(violations)
            }
        }
    }
}

/// serde's message without the text it choked on: its category and position.
fn parse_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "it ends early, truncated",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected value",
        Category::Io => "unreadable",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

fn pointer(path: &str) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.to_owned()
    }
}

/// One validator error as violations: its instance path and a reason written from the
/// schema's side (limits, types, names of required properties), never the instance's value.
fn violations(e: &jsonschema::ValidationError<'_>) -> Vec<Violation> {
    let path = pointer(e.instance_path().as_str());
    let one = |reason: String| {
        vec![Violation {
            path: path.clone(),
            reason,
        }]
    };
    match e.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            let base = if path == "/" {
                String::new()
            } else {
                path.clone()
            };
            vec![Violation {
                path: format!("{base}/{name}"),
                reason: "required property is missing".into(),
            }]
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            let base = if path == "/" {
                String::new()
            } else {
                path.clone()
            };
            unexpected
                .iter()
                .map(|name| Violation {
                    path: format!("{base}/{name}"),
                    reason: "property is not allowed by the schema".into(),
                })
                .collect()
        }
        ValidationErrorKind::Type { kind } => one(format!("must be of type {}", type_names(kind))),
        ValidationErrorKind::Enum { options } => one(format!("must be one of {options}")),
        ValidationErrorKind::Constant { expected_value } => {
            one(format!("must be {expected_value}"))
        }
        ValidationErrorKind::Minimum { limit } => one(format!("must be ≥ {limit}")),
        ValidationErrorKind::Maximum { limit } => one(format!("must be ≤ {limit}")),
        ValidationErrorKind::ExclusiveMinimum { limit } => one(format!("must be > {limit}")),
        ValidationErrorKind::ExclusiveMaximum { limit } => one(format!("must be < {limit}")),
        ValidationErrorKind::MinLength { limit } => {
            one(format!("must have at least {limit} characters"))
        }
        ValidationErrorKind::MaxLength { limit } => {
            one(format!("must have at most {limit} characters"))
        }
        ValidationErrorKind::MinItems { limit } => one(format!("must have at least {limit} items")),
        ValidationErrorKind::MaxItems { limit } => one(format!("must have at most {limit} items")),
        ValidationErrorKind::MinProperties { limit } => {
            one(format!("must have at least {limit} properties"))
        }
        ValidationErrorKind::MaxProperties { limit } => {
            one(format!("must have at most {limit} properties"))
        }
        ValidationErrorKind::Pattern { pattern } => one(format!("must match /{pattern}/")),
        ValidationErrorKind::Format { format } => one(format!("must be a valid {format}")),
        ValidationErrorKind::UniqueItems => one("items must be unique".into()),
        ValidationErrorKind::FalseSchema => one("is not allowed by the schema".into()),
        ValidationErrorKind::AnyOf { .. } => {
            one("matches none of the allowed forms (anyOf)".into())
        }
        ValidationErrorKind::OneOfNotValid { .. } => {
            one("matches none of the allowed forms (oneOf)".into())
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            one("matches more than one of the exclusive forms (oneOf)".into())
        }
        ValidationErrorKind::Not { .. } => one("matches a form the schema forbids (not)".into()),
        ValidationErrorKind::MultipleOf { .. } => one("is not a required multiple".into()),
        _ => {
            // Rarer keywords: named from the schema's side.
            let schema_path = e.schema_path().as_str();
            let keyword = schema_path.rsplit('/').next().unwrap_or(schema_path);
            one(format!("does not satisfy `{keyword}`"))
        }
    }
}

fn type_names(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(set) => {
            let names: Vec<String> = set.iter().map(|t| t.to_string()).collect();
            names.join(" or ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Schema;
    use serde_json::json;
    use std::sync::Arc;

    fn sentiment() -> Shape {
        Shape::Schema(Arc::new(
            Schema::compile(
                json!({
                    "type": "object",
                    "required": ["label", "score"],
                    "additionalProperties": false,
                    "properties": {
                        "label": {"enum": ["positive", "neutral", "negative"]},
                        "score": {"type": "number", "minimum": -1, "maximum": 1}
                    }
                }),
                "sentiment",
            )
            .unwrap(),
        ))
    }

    #[test]
    fn fences_and_prose_are_stripped_once() {
        assert_eq!(extract("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(extract("```\n[1,2]\n```\n"), "[1,2]");
        assert_eq!(
            extract("Here is the plan:\n```json\n{\"a\":1}\n```\nEnjoy!"),
            "{\"a\":1}"
        );
        assert_eq!(
            extract("Sure! {\"a\": {\"b\": 2}} Hope that helps."),
            "{\"a\": {\"b\": 2}}"
        );
        assert_eq!(extract("  42 "), "42");
        // A fence left open (a cut answer) is still taken off; the JSON stays cut.
        assert_eq!(extract("```json\n{\"a\":"), "{\"a\":");
    }

    #[test]
    fn valid_answers_pass_with_their_json_only() {
        let ok = check(
            &sentiment(),
            "```json\n{\"label\":\"positive\",\"score\":0.8}\n```",
        );
        assert_eq!(ok, Ok("{\"label\":\"positive\",\"score\":0.8}"));
        assert!(check(&Shape::Object, "{}").is_ok());
    }

    #[test]
    fn violations_name_paths_and_reasons_without_the_answer() {
        let v = check(&sentiment(), "{\"label\":\"ecstatic-SECRET\"}").unwrap_err();
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"/score: required property is missing".to_owned()),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with("/label: must be one of")),
            "{text:?}"
        );
        assert!(!text.iter().any(|t| t.contains("SECRET")), "{text:?}");

        let v = check(&sentiment(), "{\"label\":\"positive\",\"score\":3,\"x\":1}").unwrap_err();
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"/score: must be ≤ 1".to_owned()), "{text:?}");
        assert!(
            text.contains(&"/x: property is not allowed by the schema".to_owned()),
            "{text:?}"
        );
    }

    #[test]
    fn truncated_and_non_json_answers_fail_at_the_root() {
        let v = check(&sentiment(), "{\"label\":\"positive\",\"sco").unwrap_err();
        assert_eq!(v[0].path, "/");
        assert!(v[0].reason.contains("truncated"), "{v:?}");
        let v = check(&Shape::Object, "[1]").unwrap_err();
        assert_eq!(v[0].reason, "must be a JSON object");
        let v = check(&Shape::Object, "I cannot help with that").unwrap_err();
        assert!(v[0].reason.starts_with("not valid JSON"), "{v:?}");
    }
}
