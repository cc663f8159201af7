//! The access log: one line per request (JSON or `key=value` text) on stdout. Requests append
//! their line to a shared buffer; a dedicated thread writes the buffer out every 50 ms or once it
//! holds 256 KiB, so a request never waits on the terminal or a slow log collector, and there is
//! no wake-up or syscall per request. Lines carry names, counts and timings only — never keys,
//! headers, bodies or query strings.

use crate::config::LogFormat;
use parking_lot::{Condvar, Mutex};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The writer wakes at least this often.
const INTERVAL: Duration = Duration::from_millis(50);
/// A buffer this full wakes the writer early.
const WAKE_AT: usize = 256 << 10;
/// Past this the request path drops lines rather than grow without bound (a stuck stdout).
const MAX_BUFFERED: usize = 16 << 20;

/// What one request did, as logged.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub client: Option<&'a str>,
    pub scenario: Option<&'a str>,
    /// `<experiment>/<variant>` of an experiment request.
    pub variant: Option<&'a str>,
    /// Personal data found (privacy): `kind:count,…`, never values.
    pub pii: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub stream: Option<bool>,
    pub attempts: u32,
    pub status: u16,
    pub cache: &'a str,
    pub error: Option<&'a str>,
    pub ttft: Option<Duration>,
    pub duration: Duration,
    pub overhead: Duration,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Request features the answering target dropped (`accept_unsupported`).
    pub dropped: crate::protocol::Features,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Appends `"key":` and a JSON string (escaped), or `null`.
fn field_str(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        // Writing a &str into a Vec cannot fail.
        Some(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn field_raw(out: &mut Vec<u8>, key: &str, value: Option<String>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.as_deref().unwrap_or("null").as_bytes());
}

impl Entry<'_> {
    /// The line, without its newline.
    pub fn render(&self, format: LogFormat, out: &mut Vec<u8>) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now());
        match format {
            LogFormat::Json => {
                let _ = write!(out, "{{\"ts\":\"{ts}\",\"kind\":\"access\"");
                field_str(out, "request_id", Some(self.request_id));
                field_str(out, "method", Some(self.method));
                field_str(out, "path", Some(self.path));
                field_str(out, "client", self.client);
                field_str(out, "scenario", self.scenario);
                field_str(out, "variant", self.variant);
                field_str(out, "pii", self.pii);
                field_str(out, "provider", self.provider);
                field_raw(out, "stream", self.stream.map(|s| s.to_string()));
                field_raw(out, "attempts", Some(self.attempts.to_string()));
                field_raw(out, "status", Some(self.status.to_string()));
                field_str(out, "cache", Some(self.cache));
                field_str(out, "error", self.error);
                field_raw(out, "ttft_ms", self.ttft.map(|d| ms(d).to_string()));
                field_raw(out, "duration_ms", Some(ms(self.duration).to_string()));
                field_raw(out, "overhead_ms", Some(ms(self.overhead).to_string()));
                field_raw(
                    out,
                    "prompt_tokens",
                    self.prompt_tokens.map(|n| n.to_string()),
                );
                field_raw(
                    out,
                    "completion_tokens",
                    self.completion_tokens.map(|n| n.to_string()),
                );
                let dropped = (!self.dropped.is_empty()).then(|| self.dropped.to_string());
                field_str(out, "dropped", dropped.as_deref());
                out.push(b'}');
            }
            LogFormat::Text => {
                let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
                let num = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
                let _ = write!(
                    out,
                    "{ts} access request_id={} method={} path={} client={} scenario={} variant={} provider={} stream={} attempts={} status={} cache={} error={} ttft_ms={} duration_ms={} overhead_ms={} prompt_tokens={} completion_tokens={} dropped={} pii={}",
                    self.request_id,
                    self.method,
                    self.path,
                    opt(self.client),
                    opt(self.scenario),
                    opt(self.variant),
                    opt(self.provider),
                    self.stream.map_or("-".into(), |s| s.to_string()),
                    self.attempts,
                    self.status,
                    self.cache,
                    opt(self.error),
                    self.ttft.map_or("-".into(), |d| ms(d).to_string()),
                    ms(self.duration),
                    ms(self.overhead),
                    num(self.prompt_tokens),
                    num(self.completion_tokens),
                    if self.dropped.is_empty() {
                        "-".to_owned()
                    } else {
                        self.dropped.to_string()
                    },
                    opt(self.pii),
                );
            }
        }
    }
}

struct Inner {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Held while writing, so a flush from any thread keeps lines in order.
    out: Mutex<Box<dyn Write + Send>>,
}

impl Inner {
    fn write_out(&self) {
        let mut out = self.out.lock();
        let batch = std::mem::take(&mut *self.pending.lock());
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
        }
        let _ = out.flush();
    }
}

/// The sink; the default is disabled and costs nothing.
#[derive(Default)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Lines go to `out`, written by a background thread.
    pub fn to_writer(out: Box<dyn Write + Send>) -> std::io::Result<AccessLog> {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT)),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let bg = inner.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                {
                    let mut pending = bg.pending.lock();
                    if pending.len() < WAKE_AT {
                        bg.wake.wait_for(&mut pending, INTERVAL);
                    }
                }
                bg.write_out();
            })?;
        Ok(AccessLog {
            inner: Some(inner),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn stdout() -> std::io::Result<AccessLog> {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn write(&self, entry: &Entry<'_>, format: LogFormat) {
        let Some(inner) = &self.inner else { return };
        let mut line = Vec::with_capacity(512);
        entry.render(format, &mut line);
        line.push(b'\n');
        let mut pending = inner.pending.lock();
        if pending.len() + line.len() > MAX_BUFFERED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.extend_from_slice(&line);
        if pending.len() >= WAKE_AT {
            inner.wake.notify_one();
        }
    }

    /// Writes out every line accepted so far (before exit).
    pub fn flush(&self) {
        if let Some(inner) = &self.inner {
            inner.write_out();
        }
    }
}
