//! Plugin versions and, in reuse mode, their idle instances.
//!
//! [`Versions`] is the registry: one current version, swapped atomically by
//! a reload. A request holds an `Arc<Version>` while it runs, so an old
//! version lives until its last request is done, then is dropped.
//!
//! A connection that keeps an instance for its whole life (the connection
//! world, or `--tcp-isolation connection`) keeps its version too. A
//! replaced version is retired `--reload-grace` after the swap: its
//! connections are closed at their next call boundary, so an old version
//! cannot outlive a reload by more than that ([`Version::retired`]).
//!
//! A [`Lease`] is one instance lent to a request (or to a session of
//! requests that run one after another). Dropping a lease returns its
//! instance to its version's idle pool, where it waits at most
//! [`IDLE_INSTANCE_TTL`]: reuse is for traffic that keeps coming, and an
//! instance that waits longer (holding its memory, and whatever the last
//! request left in it) is dropped.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::plugin::{CallLimits, Instance, Plugin};
use crate::stats::{Histogram, Snapshot, Stats};
use crate::status::{PluginVersion, VersionStatus};

/// Idle instances kept per plugin version in reuse mode. More than the
/// requests that run at once on a small machine; each one holds pool room.
const MAX_IDLE_INSTANCES: usize = 64;

/// How long an idle instance is kept for reuse (as `wasmtime serve` does).
pub const IDLE_INSTANCE_TTL: Duration = Duration::from_secs(1);

/// How every request is called, whatever the version: carried by each
/// version so that a request needs one reference-counted pointer, its
/// version's, and no other shared count (two worker threads bumping one
/// count per request cost more than the bump).
#[derive(Clone)]
pub struct CallPolicy {
    /// The per-request limits.
    pub limits: CallLimits,
    /// Requests one instance may serve (1: a fresh instance per request).
    pub reuse: u64,
    /// This version's own counters (the outcome of every call on it); a
    /// new version starts at zero.
    pub stats: Arc<Stats>,
    /// This version's timings.
    pub timings: Arc<Timings>,
}

/// How long calls of one version take.
#[derive(Debug, Default)]
pub struct Timings {
    /// From a request's start to its outcome (the connection world: each
    /// `on-data` and `on-end` call). Its count also tells how many of the
    /// version's `requests` have finished, so `requests - count` are in
    /// flight, without a counter of their own on the request path.
    pub latency: Histogram,
    /// Creating a fresh instance (or session).
    pub instantiation: Histogram,
}

impl CallPolicy {
    /// The same policy with fresh counters and timings, for a new version.
    fn fresh(&self) -> CallPolicy {
        CallPolicy { stats: Arc::default(), timings: Arc::default(), ..self.clone() }
    }
}

/// A plugin version and its idle instances.
pub struct Version {
    plugin: Plugin,
    policy: CallPolicy,
    /// Idle instances, oldest first, with when each became idle.
    idle: Mutex<Vec<(Instance, Instant)>>,
    /// Set when a reload replaced this version: its leases no longer go
    /// back to the idle pool.
    replaced: std::sync::atomic::AtomicBool,
    /// Cancelled `--reload-grace` after this version was replaced.
    retired: CancellationToken,
    /// When it started serving.
    since: SystemTime,
}

impl Version {
    fn new(plugin: Plugin, policy: CallPolicy) -> Arc<Self> {
        Arc::new(Version {
            plugin,
            policy,
            idle: Mutex::default(),
            replaced: std::sync::atomic::AtomicBool::new(false),
            retired: CancellationToken::new(),
            since: SystemTime::now(),
        })
    }

    /// Which version this is, for status reports.
    pub fn describe(&self) -> PluginVersion {
        let info = self.plugin.info();
        PluginVersion {
            plugin: info.name.clone(),
            version: info.version.clone(),
            path: info.path.clone(),
            since: self.since,
        }
    }

    /// Completes once this version has been replaced for longer than
    /// `--reload-grace`: connections that kept it must close.
    pub fn retired(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.retired.cancelled()
    }

    /// Whether [`Self::retired`] has completed.
    pub fn is_retired(&self) -> bool {
        self.retired.is_cancelled()
    }

    /// Retire this version after `grace` (at once for zero).
    fn retire_after(&self, grace: Duration) {
        let token = self.retired.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !grace.is_zero() => {
                // The task holds the token only, not the version: a version
                // whose last connection closed is dropped at once.
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    token.cancel();
                });
            }
            _ => token.cancel(),
        }
    }

    /// How its requests are called.
    pub fn policy(&self) -> &CallPolicy {
        &self.policy
    }

    /// The plugin of this version.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The most recently used idle instance, if any.
    pub(super) fn take_idle(self: &Arc<Self>) -> Option<Lease> {
        let (instance, _) = self.idle.lock().expect("idle pool lock").pop()?;
        Some(Lease { version: self.clone(), instance: Some(instance), pooled: true })
    }

    /// Drop idle instances that have waited longer than `ttl`; returns how
    /// many.
    /// Instances are dropped after the lock is released: dropping one
    /// resets its pool slots, which requests must not wait for.
    fn expire(&self, now: Instant, ttl: Duration) -> usize {
        let expired: Vec<_> = {
            let mut idle = self.idle.lock().expect("idle pool lock");
            // Oldest first: the expired ones are a prefix.
            let n = idle.iter().take_while(|(_, since)| now.duration_since(*since) >= ttl).count();
            idle.drain(..n).collect()
        };
        expired.len()
    }

    fn clear(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("idle pool lock"));
        drop(idle);
    }
}

/// The version that serves new requests.
pub struct Versions {
    current: ArcSwap<Version>,
    /// `--reload-grace`.
    grace: Duration,
    /// Every version's counters, for reports (not on the request path).
    book: Mutex<Book>,
}

/// The counters of the versions a service has served: the live ones by
/// reference, the dropped ones added up.
#[derive(Default)]
struct Book {
    /// Versions that may still be alive, oldest first, with their counters.
    live: Vec<LiveVersion>,
    /// The counters of dropped versions, added up.
    dropped: Snapshot,
}

/// A version that may still be alive, and what reports read of it (kept
/// apart from the version itself so that its counts outlive it).
type LiveVersion = (Weak<Version>, Arc<Stats>, Arc<Timings>, PluginVersion);

impl Book {
    fn add(&mut self, version: &Arc<Version>) {
        let policy = version.policy();
        self.live.push((Arc::downgrade(version), policy.stats.clone(), policy.timings.clone(), version.describe()));
    }
}

impl Versions {
    /// Serve `plugin`, calling it under `policy`; a replaced version is
    /// retired `grace` after the swap.
    pub fn new(plugin: Plugin, policy: CallPolicy, grace: Duration) -> Self {
        let version = Version::new(plugin, policy.fresh());
        let mut book = Book::default();
        book.add(&version);
        Self { current: ArcSwap::new(version), grace, book: Mutex::new(book) }
    }

    /// The counters of every version together, dropped ones included, and
    /// the live versions (the current one first) with their own.
    pub fn report(&self) -> (Snapshot, Vec<VersionStatus>) {
        let current = self.current();
        let mut book = self.book.lock().expect("version book lock");
        let Book { live, dropped } = &mut *book;
        // A version no one holds any more makes no more calls: its counts
        // are final, and move into the sum.
        live.retain(|(version, stats, ..)| {
            let alive = version.strong_count() > 0;
            if !alive {
                *dropped += stats.snapshot();
            }
            alive
        });
        let mut total = *dropped;
        let mut versions: Vec<VersionStatus> = live
            .iter()
            .map(|(version, stats, timings, describe)| {
                let stats = stats.snapshot();
                total += stats;
                VersionStatus {
                    version: describe.clone(),
                    current: std::ptr::eq(version.as_ptr(), Arc::as_ptr(&current)),
                    stats,
                    latency: timings.latency.snapshot(),
                    instantiation: timings.instantiation.snapshot(),
                }
            })
            .collect();
        versions.sort_by_key(|v| !v.current);
        (total, versions)
    }

    /// The version serving new requests.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Make `plugin` serve every request and connection that starts from
    /// now on; requests already running finish on the version they started
    /// with, and connections that keep their version keep it for up to the
    /// grace period. The old version's idle instances are dropped at once.
    pub fn swap(&self, plugin: Plugin) -> Arc<Version> {
        let policy = self.current.load().policy.fresh();
        let new = Version::new(plugin, policy);
        self.book.lock().expect("version book lock").add(&new);
        let old = self.current.swap(new);
        old.replaced.store(true, std::sync::atomic::Ordering::Relaxed);
        old.clear();
        old.retire_after(self.grace);
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
    /// Return the instance to the idle pool when dropped (else drop it: an
    /// instance that belonged to one connection serves no other).
    pooled: bool,
}

impl Lease {
    /// Lend `instance` of `version`; `pooled`: return it to the idle pool
    /// when dropped.
    pub(super) fn new(version: Arc<Version>, instance: Instance, pooled: bool) -> Self {
        Self { version, instance: Some(instance), pooled }
    }

    /// The version it is of.
    pub(super) fn version(&self) -> &Arc<Version> {
        &self.version
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
        // A replaced version's pool is never used again: drop the instance
        // rather than keep its room in the pool.
        if !self.pooled || self.version.replaced.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut idle = self.version.idle.lock().expect("idle pool lock");
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push((instance, Instant::now()));
        }
    }
}
