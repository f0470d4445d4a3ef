//! Counters of what the host did, readable while it runs and printed at exit.
//!
//! Plain relaxed atomics: each is an independent event count, so no ordering
//! between them is promised or needed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Event counts since start.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
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
            /// Read every counter.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Relaxed),)* }
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

impl Stats {
    /// Add one to `counter`.
    #[inline]
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
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
/// for anything longer): an observation is two relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is over 10 s.
    buckets: [AtomicU64; HISTOGRAM_BOUNDS_US.len() + 1],
    /// Sum of every observation, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Count one observation.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = HISTOGRAM_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Read it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(HISTOGRAM_BOUNDS_US.len());
        for (bound, n) in HISTOGRAM_BOUNDS_US.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            buckets.push((*bound as f64 / 1e6, cumulative));
        }
        let count = cumulative + self.buckets[HISTOGRAM_BOUNDS_US.len()].load(Relaxed);
        HistogramSnapshot { buckets, count, sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9 }
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
