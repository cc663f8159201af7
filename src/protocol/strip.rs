//! The usage the gateway asked for, taken back out of a relayed OpenAI stream.
//!
//! The gateway asks every OpenAI-compatible upstream for `stream_options.include_usage`, so
//! that limits, spend and metrics count real tokens. A client that did not ask must see the
//! stream OpenAI would have sent it: no usage chunk (the last chunk, `"choices": []` with the
//! totals) and no `"usage": null` member, which OpenAI adds to every other chunk once asked.
//! [`UsageStrip`] does that on the relayed bytes: an event without a `"usage"` key passes as
//! it is (a read of whole such events is relayed without a copy), the usage chunk is dropped,
//! and the `usage` member is cut out of the other chunks — the bytes around it copied, never
//! re-serialized. An event split across reads is held until its end arrives.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::ops::Range;

/// The longest event held back while its end has not arrived; past it the strip gives up and
/// relays the rest of the stream as it is (the stream watch stops at the same size).
const MAX_EVENT: usize = 16 << 20;

/// Removes upstream usage from a relayed stream, event by event, whatever the reads' sizes.
#[derive(Default)]
pub struct UsageStrip {
    /// Bytes of the event whose end has not arrived yet.
    pending: BytesMut,
    /// How much of `pending` has been scanned for the event's end.
    scanned: usize,
    /// The scan is in a line's first byte (an event starts at one).
    line_start: bool,
    /// The last byte scanned was a `\r` ending a line: a `\n` right after it belongs to it.
    cr: bool,
    /// The framing got out of hand: everything passes as it is.
    off: bool,
}

impl UsageStrip {
    pub fn new() -> Self {
        UsageStrip {
            line_start: true,
            ..Default::default()
        }
    }

    /// The bytes of `chunk` to relay now: its complete events, edited; the start of an event
    /// whose end is still to come is held.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.off {
            return chunk;
        }
        if self.pending.is_empty() {
            let (done, edited) = self.events(&chunk, 0);
            if done < chunk.len() {
                self.pending.extend_from_slice(&chunk[done..]);
                self.scanned = self.pending.len();
                self.check_size();
            }
            let head = edited.map_or_else(|| chunk.slice(..done), BytesMut::freeze);
            return self.with_released(head);
        }
        self.pending.extend_from_slice(&chunk);
        let mut pending = std::mem::take(&mut self.pending);
        let (done, edited) = self.events(&pending, self.scanned);
        let head = pending.split_to(done);
        self.scanned = pending.len();
        self.pending = pending;
        self.check_size();
        let head = edited.unwrap_or(head).freeze();
        self.with_released(head)
    }

    /// The end of the stream: whatever is held (an event that never ended) goes as it is.
    pub fn finish(&mut self) -> Bytes {
        self.scanned = 0;
        self.pending.split().freeze()
    }

    /// Past [`MAX_EVENT`] the held bytes are given up on: they go out with the next bytes and
    /// nothing more is edited.
    fn check_size(&mut self) {
        if self.pending.len() > MAX_EVENT {
            self.off = true;
        }
    }

    fn with_released(&mut self, head: Bytes) -> Bytes {
        if !self.off || self.pending.is_empty() {
            return head;
        }
        let mut all = BytesMut::with_capacity(head.len() + self.pending.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(&self.finish());
        all.freeze()
    }

    /// Edits the complete events at the start of `buf`, whose bytes before `from` were scanned
    /// already. Returns how many bytes those events span and, when any of them changed, their
    /// edited bytes.
    fn events(&mut self, buf: &[u8], mut from: usize) -> (usize, Option<BytesMut>) {
        let mut start = 0;
        let mut edited: Option<BytesMut> = None;
        while let Some(end) = self.scan(buf, from) {
            let event = &buf[start..end];
            match cut(event) {
                None => {
                    if let Some(out) = &mut edited {
                        out.extend_from_slice(event);
                    }
                }
                Some(r) => {
                    let out = edited.get_or_insert_with(|| {
                        let mut out = BytesMut::with_capacity(buf.len());
                        out.extend_from_slice(&buf[..start]);
                        out
                    });
                    out.extend_from_slice(&event[..r.start]);
                    out.extend_from_slice(&event[r.end..]);
                }
            }
            start = end;
            from = end;
        }
        (start, edited)
    }

    /// Scans `buf` from `from` for the end of an event (the line end of a blank line) and
    /// returns the index just past it. Line ends are `\n`, `\r\n` or `\r`, as in
    /// [`super::sse::SseParser`].
    fn scan(&mut self, buf: &[u8], from: usize) -> Option<usize> {
        let mut i = from;
        while i < buf.len() {
            let b = buf[i];
            if std::mem::take(&mut self.cr) && b == b'\n' {
                i += 1;
                continue;
            }
            if b == b'\n' || b == b'\r' {
                self.cr = b == b'\r';
                if std::mem::replace(&mut self.line_start, true) {
                    let mut end = i + 1;
                    if self.cr && buf.get(end) == Some(&b'\n') {
                        self.cr = false;
                        end += 1;
                    }
                    return Some(end);
                }
                i += 1;
            } else {
                self.line_start = false;
                match memchr::memchr2(b'\n', b'\r', &buf[i..]) {
                    Some(k) => i += k,
                    None => i = buf.len(),
                }
            }
        }
        None
    }
}

/// What the strip reads of a chunk: its top-level `choices` and `usage`, as they are written.
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
    /// `usage: null` too, so that its position is known.
    #[serde(borrow, default, deserialize_with = "present")]
    usage: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The bytes of one whole event (its line ends included) to remove: all of it for the usage
/// chunk, the `usage` member of any other chunk, nothing for an event without one.
fn cut(event: &[u8]) -> Option<Range<usize>> {
    // Most events of a stream whose client asked for no usage: nothing to parse.
    memmem::find(event, b"\"usage\"")?;
    let data = single_data(event)?;
    let json = &event[data.clone()];
    // `"usage":null` as the last member of the object (mock and vLLM chunks): the member is
    // known without a parse, since the object's closing brace is the data's last byte.
    const NULL_LAST: &[u8] = b",\"usage\":null}";
    let end = json.len() - json.iter().rev().take_while(|b| is_ws(**b)).count();
    if json[..end].ends_with(NULL_LAST) {
        let at = data.start + end - NULL_LAST.len();
        return Some(at..at + NULL_LAST.len() - 1);
    }
    let top: Top = serde_json::from_slice(json).ok()?;
    let usage = top.usage?;
    let value_start = usage.get().as_ptr() as usize - json.as_ptr() as usize;
    let value_end = value_start + usage.get().len();
    let no_choices = top
        .choices
        .is_none_or(|c| c.get().bytes().all(|b| b == b'[' || b == b']' || is_ws(b)));
    if usage.get() != "null" && no_choices {
        return Some(0..event.len());
    }
    let member = member(json, value_start, value_end)?;
    Some(data.start + member.start..data.start + member.end)
}

/// The value range of the event's only `data:` line; `None` when it has several (their data
/// is joined; such events are relayed unchanged) or none.
fn single_data(event: &[u8]) -> Option<Range<usize>> {
    let mut found = None;
    let mut at = 0;
    while at < event.len() {
        let len = memchr::memchr2(b'\n', b'\r', &event[at..]).unwrap_or(event.len() - at);
        let line = &event[at..at + len];
        if let Some(value) = line.strip_prefix(b"data:") {
            if found.is_some() {
                return None;
            }
            let skip = usize::from(value.first() == Some(&b' '));
            found = Some(at + 5 + skip..at + len);
        }
        at += len + 1;
    }
    found
}

/// The bytes of the member whose value spans `value_start..value_end` in the object `json`:
/// from the comma before its key to the end of its value, or, for the first member, from its
/// key to the comma after its value.
fn member(json: &[u8], value_start: usize, value_end: usize) -> Option<Range<usize>> {
    let before = |mut i: usize| {
        while i > 0 && is_ws(json[i - 1]) {
            i -= 1;
        }
        i
    };
    let colon = before(value_start);
    if colon == 0 || json[colon - 1] != b':' {
        return None;
    }
    let key_end = before(colon - 1);
    let key_start = key_end.checked_sub(7)?;
    if &json[key_start..key_end] != b"\"usage\"" {
        return None;
    }
    let prev = before(key_start);
    match json.get(prev.checked_sub(1)?)? {
        b',' => Some(prev - 1..value_end),
        b'{' => {
            let mut end = value_end;
            while end < json.len() && is_ws(json[end]) {
                end += 1;
            }
            if json.get(end) == Some(&b',') {
                end += 1;
            }
            Some(key_start..end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What OpenAI sends once asked for usage: `"usage":null` on every chunk, the usage chunk
    /// last, CRLF on one event, a comment, and an `x_groq`-style nested usage that is not the
    /// top-level member.
    const ASKED: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"usage\":null,\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"usage\\\":null\"},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"usage\":{\"queue_time\":1}},\"usage\" : null }\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n",
    );

    /// The same stream as OpenAI sends it to a client that did not ask.
    const PLAIN: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"usage\\\":null\"},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"usage\":{\"queue_time\":1}} }\n\n",
        "data: [DONE]\n\n",
    );

    fn run(pieces: &[&[u8]]) -> String {
        let mut s = UsageStrip::new();
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(p)));
        }
        out.extend_from_slice(&s.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn usage_is_removed_wherever_the_reads_are_cut() {
        let bytes = ASKED.as_bytes();
        assert_eq!(run(&[bytes]), PLAIN);
        for cut in 0..=bytes.len() {
            assert_eq!(run(&[&bytes[..cut], &bytes[cut..]]), PLAIN, "cut at {cut}");
        }
        for a in (0..bytes.len()).step_by(7) {
            for b in (a..=bytes.len()).step_by(11) {
                let pieces = [&bytes[..a], &bytes[a..b], &bytes[b..]];
                assert_eq!(run(&pieces), PLAIN, "cuts at {a}, {b}");
            }
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles), PLAIN);
        for json in PLAIN
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("data: {"))
        {
            serde_json::from_str::<Value>(&format!("{{{json}")).expect("still JSON");
        }
    }

    #[test]
    fn a_read_of_whole_unchanged_events_is_relayed_without_a_copy() {
        let mut s = UsageStrip::new();
        let read = Bytes::from_static(PLAIN.as_bytes());
        let out = s.push(read.clone());
        assert_eq!(out.as_ptr(), read.as_ptr());
        assert_eq!(out.len(), read.len());
        // An event cut mid-way is held until its end, then relayed whole.
        let (a, b) = PLAIN.split_at(30);
        assert!(s.push(Bytes::from_static(a.as_bytes())).is_empty());
        assert_eq!(
            s.push(Bytes::from_static(b.as_bytes())),
            Bytes::from_static(PLAIN.as_bytes())
        );
    }

    #[test]
    fn usage_on_a_content_chunk_and_usage_first_are_cut_as_members() {
        let finish_with_usage = "data: {\"usage\":{\"prompt_tokens\":1},\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(
            run(&[finish_with_usage.as_bytes()]),
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
        );
        let usage_only = "data:{\"usage\":{\"prompt_tokens\":1}}\r\r";
        assert_eq!(run(&[usage_only.as_bytes()]), "");
        let unterminated = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
        assert_eq!(run(&[unterminated.as_bytes()]), unterminated);
    }

    #[test]
    fn what_is_not_a_usage_member_passes_unchanged() {
        for event in [
            "data: {\"error\":{\"message\":\"usage\"}}\n\n",
            "data: not json \"usage\"\n\n",
            "data: {\"a\":1,\n",
            "data: {\"usage\":null}\ndata: {}\n\n",
            "event: x\n\n",
        ] {
            assert_eq!(run(&[event.as_bytes()]), event);
        }
    }
}
