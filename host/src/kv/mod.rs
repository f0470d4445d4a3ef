//! The key-value store behind `wasi:keyvalue`: buckets of string keys and
//! byte values, on an embedded SQLite file (the default, [`embedded`]) or
//! on a Redis server shared by many hosts ([`redis`]).
//!
//! Plain data and I/O, no wasmtime: the WIT glue is in
//! `plugin::services`, which checks the sizes and the operation budget
//! before calling here. A bucket is named by a [`BucketId`]: the service's
//! namespace and the bucket's name, so two services never share a key.
//!
//! Both backends keep, per bucket, the bytes its keys and values take, and
//! refuse a write that would take the bucket over its cap in the same
//! transaction (SQLite) or Lua script (Redis) as the write: the cap holds
//! across every instance, worker thread and host process.
//!
//! Counters written by `increment` are decimal ASCII (`"42"`), as Redis's
//! `INCRBY` and wasmtime's own keyvalue crate store them, so `get` of a
//! counter reads the same on both backends.

pub mod embedded;
pub mod redis;

use std::path::Path;
use std::sync::Arc;

/// The bucket a plugin may open when the operator grants none.
pub const DEFAULT_BUCKET: &str = "default";
/// Longest key, in bytes. Spin's default: long enough for any sensible
/// key, short enough that keys stay cheap to index and to list.
pub const DEFAULT_MAX_KEY: usize = 256;
/// Largest value, in bytes (Spin's default, 1 MiB).
pub const DEFAULT_MAX_VALUE: usize = 1 << 20;
/// Most bytes (keys plus values) one bucket may hold.
pub const DEFAULT_MAX_BUCKET_BYTES: u64 = 64 << 20;
/// Key-value operations one plugin call may make (a batch operation counts
/// one per key). A plugin that loops on the store is stopped by this long
/// before it could fill a bucket or keep the store busy.
pub const DEFAULT_MAX_OPS: u32 = 1_000;
/// Most keys one `list-keys` call returns; the cursor fetches the rest.
pub const LIST_PAGE: usize = 1_000;

/// What a store operation can fail with, as `wasi:keyvalue` reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bucket does not exist.
    #[error("no such store")]
    NoSuchStore,
    /// The plugin is not granted the bucket.
    #[error("access denied")]
    AccessDenied,
    /// Anything else: a limit, a value that is not a counter, the backend
    /// being unavailable. The text says which.
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn other(what: impl std::fmt::Display) -> Self {
        Error::Other(what.to_string())
    }
}

/// Whether `value` is a counter as `increment` reads and writes it on
/// every backend: decimal digits, no sign, no leading zero (`0`, `42`).
pub fn is_counter(value: &[u8]) -> bool {
    match value {
        [] => false,
        [b'0'] => true,
        [b'0', ..] => false,
        digits => digits.len() <= 20 && digits.iter().all(u8::is_ascii_digit),
    }
}

fn not_a_counter(key: &str) -> Error {
    Error::Other(format!("the value of key {key:?} is not a decimal counter"))
}

fn overflow(key: &str) -> Error {
    Error::Other(format!("incrementing key {key:?} overflows"))
}

/// The error of a read over the call's budget of `max` bytes.
pub(crate) fn over_read(max: usize) -> Error {
    Error::Other(format!("the values read in this call add up to more than {max} bytes (--max-memory)"))
}

/// One bucket of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketId {
    /// The service's namespace (`--name`).
    pub namespace: Arc<str>,
    /// The bucket's name, as the plugin opened it.
    pub name: Arc<str>,
}

impl std::fmt::Display for BucketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespace or bucket name: 1 to 64 ASCII letters, digits, `-`, `_` or
/// `.`. Kept this plain so it can be part of a Redis key pattern or a log
/// line without escaping.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {name:?} is not a valid name: use 1 to 64 ASCII letters, digits, '-', '_' or '.'"))
    }
}

/// Where the buckets live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in this directory.
    Embedded(std::path::PathBuf),
    /// A Redis server, by URL (`redis://host:port/db`).
    Redis(String),
}

/// A key-value store, shared by every plugin instance of a server.
pub enum Store {
    /// SQLite in the data directory.
    Embedded(embedded::Embedded),
    /// A Redis server.
    Redis(redis::RedisStore),
    /// No store: the default data directory could not be used. Every
    /// operation fails with this reason.
    Unavailable(String),
}

impl Store {
    /// Open the store. The embedded store fails here if its file cannot be
    /// opened; a Redis store never fails for an unreachable server (it
    /// connects when it can) but does for a bad URL. `timeout` is how long
    /// a request may run (`--timeout`): no store call waits longer.
    pub async fn open(backend: &Backend, timeout: std::time::Duration) -> anyhow::Result<Store> {
        Ok(match backend {
            Backend::Embedded(dir) => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || embedded::Embedded::open(&dir)).await??;
                Store::Embedded(store)
            }
            Backend::Redis(url) => Store::Redis(redis::RedisStore::open(url, timeout).await?),
        })
    }

    /// Where the data is, for logs.
    pub fn describe(&self) -> String {
        match self {
            Store::Embedded(s) => format!("embedded SQLite store {}", s.path().display()),
            Store::Redis(s) => format!("Redis at {}", s.address()),
            Store::Unavailable(why) => format!("unavailable ({why})"),
        }
    }

    /// The value of `key`, if it has one.
    pub async fn get(&self, b: &BucketId, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Store::Embedded(s) => s.get(b, key).await,
            Store::Redis(s) => s.get(b, key).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// Set `key` to `value`, unless that takes the bucket over `max_bucket`
    /// bytes.
    pub async fn set(&self, b: &BucketId, key: &str, value: Vec<u8>, max_bucket: u64) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.set(b, key, value, max_bucket).await,
            Store::Redis(s) => s.set(b, key, &value, max_bucket).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// Set every key of `pairs`, in order. On the embedded store they
    /// commit in one transaction, all or none (a batch that takes the
    /// bucket over `max_bucket` sets nothing); on Redis one at a time, so an
    /// error can leave the first ones set (`wasi:keyvalue/batch` allows
    /// both).
    pub async fn set_many(&self, b: &BucketId, pairs: Vec<(String, Vec<u8>)>, max_bucket: u64) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.set_many(b, pairs, max_bucket).await,
            Store::Redis(s) => {
                for (k, v) in pairs {
                    s.set(b, &k, &v, max_bucket).await?;
                }
                Ok(())
            }
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// Delete `key`; nothing happens if it does not exist.
    pub async fn delete(&self, b: &BucketId, key: &str) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.delete(b, key).await,
            Store::Redis(s) => s.delete(b, key).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// Whether `key` has a value.
    pub async fn exists(&self, b: &BucketId, key: &str) -> Result<bool, Error> {
        match self {
            Store::Embedded(s) => s.exists(b, key).await,
            Store::Redis(s) => s.exists(b, key).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// Up to [`LIST_PAGE`] keys from `cursor` on, and the cursor of the
    /// next page (`None` at the end).
    pub async fn list_keys(&self, b: &BucketId, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), Error> {
        match self {
            Store::Embedded(s) => s.list_keys(b, cursor).await,
            Store::Redis(s) => s.list_keys(b, cursor).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// Add `delta` to the counter at `key` (0 if it has no value) and
    /// return the sum, atomically.
    pub async fn increment(&self, b: &BucketId, key: &str, delta: u64, max_bucket: u64) -> Result<u64, Error> {
        match self {
            Store::Embedded(s) => s.increment(b, key, delta, max_bucket).await,
            Store::Redis(s) => s.increment(b, key, delta, max_bucket).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }

    /// The values of `keys`, in order; an error once they add up to more
    /// than `max_bytes`, so a list of one big key repeated cannot make the
    /// host (or Redis) hold more.
    pub async fn get_many(
        &self,
        b: &BucketId,
        keys: Vec<String>,
        max_bytes: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        match self {
            Store::Embedded(s) => s.get_many(b, keys, max_bytes).await,
            Store::Redis(s) => s.get_many(b, &keys, max_bytes).await,
            Store::Unavailable(why) => Err(Error::Other(format!("no key-value store: {why}"))),
        }
    }
}

/// The default data directory: `$XDG_DATA_HOME/wasm-sockets-host` or
/// `~/.local/share/wasm-sockets-host`.
pub fn default_data_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")))?;
    Some(base.join("wasm-sockets-host"))
}

/// Create `dir` (and its parents) readable by this user only.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
