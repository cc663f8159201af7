//! An answer made in this process, read like one from the network: a status, a few headers and
//! body pieces handed out with a delay between them. The built-in mock provider uses it, so its
//! answers go through the same relays, deadlines and disconnect handling as real ones.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

pub struct Memory {
    pub status: u16,
    headers: Vec<(&'static str, String)>,
    pieces: VecDeque<Bytes>,
    /// Pause before every piece but the first.
    delay: Duration,
    started: bool,
}

impl Memory {
    pub fn new(
        status: u16,
        headers: Vec<(&'static str, String)>,
        pieces: VecDeque<Bytes>,
        delay: Duration,
    ) -> Self {
        Memory {
            status,
            headers,
            pieces,
            delay,
            started: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub async fn next(&mut self) -> Option<Bytes> {
        if self.pieces.is_empty() {
            return None;
        }
        if self.started && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.started = true;
        self.pieces.pop_front()
    }

    pub fn close(&mut self) {
        self.pieces.clear();
    }
}
