//! The host services every plugin may import, through the standard WASI
//! interfaces (WIT vendored in `wit/services/deps`):
//!
//! | interface | what the host does |
//! |---|---|
//! | `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft` | the service's buckets on the [`kv::Store`] |
//! | `wasi:config/store@0.2.0-rc.1` | the operator's variables (`--var KEY=VALUE`) |
//! | `wasi:logging/logging@0.1.0-draft` | lines in the host's log (see `state`) |
//!
//! Bound with our own `bindgen!`: wasmtime's `wasmtime-wasi-keyvalue`
//! copies an in-memory map into each bucket it opens, so nothing written
//! is seen by another instance.
//!
//! Every key-value call is checked here before it reaches the store: the
//! bucket must be granted, the key and value within their caps, and the
//! call within the plugin call's operation budget. A plugin over a limit
//! gets `error::other(...)` saying which, never a trap.

use std::sync::Arc;

use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::kv::{self, BucketId};
use crate::stats::Stats;

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/services",
        world: "sockets:services/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::kv::Error,
        },
    });
}

use generated::wasi::config::store as config;
use generated::wasi::keyvalue::{atomics, batch, store};

pub use generated::wasi::logging::logging::Level as LoggingLevel;

/// The `wasi:logging` interface, offered by hand in `state`.
pub const LOGGING_INTERFACE: &str = "wasi:logging/logging@0.1.0-draft";

/// Most buckets one instance may hold open at once.
pub const MAX_OPEN_BUCKETS: usize = 64;

/// Caps on what one plugin call may do with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes (`--kv-max-key`).
    pub max_key: usize,
    /// Largest value, in bytes (`--kv-max-value`).
    pub max_value: usize,
    /// Most bytes of keys and values one bucket may hold
    /// (`--kv-max-bucket-bytes`).
    pub max_bucket_bytes: u64,
    /// Operations per plugin call; a batch counts one per key
    /// (`--kv-max-ops`).
    pub max_ops: u32,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key: kv::DEFAULT_MAX_KEY,
            max_value: kv::DEFAULT_MAX_VALUE,
            max_bucket_bytes: kv::DEFAULT_MAX_BUCKET_BYTES,
            max_ops: kv::DEFAULT_MAX_OPS,
        }
    }
}

/// What the host gives one service's plugins: its store, the buckets it
/// may open, its limits and its configuration variables. Shared by every
/// instance of every version of the service's plugin.
#[derive(Clone)]
pub struct Services {
    /// The store, shared with every other service of the process.
    pub store: Arc<kv::Store>,
    /// The service's namespace: its buckets are its own.
    pub namespace: Arc<str>,
    /// The buckets its plugins may open.
    pub buckets: Vec<Arc<str>>,
    /// Caps on key-value use.
    pub limits: KvLimits,
    /// `wasi:config` variables, sorted by name, one value per name: the
    /// `--var` values, and the `--var-file` values the loader read for
    /// the version (see [`Self::var_files`]).
    pub vars: Vec<(String, String)>,
    /// `--var-file KEY=PATH`: variables whose values the loader reads from
    /// files at each load of the plugin (`vars` of the [`Services`] it
    /// gives that version).
    pub var_files: Vec<(String, std::path::PathBuf)>,
    /// Where the key-value counters go.
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("namespace", &self.namespace)
            .field("buckets", &self.buckets)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Services on `store` for namespace `namespace`, with the defaults:
    /// bucket `default`, the default limits, no variables.
    pub fn new(store: Arc<kv::Store>, namespace: &str, stats: Arc<Stats>) -> Self {
        Self {
            store,
            namespace: namespace.into(),
            buckets: vec![kv::DEFAULT_BUCKET.into()],
            limits: KvLimits::default(),
            vars: Vec::new(),
            var_files: Vec::new(),
            stats,
        }
    }
}

/// An open bucket: the host side of a `wasi:keyvalue/store.bucket`.
pub struct Bucket(BucketId);

/// The services side of one store: its open buckets and what is left of
/// the current call's budgets.
pub struct ServicesState {
    services: Arc<Services>,
    table: ResourceTable,
    open: usize,
    ops_left: u32,
    /// Bytes of values one call may read: the instance's `--max-memory`,
    /// as the plugin could not hold more.
    max_read: usize,
    read_left: usize,
    /// Set in the init step ([`super::init`]): `open` fails.
    refuse: bool,
}

impl ServicesState {
    pub(super) fn new(services: Arc<Services>, max_memory: usize) -> Self {
        let ops_left = services.limits.max_ops;
        Self {
            services,
            table: ResourceTable::new(),
            open: 0,
            ops_left,
            max_read: max_memory,
            read_left: max_memory,
            refuse: false,
        }
    }

    /// Refuse `wasi:keyvalue` (the init step): a bucket opened there would
    /// be a handle in the snapshot that names nothing in the instances
    /// made from it.
    pub(super) fn refuse_keyvalue(&mut self) {
        self.refuse = true;
    }

    /// How many buckets are open.
    pub(super) fn open_buckets(&self) -> usize {
        self.open
    }

    /// A new call: full budgets.
    pub(super) fn begin_call(&mut self) {
        self.ops_left = self.services.limits.max_ops;
        self.read_left = self.max_read;
    }

    /// Take the values a call read from its read budget, or fail.
    fn read<T>(&mut self, bytes: usize, value: T) -> Result<T, kv::Error> {
        match self.read_left.checked_sub(bytes) {
            Some(left) => {
                self.read_left = left;
                Ok(value)
            }
            None => {
                self.read_left = 0;
                Err(kv::over_read(self.max_read))
            }
        }
    }

    /// Take `n` operations from the call's budget, or fail saying why.
    fn spend(&mut self, n: usize) -> Result<(), kv::Error> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match self.ops_left.checked_sub(n) {
            Some(left) => {
                self.ops_left = left;
                Ok(())
            }
            None => {
                self.ops_left = 0;
                Err(kv::Error::Other(format!(
                    "over {} key-value operations in one call (--kv-max-ops)",
                    self.services.limits.max_ops
                )))
            }
        }
    }

    fn key_ok(&self, key: &str) -> Result<(), kv::Error> {
        let max = self.services.limits.max_key;
        if key.len() > max {
            return Err(kv::Error::Other(format!(
                "key of {} bytes is over the {max}-byte limit (--kv-max-key)",
                key.len()
            )));
        }
        Ok(())
    }

    fn value_ok(&self, value: &[u8]) -> Result<(), kv::Error> {
        let max = self.services.limits.max_value;
        if value.len() > max {
            return Err(kv::Error::Other(format!(
                "value of {} bytes is over the {max}-byte limit (--kv-max-value)",
                value.len()
            )));
        }
        Ok(())
    }

    /// The checks of an operation on one key: one operation from the
    /// budget, the key's size, the bucket handle.
    fn one_key(&mut self, bucket: &Resource<Bucket>, key: &str) -> Result<BucketId, kv::Error> {
        self.spend(1)?;
        self.key_ok(key)?;
        self.bucket(bucket)
    }

    fn bucket(&self, b: &Resource<Bucket>) -> Result<BucketId, kv::Error> {
        self.table.get(b).map(|b| b.0.clone()).map_err(kv::Error::other)
    }

    /// Count one operation and its outcome.
    fn counted<T>(&self, result: Result<T, kv::Error>) -> Result<T, kv::Error> {
        Stats::incr(&self.services.stats.kv_ops);
        if result.is_err() {
            Stats::incr(&self.services.stats.kv_errors);
        }
        result
    }

    fn store(&self) -> &kv::Store {
        &self.services.store
    }

    fn max_bucket(&self) -> u64 {
        self.services.limits.max_bucket_bytes
    }
}

/// Adds the key-value and config interfaces to `linker`, reaching the
/// [`ServicesState`] of each store through `get`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut ServicesState,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasServices>(linker, get)?;
    atomics::add_to_linker::<T, HasServices>(linker, get)?;
    batch::add_to_linker::<T, HasServices>(linker, get)?;
    config::add_to_linker::<T, HasServices>(linker, get)?;
    Ok(())
}

struct HasServices;

impl HasData for HasServices {
    type Data<'a> = &'a mut ServicesState;
}

impl store::Host for ServicesState {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, kv::Error> {
        let granted = self.services.buckets.iter().find(|b| ***b == *identifier).cloned();
        let result = match granted {
            _ if self.refuse => Err(kv::Error::Other(
                "wasi:keyvalue is not available in wizer-initialize: open buckets in the calls that serve \
                 requests"
                    .into(),
            )),
            None => Err(kv::Error::AccessDenied),
            Some(_) if self.open >= MAX_OPEN_BUCKETS => Err(kv::Error::Other(format!(
                "{MAX_OPEN_BUCKETS} buckets are already open in this instance: drop one first"
            ))),
            Some(name) => {
                let id = BucketId { namespace: self.services.namespace.clone(), name };
                self.table.push(Bucket(id)).map_err(kv::Error::other).inspect(|_| self.open += 1)
            }
        };
        self.counted(result)
    }

    fn convert_error(&mut self, err: kv::Error) -> wasmtime::Result<store::Error> {
        Ok(match err {
            kv::Error::NoSuchStore => store::Error::NoSuchStore,
            kv::Error::AccessDenied => store::Error::AccessDenied,
            kv::Error::Other(text) => store::Error::Other(text),
        })
    }
}

impl store::HostBucket for ServicesState {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        let result = async {
            let b = self.one_key(&bucket, &key)?;
            let value = self.store().get(&b, &key).await?;
            self.read(value.as_ref().map_or(0, Vec::len), value)
        }
        .await;
        self.counted(result)
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), kv::Error> {
        let result = async {
            let b = self.one_key(&bucket, &key)?;
            self.value_ok(&value)?;
            self.store().set(&b, &key, value, self.max_bucket()).await
        }
        .await;
        self.counted(result)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), kv::Error> {
        let result = async {
            let b = self.one_key(&bucket, &key)?;
            self.store().delete(&b, &key).await
        }
        .await;
        self.counted(result)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, kv::Error> {
        let result = async {
            let b = self.one_key(&bucket, &key)?;
            self.store().exists(&b, &key).await
        }
        .await;
        self.counted(result)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, kv::Error> {
        let result = async {
            self.spend(1)?;
            let b = self.bucket(&bucket)?;
            let (keys, cursor) = self.store().list_keys(&b, cursor).await?;
            Ok(store::KeyResponse { keys, cursor })
        }
        .await;
        self.counted(result)
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.open -= 1;
        Ok(())
    }
}

impl atomics::Host for ServicesState {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Result<u64, kv::Error> {
        let result = async {
            let b = self.one_key(&bucket, &key)?;
            self.store().increment(&b, &key, delta, self.max_bucket()).await
        }
        .await;
        self.counted(result)
    }
}

impl batch::Host for ServicesState {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, kv::Error> {
        let result = async {
            self.spend(keys.len().max(1))?;
            keys.iter().try_for_each(|k| self.key_ok(k))?;
            let b = self.bucket(&bucket)?;
            let values = self.store().get_many(&b, keys.clone(), self.read_left).await?;
            let bytes = values.iter().flatten().map(Vec::len).sum();
            let pairs = keys.into_iter().zip(values).map(|(k, v)| v.map(|v| (k, v))).collect();
            self.read(bytes, pairs)
        }
        .await;
        self.counted(result)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), kv::Error> {
        let result = async {
            self.spend(key_values.len().max(1))?;
            for (k, v) in &key_values {
                self.key_ok(k)?;
                self.value_ok(v)?;
            }
            let b = self.bucket(&bucket)?;
            self.store().set_many(&b, key_values, self.max_bucket()).await
        }
        .await;
        self.counted(result)
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), kv::Error> {
        let result = async {
            self.spend(keys.len().max(1))?;
            keys.iter().try_for_each(|k| self.key_ok(k))?;
            let b = self.bucket(&bucket)?;
            for k in &keys {
                self.store().delete(&b, k).await?;
            }
            Ok(())
        }
        .await;
        self.counted(result)
    }
}

impl config::Host for ServicesState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        let vars = &self.services.vars;
        let value = vars.binary_search_by(|(k, _)| k.as_str().cmp(&key)).ok().map(|i| vars[i].1.clone());
        Ok(Ok(value))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self.services.vars.clone()))
    }
}
