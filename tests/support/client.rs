//! The one way tests talk to the gateway's chat endpoint: a small request builder and the
//! answer it collects (status, headers, body text), with readers for JSON and SSE bodies.
#![allow(dead_code)]

use super::{sse_data, TestGateway};
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::Duration;

/// A client with the tests' usual 20 s timeout (a hung gateway fails the test, never the CI job).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `POST /v1/chat/completions` on `gw`: `chat(&gw).key("k").body(json!(…)).send().await`.
pub fn chat(gw: &TestGateway) -> Chat {
    Chat::at(&gw.api)
}

pub struct Chat {
    client: Option<reqwest::Client>,
    url: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<Body>,
    timeout: Option<Duration>,
}

enum Body {
    Json(Value),
    /// Sent byte for byte with `content-type: application/json`.
    Raw(String),
}

impl Chat {
    /// The chat endpoint of the gateway whose API listener is `api` (`http://host:port`).
    pub fn at(api: &str) -> Chat {
        Chat::at_path(api, "/v1/chat/completions")
    }

    /// Another `POST` endpoint of that listener (`/v1/embeddings`, …), built the same way.
    pub fn at_path(api: &str, path: &str) -> Chat {
        Chat {
            client: None,
            url: format!("{api}{path}"),
            key: None,
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// Sends with this client (keep-alive across requests) instead of a fresh one.
    pub fn client(mut self, client: &reqwest::Client) -> Self {
        self.client = Some(client.clone());
        self
    }

    /// `Authorization: Bearer <key>`.
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(Body::Json(body));
        self
    }

    /// A body sent exactly as given (malformed JSON, byte-exact escapes, huge bodies).
    pub fn raw_body(mut self, text: impl Into<String>) -> Self {
        self.body = Some(Body::Raw(text.into()));
        self
    }

    /// A whole-request timeout instead of the usual 20 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends and reads the whole answer.
    pub async fn send(self) -> Answer {
        Answer::read(self.send_raw().await).await
    }

    /// Sends and returns the response with its body unread (streaming reads, disconnects).
    pub async fn send_raw(self) -> reqwest::Response {
        self.try_send_raw().await.expect("the gateway answers")
    }

    /// Like `send_raw`, for tests that expect the request itself to fail (client timeouts).
    pub async fn try_send_raw(self) -> reqwest::Result<reqwest::Response> {
        let client = self.client.unwrap_or_else(http);
        let mut r = client.post(&self.url);
        if let Some(key) = &self.key {
            r = r.bearer_auth(key);
        }
        for (name, value) in &self.headers {
            r = r.header(name, value);
        }
        r = match self.body {
            Some(Body::Json(v)) => r.json(&v),
            Some(Body::Raw(text)) => r.header("content-type", "application/json").body(text),
            None => r,
        };
        if let Some(t) = self.timeout {
            r = r.timeout(t);
        }
        r.send().await
    }
}

/// A complete answer from the gateway.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    /// Reads the rest of `resp`.
    pub async fn read(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("the answer's body is readable");
        Answer {
            status,
            headers,
            text,
        }
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of an OpenAI-shaped error body, or "".
    pub fn error_code(&self) -> String {
        serde_json::from_str::<Value>(&self.text).unwrap_or_default()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn is_sse(&self) -> bool {
        self.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
    }

    /// The `data:` payloads of an SSE body, `[DONE]` included.
    pub fn sse(&self) -> Vec<String> {
        sse_data(&self.text)
    }

    /// The JSON events of an SSE body (everything but `[DONE]`).
    pub fn sse_events(&self) -> Vec<Value> {
        self.sse()
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| {
                serde_json::from_str(d).unwrap_or_else(|e| panic!("event is not JSON ({e}): {d}"))
            })
            .collect()
    }

    /// The answer's text: `delta.content` of every chunk of a stream, or `message.content`.
    pub fn content(&self) -> String {
        if self.is_sse() {
            self.sse_events()
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect()
        } else {
            self.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// `(event, data)` pairs of a named-event SSE body (Anthropic Messages, Responses API): the
/// `event:` name and the parsed `data:`; comments and blank events are skipped.
pub fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.starts_with(':'))
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_owned();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .unwrap_or(Value::Null);
            (name, data)
        })
        .collect()
}
