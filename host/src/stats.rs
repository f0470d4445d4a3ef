//! Counters of what the host did, readable while it runs and printed at exit.
//!
//! Plain relaxed atomics: each is an independent event count, so no ordering
//! between them is promised or needed.
//!
//! Counters and histograms are written on every request by every worker
//! thread, and read only by reports. So each is kept per CPU ([`Sharded`]):
//! a thread adds to the copy of the CPU it runs on, in a cache line of its
//! own, and a report adds the copies up. One shared copy made two workers
//! bounce the same cache line on every request.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One copy of `T` per CPU (rounded up to a power of two, at most
/// [`MAX_SHARDS`]), each on cache lines of its own.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

/// Most copies a [`Sharded`] keeps: past that, CPUs share copies.
const MAX_SHARDS: usize = 64;

/// Two cache lines: Intel CPUs fetch lines in adjacent pairs, so two
/// neighbours on one pair would still contend.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        let n = shard_count();
        Self { shards: (0..n).map(|_| Padded::default()).collect() }
    }
}

impl<T> Sharded<T> {
    /// The copy of the CPU this thread runs on. A thread that moves to
    /// another CPU between this call and its write only shares a line
    /// for that write: the counts stay exact (every write is atomic).
    #[inline]
    pub fn local(&self) -> &T {
        &self.shards[current_cpu() & (self.shards.len() - 1)].0
    }

    /// Every copy, for a report to add up.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

/// Copies per [`Sharded`]: the CPUs this process may run on, rounded up
/// to a power of two.
fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        // CPU numbers, not the CPUs this process may use: a process limited
        // to CPUs 6 and 7 still runs on CPU number 7.
        // SAFETY: `sysconf` only reads a system setting.
        let configured = unsafe { nix::libc::sysconf(nix::libc::_SC_NPROCESSORS_CONF) };
        usize::try_from(configured).unwrap_or(1).clamp(1, MAX_SHARDS).next_power_of_two()
    })
}

/// The CPU this thread runs on now (glibc answers from the thread's
/// `rseq` area, without a system call); 0 if the kernel cannot tell.
#[inline]
fn current_cpu() -> usize {
    // SAFETY: `sched_getcpu` takes no arguments and touches no memory of ours.
    usize::try_from(unsafe { nix::libc::sched_getcpu() }).unwrap_or(0)
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Event counts since start, per CPU: [`Stats`] derefs to the
        /// copy of the CPU the caller runs on.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: Counter,)*
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Snapshot {
            fn as_array(&self) -> Vec<u64> {
                vec![$(self.$name,)*]
            }

            fn as_array_mut(&mut self) -> Vec<&mut u64> {
                vec![$(&mut self.$name,)*]
            }

            /// Every counter by name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }

        impl Stats {
            /// Read every counter (every CPU's copy, added up).
            pub fn snapshot(&self) -> Snapshot {
                let mut total = Snapshot::default();
                for c in self.0.all() {
                    $(total.$name += c.$name.0.load(Relaxed);)*
                }
                total
            }
        }

        impl fmt::Display for Snapshot {
            /// One line of `name=value` pairs, e.g. for `grep` in scripts.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut sep = "";
                $( write!(f, "{sep}{}={}", stringify!($name), self.$name)?; sep = " "; )*
                Ok(())
            }
        }
    };
}

counters! {
    /// Requests handed to the plugin (connection world: calls of `on-data`
    /// and `on-end`).
    requests,
    /// Replies sent.
    replies,
    /// Requests the plugin answered with `ok(none)` (connection world: with
    /// no bytes to write).
    no_reply,
    /// Requests the plugin answered with `err(..)`.
    plugin_errors,
    /// Calls whose plugin instance trapped (panic, stack overflow, memory
    /// limit, ...), including session constructors and destructors.
    traps,
    /// Requests cut off at `--timeout` (or out of fuel).
    timeouts,
    /// Replies not sent because they exceeded `--max-reply` or the amplification cap.
    replies_dropped,
    /// Requests dropped before the plugin saw them: a datagram over
    /// `--max-request`, a slow UDP request over the host's limit, or a
    /// connection (connection world) that found no free instance within
    /// `--idle-timeout`.
    requests_dropped,
    /// UDP replies the kernel refused to send (e.g. the peer's port is unreachable).
    udp_send_errors,
    /// Datagrams dropped unseen because their source was over
    /// `--udp-source-rate` (not counted in `requests_dropped`).
    udp_rate_limited,
    /// TCP connections accepted.
    connections,
    /// TCP connections closed by the host: a framing error, idle timeout,
    /// a request or session call that failed, no free instance, or a
    /// retired version.
    connections_closed_by_host,
    /// TCP connections that ended, for any reason.
    connections_closed,
    /// Connection-world sessions whose destructor ran when their connection
    /// ended (not counted: sessions whose instance had failed).
    sessions_closed,
    /// Connections closed because their plugin version was replaced more
    /// than `--reload-grace` ago (also counted in `connections_closed_by_host`).
    connections_retired,
    /// Idle instances dropped after waiting too long for reuse (`--instance-reuse`).
    instances_expired,
    /// Plugin versions swapped in by a reload.
    reloads,
    /// Reloads refused because the new file was not a valid plugin.
    reload_failures,
    /// Plugin loads served from the compile cache.
    cache_hits,
    /// Plugin loads that compiled (and then cached) the component.
    cache_misses,
    /// Key-value operations plugins made (`wasi:keyvalue`; a batch call is
    /// one operation).
    kv_ops,
    /// Key-value operations that returned an error to the plugin: a bucket
    /// not granted, a limit, the store unavailable.
    kv_errors,
}

/// Event counts since start: `stats.requests` is the calling CPU's copy
/// of the counter (add to it), [`Stats::snapshot`] the sum of them all.
#[derive(Debug, Default)]
pub struct Stats(Sharded<Counters>);

impl std::ops::Deref for Stats {
    type Target = Counters;

    #[inline]
    fn deref(&self) -> &Counters {
        self.0.local()
    }
}

impl Stats {
    /// Add one to `counter`.
    #[inline]
    pub fn incr(counter: &Counter) {
        counter.add(1);
    }
}

/// One CPU's copy of a count: it can only be added to. Reading it alone
/// would give a part of the count, so only [`Stats::snapshot`] reads,
/// every copy at once.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
}

impl std::ops::AddAssign for Snapshot {
    fn add_assign(&mut self, other: Snapshot) {
        let a = self.as_array_mut();
        for (x, y) in a.into_iter().zip(other.as_array()) {
            *x += y;
        }
    }
}

/// Upper bounds of the [`Histogram`] buckets, in microseconds: 10 µs to
/// 10 s in 1-2.5-5 steps (a call is cut off at `--timeout`, 500 ms by
/// default; the tail buckets catch longer timeouts).
pub const HISTOGRAM_BOUNDS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets ([`HISTOGRAM_BOUNDS_US`] and one
/// for anything longer), per CPU: an observation is two relaxed atomic
/// adds to the copy of the caller's CPU.
#[derive(Debug, Default)]
pub struct Histogram(Sharded<Buckets>);

/// One CPU's copy of a [`Histogram`].
#[derive(Debug, Default)]
pub struct Buckets {
    /// Observations per bucket (not cumulative); the last is over 10 s.
    counts: [AtomicU64; HISTOGRAM_BOUNDS_US.len() + 1],
    /// Sum of every observation, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Count one observation.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = HISTOGRAM_BOUNDS_US.partition_point(|&b| b < us);
        let local = self.0.local();
        local.counts[i].fetch_add(1, Relaxed);
        local.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Read it (every CPU's copy, added up).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; HISTOGRAM_BOUNDS_US.len() + 1];
        let mut sum_ns = 0u64;
        for shard in self.0.all() {
            for (total, n) in counts.iter_mut().zip(&shard.counts) {
                *total += n.load(Relaxed);
            }
            sum_ns += shard.sum_ns.load(Relaxed);
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(HISTOGRAM_BOUNDS_US.len());
        for (bound, n) in HISTOGRAM_BOUNDS_US.iter().zip(counts) {
            cumulative += n;
            buckets.push((*bound as f64 / 1e6, cumulative));
        }
        let count = cumulative + counts[HISTOGRAM_BOUNDS_US.len()];
        HistogramSnapshot { buckets, count, sum_seconds: sum_ns as f64 / 1e9 }
    }
}

/// A [`Histogram`] at one moment, in the shape Prometheus expects.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it), ascending;
    /// `+Inf` is [`Self::count`].
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every add lands in some CPU's copy and a snapshot adds them all up,
    /// whichever CPUs the threads ran on.
    #[test]
    fn sharded_counts_add_up_across_threads() {
        let stats = Stats::default();
        let histogram = Histogram::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for i in 0..10_000u64 {
                        Stats::incr(&stats.requests);
                        stats.replies.add(2);
                        histogram.observe(std::time::Duration::from_micros(i % 40));
                    }
                });
            }
        });
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.requests, snapshot.replies, snapshot.traps), (80_000, 160_000, 0));
        let h = histogram.snapshot();
        assert_eq!(h.count, 80_000);
        // 0-10 µs: 11 of every 40 values; up to 25 µs: 26 of 40.
        assert_eq!(h.buckets[0], (10e-6, 8 * 250 * 11));
        assert_eq!(h.buckets[1], (25e-6, 8 * 250 * 26));
        let sum_us: u64 = 8 * 250 * (0..40).sum::<u64>();
        assert!((h.sum_seconds - sum_us as f64 / 1e6).abs() < 1e-9);
    }

    #[test]
    fn shards_are_a_power_of_two_on_lines_of_their_own() {
        let sharded = Sharded::<AtomicU64>::default();
        let n = sharded.all().count();
        assert!(n.is_power_of_two() && n <= MAX_SHARDS);
        let addrs: Vec<usize> = sharded.all().map(|c| c as *const _ as usize).collect();
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= 128));
    }
}
