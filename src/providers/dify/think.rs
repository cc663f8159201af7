//! `<think>…</think>` at the very start of a Dify answer, split off as reasoning.
//!
//! A Dify LLM node in its default "tagged" reasoning format streams the model's thinking inline,
//! wrapped in `<think>` tags, before the answer. With `reasoning: true` the gateway gives that
//! part to the client as `reasoning_content` and the rest as the answer. The text arrives in
//! pieces cut anywhere, tags included, so the splitter holds back only what may still turn
//! out to be (part of) a tag, and passes everything else on as it comes.

use crate::providers::Event;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace and perhaps the start of `<think>` so far.
    #[default]
    Start,
    /// Inside the thinking.
    Thinking,
    /// Right after `</think>`: the whitespace before the answer is dropped.
    After,
    /// The answer: everything passes as text.
    Answer,
}

/// Splits an answer's leading `<think>…</think>` into reasoning, piece by piece.
#[derive(Debug, Default)]
pub struct ThinkSplit {
    state: State,
    /// Text held until it is known to be (or not be) part of a tag.
    held: String,
}

impl ThinkSplit {
    /// One more piece of the answer's text.
    pub fn push(&mut self, text: &str, out: &mut Vec<Event>) {
        if text.is_empty() {
            return;
        }
        match self.state {
            State::Answer => out.push(Event::Text(text.to_owned())),
            State::Start => {
                self.held.push_str(text);
                let lead = self.held.trim_start();
                if let Some(rest) = lead.strip_prefix(OPEN) {
                    let rest = rest.to_owned();
                    self.held.clear();
                    self.state = State::Thinking;
                    self.push(&rest, out);
                } else if !OPEN.starts_with(lead) {
                    self.state = State::Answer;
                    out.push(Event::Text(std::mem::take(&mut self.held)));
                }
            }
            State::Thinking => {
                self.held.push_str(text);
                if let Some(end) = self.held.find(CLOSE) {
                    let rest = self.held.split_off(end + CLOSE.len());
                    self.held.truncate(end);
                    if !self.held.is_empty() {
                        out.push(Event::Reasoning(std::mem::take(&mut self.held)));
                    }
                    self.state = State::After;
                    self.push(&rest, out);
                    return;
                }
                // A tail that may be the start of `</think>` waits for the next piece.
                let keep = (1..CLOSE.len())
                    .rev()
                    .find(|&k| self.held.ends_with(&CLOSE[..k]))
                    .unwrap_or(0);
                let tail = self.held.split_off(self.held.len() - keep);
                if !self.held.is_empty() {
                    out.push(Event::Reasoning(std::mem::replace(&mut self.held, tail)));
                } else {
                    self.held = tail;
                }
            }
            State::After => {
                let answer = text.trim_start();
                if !answer.is_empty() {
                    self.state = State::Answer;
                    out.push(Event::Text(answer.to_owned()));
                }
            }
        }
    }

    /// The answer ended: what is held goes out as what it turned out to be (text that only
    /// looked like a tag's start, or thinking that never closed).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        match self.state {
            State::Start => out.push(Event::Text(held)),
            State::Thinking => out.push(Event::Reasoning(held)),
            State::After | State::Answer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reasoning and text after feeding `pieces`, consecutive events of one kind joined, and
    /// whether any event was empty.
    fn split(pieces: &[&str]) -> Vec<(char, String)> {
        let mut s = ThinkSplit::default();
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        let mut joined: Vec<(char, String)> = Vec::new();
        for e in out {
            let (kind, t) = match e {
                Event::Text(t) => ('t', t),
                Event::Reasoning(t) => ('r', t),
                other => panic!("{other:?}"),
            };
            assert!(!t.is_empty(), "no empty events");
            match joined.last_mut() {
                Some((k, acc)) if *k == kind => acc.push_str(&t),
                _ => joined.push((kind, t)),
            }
        }
        joined
    }

    fn at_every_split(text: &str) -> Vec<(char, String)> {
        let whole = split(&[text]);
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &a in &bounds {
            assert_eq!(split(&[&text[..a], &text[a..]]), whole, "cut at {a}");
            for &b in bounds.iter().filter(|&&b| b >= a) {
                let three = [&text[..a], &text[a..b], &text[b..]];
                assert_eq!(split(&three), whole, "cuts at {a}, {b}");
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let singles: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(&singles), whole, "char by char");
        whole
    }

    #[test]
    fn leading_thinking_is_reasoning_wherever_the_pieces_are_cut() {
        assert_eq!(
            at_every_split("\n<think>\nIs 9.11 > 9.8? <no>\n</think>\n\nNo: 9.8 is larger."),
            [
                ('r', "\nIs 9.11 > 9.8? <no>\n".to_owned()),
                ('t', "No: 9.8 is larger.".to_owned())
            ]
        );
        assert_eq!(
            at_every_split("<think>only thinking, never closed </thi"),
            [('r', "only thinking, never closed </thi".to_owned())]
        );
        assert_eq!(
            at_every_split("<think></think>答え"),
            [('t', "答え".to_owned())]
        );
    }

    #[test]
    fn anything_else_is_text_as_it_came() {
        for text in [
            "Plain answer <think>not at the start</think>",
            "<thinking>a tag of another name</thinking>",
            "  <thi",
            "<",
            " ",
        ] {
            assert_eq!(at_every_split(text), [('t', text.to_owned())], "{text:?}");
        }
    }
}
