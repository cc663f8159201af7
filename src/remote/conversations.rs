//! Conversation ids in Redis, so a chat's next turn continues the same upstream conversation
//! on whichever replica it lands. Key names carry a hash of (target, user, session), never the
//! end user's id itself. Every read refreshes the idle TTL (`GETEX`), as the in-memory store
//! does. A Redis fault is a miss: the turn starts a new conversation rather than failing.

use super::{hex, Remote};
use crate::conversations::{ConversationKey, ConversationStore};
use redis::Script;
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// GET that refreshes the entry's own idle TTL, in one round trip.
static GET_TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ttl = tonumber(string.match(v, '^(%d+) '))
  if ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return v
"#,
    )
});

pub struct RedisConversations {
    remote: Arc<Remote>,
}

impl RedisConversations {
    pub fn new(remote: Arc<Remote>) -> Self {
        RedisConversations { remote }
    }

    fn key(&self, k: &ConversationKey) -> String {
        let mut h = Sha256::new();
        for part in [&k.target, &k.user, &k.session] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        self.remote.key(&format!("v:{}", hex(&h.finalize())))
    }
}

/// Stored as `<ttl ms> <id>`: a read refreshes the entry's own TTL.
fn split(v: &str) -> Option<(u64, &str)> {
    let (ttl, id) = v.split_once(' ')?;
    Some((ttl.parse().ok()?, id))
}

impl ConversationStore for RedisConversations {
    async fn get(&self, key: &ConversationKey) -> Option<String> {
        let mut inv = GET_TOUCH.prepare_invoke();
        inv.key(self.key(key));
        let v: Option<String> = self.remote.script("conversation_get", &inv).await?;
        let v = v?;
        split(&v).map(|(_, id)| id.to_owned())
    }

    async fn put(&self, key: ConversationKey, id: String, ttl: Duration) {
        let ms = (ttl.as_millis() as u64).max(1);
        let _: Option<()> = self
            .remote
            .run(
                "conversation_put",
                redis::cmd("SET")
                    .arg(self.key(&key))
                    .arg(format!("{ms} {id}"))
                    .arg("PX")
                    .arg(ms),
            )
            .await;
    }

    async fn remove(&self, key: &ConversationKey) {
        let _: Option<i64> = self
            .remote
            .run("conversation_remove", redis::cmd("DEL").arg(self.key(key)))
            .await;
    }
}
