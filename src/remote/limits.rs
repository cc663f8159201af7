//! Client limits decided in Redis: one Lua script per admission checks and reserves every
//! limit at once (no check-then-deduct race between replicas), with Redis's clock (`TIME`), so
//! replicas whose clocks disagree still share one window. A client's keys carry its name as a
//! hash tag (`{client}`), so under Redis Cluster one script touches one slot.
//!
//! Concurrency slots and budget reservations are leases that lapse after [`LEASE`]: a replica
//! that dies mid-request cannot hold them forever. While Redis cannot be reached, `on_error`
//! decides: per-replica counters (`local`), admit (`open`) or refuse (`closed`).
//!
//! Each script touches only what the client's limits need: every `redis.call` costs Redis a
//! microsecond or more, and the admission is on every limited request's path.

use super::Remote;
use crate::config::OnError;
use crate::limits::store::{
    BudgetCheck, Check, Counters, Held, Lease, Limit, LimitStore, MemoryLimits, Verdict,
};
use redis::Script;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How long a concurrency slot or budget reservation outlives a replica that never settles it.
pub const LEASE: Duration = Duration::from_secs(600);

/// KEYS: req, tok, tokn, toksum, fly, res, resx, spent.
/// ARGV: window ms, rpm, tpm, tokens, budget?, cap, need, max in flight, lease ms, period ms,
/// peek?, lease id (-1 = no such limit). Returns refused (0 none, 1 rpm, 2 tpm, 3 budget,
/// 4 concurrency), requests, requests reset ms, tokens, tokens reset ms, spent, reserved,
/// in flight.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, tpm, tokens = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local has_budget, cap, need = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7])
local maxfly, lease, period_ms, peek = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11] == '1'
local id = ARGV[12]

local requests, req_reset = 0, 0
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  requests = redis.call('ZCARD', KEYS[1])
  if requests > 0 then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    req_reset = tonumber(first[2]) + window - now
  end
end
local toksum, tok_reset = 0, 0
if tpm >= 0 then
  -- Pruned in slices: Lua's unpack has a bounded stack.
  repeat
    local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window, 'LIMIT', 0, 1000)
    if #old > 0 then
      local sub = 0
      for _, n in ipairs(redis.call('HMGET', KEYS[3], unpack(old))) do sub = sub + (tonumber(n) or 0) end
      redis.call('HDEL', KEYS[3], unpack(old))
      redis.call('ZREM', KEYS[2], unpack(old))
      redis.call('DECRBY', KEYS[4], sub)
    end
  until #old < 1000
  toksum = tonumber(redis.call('GET', KEYS[4]) or '0')
  if toksum + tokens > tpm then
    if tokens > tpm then
      tok_reset = window
    else
      local used = toksum
      local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
      for i = 1, #entries, 2 do
        used = used - (tonumber(redis.call('HGET', KEYS[3], entries[i])) or 0)
        if used + tokens <= tpm then
          tok_reset = tonumber(entries[i + 1]) + window - now
          break
        end
      end
    end
  end
end
local spent, reserved = 0, 0
if has_budget then
  repeat
    local lapsed = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 1000)
    if #lapsed > 0 then
      redis.call('HDEL', KEYS[6], unpack(lapsed))
      redis.call('ZREM', KEYS[7], unpack(lapsed))
    end
  until #lapsed < 1000
  spent = tonumber(redis.call('GET', KEYS[8]) or '0')
  for _, v in ipairs(redis.call('HVALS', KEYS[6])) do reserved = reserved + tonumber(v) end
end
local fly = 0
if maxfly >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  fly = redis.call('ZCARD', KEYS[5])
end

local refused = 0
if rpm >= 0 and requests >= rpm then refused = 1
elseif tpm >= 0 and toksum + tokens > tpm then refused = 2
elseif has_budget and spent + reserved + need > cap + 1e-12 then refused = 3
elseif maxfly >= 0 and fly >= maxfly then refused = 4 end

if refused == 0 and not peek then
  if rpm >= 0 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('PEXPIRE', KEYS[1], window)
  end
  if tpm >= 0 then
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('HSET', KEYS[3], id, tokens)
    redis.call('INCRBY', KEYS[4], tokens)
    for k = 2, 4 do redis.call('PEXPIRE', KEYS[k], window + lease) end
  end
  if has_budget then
    redis.call('HSET', KEYS[6], id, ARGV[7])
    redis.call('ZADD', KEYS[7], now + lease, id)
    redis.call('PEXPIRE', KEYS[6], lease)
    redis.call('PEXPIRE', KEYS[7], lease)
    redis.call('SET', KEYS[8], '0', 'NX', 'PX', period_ms)
  end
  if maxfly >= 0 then
    redis.call('ZADD', KEYS[5], now + lease, id)
    redis.call('PEXPIRE', KEYS[5], lease)
  end
end
return {refused, requests, req_reset, toksum, tok_reset, tostring(spent), tostring(reserved), fly}
"#,
    )
});

/// KEYS: tok, tokn, toksum, fly, res, resx, spent. ARGV: lease id, tokens used, amount spent.
/// The spend lands in the period the request was admitted in, if that period still exists.
/// Idempotent: applied twice (a retry after a lost reply), it changes nothing the second time.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = ARGV[1]
redis.call('ZREM', KEYS[4], id)
local old = redis.call('HGET', KEYS[2], id)
if old then
  redis.call('HSET', KEYS[2], id, ARGV[2])
  redis.call('INCRBY', KEYS[3], tonumber(ARGV[2]) - tonumber(old))
end
if redis.call('HDEL', KEYS[5], id) == 1 then
  redis.call('ZREM', KEYS[6], id)
  if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('INCRBYFLOAT', KEYS[7], ARGV[3]) end
end
return 1
"#,
    )
});

/// A client's key names.
struct Keys {
    base: String,
}

impl Keys {
    fn new(remote: &Remote, client: &str) -> Keys {
        Keys {
            base: remote.key(&format!("{{{client}}}:")),
        }
    }
    fn k(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }
    fn spent(&self, period: u64) -> String {
        format!("{}spent:{period}", self.base)
    }
}

type Reply = (u8, u64, u64, u64, u64, String, String, u32);

/// Limits in Redis, with per-replica counters for `on_error: local`.
pub struct RedisLimits {
    remote: Arc<Remote>,
    local: MemoryLimits,
}

fn limit_arg(v: Option<u64>) -> i64 {
    v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn counters_of(r: &Reply) -> Counters {
    Counters {
        requests: r.1,
        requests_reset: Duration::from_millis(r.2),
        tokens: r.3,
        tokens_reset: Duration::from_millis(r.4),
        spent: r.5.parse().unwrap_or(0.0),
        reserved: r.6.parse().unwrap_or(0.0),
        inflight: r.7,
    }
}

/// A lease id unique among a client's live leases without a round trip: random, below 2^53 so
/// Lua's numbers hold it exactly.
fn lease_id() -> u64 {
    fastrand::u64(1..(1 << 53))
}

impl RedisLimits {
    pub fn new(remote: Arc<Remote>) -> Self {
        RedisLimits {
            remote,
            local: MemoryLimits::default(),
        }
    }

    async fn eval(&self, c: &Check<'_>, id: u64, peek: bool) -> Option<Reply> {
        let keys = Keys::new(&self.remote, c.client);
        let b = c.budget;
        let mut inv = RESERVE.prepare_invoke();
        for name in ["req", "tok", "tokn", "toksum", "fly", "res", "resx"] {
            inv.key(keys.k(name));
        }
        inv.key(keys.spent(b.map_or(0, |b| b.period)))
            .arg(c.window.as_millis() as u64)
            .arg(limit_arg(c.rpm))
            .arg(limit_arg(c.tpm))
            .arg(c.tokens)
            .arg(u8::from(b.is_some()))
            .arg(b.map_or(0.0, |b| b.cap))
            .arg(b.map_or(0.0, |b| b.need))
            .arg(limit_arg(c.max_inflight.map(u64::from)))
            .arg(LEASE.as_millis() as u64)
            .arg(b.map_or(1, |b| b.ends_in.as_millis().max(1) as u64))
            .arg(u8::from(peek))
            .arg(id);
        self.remote
            .script(
                if peek {
                    "limits_read"
                } else {
                    "limits_reserve"
                },
                &inv,
            )
            .await
    }
}

impl LimitStore for RedisLimits {
    async fn reserve(&self, check: &Check<'_>) -> (Verdict, Counters) {
        let id = lease_id();
        let Some(reply) = self.eval(check, id, false).await else {
            return match self.remote.on_error {
                OnError::Local => self.local.reserve_now(check),
                OnError::Open => (
                    Verdict::Admitted(Lease {
                        client: check.client.to_owned(),
                        id: 0,
                        period: 0,
                        held: Held::Nothing,
                    }),
                    Counters::default(),
                ),
                OnError::Closed => (Verdict::Unavailable, Counters::default()),
            };
        };
        let counters = counters_of(&reply);
        let verdict = match reply.0 {
            0 => Verdict::Admitted(Lease {
                client: check.client.to_owned(),
                id,
                period: check.budget.map_or(0, |b| b.period),
                held: Held::Shared,
            }),
            1 => Verdict::Refused(Limit::Rpm),
            2 => Verdict::Refused(Limit::Tpm),
            3 => Verdict::Refused(Limit::Budget),
            _ => Verdict::Refused(Limit::Concurrency),
        };
        (verdict, counters)
    }

    async fn settle(&self, lease: Lease, tokens: u64, amount: f64) {
        match lease.held {
            Held::Memory => return self.local.settle(lease, tokens, amount).await,
            Held::Nothing => return,
            Held::Shared => {}
        }
        // Settled on the Redis runtime, off the request path: the reservation already counts
        // against every limit, so nothing is admitted early meanwhile, and the client's
        // connection is free for its next request one round trip sooner. A failed settlement
        // is retried (the spend must not be lost to a blip) while the lease could still be
        // settled.
        let remote = self.remote.clone();
        self.remote.spawn(async move {
            let deadline = tokio::time::Instant::now() + LEASE;
            while !settle_once(&remote, &lease, tokens, amount).await {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    async fn counters(&self, client: &str, window: Duration, period: Option<u64>) -> Counters {
        // Every counter is read, whatever the client's limits: this is the admin view.
        let check = Check {
            client,
            window,
            rpm: Some(u64::MAX >> 1),
            tpm: Some(u64::MAX >> 1),
            tokens: 0,
            budget: Some(BudgetCheck {
                period: period.unwrap_or(0),
                ends_in: Duration::from_millis(1),
                cap: f64::MAX,
                need: 0.0,
            }),
            max_inflight: Some(u32::MAX),
        };
        match self.eval(&check, 0, true).await {
            Some(r) => {
                let mut c = counters_of(&r);
                if period.is_none() {
                    c.spent = 0.0;
                }
                c
            }
            None => self.local.counters(client, window, period).await,
        }
    }
}

async fn settle_once(remote: &Remote, lease: &Lease, tokens: u64, amount: f64) -> bool {
    let keys = Keys::new(remote, &lease.client);
    let mut inv = SETTLE.prepare_invoke();
    for name in ["tok", "tokn", "toksum", "fly", "res", "resx"] {
        inv.key(keys.k(name));
    }
    inv.key(keys.spent(lease.period))
        .arg(lease.id)
        .arg(tokens)
        .arg(amount);
    remote.script::<i64>("limits_settle", &inv).await.is_some()
}
