//! Where cached answers live, behind [`AnswerStore`]: get / put / remove / clear / stats by
//! key. Keys, `Cache-Control`, single-flight and rendering stay in the cache module above it,
//! so a shared backend implements storage only. The in-memory store is bounded by entries and
//! bytes with a TTL per entry.

use crate::protocol::Answer;
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub type Key = [u8; 32];

/// A stored answer: a chat answer in neutral form, or the upstream's own bytes.
pub struct Entry {
    pub answer: Answer,
    /// The upstream's answer exactly as it was relayed (embeddings, completions): a hit
    /// replays these bytes and `answer` is empty.
    pub body: Option<Bytes>,
    pub stored_at: Instant,
    pub ttl: Duration,
    /// One id per entry: every hit of it is the same answer.
    pub id: String,
    /// Bodies rendered on first use: a hit is then a copy of bytes, not a serialization.
    pub rendered: [OnceLock<Bytes>; 3],
}

impl Entry {
    pub fn new(answer: Answer, ttl: Duration, id: String) -> Self {
        Entry {
            answer,
            body: None,
            stored_at: Instant::now(),
            ttl,
            id,
            rendered: Default::default(),
        }
    }

    /// An entry replaying the upstream's own answer bytes.
    pub fn raw(body: Bytes, ttl: Duration, id: String) -> Self {
        Entry {
            body: Some(body),
            ..Entry::new(Answer::default(), ttl, id)
        }
    }

    /// Approximate bytes held, for the store's byte bound.
    pub fn bytes(&self) -> usize {
        self.answer.bytes() + self.body.as_ref().map_or(0, Bytes::len)
    }

    pub fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub entries: u64,
    pub bytes: u64,
}

pub trait AnswerStore: Send + Sync {
    fn get(&self, key: &Key) -> impl Future<Output = Option<Arc<Entry>>> + Send;
    /// Stores `entry` until its TTL passes (or the store's bounds evict it).
    fn put(&self, key: Key, entry: Arc<Entry>) -> impl Future<Output = ()> + Send;
    fn remove(&self, key: &Key) -> impl Future<Output = ()> + Send;
    /// Drops every entry; returns how many there were.
    fn clear(&self) -> impl Future<Output = u64> + Send;
    fn stats(&self) -> impl Future<Output = StoreStats> + Send;
}

struct ByTtl;

impl moka::Expiry<Key, Arc<Entry>> for ByTtl {
    fn expire_after_create(&self, _: &Key, value: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Answers in this process (moka).
pub struct MemoryAnswers {
    map: moka::sync::Cache<Key, Arc<Entry>>,
    bytes: Arc<AtomicU64>,
    /// `max_entries: 0`: nothing is kept (with Redis: no L1, every hit is read from Redis).
    off: bool,
}

impl MemoryAnswers {
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        // One weigher enforces both bounds: an entry weighs at least max_bytes / max_entries,
        // so no more than max_entries fit, and never less than its size, so bytes stay bounded.
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let map = moka::sync::Cache::builder()
            .max_capacity(max_bytes.max(1))
            .weigher(move |_: &Key, v: &Arc<Entry>| {
                u32::try_from((v.bytes() as u64).max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(ByTtl)
            .eviction_listener(move |_, v: Arc<Entry>, _| {
                counter.fetch_sub(v.bytes() as u64, Ordering::Relaxed);
            })
            .build();
        MemoryAnswers {
            map,
            bytes,
            off: max_entries == 0,
        }
    }
}

impl AnswerStore for MemoryAnswers {
    async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.map.get(key)
    }
    async fn put(&self, key: Key, entry: Arc<Entry>) {
        if self.off {
            return;
        }
        self.bytes
            .fetch_add(entry.bytes() as u64, Ordering::Relaxed);
        self.map.insert(key, entry);
    }
    async fn remove(&self, key: &Key) {
        self.map.invalidate(key);
    }
    async fn clear(&self) -> u64 {
        let n = self.map.entry_count();
        self.map.invalidate_all();
        self.map.run_pending_tasks();
        n
    }
    async fn stats(&self) -> StoreStats {
        // Pending evictions first, so the figures are what the bounds allow.
        self.map.run_pending_tasks();
        StoreStats {
            entries: self.map.entry_count(),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}
