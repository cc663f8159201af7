//! Placeholders back to the values they stand for, in an answer that may arrive in pieces.
//!
//! A placeholder (`[PHONE_1]`) can be cut anywhere by the upstream's chunking (`[PHO` +
//! `NE_1]`). The restorer holds back the tail of a piece that could still become a placeholder —
//! at most the longest placeholder's length — and lets everything else through at once, so a
//! stream is delayed by a few characters only where a `[` is seen. A bracket that turns out not
//! to be a known placeholder (an upstream's own `[NOTE]`, a placeholder it invented) is passed on
//! unchanged.

use super::Mapping;
use std::sync::Arc;

/// Restores one text stream (an answer's content, its reasoning, or one tool call's arguments).
#[derive(Debug)]
pub struct Restorer {
    map: Arc<Mapping>,
    held: String,
}

impl Restorer {
    pub fn new(map: Arc<Mapping>) -> Restorer {
        Restorer {
            map,
            held: String::new(),
        }
    }

    /// The restored text of `piece` that can be passed on now.
    pub fn push(&mut self, piece: &str) -> String {
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(piece);
        let mut out = String::with_capacity(buf.len());
        let keep = restore_with(&self.map, &buf, &mut out);
        self.held = buf[keep..].to_owned();
        out
    }

    /// What is still held, at the end of the stream (a placeholder never completed).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whole text, restored (non-stream answers).
    pub fn restore(map: &Mapping, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let keep = restore_with(map, text, &mut out);
        out.push_str(&text[keep..]);
        out
    }
}

/// Copies `buf` into `out` with every known placeholder replaced; returns where the held tail
/// (a possible placeholder not yet complete) starts.
fn restore_with(map: &Mapping, buf: &str, out: &mut String) -> usize {
    let longest = map.longest();
    let bytes = buf.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    // `[` and `]` are ASCII: a byte search never lands inside a multi-byte character.
    while let Some(off) = memchr::memchr(b'[', &bytes[i..]) {
        let start = i + off;
        let window_end = (start + longest).min(bytes.len());
        match memchr::memchr(b']', &bytes[start..window_end]) {
            Some(close) => {
                let end = start + close + 1;
                if let Some(value) = map.value_of(&buf[start..end]) {
                    out.push_str(&buf[copied..start]);
                    out.push_str(value);
                    copied = end;
                    i = end;
                } else {
                    i = start + 1;
                }
            }
            None if longest > 0
                && bytes.len() - start < longest
                && could_become_placeholder(&buf[start..]) =>
            {
                out.push_str(&buf[copied..start]);
                return start;
            }
            None => i = start + 1,
        }
    }
    out.push_str(&buf[copied..]);
    buf.len()
}

/// Whether `tail` (starting with `[`, no `]` yet) is a prefix of `[TAG_N]`.
fn could_become_placeholder(tail: &str) -> bool {
    let rest = &tail[1..];
    let letters = rest.bytes().take_while(u8::is_ascii_uppercase).count();
    let after = &rest[letters..];
    if after.is_empty() {
        return true;
    }
    let Some(digits) = after.strip_prefix('_') else {
        return false;
    };
    letters > 0 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The restorers of one answer: its text, its reasoning, and each tool call's arguments.
#[derive(Debug)]
pub struct AnswerRestorer {
    map: Arc<Mapping>,
    pub text: Restorer,
    pub reasoning: Restorer,
    tools: Vec<(u32, Restorer)>,
}

impl AnswerRestorer {
    pub fn new(map: Arc<Mapping>) -> AnswerRestorer {
        AnswerRestorer {
            text: Restorer::new(map.clone()),
            reasoning: Restorer::new(map.clone()),
            tools: Vec::new(),
            map,
        }
    }

    /// Restores a tool call's arguments piece (its own restorer per call index).
    pub fn tool(&mut self, index: u32, arguments: &str) -> String {
        let at = match self.tools.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.tools.push((index, Restorer::new(self.map.clone())));
                self.tools.len() - 1
            }
        };
        self.tools[at].1.push(arguments)
    }

    /// What the tool calls still hold at the end: `(index, arguments)`.
    pub fn finish_tools(&mut self) -> Vec<(u32, String)> {
        self.tools
            .iter_mut()
            .map(|(i, r)| (*i, r.finish()))
            .filter(|(_, rest)| !rest.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::detect::Kind;

    fn mapping() -> Arc<Mapping> {
        let mut m = Mapping::default();
        m.placeholder(Kind::Phone, "13800138000");
        m.placeholder(Kind::Name, "张伟");
        Arc::new(m)
    }

    #[test]
    fn a_placeholder_cut_at_every_position_is_restored() {
        let text = "请联系[NAME_1]，电话[PHONE_1]。[NOTE] ok";
        let want = "请联系张伟，电话13800138000。[NOTE] ok";
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let mut r = Restorer::new(mapping());
            let mut got = r.push(&text[..cut]);
            got.push_str(&r.push(&text[cut..]));
            got.push_str(&r.finish());
            assert_eq!(got, want, "cut at {cut}");
        }
        // One character at a time.
        let mut r = Restorer::new(mapping());
        let mut got = String::new();
        for c in text.chars() {
            got.push_str(&r.push(&c.to_string()));
        }
        got.push_str(&r.finish());
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_and_unfinished_placeholders_are_left_as_they_are() {
        let m = mapping();
        assert_eq!(
            Restorer::restore(&m, "[PHONE_9] [PHONE_1"),
            "[PHONE_9] [PHONE_1"
        );
        let mut r = Restorer::new(m);
        assert_eq!(r.push("a [PHO"), "a ");
        assert_eq!(r.finish(), "[PHO");
        assert_eq!(r.push("[x] [1]"), "[x] [1]");
    }
}
