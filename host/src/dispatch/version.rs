//! Plugin versions and, in reuse mode, their idle instances.
//!
//! [`Versions`] is the registry: one current version, swapped atomically by
//! a reload. A request holds an `Arc<Version>` while it runs, so an old
//! version lives until its last request is done, then is dropped.
//!
//! A [`Lease`] is one instance lent to a request (or to a session of
//! requests that run one after another). Dropping a lease returns its
//! instance to its version's idle pool, where it waits at most
//! [`IDLE_INSTANCE_TTL`]: reuse is for traffic that keeps coming, and an
//! instance that waits longer (holding its memory, and whatever the last
//! request left in it) is dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::plugin::{Instance, Plugin};

/// Idle instances kept per plugin version in reuse mode. More than the
/// requests that run at once on a small machine; each one holds pool room.
const MAX_IDLE_INSTANCES: usize = 64;

/// How long an idle instance is kept for reuse (as `wasmtime serve` does).
pub const IDLE_INSTANCE_TTL: Duration = Duration::from_secs(1);

/// A plugin version and its idle instances.
pub struct Version {
    plugin: Plugin,
    /// Idle instances, oldest first, with when each became idle.
    idle: Mutex<Vec<(Instance, Instant)>>,
}

impl Version {
    fn new(plugin: Plugin) -> Arc<Self> {
        Arc::new(Version { plugin, idle: Mutex::default() })
    }

    /// The plugin of this version.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The most recently used idle instance, if any.
    pub(super) fn take_idle(self: &Arc<Self>) -> Option<Lease> {
        let (instance, _) = self.idle.lock().expect("idle pool lock").pop()?;
        Some(Lease { version: self.clone(), instance: Some(instance) })
    }

    /// Drop idle instances that have waited longer than `ttl`; returns how
    /// many.
    fn expire(&self, now: Instant, ttl: Duration) -> usize {
        let mut idle = self.idle.lock().expect("idle pool lock");
        // Oldest first: the expired ones are a prefix.
        let expired = idle.iter().take_while(|(_, since)| now.duration_since(*since) >= ttl).count();
        idle.drain(..expired);
        expired
    }

    fn clear(&self) {
        self.idle.lock().expect("idle pool lock").clear();
    }
}

/// The version that serves new requests.
pub struct Versions {
    current: ArcSwap<Version>,
}

impl Versions {
    /// Serve `plugin`.
    pub fn new(plugin: Plugin) -> Self {
        Self { current: ArcSwap::new(Version::new(plugin)) }
    }

    /// The version serving new requests.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Make `plugin` serve every request that starts from now on; requests
    /// already running finish on the version they started with. The old
    /// version's idle instances are dropped at once.
    pub fn swap(&self, plugin: Plugin) -> Arc<Version> {
        let old = self.current.swap(Version::new(plugin));
        old.clear();
        old
    }

    /// Drop the current version's instances idle for [`IDLE_INSTANCE_TTL`]
    /// or longer; returns how many.
    pub fn expire_idle(&self) -> usize {
        self.current.load().expire(Instant::now(), IDLE_INSTANCE_TTL)
    }
}

/// An instance lent out of a version; dropping it returns the instance to
/// the version's idle pool (dropped instead if the pool is full).
///
/// Only instances that may serve another request are ever wrapped in a
/// lease: one that trapped or reached `--instance-reuse` is dropped.
pub struct Lease {
    version: Arc<Version>,
    /// `Some` until dropped.
    instance: Option<Instance>,
}

impl Lease {
    /// Lend `instance` of `version`.
    pub(super) fn new(version: Arc<Version>, instance: Instance) -> Self {
        Self { version, instance: Some(instance) }
    }

    /// Whether this lease is of `version`.
    pub(super) fn is_of(&self, version: &Arc<Version>) -> bool {
        Arc::ptr_eq(&self.version, version)
    }

    /// Take the instance back out (it is then not returned to the pool).
    pub(super) fn into_instance(mut self) -> Instance {
        self.instance.take().expect("a lease holds its instance until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(instance) = self.instance.take() else { return };
        let mut idle = self.version.idle.lock().expect("idle pool lock");
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push((instance, Instant::now()));
        }
    }
}
