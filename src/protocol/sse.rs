//! Incremental Server-Sent Events parser.
//!
//! Upstream bytes arrive in arbitrary TCP-sized pieces: an event, a line or a UTF-8 code point can
//! be split anywhere. The parser keeps only the unfinished tail, accepts `\n`, `\r\n` and `\r`
//! line ends (per the SSE spec), and bounds the tail so a peer cannot make it grow without limit.

use bytes::{Buf, BytesMut};

/// One dispatched event. `data` joins multiple `data:` lines with `\n`, as the spec says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

impl SseEvent {
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an SSE line is longer than {0} bytes")]
    LineTooLong(usize),
}

#[derive(Debug)]
pub struct SseParser {
    buf: BytesMut,
    max_line: usize,
    current: SseEvent,
    has_data: bool,
    /// A `\r` ended the previous piece: a `\n` at the start of the next one belongs to it.
    pending_cr: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(16 << 20)
    }
}

impl SseParser {
    pub fn new(max_line: usize) -> Self {
        SseParser {
            buf: BytesMut::new(),
            max_line,
            current: SseEvent::default(),
            has_data: false,
            pending_cr: false,
        }
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.pending_cr {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
            self.pending_cr = false;
        }
        self.buf.extend_from_slice(chunk);
        loop {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.buf.len() > self.max_line {
                    return Err(SseError::LineTooLong(self.max_line));
                }
                return Ok(());
            };
            let cr = self.buf[pos] == b'\r';
            let line = self.buf.split_to(pos);
            self.buf.advance(1);
            if cr {
                if self.buf.first() == Some(&b'\n') {
                    self.buf.advance(1);
                } else if self.buf.is_empty() {
                    self.pending_cr = true;
                }
            }
            self.line(&line, out);
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data || self.current.event.is_some() {
                out.push(std::mem::take(&mut self.current));
            }
            self.current = SseEvent::default();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.current.event = Some(value.into_owned()),
            b"id" => self.current.id = Some(value.into_owned()),
            _ => {}
        }
    }

    /// Bytes received that do not yet form a complete line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The SSE terminator every stream ends with, on success or failure.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in pieces {
            p.push(piece, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn splits_anywhere_give_the_same_events() {
        let text = "event: message\ndata: {\"a\":\"é\"}\n\n: ping\n\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let whole = parse_all(&[text.as_bytes()]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].event.as_deref(), Some("message"));
        assert_eq!(whole[1].data, "one\ntwo");
        assert!(whole[2].is_done());
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_all(&[&bytes[..cut], &bytes[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&singles), whole);
    }

    #[test]
    fn crlf_and_cr_line_ends() {
        let crlf = parse_all(&[b"data: a\r\n\r\ndata: b\r", b"\n\r\n"]);
        assert_eq!(
            crlf.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let cr = parse_all(&[b"data: x\r\rdata: y\r\r"]);
        assert_eq!(cr.len(), 2);
    }

    #[test]
    fn multi_megabyte_line_and_limit() {
        let big = "x".repeat(3 << 20);
        let text = format!("data: {big}\n\n");
        let pieces: Vec<&[u8]> = text.as_bytes().chunks(65536).collect();
        let events = parse_all(&pieces);
        assert_eq!(events[0].data.len(), big.len());
        let mut small = SseParser::new(1024);
        let mut out = Vec::new();
        assert_eq!(
            small.push(&[b'x'; 2048], &mut out),
            Err(SseError::LineTooLong(1024))
        );
    }
}
