//! `MockOpenAi`'s other doors: `/v1/embeddings` (deterministic vectors, as floats or as
//! base64 of little-endian f32 like OpenAI) and `/v1/completions` (legacy text completions,
//! JSON or SSE), with the same recording and fault knobs as chat.
//!
//! Float vectors are written with trailing zeros (`0.2500000`): a relay that re-encoded the
//! numbers would change the bytes.

use super::{receive, Knobs, MockState, StreamWatch, MOCK_CREATED};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Dimensions of a vector when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 8;

/// The mock's vector for `text`: `dims` values in [-1, 1), a function of the text only.
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    let seed = text.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ b as u32).wrapping_mul(16_777_619)
    });
    (0..dims as u32)
        .map(|i| {
            let x = seed.wrapping_add(i.wrapping_mul(2_654_435_761)) % 128;
            // Multiples of 1/64 are exact in f32 and in seven decimals: the float and base64
            // forms of a vector are the same numbers.
            (x as f32 - 64.0) / 64.0
        })
        .collect()
}

/// The texts of an `input` (token ids stand for themselves).
fn inputs(input: &Value) -> Vec<String> {
    match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) => vec![input.to_string()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

pub async fn embeddings(
    State(state): State<Arc<MockState>>,
    req: axum::extract::Request,
) -> Response {
    let (req, _) = match receive(&state, req).await {
        Ok(r) => r,
        Err(failure) => return failure,
    };
    let model = req["model"].as_str().unwrap_or("mock-embed");
    let dims = req["dimensions"]
        .as_u64()
        .map_or(DEFAULT_DIMENSIONS, |d| d as usize);
    let base64 = req["encoding_format"].as_str() == Some("base64");
    let texts = inputs(&req["input"]);
    let data = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = vector(t, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                format!(
                    "\"{}\"",
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                )
            } else {
                let nums: Vec<String> = v.iter().map(|x| format!("{x:.7}")).collect();
                format!("[{}]", nums.join(", "))
            };
            format!(r#"{{"object": "embedding", "index": {i}, "embedding": {embedding}}}"#)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let tokens: u64 = texts.iter().map(|t| words(t)).sum();
    let body = format!(
        r#"{{"object": "list", "data": [{data}], "model": {}, "usage": {{"prompt_tokens": {tokens}, "total_tokens": {tokens}}}}}"#,
        Value::from(model)
    );
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

pub async fn completions(
    State(state): State<Arc<MockState>>,
    req: axum::extract::Request,
) -> Response {
    let (req, knobs) = match receive(&state, req).await {
        Ok(r) => r,
        Err(failure) => return failure,
    };
    let model = req["model"].as_str().unwrap_or("mock-model").to_owned();
    let prompt_tokens: u64 = inputs(&req["prompt"]).iter().map(|t| words(t)).sum();
    let completion_tokens = words(&knobs.content);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    let choice = |text: &str, finish: Value| json!({"text": text, "index": 0, "logprobs": null, "finish_reason": finish});
    let answer = |choices: Value, usage: Option<&Value>| {
        let mut a = json!({"id": "cmpl-mock", "object": "text_completion", "created": MOCK_CREATED,
                           "model": model, "choices": choices});
        if let Some(u) = usage {
            a["usage"] = u.clone();
        }
        a.to_string()
    };
    if !req["stream"].as_bool().unwrap_or(false) {
        let body = answer(json!([choice(&knobs.content, json!("stop"))]), Some(&usage));
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
    }
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let mut events = Vec::new();
    let parts = super::split_content(&knobs.content, knobs.chunks);
    let cut = knobs.cut_after.is_some_and(|k| k < parts.len());
    for (i, part) in parts.iter().enumerate() {
        if knobs.cut_after == Some(i) {
            break;
        }
        events.push(answer(json!([choice(part, Value::Null)]), None));
    }
    if !cut {
        events.push(answer(json!([choice("", json!("stop"))]), None));
        if include_usage {
            events.push(answer(json!([]), Some(&usage)));
        }
        if !knobs.omit_done {
            events.push("[DONE]".to_owned());
        }
    }
    sse(events, &knobs, StreamWatch::new(&state.abandoned))
}

fn sse(events: Vec<String>, knobs: &Knobs, watch: StreamWatch) -> Response {
    let interval: Duration = knobs.chunk_interval;
    let stream = futures::stream::unfold(
        (events.into_iter(), true, watch),
        move |(mut it, first, mut watch)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let ev = it.next()?;
            watch.finished = it.len() == 0;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {ev}\n\n"))),
                (it, false, watch),
            ))
        },
    );
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}
