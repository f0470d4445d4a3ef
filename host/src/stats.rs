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
