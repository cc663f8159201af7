//! Observation of OpenAI-shaped answers that are relayed as they are: whether a stream is
//! established (first content or terminal event), whether it ended with `[DONE]`, the usage it
//! reported, the text delivered, and the answer rebuilt for the cache. Each event is parsed
//! once, into borrowed views; the relayed bytes are never touched.

use super::answer::Answer;
use super::chunks::Usage;
use super::sse::{SseEvent, SseParser};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The most answer text kept for the cache or for charging; past it nothing more is kept.
pub const MAX_KEPT: usize = 64 << 20;

#[derive(Deserialize, Default)]
struct UsageView {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl UsageView {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            total_tokens: self.total_tokens.unwrap_or(0),
            cached_tokens: 0,
        }
    }
}

#[derive(Deserialize, Default)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
    #[serde(borrow, default)]
    message: Option<DeltaView<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct ErrorView<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// One chunk or completion, as far as the gateway looks at it.
#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    choices: Vec<ChoiceView<'a>>,
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

fn view(data: &[u8]) -> Option<View<'_>> {
    serde_json::from_slice(data).ok()
}

fn non_empty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_deref().is_some_and(|t| !t.is_empty())
}

impl View<'_> {
    /// Whether the chunk carries content or ends the answer (the role chunk does neither).
    fn is_content(&self) -> bool {
        self.usage.is_some()
            || self.choices.iter().any(|c| {
                c.finish_reason.is_some()
                    || c.delta.as_ref().is_some_and(|d| {
                        non_empty(&d.content)
                            || non_empty(&d.reasoning_content)
                            || non_empty(&d.refusal)
                            || d.tool_calls.is_some()
                            || d.function_call.is_some()
                    })
            })
    }

    fn error_message(&self) -> Option<String> {
        let raw = self.error?;
        let e: ErrorView = serde_json::from_str(raw.get()).unwrap_or_default();
        Some(
            e.message
                .map_or_else(|| "error event".to_owned(), Cow::into_owned),
        )
    }
}

/// What the upstream reported as usage, merged over earlier reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tokens {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl Tokens {
    fn take(&mut self, u: &UsageView) {
        self.prompt = u.prompt_tokens.or(self.prompt);
        self.completion = u.completion_tokens.or(self.completion);
    }
}

/// Watches a relayed OpenAI stream without altering it.
#[derive(Default)]
pub struct StreamWatch {
    parser: SseParser,
    events: Vec<SseEvent>,
    /// `data: [DONE]` arrived.
    pub done: bool,
    /// The framing could not be parsed: relaying goes on, observation stops.
    pub broken: bool,
    /// A content, finish or terminal event has arrived: the stream is established.
    pub established: bool,
    /// A finish reason arrived.
    pub finished: bool,
    /// An in-stream error that arrived before any content.
    pub early_error: Option<String>,
    pub tokens: Tokens,
    /// The answer rebuilt from the chunks, when it is wanted (cache or token charging).
    pub answer: Option<Answer>,
    /// The stream cannot be reduced to one answer (several choices, tool calls, too large).
    pub uncacheable: bool,
}

impl StreamWatch {
    /// `keep_answer`: rebuild the answer (for the cache, or to charge delivered text).
    pub fn new(keep_answer: bool) -> Self {
        StreamWatch {
            answer: keep_answer.then(Answer::default),
            ..Default::default()
        }
    }

    /// Observes one piece of the relayed stream; text that reached the answer is appended to
    /// `delivered` as well, when given.
    pub fn feed(&mut self, chunk: &[u8], mut delivered: Option<&mut String>) {
        if self.broken {
            return;
        }
        if self.parser.push(chunk, &mut self.events).is_err() {
            self.broken = true;
            self.established = true;
        }
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            if ev.is_done() {
                self.done = true;
                self.established = true;
                continue;
            }
            if ev.data.is_empty() {
                continue;
            }
            let Some(v) = view(ev.data.as_bytes()) else {
                continue;
            };
            if !self.established {
                match v.error_message() {
                    Some(e) => self.early_error = Some(e),
                    None => self.established = v.is_content(),
                }
            }
            if let Some(u) = &v.usage {
                self.tokens.take(u);
            }
            if v.choices.iter().any(|c| c.finish_reason.is_some()) {
                self.finished = true;
            }
            if let Some(a) = &mut self.answer {
                let before = a.content.len();
                add_chunk(a, &mut self.uncacheable, &v);
                if let Some(d) = delivered.as_deref_mut() {
                    d.push_str(&a.content[before..]);
                }
            }
        }
        self.events = events;
        self.events.clear();
    }

    /// The rebuilt answer, if the stream ended properly and can be stored as one answer.
    pub fn complete_answer(&mut self) -> Option<Answer> {
        let a = self.answer.take()?;
        (self.done && !self.broken && !self.uncacheable && !a.finish_reason.is_empty()).then_some(a)
    }
}

/// Adds one streamed chunk to an answer; multi-choice streams and tool calls are not part of
/// the normalized answer.
fn add_chunk(a: &mut Answer, uncacheable: &mut bool, v: &View<'_>) {
    if let Some(m) = &v.model {
        a.model = m.to_string();
    }
    if let Some(c) = v.created {
        a.created = c;
    }
    if let Some(u) = &v.usage {
        a.usage = u.usage();
    }
    for choice in &v.choices {
        if choice.index != 0 {
            *uncacheable = true;
        }
        let Some(d) = &choice.delta else { continue };
        if d.tool_calls.is_some() {
            *uncacheable = true;
        }
        let text = d.content.as_deref().unwrap_or_default();
        let thought = d.reasoning_content.as_deref().unwrap_or_default();
        // Past the cap the answer is neither cached nor kept: memory stays bounded.
        if a.content.len() + a.reasoning.len() + text.len() + thought.len() > MAX_KEPT {
            *uncacheable = true;
            continue;
        }
        a.content.push_str(text);
        a.reasoning.push_str(thought);
        if let Some(f) = &choice.finish_reason {
            a.finish_reason = f.to_string();
        }
    }
}

/// A whole `chat.completion`, observed once: its usage, its first choice's text, and the
/// answer for the cache when it has exactly one finished choice.
pub struct Completion {
    pub tokens: Tokens,
    pub text: String,
    pub answer: Option<Answer>,
}

/// `keep`: also extract the text and the answer (cache, charging); usage is always read.
pub fn completion(body: &[u8], keep: bool) -> Completion {
    let mut tokens = Tokens::default();
    let Some(v) = view(body) else {
        return Completion {
            tokens,
            text: String::new(),
            answer: None,
        };
    };
    if let Some(u) = &v.usage {
        tokens.take(u);
    }
    if !keep {
        return Completion {
            tokens,
            text: String::new(),
            answer: None,
        };
    }
    let message = |c: &ChoiceView<'_>| {
        c.message
            .as_ref()
            .and_then(|m| m.content.as_deref())
            .map(str::to_owned)
    };
    let text = v.choices.first().and_then(message).unwrap_or_default();
    let answer = match v.choices.as_slice() {
        [choice] => match (&choice.finish_reason, message(choice)) {
            (Some(finish), Some(content)) => Some(Answer {
                content,
                reasoning: choice
                    .message
                    .as_ref()
                    .and_then(|m| m.reasoning_content.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                finish_reason: finish.to_string(),
                usage: v.usage.as_ref().map(UsageView::usage).unwrap_or_default(),
                model: v.model.as_deref().unwrap_or_default().to_owned(),
                created: v.created.unwrap_or(0),
            }),
            _ => None,
        },
        _ => None,
    };
    Completion {
        tokens,
        text,
        answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\u00e9\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":5,\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn a_stream_split_anywhere_is_observed_the_same() {
        for cut in 0..STREAM.len() {
            let mut w = StreamWatch::new(true);
            let mut delivered = String::new();
            let (a, b) = STREAM.as_bytes().split_at(cut);
            w.feed(a, Some(&mut delivered));
            w.feed(b, Some(&mut delivered));
            assert!(
                w.done && w.established && w.finished && !w.broken,
                "cut {cut}"
            );
            assert_eq!((w.tokens.prompt, w.tokens.completion), (Some(3), Some(2)));
            assert_eq!(delivered, "Helélo");
            let answer = w.complete_answer().expect("complete");
            assert_eq!(answer.content, "Helélo");
            assert_eq!(answer.finish_reason, "stop");
            assert_eq!((answer.model.as_str(), answer.created), ("m", 5));
        }
    }

    #[test]
    fn the_role_chunk_does_not_establish_and_an_early_error_is_seen() {
        let mut w = StreamWatch::new(false);
        w.feed(STREAM.split("\n\n").next().unwrap().as_bytes(), None);
        w.feed(b"\n\n", None);
        assert!(!w.established);
        w.feed(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n", None);
        assert_eq!(w.early_error.as_deref(), Some("overloaded"));
        let mut w = StreamWatch::new(true);
        w.feed(b"data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", None);
        assert!(w.established);
        assert!(
            w.complete_answer().is_none(),
            "a second choice is not cacheable"
        );
    }

    #[test]
    fn a_completion_is_read_once() {
        let c = completion(
            br#"{"model":"m","created":9,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
            true,
        );
        assert_eq!(c.text, "hi");
        assert_eq!(c.tokens.completion, Some(1));
        assert_eq!(c.answer.unwrap().usage.total_tokens, 2);
        assert!(completion(b"not json", true).answer.is_none());
    }
}
