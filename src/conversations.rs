//! Conversation state the gateway keeps on behalf of clients: per (target, user, session), the
//! upstream's conversation id (Dify's `conversation_id` today; Responses API ids and privacy
//! placeholders later). Behind [`ConversationStore`], so a shared backend can replace the
//! in-memory one without touching the providers that use it (the configured backend is
//! `stores::Conversations`).

use std::future::Future;
use std::time::{Duration, Instant};

/// Conversations remembered at most (least recently used go first) and how long an unused one
/// is kept by default. The upstream keeps the conversation itself; this only maps a client
/// session onto it.
pub const MAX_CONVERSATIONS: u64 = 100_000;
pub const CONVERSATION_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Whose conversation: the target (provider name), the end user and the client's session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversationKey {
    pub target: String,
    pub user: String,
    pub session: String,
}

/// Where conversation ids live. Implementations are cheap to call on the request path: the
/// in-memory one never waits.
pub trait ConversationStore: Send + Sync {
    fn get(&self, key: &ConversationKey) -> impl Future<Output = Option<String>> + Send;
    /// Remembers `id` for `key`; it is forgotten once unused for `ttl`.
    fn put(
        &self,
        key: ConversationKey,
        id: String,
        ttl: Duration,
    ) -> impl Future<Output = ()> + Send;
    fn remove(&self, key: &ConversationKey) -> impl Future<Output = ()> + Send;
}

/// An id and how long it may stay unused.
type Held = (String, Duration);

/// Each entry expires after its own TTL without a read.
struct Idle;

impl moka::Expiry<ConversationKey, Held> for Idle {
    fn expire_after_create(&self, _: &ConversationKey, v: &Held, _: Instant) -> Option<Duration> {
        Some(v.1)
    }
    fn expire_after_read(
        &self,
        _: &ConversationKey,
        v: &Held,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(v.1)
    }
    fn expire_after_update(
        &self,
        _: &ConversationKey,
        v: &Held,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.1)
    }
}

/// Conversations in this process (moka: bounded, idle expiry per entry).
pub struct MemoryConversations {
    map: moka::sync::Cache<ConversationKey, Held>,
}

impl Default for MemoryConversations {
    fn default() -> Self {
        MemoryConversations {
            map: moka::sync::Cache::builder()
                .max_capacity(MAX_CONVERSATIONS)
                .expire_after(Idle)
                .build(),
        }
    }
}

impl ConversationStore for MemoryConversations {
    async fn get(&self, key: &ConversationKey) -> Option<String> {
        self.map.get(key).map(|(id, _)| id)
    }
    async fn put(&self, key: ConversationKey, id: String, ttl: Duration) {
        self.map.insert(key, (id, ttl));
    }
    async fn remove(&self, key: &ConversationKey) {
        self.map.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembers_and_forgets() {
        let store = crate::stores::Conversations::Memory(MemoryConversations::default());
        let key = ConversationKey {
            target: "dify".into(),
            user: "u".into(),
            session: "s".into(),
        };
        assert_eq!(store.get(&key).await, None);
        store.put(key.clone(), "c1".into(), CONVERSATION_IDLE).await;
        assert_eq!(store.get(&key).await.as_deref(), Some("c1"));
        store.remove(&key).await;
        assert_eq!(store.get(&key).await, None);
        // An entry unused for its TTL is gone.
        store
            .put(key.clone(), "c2".into(), Duration::from_millis(50))
            .await;
        assert_eq!(store.get(&key).await.as_deref(), Some("c2"));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.get(&key).await, None);
    }
}
