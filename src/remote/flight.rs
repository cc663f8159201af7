//! Single-flight across replicas: of identical requests on several replicas, one (the leader)
//! calls the upstream and the others wait for its answer in Redis instead of calling too.
//!
//! The leader holds a short lock (`SET NX PX`) and renews it while it works; when it ends —
//! answered, failed or gone — the lock is deleted or lapses, and a waiting replica that finds
//! neither an answer nor a lock takes the lock and leads. Followers poll (one script per poll:
//! answer, else lock, else take it), bounded by the caller's patience (the first-token
//! timeout); past it they call the upstream themselves. Errors are never cached, so a failed
//! leader hands over rather than failing its followers.

use super::answers::RedisAnswers;
use crate::cache::store::{Entry, Key};
use redis::Script;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a lock outlives a leader that stopped renewing it (crashed replica).
const LOCK: Duration = Duration::from_secs(2);
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How often a follower looks for the answer.
const POLL: Duration = Duration::from_millis(20);

/// KEYS: answer, lock. ARGV: token, lock ms. Returns the answer's bytes, or 1 when this caller
/// now holds the lock, or 0 when another does.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local a = redis.call('GET', KEYS[1])
if a then return a end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#,
    )
});

/// KEYS: lock. ARGV: token, lock ms (0 = release). Only the holder may renew or release.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"#,
    )
});

/// What the shared cache says about a key nobody in this replica is computing.
pub enum Claim {
    Found(Arc<Entry>),
    /// Call the upstream; with a lock when other replicas wait for this one.
    Lead(Option<Lock>),
}

/// The leader's lock: renewed until dropped, then released.
pub struct Lock {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

enum Step {
    Found(Vec<u8>),
    Locked,
    Wait,
}

impl RedisAnswers {
    async fn claim_once(&self, answer: &str, lock: &str, token: &str) -> Option<Step> {
        let mut inv = CLAIM.prepare_invoke();
        inv.key(answer)
            .key(lock)
            .arg(token)
            .arg(LOCK.as_millis() as u64);
        let v: redis::Value = self.remote.script("cache_claim", &inv).await?;
        Some(match v {
            redis::Value::BulkString(b) => Step::Found(b),
            redis::Value::Int(1) => Step::Locked,
            _ => Step::Wait,
        })
    }

    /// Finds the answer another replica stored or is computing (waiting at most `patience`),
    /// else makes this replica the leader.
    pub async fn claim(&self, key: &Key, patience: Duration) -> Claim {
        let answer = self.answer_key(key);
        let lock = format!("{answer}:lock");
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.claim_once(&answer, &lock, &token).await {
                // Redis is down or slow: nobody can be waited for.
                None => return Claim::Lead(None),
                Some(Step::Found(bytes)) => match self.adopt(key, &bytes).await {
                    Some(e) => return Claim::Found(e),
                    None => return Claim::Lead(None),
                },
                Some(Step::Locked) => return Claim::Lead(Some(self.hold(lock, token))),
                Some(Step::Wait) => {}
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Claim::Lead(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Renews the lock on the Redis runtime until the returned [`Lock`] is dropped.
    fn hold(&self, lock: String, token: String) -> Lock {
        let (tx, mut rx) = oneshot::channel::<()>();
        let remote = self.remote.clone();
        self.remote.spawn(async move {
            let renew = |ms: u64| {
                let mut inv = HOLD.prepare_invoke();
                inv.key(&lock).arg(&token).arg(ms);
                inv
            };
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(RENEW_EVERY) => {
                        let _: Option<i64> = remote.script("cache_lock", &renew(LOCK.as_millis() as u64)).await;
                    }
                }
            }
            let _: Option<i64> = remote.script("cache_lock", &renew(0)).await;
        });
        Lock { stop: Some(tx) }
    }
}
