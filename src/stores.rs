//! The configured backend of each store, one enum per store kind: in this process, or in Redis
//! (`state.backend`). Each enum implements its store's trait by matching, so calls stay
//! statically dispatched and their futures inline (no boxed future per request). They live
//! here, above both backends, so a store's trait module never imports a backend that imports
//! it back.

use crate::cache::store::{AnswerStore, Entry, Key, MemoryAnswers, StoreStats};
use crate::conversations::{ConversationKey, ConversationStore, MemoryConversations};
use crate::limits::store::{Check, Counters, Lease, LimitStore, MemoryLimits, Verdict};
use crate::remote::answers::RedisAnswers;
use crate::remote::conversations::RedisConversations;
use crate::remote::limits::RedisLimits;
use std::sync::Arc;
use std::time::Duration;

/// The configured backend; a variant per backend keeps calls statically dispatched.
pub enum LimitStores {
    Memory(MemoryLimits),
    Redis(RedisLimits),
}

impl LimitStore for LimitStores {
    async fn reserve(&self, check: &Check<'_>) -> (Verdict, Counters) {
        match self {
            LimitStores::Memory(m) => m.reserve(check).await,
            LimitStores::Redis(r) => r.reserve(check).await,
        }
    }
    async fn settle(&self, lease: Lease, tokens: u64, amount: f64) {
        match self {
            LimitStores::Memory(m) => m.settle(lease, tokens, amount).await,
            LimitStores::Redis(r) => r.settle(lease, tokens, amount).await,
        }
    }
    async fn counters(&self, client: &str, window: Duration, period: Option<u64>) -> Counters {
        match self {
            LimitStores::Memory(m) => m.counters(client, window, period).await,
            LimitStores::Redis(r) => r.counters(client, window, period).await,
        }
    }
}

/// The configured backend; a variant per backend keeps calls statically dispatched.
pub enum Answers {
    Memory(MemoryAnswers),
    Redis(RedisAnswers),
}

impl Answers {
    /// For a key nobody in this replica is computing: an answer another replica stored or
    /// is about to store (waiting at most `patience`), else the duty to compute it.
    pub async fn claim(&self, key: &Key, patience: Duration) -> crate::remote::flight::Claim {
        match self {
            Answers::Memory(_) => crate::remote::flight::Claim::Lead(None),
            Answers::Redis(r) => r.claim(key, patience).await,
        }
    }
}

impl AnswerStore for Answers {
    async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        match self {
            Answers::Memory(m) => m.get(key).await,
            Answers::Redis(r) => r.get(key).await,
        }
    }
    async fn put(&self, key: Key, entry: Arc<Entry>) {
        match self {
            Answers::Memory(m) => m.put(key, entry).await,
            Answers::Redis(r) => r.put(key, entry).await,
        }
    }
    async fn remove(&self, key: &Key) {
        match self {
            Answers::Memory(m) => m.remove(key).await,
            Answers::Redis(r) => r.remove(key).await,
        }
    }
    async fn clear(&self) -> u64 {
        match self {
            Answers::Memory(m) => m.clear().await,
            Answers::Redis(r) => r.clear().await,
        }
    }
    async fn stats(&self) -> StoreStats {
        match self {
            Answers::Memory(m) => m.stats().await,
            Answers::Redis(r) => r.stats().await,
        }
    }
}

/// The configured backend; a variant per backend keeps calls statically dispatched (no boxed
/// future per request).
pub enum Conversations {
    Memory(MemoryConversations),
    Redis(RedisConversations),
}

impl ConversationStore for Conversations {
    async fn get(&self, key: &ConversationKey) -> Option<String> {
        match self {
            Conversations::Memory(m) => m.get(key).await,
            Conversations::Redis(r) => r.get(key).await,
        }
    }
    async fn put(&self, key: ConversationKey, id: String, ttl: Duration) {
        match self {
            Conversations::Memory(m) => m.put(key, id, ttl).await,
            Conversations::Redis(r) => r.put(key, id, ttl).await,
        }
    }
    async fn remove(&self, key: &ConversationKey) {
        match self {
            Conversations::Memory(m) => m.remove(key).await,
            Conversations::Redis(r) => r.remove(key).await,
        }
    }
}
