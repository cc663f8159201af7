//! What the gateway keeps about experiments (A/B tests of scenarios' targets and prompts):
//! the record of each experiment request, so feedback on its answer (`POST /v1/feedback`) can
//! be attributed to its variant; the feedback body's checks; and this replica's per-variant
//! figures for `GET /admin/experiments` (`stats.rs`, with the significance tests in
//! `significance.rs`).
//!
//! Records live in a [`ConversationStore`] (in memory, or Redis when state is shared, so
//! feedback may reach any replica), keyed by (`"feedback"`, client, request id): another
//! client's request id is simply not found. Only requests of experiment scenarios are recorded.

mod significance;
pub mod stats;

use crate::conversations::{ConversationKey, ConversationStore};
use crate::error::GatewayError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

pub use stats::{ExperimentStats, Outcome};

/// How long an experiment request can receive feedback (from its last use).
pub const FEEDBACK_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest feedback `comment` accepted, in characters.
pub const MAX_COMMENT_CHARS: usize = 2000;
/// The largest feedback body read.
pub const MAX_FEEDBACK_BODY: usize = 64 << 10;

/// Which experiment request an answer was: its scenario and `<experiment>/<variant>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub scenario: String,
    pub variant: String,
}

/// Whose request: keyed by the client (`""` when the gateway has no client keys), so a request
/// id is found only by the client that made the request.
fn key(client: Option<&str>, request_id: &str) -> ConversationKey {
    ConversationKey {
        target: "feedback".into(),
        user: client.unwrap_or_default().to_owned(),
        session: request_id.to_owned(),
    }
}

/// Remembers an experiment request for [`FEEDBACK_TTL`].
pub async fn remember(
    store: &impl ConversationStore,
    client: Option<&str>,
    request_id: &str,
    record: &Record,
) {
    // Serializing two strings cannot fail.
    if let Ok(value) = serde_json::to_string(record) {
        store
            .put(key(client, request_id), value, FEEDBACK_TTL)
            .await;
    }
}

/// The record of `client`'s request `request_id`, taken out of the store: an answer gets one
/// piece of feedback.
pub async fn take(
    store: &impl ConversationStore,
    client: Option<&str>,
    request_id: &str,
) -> Option<Record> {
    let key = key(client, request_id);
    let record = serde_json::from_str(&store.get(&key).await?).ok()?;
    store.remove(&key).await;
    Some(record)
}

/// A checked `POST /v1/feedback` body. The comment is checked and then dropped: the gateway
/// keeps and logs no free text.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub request_id: String,
    pub score: f64,
}

fn bad(field: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid_request(message, Some(field))
}

impl Feedback {
    /// 400 naming the field for anything but `{"request_id": "<id>", "score": <-1..1>,
    /// "comment"?: "<text>"}`; other fields are ignored.
    pub fn parse(body: &[u8]) -> Result<Feedback, GatewayError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        let Value::Object(o) = v else {
            return Err(GatewayError::invalid_request(
                "the body must be a JSON object",
                None,
            ));
        };
        let request_id = match o.get("request_id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
            Some(_) => {
                return Err(bad(
                    "request_id",
                    "`request_id` must be the x-request-id of an answer (1 to 128 characters)",
                ))
            }
            None => return Err(bad("request_id", "`request_id` is required")),
        };
        let score = match o.get("score") {
            Some(Value::Number(n)) => n.as_f64().filter(|s| (-1.0..=1.0).contains(s)),
            Some(_) => None,
            None => return Err(bad("score", "`score` is required")),
        }
        .ok_or_else(|| bad("score", "`score` must be a number from -1 to 1"))?;
        match o.get("comment") {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if c.chars().count() <= MAX_COMMENT_CHARS => {}
            Some(_) => {
                return Err(bad(
                    "comment",
                    format!("`comment` must be a string of at most {MAX_COMMENT_CHARS} characters"),
                ))
            }
        }
        Ok(Feedback { request_id, score })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversations::MemoryConversations;

    #[test]
    fn feedback_bodies_are_checked_field_by_field() {
        let ok = Feedback::parse(br#"{"request_id":"r1","score":-0.5,"comment":"meh","x":1}"#);
        assert_eq!(
            ok.unwrap(),
            Feedback {
                request_id: "r1".into(),
                score: -0.5
            }
        );
        assert!(Feedback::parse(br#"{"request_id":"r1","score":1}"#).is_ok());
        let long = "é".repeat(MAX_COMMENT_CHARS);
        let body = serde_json::json!({"request_id": "r", "score": 0, "comment": long});
        assert!(Feedback::parse(body.to_string().as_bytes()).is_ok());
        for (body, field) in [
            (r#"{"score":1}"#.to_owned(), Some("request_id")),
            (
                r#"{"request_id":7,"score":1}"#.to_owned(),
                Some("request_id"),
            ),
            (r#"{"request_id":"r"}"#.to_owned(), Some("score")),
            (
                r#"{"request_id":"r","score":1.5}"#.to_owned(),
                Some("score"),
            ),
            (
                r#"{"request_id":"r","score":"1"}"#.to_owned(),
                Some("score"),
            ),
            (
                serde_json::json!({"request_id": "r", "score": 0, "comment": "x".repeat(2001)})
                    .to_string(),
                Some("comment"),
            ),
            ("[1]".to_owned(), None),
        ] {
            let e = Feedback::parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.to_json()["error"]["param"].as_str(), field, "{body}");
        }
        assert_eq!(Feedback::parse(b"{").unwrap_err().code(), "invalid_json");
    }

    #[tokio::test]
    async fn a_record_is_found_once_and_only_by_its_client() {
        let store = MemoryConversations::default();
        let r = Record {
            scenario: "s".into(),
            variant: "e/a".into(),
        };
        remember(&store, Some("app"), "id1", &r).await;
        assert_eq!(take(&store, Some("other"), "id1").await, None);
        assert_eq!(take(&store, None, "id1").await, None);
        assert_eq!(take(&store, Some("app"), "id1").await, Some(r));
        assert_eq!(take(&store, Some("app"), "id1").await, None);
    }
}
