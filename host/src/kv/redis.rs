//! The Redis key-value backend, for several hosts serving one service.
//!
//! One multiplexed connection per host process (the `redis` crate's
//! `ConnectionManager`): every request's commands are pipelined on it, and
//! it reconnects by itself when the server goes away and comes back. The
//! host starts even if Redis is down; until it is reachable, operations fail
//! with `other("redis: ...")` and the plugin decides what to reply. A call
//! blocked on an unresponsive server is cut off by the request's
//! `--timeout`, like any other part of the call, and the connection gives
//! up on a reply after twice that.
//!
//! Layout, for `redis-cli` users: the value of key `K` of bucket `B` of
//! service `S` is the string `kv:{S/B}:K`; the bucket's byte count is field
//! `bytes` of the hash `kvmeta:{S/B}`, and its keys are the members of the
//! sorted set `kvkeys:{S/B}` (what `list-keys` pages through, so listing a
//! bucket never scans the rest of the database). The braces are a Redis
//! Cluster hash tag: every key of a bucket hashes to one slot, so the Lua
//! scripts, which touch a value, its bucket's count and its index together,
//! would work unchanged on a cluster (see README, "State and
//! configuration").

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{BucketId, Error, LIST_PAGE, embedded::over_cap};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the start-up check waits for `PING`.
const START_CHECK: Duration = Duration::from_secs(1);

/// Set a value, keeping the bucket's byte count and key index, and refuse
/// a write over the cap. KEYS: value, count, index. ARGV: value, key,
/// cap. Returns -1, or the bytes the bucket would have held.
const SET: &str = r"
local keylen = string.len(ARGV[2])
local old = 0
if redis.call('EXISTS', KEYS[1]) == 1 then old = keylen + redis.call('STRLEN', KEYS[1]) end
local new = keylen + string.len(ARGV[1])
if new > old then
  local total = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
  if total - old + new > tonumber(ARGV[3]) then return total - old + new end
end
redis.call('SET', KEYS[1], ARGV[1])
if old == 0 then redis.call('ZADD', KEYS[3], 0, ARGV[2]) end
if new ~= old then redis.call('HINCRBY', KEYS[2], 'bytes', new - old) end
return -1
";

/// Delete a value, keeping the count and index. KEYS: value, count,
/// index. ARGV: key.
const DELETE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local size = string.len(ARGV[1]) + redis.call('STRLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'bytes', -size)
end
return 0
";

/// Add to a decimal counter, keeping the count and index; undone if the
/// new value takes the bucket over its cap. A counter is digits without a
/// sign or a leading zero, the form the embedded store accepts too.
/// KEYS: value, count, index. ARGV: delta, key, cap.
const INCREMENT: &str = r"
local keylen = string.len(ARGV[2])
local v = redis.call('GET', KEYS[1])
local old = 0
if v then
  if not (v == '0' or string.match(v, '^[1-9]%d*$')) then return redis.error_reply('NOTCOUNTER not a decimal counter') end
  old = keylen + string.len(v)
end
local n = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(n) == 'table' and n.err then return redis.error_reply('OVERFLOW past 2^63-1') end
local new = keylen + redis.call('STRLEN', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if new > old and total - old + new > tonumber(ARGV[3]) then
  if v then redis.call('SET', KEYS[1], v) else redis.call('DEL', KEYS[1]) end
  return redis.error_reply('OVERCAP ' .. (total - old + new))
end
if not v then redis.call('ZADD', KEYS[3], 0, ARGV[2]) end
redis.call('HINCRBY', KEYS[2], 'bytes', new - old)
return n
";

/// Buckets on a Redis server.
pub struct RedisStore {
    conn: ConnectionManager,
    address: String,
    set: Script,
    delete: Script,
    increment: Script,
}

impl RedisStore {
    /// Set up the connection to `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path`) and check once whether the server answers.
    /// Fails only for a URL that is not a Redis URL.
    /// A reply that takes twice `timeout` (the request's) is given up on:
    /// no call waits that long anyway.
    pub async fn open(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        // The URL is not repeated: it may hold a password.
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("--kv is not a Redis URL ({e}): use redis://HOST[:PORT][/DB]"))?;
        let info = client.get_connection_info();
        let address = format!("{}/{}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Longer than any call may wait, so the request's own timer
            // is what cuts a call off; this only gives up on a server that
            // stopped answering.
            .set_response_timeout(Some(2 * timeout))
            // One quick retry: a longer wait is the request's `--timeout`'s
            // to decide, and the next request tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection to {address}: {e}"))?;
        let store = Self {
            conn,
            address,
            set: Script::new(SET),
            delete: Script::new(DELETE),
            increment: Script::new(INCREMENT),
        };
        let mut conn = store.conn.clone();
        match tokio::time::timeout(START_CHECK, redis::cmd("PING").query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => tracing::info!("key-value store: Redis at {} answers", store.address),
            Ok(Err(e)) => tracing::warn!(
                "key-value store: Redis at {} is not reachable ({e}); serving anyway: requests that use the \
                 store get errors until it is",
                store.address
            ),
            Err(_) => tracing::warn!(
                "key-value store: Redis at {} did not answer within {START_CHECK:?}; serving anyway: requests \
                 that use the store get errors until it does",
                store.address
            ),
        }
        Ok(store)
    }

    /// `host:port/db`, without credentials, for logs.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub(super) async fn get(&self, b: &BucketId, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.conn.clone().get(value_key(b, key)).await.map_err(fail)
    }

    pub(super) async fn exists(&self, b: &BucketId, key: &str) -> Result<bool, Error> {
        self.conn.clone().exists(value_key(b, key)).await.map_err(fail)
    }

    pub(super) async fn get_many(
        &self,
        b: &BucketId,
        keys: &[String],
        max_bytes: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<Vec<u8>> = keys.iter().map(|k| value_key(b, k)).collect();
        // The sizes first, so that a list of big values is refused before
        // Redis builds (and this host reads) the reply.
        let mut sizes = redis::pipe();
        for name in &names {
            sizes.strlen(name);
        }
        let sizes: Vec<usize> = sizes.query_async(&mut self.conn.clone()).await.map_err(fail)?;
        if sizes.iter().sum::<usize>() > max_bytes {
            return Err(super::over_read(max_bytes));
        }
        redis::cmd("MGET").arg(&names).query_async(&mut self.conn.clone()).await.map_err(fail)
    }

    pub(super) async fn set(&self, b: &BucketId, key: &str, value: &[u8], max_bucket: u64) -> Result<(), Error> {
        let over: i64 = self
            .set
            .key(value_key(b, key))
            .key(count_key(b))
            .key(index_key(b))
            .arg(value)
            .arg(key)
            .arg(max_bucket)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(fail)?;
        match over {
            -1 => Ok(()),
            after => Err(over_cap(b, after as u64, max_bucket)),
        }
    }

    pub(super) async fn delete(&self, b: &BucketId, key: &str) -> Result<(), Error> {
        let _: i64 = self
            .delete
            .key(value_key(b, key))
            .key(count_key(b))
            .key(index_key(b))
            .arg(key)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(fail)?;
        Ok(())
    }

    pub(super) async fn increment(&self, b: &BucketId, key: &str, delta: u64, max_bucket: u64) -> Result<u64, Error> {
        let overflow = || Error::Other(format!("incrementing key {key:?} overflows (Redis counters stop at 2^63-1)"));
        let delta = i64::try_from(delta).map_err(|_| overflow())?;
        let result: redis::RedisResult<i64> = self
            .increment
            .key(value_key(b, key))
            .key(count_key(b))
            .key(index_key(b))
            .arg(delta)
            .arg(key)
            .arg(max_bucket)
            .invoke_async(&mut self.conn.clone())
            .await;
        match result {
            Ok(n) => Ok(n as u64),
            // The script's own error replies: a code and a detail.
            Err(e) => match e.code() {
                Some("NOTCOUNTER") => Err(super::not_a_counter(key)),
                Some("OVERFLOW") => Err(overflow()),
                Some("OVERCAP") => {
                    let after = e.detail().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
                    Err(over_cap(b, after, max_bucket))
                }
                _ => Err(fail(e)),
            },
        }
    }

    pub(super) async fn list_keys(
        &self,
        b: &BucketId,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), Error> {
        // The cursor is a position in the bucket's index (sorted by key):
        // a page may miss or repeat a key written meanwhile, as the WIT
        // allows.
        let start = cursor.unwrap_or(0).min(i64::MAX as u64 - LIST_PAGE as u64) as i64;
        let stop = start + LIST_PAGE as i64; // one more, to know whether there is a next page
        let mut keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(index_key(b))
            .arg(start)
            .arg(stop)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(fail)?;
        let next = (keys.len() > LIST_PAGE).then(|| {
            keys.truncate(LIST_PAGE);
            (start as usize + LIST_PAGE) as u64
        });
        Ok((keys, next))
    }
}

/// `kv:{namespace/bucket}:key`. Namespace and bucket names are plain
/// ([`super::check_name`]): no key of one bucket is a key of another.
fn value_key(b: &BucketId, key: &str) -> Vec<u8> {
    let mut name = Vec::with_capacity(8 + b.namespace.len() + b.name.len() + key.len());
    name.extend_from_slice(b"kv:{");
    name.extend_from_slice(b.namespace.as_bytes());
    name.push(b'/');
    name.extend_from_slice(b.name.as_bytes());
    name.extend_from_slice(b"}:");
    name.extend_from_slice(key.as_bytes());
    name
}

/// `kvmeta:{namespace/bucket}`: the hash holding the bucket's byte count.
fn count_key(b: &BucketId) -> String {
    format!("kvmeta:{{{}/{}}}", b.namespace, b.name)
}

/// `kvkeys:{namespace/bucket}`: the sorted set of the bucket's keys.
fn index_key(b: &BucketId) -> String {
    format!("kvkeys:{{{}/{}}}", b.namespace, b.name)
}

/// A Redis error as the plugin sees it, logged for the operator.
fn fail(e: redis::RedisError) -> Error {
    crate::ratelimit::log_limited!(warn, "key-value store: redis: {e}");
    Error::Other(format!("redis: {e}"))
}
