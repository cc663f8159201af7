//! Observation of OpenAI-shaped answers that are relayed as they are: whether a stream is
//! established (first content or terminal event), whether it is complete (`[DONE]`, or every
//! choice's finish reason and then a clean end of body), the usage it reported, the text
//! delivered, and the answer rebuilt for the cache. Each event is parsed once, into borrowed
//! views; the relayed bytes are never touched. Legacy completions (`choices[].text`) are
//! observed like chat chunks.

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
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl UsageView {
    fn cached(&self) -> Option<u64> {
        self.prompt_tokens_details.as_ref()?.cached_tokens
    }

    fn reasoning(&self) -> Option<u64> {
        self.completion_tokens_details.as_ref()?.reasoning_tokens
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            total_tokens: self.total_tokens.unwrap_or(0),
            cached_tokens: self.cached().unwrap_or(0),
            reasoning_tokens: self.reasoning().unwrap_or(0),
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
    /// A legacy completion's text (`/v1/completions`).
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
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
                    || non_empty(&c.text)
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
    /// Prompt tokens read from the upstream's prompt cache (part of `prompt`).
    pub cached: Option<u64>,
    /// Completion tokens spent reasoning (part of `completion`).
    pub reasoning: Option<u64>,
}

impl Tokens {
    fn take(&mut self, u: &UsageView) {
        self.prompt = u.prompt_tokens.or(self.prompt);
        self.completion = u.completion_tokens.or(self.completion);
        self.cached = u.cached().or(self.cached);
        self.reasoning = u.reasoning().or(self.reasoning);
    }
}

/// The choices of a stream, by index: which appeared and which have their finish reason.
/// OpenAI allows `n` up to 128; a higher index is not tracked, and such a stream is complete
/// only with `[DONE]`.
#[derive(Default)]
struct Choices {
    seen: u128,
    finished: u128,
    untracked: bool,
}

impl Choices {
    fn note(&mut self, index: u64, finished: bool) {
        if index >= u128::BITS.into() {
            self.untracked = true;
            return;
        }
        let bit = 1u128 << index;
        self.seen |= bit;
        if finished {
            self.finished |= bit;
        }
    }

    fn all_finished(&self) -> bool {
        !self.untracked && self.seen != 0 && self.seen & !self.finished == 0
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
    choices: Choices,
    /// The upstream ended its body between lines (see [`StreamWatch::end`]).
    clean_end: bool,
    /// An in-stream error that arrived before any content.
    pub early_error: Option<String>,
    pub tokens: Tokens,
    /// The answer rebuilt from the chunks, when it is wanted (for the cache).
    pub answer: Option<Answer>,
    /// The stream cannot be reduced to one answer (several choices, tool calls, too large).
    pub uncacheable: bool,
}

impl StreamWatch {
    /// `keep_answer`: rebuild the answer (for the cache).
    pub fn new(keep_answer: bool) -> Self {
        StreamWatch {
            answer: keep_answer.then(Answer::default),
            ..Default::default()
        }
    }

    /// Observes one piece of the relayed stream; text that reached the answer is appended to
    /// `delivered` as well, when given.
    pub fn feed(&mut self, chunk: &[u8], delivered: Option<&mut String>) {
        if self.broken {
            return;
        }
        if self.parser.push(chunk, &mut self.events).is_err() {
            self.broken = true;
            self.established = true;
        }
        self.observe(delivered);
    }

    /// Observes the events the parser completed; returns how many there were.
    fn observe(&mut self, mut delivered: Option<&mut String>) -> usize {
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
            for c in &v.choices {
                self.choices.note(c.index, c.finish_reason.is_some());
                self.finished |= c.finish_reason.is_some();
            }
            if let Some(d) = delivered.as_deref_mut() {
                add_delivered(d, &v);
            }
            if let Some(a) = &mut self.answer {
                add_chunk(a, &mut self.uncacheable, &v);
            }
        }
        let n = events.len();
        self.events = events;
        self.events.clear();
        n
    }

    /// The relayed stream ends here: `eof` when the upstream ended its body, not when the
    /// gateway cuts the stream off. Returns the bytes that close an event the last piece left
    /// open (or cut mid-line); the relay sends them on, so the client sees the events the watch
    /// saw, and whatever the gateway appends is an event of its own rather than part of the
    /// upstream's last one.
    pub fn end(&mut self, eof: bool, delivered: Option<&mut String>) -> &'static [u8] {
        // Two line ends: the first may only complete a `\r\n` whose `\r` came last.
        const CLOSE: &[u8] = b"\n\n";
        if self.broken {
            return b"";
        }
        let mid_line = self.parser.pending() > 0;
        if self.parser.push(CLOSE, &mut self.events).is_err() {
            self.broken = true;
        }
        let left_open = self.observe(delivered) > 0;
        // A line cut off is not a clean end: whatever it held arrived truncated.
        self.clean_end = eof && !mid_line;
        if mid_line || left_open {
            CLOSE
        } else {
            b""
        }
    }

    /// Whether the stream is whole: `[DONE]` arrived, or the upstream ended its body cleanly
    /// (see [`StreamWatch::end`]) after every choice it started had its finish reason. Some
    /// OpenAI-compatible servers never send `[DONE]`; the gateway adds it for them.
    pub fn complete(&self) -> bool {
        self.done || (self.clean_end && !self.broken && self.choices.all_finished())
    }

    /// The rebuilt answer, if the stream is complete and can be stored as one answer.
    pub fn complete_answer(&mut self) -> Option<Answer> {
        let complete = self.complete() && !self.broken && !self.uncacheable;
        let a = self.answer.take()?;
        (complete && !a.finish_reason.is_empty()).then_some(a)
    }
}

/// Adds the content of one streamed chunk to the text delivered (what is charged when the
/// upstream reports no usage), up to [`MAX_KEPT`].
fn add_delivered(d: &mut String, v: &View<'_>) {
    for c in &v.choices {
        // A chat delta's content, or a legacy completion chunk's text.
        let text = c
            .delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .or(c.text.as_deref());
        if let Some(t) = text.filter(|t| d.len() + t.len() <= MAX_KEPT) {
            d.push_str(t);
        }
    }
}

/// Adds one streamed chunk to an answer; multi-choice streams and tool calls are not part of
/// the normalized answer.
fn add_chunk(a: &mut Answer, uncacheable: &mut bool, v: &View<'_>) {
    // Every chunk names the model; it is copied once, not once a chunk.
    if let Some(m) = v.model.as_deref().filter(|m| *m != a.model) {
        a.model = m.to_owned();
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
        let (text, thought) = match (&choice.delta, &choice.text) {
            (Some(d), _) => {
                if d.tool_calls.is_some() {
                    *uncacheable = true;
                }
                (
                    d.content.as_deref().unwrap_or_default(),
                    d.reasoning_content.as_deref().unwrap_or_default(),
                )
            }
            (None, Some(t)) => (t.as_ref(), ""),
            (None, None) => continue,
        };
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
    /// The body is a JSON object without an `error`: its bytes may be stored as they are.
    pub whole: bool,
}

/// `keep`: also extract the text and the answer (cache, charging); usage is always read.
pub fn completion(body: &[u8], keep: bool) -> Completion {
    let mut tokens = Tokens::default();
    let Some(v) = view(body) else {
        return Completion {
            tokens,
            text: String::new(),
            answer: None,
            whole: false,
        };
    };
    if let Some(u) = &v.usage {
        tokens.take(u);
    }
    let whole = v.error.is_none();
    if !keep {
        return Completion {
            tokens,
            text: String::new(),
            answer: None,
            whole,
        };
    }
    let message = |c: &ChoiceView<'_>| {
        c.message
            .as_ref()
            .and_then(|m| m.content.as_deref())
            .map(str::to_owned)
    };
    let text = v
        .choices
        .first()
        .and_then(|c| message(c).or_else(|| c.text.as_deref().map(str::to_owned)))
        .unwrap_or_default();
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
        whole,
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
    fn delivered_text_and_token_details_need_no_rebuilt_answer() {
        let mut w = StreamWatch::new(false);
        let mut delivered = String::new();
        w.feed(STREAM.as_bytes(), Some(&mut delivered));
        assert_eq!(delivered, "Helélo");
        assert!(w.answer.is_none());
        assert_eq!((w.tokens.cached, w.tokens.reasoning), (None, None));
        w.feed(
            br#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":6},"completion_tokens_details":{"reasoning_tokens":3}}}

"#,
            None,
        );
        let t = w.tokens;
        assert_eq!(
            (t.prompt, t.completion, t.cached, t.reasoning),
            (Some(9), Some(4), Some(6), Some(3))
        );
        let c = completion(
            br#"{"choices":[{"index":0,"message":{"content":"a"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":1}}}"#,
            true,
        );
        assert_eq!((c.tokens.cached, c.tokens.reasoning), (Some(1), None));
        assert_eq!(c.answer.unwrap().usage.cached_tokens, 1);
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

    /// `STREAM` without its `[DONE]`.
    fn without_done() -> &'static str {
        STREAM
            .strip_suffix("data: [DONE]\n\n")
            .expect("STREAM ends with [DONE]")
    }

    #[test]
    fn a_finished_stream_that_ends_cleanly_without_done_is_complete() {
        let body = without_done();
        for cut in 0..body.len() {
            let mut w = StreamWatch::new(true);
            let (a, b) = body.as_bytes().split_at(cut);
            w.feed(a, None);
            w.feed(b, None);
            assert!(!w.complete(), "not before the end of body, cut {cut}");
            assert_eq!(w.end(true, None), b"", "nothing left open, cut {cut}");
            assert!(w.complete() && !w.done, "cut {cut}");
            let answer = w.complete_answer().expect("cacheable");
            assert_eq!(
                (answer.content.as_str(), answer.usage.total_tokens),
                ("Helélo", 5)
            );
        }
        // The gateway cutting the stream off is no clean end.
        let mut w = StreamWatch::new(true);
        w.feed(body.as_bytes(), None);
        assert_eq!(w.end(false, None), b"");
        assert!(!w.complete() && w.complete_answer().is_none());
    }

    #[test]
    fn without_a_finish_reason_or_mid_line_the_end_is_no_completion() {
        let unfinished: String = STREAM.split_inclusive("\n\n").take(3).collect();
        let mut w = StreamWatch::new(true);
        w.feed(unfinished.as_bytes(), None);
        assert_eq!(w.end(true, None), b"");
        assert!(!w.complete() && w.complete_answer().is_none());

        // Cut inside the usage line: its event is lost, and the gateway's tail must not join it.
        let body = without_done();
        let mut w = StreamWatch::new(true);
        w.feed(&body.as_bytes()[..body.len() - 20], None);
        assert_eq!(w.end(true, None), b"\n\n");
        assert!(w.finished && !w.complete());
    }

    #[test]
    fn an_event_left_open_at_the_end_is_closed_and_counted() {
        let body = without_done();
        // The usage event lacks its blank line (`\n`), or even its line end (`\r`, then EOF).
        for open in [
            &body[..body.len() - 1],
            &format!("{}\r", &body[..body.len() - 2]),
        ] {
            let mut w = StreamWatch::new(false);
            w.feed(open.as_bytes(), None);
            assert_eq!(w.tokens.completion, None, "{open:?}");
            assert_eq!(w.end(true, None), b"\n\n", "{open:?}");
            assert_eq!(w.tokens.completion, Some(2), "{open:?}");
            assert!(w.complete(), "{open:?}");
        }
    }

    #[test]
    fn every_choice_needs_its_finish_reason() {
        let chunk = |i: u64, finish: &str| {
            format!("data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":\"x\"}},\"finish_reason\":{finish}}}]}}\n\n")
        };
        let mut w = StreamWatch::new(false);
        for piece in [chunk(0, "null"), chunk(1, "null"), chunk(0, "\"stop\"")] {
            w.feed(piece.as_bytes(), None);
        }
        let mut both = StreamWatch::new(false);
        for piece in [
            chunk(0, "null"),
            chunk(1, "\"length\""),
            chunk(0, "\"stop\""),
        ] {
            both.feed(piece.as_bytes(), None);
        }
        let mut untracked = StreamWatch::new(false);
        untracked.feed(chunk(500, "\"stop\"").as_bytes(), None);
        for w in [&mut w, &mut both, &mut untracked] {
            w.end(true, None);
        }
        assert!(w.finished && !w.complete(), "choice 1 never finished");
        assert!(both.complete());
        assert!(!untracked.complete());
    }

    #[test]
    fn a_legacy_completion_stream_is_established_by_its_text() {
        let chunk = |text: &str, finish: &str| {
            format!("data: {{\"object\":\"text_completion\",\"choices\":[{{\"text\":\"{text}\",\"index\":0,\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n")
        };
        let mut w = StreamWatch::new(true);
        let mut delivered = String::new();
        w.feed(chunk("", "null").as_bytes(), Some(&mut delivered));
        assert!(!w.established, "an empty text is no content");
        w.feed(chunk("Hel", "null").as_bytes(), Some(&mut delivered));
        assert!(w.established);
        w.feed(chunk("lo", "\"stop\"").as_bytes(), Some(&mut delivered));
        w.feed(b"data: [DONE]\n\n", Some(&mut delivered));
        assert!(w.complete());
        assert_eq!(delivered, "Hello");
        let whole = completion(
            br#"{"object":"text_completion","choices":[{"text":"hi","index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#,
            true,
        );
        assert_eq!((whole.text.as_str(), whole.tokens.prompt), ("hi", Some(2)));
        assert!(whole.whole);
        assert!(!completion(br#"{"error":{"message":"x"}}"#, true).whole);
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
