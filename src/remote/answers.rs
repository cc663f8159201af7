//! Cached answers in Redis, behind a small in-process L1: a replica serves what another cached.
//! An entry is stored as one JSON header line (answer, id, when it was stored, TTL) followed by
//! the upstream's own bytes when it has them (embeddings and completions are relayed verbatim).
//! Entries bigger than `cache.max_entry_bytes` stay in the L1 only. A Redis fault is a miss.

use super::{hex, Remote};
use crate::cache::store::{AnswerStore, Entry, Key, MemoryAnswers, StoreStats};
use crate::protocol::chunks::Usage;
use crate::protocol::Answer;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct RedisAnswers {
    pub(super) remote: Arc<Remote>,
    l1: MemoryAnswers,
    max_entry_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    id: String,
    /// Unix milliseconds when the answer was stored: ages agree across replicas.
    stored_ms: u64,
    ttl_ms: u64,
    content: String,
    reasoning: String,
    finish_reason: String,
    model: String,
    created: u64,
    /// prompt, completion, total, cached, reasoning.
    usage: [u64; 5],
    raw: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stored form of `e`.
pub fn encode(e: &Entry) -> Vec<u8> {
    let a = &e.answer;
    let u = a.usage;
    let header = Header {
        id: e.id.clone(),
        stored_ms: unix_ms().saturating_sub(e.age().as_millis() as u64),
        ttl_ms: e.ttl.as_millis() as u64,
        content: a.content.clone(),
        reasoning: a.reasoning.clone(),
        finish_reason: a.finish_reason.clone(),
        model: a.model.clone(),
        created: a.created,
        usage: [
            u.prompt_tokens,
            u.completion_tokens,
            u.total_tokens,
            u.cached_tokens,
            u.reasoning_tokens,
        ],
        raw: e.body.is_some(),
    };
    // Compact JSON escapes every newline, so the first '\n' ends the header.
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    if let Some(body) = &e.body {
        out.extend_from_slice(body);
    }
    out
}

/// An entry read back, with the TTL it has left (what the L1 may keep it for); `None` when
/// the bytes are not an entry (another version wrote them) or it has expired.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    let split = memchr::memchr(b'\n', bytes)?;
    let h: Header = serde_json::from_slice(&bytes[..split]).ok()?;
    let age = Duration::from_millis(unix_ms().saturating_sub(h.stored_ms));
    let left = Duration::from_millis(h.ttl_ms)
        .checked_sub(age)
        .filter(|d| !d.is_zero())?;
    let answer = Answer {
        content: h.content,
        reasoning: h.reasoning,
        finish_reason: h.finish_reason,
        usage: Usage {
            prompt_tokens: h.usage[0],
            completion_tokens: h.usage[1],
            total_tokens: h.usage[2],
            cached_tokens: h.usage[3],
            reasoning_tokens: h.usage[4],
        },
        model: h.model,
        created: h.created,
    };
    let mut e = if h.raw {
        Entry::raw(Bytes::copy_from_slice(&bytes[split + 1..]), left, h.id)
    } else {
        Entry::new(answer, left, h.id)
    };
    e.stored_at = std::time::Instant::now()
        .checked_sub(age)
        .unwrap_or(e.stored_at);
    Some(e)
}

impl RedisAnswers {
    pub fn new(remote: Arc<Remote>, l1: MemoryAnswers, max_entry_bytes: u64) -> Self {
        RedisAnswers {
            remote,
            l1,
            max_entry_bytes,
        }
    }

    /// `c:{<hex>}`: the hash tag puts an answer and its single-flight lock in one Redis
    /// Cluster slot, as the claim script touching both requires.
    pub(super) fn answer_key(&self, key: &Key) -> String {
        self.remote.key(&format!("c:{{{}}}", hex(key)))
    }

    /// Keeps an entry found in Redis in the L1 for the TTL it has left.
    pub(super) async fn adopt(&self, key: &Key, bytes: &[u8]) -> Option<Arc<Entry>> {
        let e = Arc::new(decode(bytes)?);
        self.l1.put(*key, e.clone()).await;
        Some(e)
    }
}

impl AnswerStore for RedisAnswers {
    async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        if let Some(e) = self.l1.get(key).await {
            return Some(e);
        }
        let bytes: Option<Vec<u8>> = self
            .remote
            .run("cache_get", redis::cmd("GET").arg(self.answer_key(key)))
            .await?;
        self.adopt(key, &bytes?).await
    }

    async fn put(&self, key: Key, entry: Arc<Entry>) {
        let bytes = encode(&entry);
        let ttl_ms = entry.ttl.as_millis() as u64;
        self.l1.put(key, entry).await;
        if bytes.len() as u64 > self.max_entry_bytes || ttl_ms == 0 {
            return;
        }
        let _: Option<()> = self
            .remote
            .run(
                "cache_put",
                redis::cmd("SET")
                    .arg(self.answer_key(&key))
                    .arg(bytes)
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await;
    }

    async fn remove(&self, key: &Key) {
        self.l1.remove(key).await;
        let _: Option<i64> = self
            .remote
            .run("cache_remove", redis::cmd("DEL").arg(self.answer_key(key)))
            .await;
    }

    /// Clears this replica's L1 and every shared entry (other replicas' L1 copies live out
    /// their TTL). Returns the larger of the two counts.
    async fn clear(&self) -> u64 {
        let local = self.l1.clear().await;
        let pattern = self.remote.key("c:*");
        let mut cursor = 0u64;
        let mut shared = 0u64;
        loop {
            let Some((next, keys)): Option<(u64, Vec<String>)> = self
                .remote
                .run(
                    "cache_clear",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500),
                )
                .await
            else {
                break;
            };
            let answers: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":lock")).collect();
            if !answers.is_empty() {
                let n: Option<u64> = self
                    .remote
                    .run("cache_clear", redis::cmd("DEL").arg(answers))
                    .await;
                shared += n.unwrap_or(0);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        local.max(shared)
    }

    async fn stats(&self) -> StoreStats {
        self.l1.stats().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip() {
        let mut a = Answer {
            content: "héllo\nworld".into(),
            finish_reason: "stop".into(),
            model: "m".into(),
            created: 7,
            ..Default::default()
        };
        a.usage.prompt_tokens = 3;
        a.usage.reasoning_tokens = 2;
        let e = Entry::new(a.clone(), Duration::from_secs(60), "id1".into());
        let back = decode(&encode(&e)).unwrap();
        assert_eq!(back.answer, a);
        assert_eq!(back.id, "id1");
        assert!(back.ttl <= Duration::from_secs(60) && back.ttl > Duration::from_secs(58));
        let raw = Entry::raw(
            Bytes::from_static(b"{\"data\":[1]}\n"),
            Duration::from_secs(5),
            "r".into(),
        );
        let back = decode(&encode(&raw)).unwrap();
        assert_eq!(back.body.as_deref(), Some(&b"{\"data\":[1]}\n"[..]));
        assert!(decode(b"garbage").is_none());
        let expired = Entry::new(a, Duration::ZERO, "x".into());
        assert!(decode(&encode(&expired)).is_none());
    }
}
