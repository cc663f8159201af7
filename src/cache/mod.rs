//! The response cache: exact-match answers per (scenario, scenario config, client, canonical
//! request), bounded by entries and bytes, with a TTL per scenario, client Cache-Control, and
//! single-flight coalescing of identical concurrent requests.
//!
//! Only complete answers are stored (2xx, finished with a finish reason) — never errors,
//! truncated streams or session requests — in a normalized form that serves both a
//! `chat.completion` and a replayed SSE stream, whichever way the entry was filled.
//! Embeddings and non-streamed completions are stored as the upstream's own bytes and replayed
//! as they are; the operation is part of every key, so no entry answers another operation.
//!
//! Storage is the [`AnswerStore`]'s (`store.rs`); keys, `Cache-Control`, single-flight and
//! rendering are this module's.

pub mod store;

use crate::config::Scenario;
use crate::protocol::chunks::ChunkWriter;
use crate::protocol::{Answer, ChatRequest, Operation};
use crate::remote::flight::Claim;
pub use crate::stores::Answers;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use store::{AnswerStore, Entry, Key, MemoryAnswers};
use tokio::sync::watch;

/// Request fields that change the answer (besides messages, model and user_profile).
const KEY_FIELDS: [&str; 18] = [
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "stop",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
];

/// Fills an [`Answer`] while a response is produced; `complete` only when it may be stored.
/// The forwarder commits it the moment it is complete, before the answer's last bytes go out,
/// so a client's next identical request already finds it.
#[derive(Default)]
pub struct Capture {
    pub answer: Answer,
    pub complete: bool,
    /// Where a complete answer goes (key and TTL).
    pub slot: Option<(Key, Duration)>,
    pub stored: Option<Arc<Entry>>,
    /// Store the upstream's answer bytes (`body`) rather than a rebuilt answer.
    pub raw: bool,
    pub body: Option<Bytes>,
}

impl Capture {
    /// Starts over for another attempt, keeping where to store.
    pub fn reset(&mut self) {
        self.answer = Answer::default();
        self.body = None;
        self.complete = false;
    }

    /// Stores the answer if it is complete (once).
    pub async fn commit(&mut self, cache: &ResponseCache) {
        if let (true, None, Some((key, ttl))) = (self.complete, &self.stored, self.slot) {
            self.stored = Some(match (self.raw, &self.body) {
                (true, Some(body)) => cache.insert_raw(key, body.clone(), ttl).await,
                (true, None) => return,
                (false, _) => cache.insert(key, self.answer.clone(), ttl).await,
            });
        }
    }
}

/// What the client's `Cache-Control` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Normal,
    /// `no-cache`: skip the lookup, store the fresh answer.
    Refresh,
    /// `no-store`: neither read nor write.
    NoStore,
    /// `max-age=N`: accept only entries at most N seconds old.
    MaxAge(u64),
}

pub fn control(header: Option<&str>) -> Control {
    let Some(h) = header else {
        return Control::Normal;
    };
    let mut out = Control::Normal;
    for d in h.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        match d.as_str() {
            "no-store" => return Control::NoStore,
            "no-cache" => out = Control::Refresh,
            _ => {
                if let Some(n) = d
                    .strip_prefix("max-age=")
                    .and_then(|n| n.trim().parse().ok())
                {
                    if out == Control::Normal {
                        out = Control::MaxAge(n);
                    }
                }
            }
        }
    }
    out
}

fn canonical(raw: &str) -> String {
    // serde_json's map is ordered by key: re-serializing is canonical for key order and
    // whitespace.
    serde_json::from_str::<Value>(raw).map_or_else(|_| raw.to_owned(), |v| v.to_string())
}

/// The cache key of a request (DESIGN §1.7). Stable under key order and whitespace; not
/// affected by `stream`, `stream_options` or the request id. An embeddings or completions
/// key names its operation and covers every field the client sent.
pub fn key(scenario: &Scenario, client: Option<&str>, req: &ChatRequest) -> Key {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update(name.as_bytes());
        h.update([0]);
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    field("v", "1");
    field("scenario", &scenario.name);
    // Hex keeps the fingerprint inside the same length-prefixed framing as every field.
    field("fingerprint", &hex(&scenario.fingerprint));
    field("client", client.unwrap_or("-"));
    if req.op != Operation::Chat {
        field("op", req.op.as_str());
    }
    field("model", req.model.as_deref().unwrap_or(""));
    for m in &req.messages {
        field("message", &canonical(m.get()));
    }
    let mut rest: Vec<(&str, String)> = req
        .rest
        .iter()
        .filter(|(k, _)| match req.op {
            Operation::Chat => KEY_FIELDS.contains(&k.as_str()),
            _ => !matches!(k.as_str(), "stream" | "stream_options"),
        })
        .map(|(k, v)| (k.as_str(), canonical(v.get())))
        .collect();
    rest.sort();
    for (k, v) in rest {
        field(k, &v);
    }
    field("user_profile", &req.user_profile.to_string());
    h.finalize().into()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The hash of a request exactly as received (operation, body bytes and the headers that feed
/// the key): identical repeats of a request skip canonicalization through
/// [`ResponseCache::key_for`].
pub fn raw_key(
    op: Operation,
    scenario: &Scenario,
    client: Option<&str>,
    profile_header: Option<&str>,
    body: &[u8],
) -> Key {
    let mut h = Sha256::new();
    // The same bytes sent to another door are another request.
    h.update(op.as_str().as_bytes());
    h.update([0]);
    h.update(scenario.name.as_bytes());
    h.update([0]);
    h.update(scenario.fingerprint);
    h.update(client.unwrap_or("-").as_bytes());
    h.update([0]);
    h.update(profile_header.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// What a lookup found.
pub enum Lookup {
    Hit(Arc<Entry>),
    /// Nobody is computing this answer: the caller leads and must call [`Flight::finish`].
    Lead(Flight),
    /// Another request is computing it: wait for that.
    Follow(watch::Receiver<Option<Arc<Entry>>>),
    /// Another replica computed it while this one waited (shared cache only).
    Joined(Arc<Entry>),
}

/// The leader's duty to publish (or withdraw) an answer; dropping it withdraws.
pub struct Flight {
    key: Key,
    cache: Arc<Inner>,
    tx: Option<watch::Sender<Option<Arc<Entry>>>>,
    /// Other replicas wait on this lock (shared cache); released when the flight ends.
    remote: Option<crate::remote::flight::Lock>,
}

impl Flight {
    pub fn finish(mut self, entry: Option<Arc<Entry>>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(entry);
        }
        self.remote = None;
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.cache.flights.lock().remove(&self.key);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
    }
}

struct Inner {
    flights: Mutex<HashMap<Key, watch::Receiver<Option<Arc<Entry>>>>>,
}

/// Counters of the cache as a whole, for `/admin/cache` and `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub lookups: u64,
    pub hits: u64,
}

pub struct ResponseCache {
    store: Answers,
    /// Raw request hash → canonical key, for requests repeated byte for byte.
    canonical: moka::sync::Cache<Key, Key>,
    inner: Arc<Inner>,
    hits: AtomicU64,
    lookups: AtomicU64,
}

impl ResponseCache {
    pub fn new(store: Answers) -> Self {
        ResponseCache {
            store,
            canonical: moka::sync::Cache::new(10_000),
            inner: Arc::new(Inner {
                flights: Mutex::new(HashMap::new()),
            }),
            hits: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }

    /// A stored entry young enough for `max_age`, else the single-flight role for this key.
    /// With a shared cache, a leader first waits (at most `patience`) for another replica
    /// computing the same answer.
    pub async fn lookup(&self, key: &Key, max_age: Option<u64>, patience: Duration) -> Lookup {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.fresh(key, max_age).await {
            return Lookup::Hit(e);
        }
        match self.lead_or_follow(key) {
            // A leader may have stored the answer and ended its flight between the read above
            // and now: look again before calling the upstream a second time.
            Lookup::Lead(mut flight) => match self.fresh(key, max_age).await {
                Some(e) => {
                    // Anyone who joined this flight meanwhile gets the same answer.
                    flight.finish(Some(e.clone()));
                    Lookup::Hit(e)
                }
                None => match self.store.claim(key, patience).await {
                    Claim::Found(e) if max_age.is_none_or(|m| e.age().as_secs() <= m) => {
                        flight.finish(Some(e.clone()));
                        Lookup::Joined(e)
                    }
                    Claim::Found(_) => Lookup::Lead(flight),
                    Claim::Lead(lock) => {
                        flight.remote = lock;
                        Lookup::Lead(flight)
                    }
                },
            },
            other => other,
        }
    }

    async fn fresh(&self, key: &Key, max_age: Option<u64>) -> Option<Arc<Entry>> {
        let e = self.store.get(key).await?;
        if max_age.is_some_and(|m| e.age() > Duration::from_secs(m)) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(e)
    }

    /// The single-flight role without reading the cache (`no-cache`).
    pub fn lead_or_follow(&self, key: &Key) -> Lookup {
        let mut flights = self.inner.flights.lock();
        if let Some(rx) = flights.get(key) {
            return Lookup::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(*key, rx);
        Lookup::Lead(Flight {
            key: *key,
            cache: self.inner.clone(),
            tx: Some(tx),
            remote: None,
        })
    }

    /// The canonical key of a request, computed once per distinct raw request.
    pub fn key_for(&self, raw: Key, compute: impl FnOnce() -> Key) -> Key {
        if let Some(k) = self.canonical.get(&raw) {
            return k;
        }
        let k = compute();
        self.canonical.insert(raw, k);
        k
    }

    /// Stores the upstream's own answer bytes.
    pub async fn insert_raw(&self, key: Key, body: Bytes, ttl: Duration) -> Arc<Entry> {
        let entry = Arc::new(Entry::raw(body, ttl, format!("cache-{}", hex(&key[..12]))));
        self.store.put(key, entry.clone()).await;
        entry
    }

    pub async fn insert(&self, key: Key, answer: Answer, ttl: Duration) -> Arc<Entry> {
        let entry = Arc::new(Entry::new(
            answer,
            ttl,
            format!("chatcmpl-cache-{}", hex(&key[..12])),
        ));
        self.store.put(key, entry.clone()).await;
        entry
    }

    pub async fn clear(&self) -> u64 {
        self.store.clear().await
    }

    pub async fn stats(&self) -> CacheStats {
        let s = self.store.stats().await;
        CacheStats {
            entries: s.entries,
            bytes: s.bytes,
            lookups: self.lookups.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
        }
    }
}

/// Waits for a leader's answer, at most `limit`.
pub async fn follow(
    mut rx: watch::Receiver<Option<Arc<Entry>>>,
    limit: Duration,
) -> Option<Arc<Entry>> {
    let wait = async {
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return Some(e);
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    };
    tokio::time::timeout(limit, wait).await.ok().flatten()
}

/// A cached answer as a response body: one `chat.completion`, or a replayed SSE stream with the
/// content in several chunks.
pub fn render(entry: &Entry, stream: bool, include_usage: bool) -> Bytes {
    let slot = match (stream, include_usage) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    entry.rendered[slot]
        .get_or_init(|| render_now(&entry.answer, entry.id.clone(), stream, include_usage))
        .clone()
}

fn render_now(a: &Answer, id: String, stream: bool, include_usage: bool) -> Bytes {
    let w = ChunkWriter {
        id,
        created: a.created,
        model: a.model.clone(),
        include_usage,
    };
    if !stream {
        return w.completion(&a.content, &a.reasoning, &[], &a.finish_reason, a.usage);
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&w.role());
    let piece = |text: &str, out: &mut BytesMut, f: &dyn Fn(&str) -> Bytes| {
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(16) {
            out.extend_from_slice(&f(&c.iter().collect::<String>()));
        }
    };
    piece(&a.reasoning, &mut out, &|t| w.reasoning(t));
    piece(&a.content, &mut out, &|t| w.content(t));
    out.extend_from_slice(&w.finish(&a.finish_reason));
    if include_usage {
        out.extend_from_slice(&w.usage(a.usage));
    }
    out.extend_from_slice(crate::protocol::SSE_DONE);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::RequestHints;
    use std::path::Path;

    fn scenario(prompt: &str) -> Config {
        let yaml = format!(
            "providers:\n  p: {{ type: openai, base_url: 'http://x/v1', api_key: k }}\nscenarios:\n  s:\n    cache: {{ ttl: 60s }}\n    targets: [{{ provider: p, model: m, system_prompt: '{prompt}' }}]\n"
        );
        Config::from_str_at(&yaml, Path::new("t.yaml")).unwrap()
    }

    fn req(body: &str) -> ChatRequest {
        ChatRequest::parse(body.as_bytes(), &RequestHints::default()).unwrap()
    }

    #[test]
    fn key_is_canonical_and_covers_what_matters() {
        let cfg = scenario("a");
        let s = &cfg.scenarios[0];
        let k = |body: &str, client: Option<&str>| key(s, client, &req(body));
        let base = k(
            r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
            None,
        );
        // Key order, whitespace, stream flags and unrelated fields do not matter.
        assert_eq!(
            base,
            k(
                r#"{ "temperature": 0.5, "messages": [ {"content":"hi", "role":"user"} ], "model":"s", "stream": true, "stream_options": {"include_usage": true} }"#,
                None
            )
        );
        // Any of these do.
        for other in [
            r#"{"model":"s","messages":[{"role":"user","content":"hi!"}],"temperature":0.5}"#,
            r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"temperature":0.6}"#,
            r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"seed":1}"#,
            r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"metadata":{"user_profile":{"a":1}}}"#,
            r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        ] {
            assert_ne!(base, k(other, None), "{other}");
        }
        assert_ne!(
            base,
            k(
                r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
                Some("tenant-b")
            )
        );
        // Another system prompt is another scenario fingerprint.
        let cfg2 = scenario("b");
        assert_ne!(
            base,
            key(
                &cfg2.scenarios[0],
                None,
                &req(
                    r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#
                )
            )
        );
    }

    #[test]
    fn the_operation_is_part_of_every_key() {
        let cfg = scenario("a");
        let s = &cfg.scenarios[0];
        // A body both doors accept: each is its own request.
        let body = r#"{"model":"s","messages":[{"role":"user","content":"hi"}],"input":"hi"}"#;
        let as_op =
            |op| ChatRequest::parse_op(body.as_bytes(), &RequestHints::default(), op).unwrap();
        let chat = key(s, None, &as_op(Operation::Chat));
        let emb = key(s, None, &as_op(Operation::Embeddings));
        let comp = key(
            s,
            None,
            &ChatRequest::parse_op(
                br#"{"model":"s","prompt":"hi"}"#,
                &RequestHints::default(),
                Operation::Completions,
            )
            .unwrap(),
        );
        assert!(chat != emb && emb != comp && chat != comp);
        let raw = |op| raw_key(op, s, None, None, body.as_bytes());
        assert_ne!(raw(Operation::Chat), raw(Operation::Embeddings));
        // Embeddings keys cover every field (but the stream flags) and the client.
        let e = |body: &str, client| {
            let r = ChatRequest::parse_op(
                body.as_bytes(),
                &RequestHints::default(),
                Operation::Embeddings,
            )
            .unwrap();
            key(s, client, &r)
        };
        let base = e(r#"{"model":"s","input":["a","b"],"dimensions":8}"#, None);
        assert_eq!(
            base,
            e(r#"{"dimensions":8,"input":[ "a", "b" ],"model":"s"}"#, None)
        );
        assert_ne!(
            base,
            e(r#"{"model":"s","input":["a","b"],"dimensions":9}"#, None)
        );
        assert_ne!(
            base,
            e(
                r#"{"model":"s","input":["a","b"],"dimensions":8,"encoding_format":"base64"}"#,
                None
            )
        );
        assert_ne!(
            base,
            e(
                r#"{"model":"s","input":["a","b"],"dimensions":8}"#,
                Some("b")
            )
        );
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(control(None), Control::Normal);
        assert_eq!(control(Some("no-cache")), Control::Refresh);
        assert_eq!(control(Some("max-age=30")), Control::MaxAge(30));
        assert_eq!(control(Some("no-cache, no-store")), Control::NoStore);
        assert_eq!(control(Some("No-Cache, max-age=5")), Control::Refresh);
    }

    #[tokio::test]
    async fn byte_bound_and_replay() {
        let c = ResponseCache::new(Answers::Memory(MemoryAnswers::new(100, 1000)));
        let answer = |n: usize| Answer {
            content: "x".repeat(n),
            finish_reason: "stop".into(),
            ..Default::default()
        };
        c.insert([1; 32], answer(400), Duration::from_secs(60))
            .await;
        c.insert([2; 32], answer(400), Duration::from_secs(60))
            .await;
        c.insert([3; 32], answer(400), Duration::from_secs(60))
            .await;
        let CacheStats { entries, bytes, .. } = c.stats().await;
        assert!(
            entries <= 2 && bytes <= 1000,
            "entries {entries} bytes {bytes}"
        );
        let e = c.insert([9; 32], answer(40), Duration::from_secs(1)).await;
        let text = String::from_utf8(render(&e, true, true).to_vec()).unwrap();
        assert_eq!(
            render(&e, true, true),
            render(&e, true, true),
            "rendered once, served as is"
        );
        assert_eq!(
            text.matches("\"content\":\"x").count(),
            3,
            "40 chars in 16-char chunks"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
