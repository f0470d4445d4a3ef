//! Rate-limited logging for events a peer can trigger at will.
//!
//! An oversized datagram, a frame over the limit or a request that makes the
//! plugin trap each deserve a log line, but a flood of them must not turn
//! into a flood of log lines (disk, CPU): each call site logs at most
//! [`LINES_PER_SECOND`] lines a second, and the first line after a quiet
//! second says how many were left out. The counters ([`crate::Stats`]) still
//! count every event.
//!
//! A plugin's own lines (what it prints, and its `log` calls) are limited
//! the same way, but per plugin version rather than per call site
//! (`PluginInfo` holds its [`Limiter`]s), so one noisy plugin does not
//! silence another.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Lines one call site may log per second.
pub const LINES_PER_SECOND: u32 = 100;

/// The state of one call site.
#[derive(Debug, Default)]
pub struct Limiter {
    /// The second (since the process started) in the high 32 bits, lines
    /// logged in it in the low 32.
    window: AtomicU64,
    /// Lines left out since the last one logged.
    suppressed: AtomicU64,
}

impl Limiter {
    /// A limiter for one call site (usable in a `static`).
    pub const fn new() -> Self {
        Self { window: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` if this line may be logged, `n` lines having been left out
    /// before it; `None` if it must be left out.
    pub fn allow(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        // +1: the initial state (second 0, count 0) must not look current.
        let now = START.get_or_init(Instant::now).elapsed().as_secs() as u32 + 1;
        let mut current = self.window.load(Relaxed);
        loop {
            let (second, count) = ((current >> 32) as u32, current as u32);
            let next = if second != now {
                u64::from(now) << 32 | 1
            } else if count < LINES_PER_SECOND {
                current + 1
            } else {
                self.suppressed.fetch_add(1, Relaxed);
                return None;
            };
            match self.window.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return Some(self.suppressed.swap(0, Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }
}

/// `tracing::<level>!(...)`, at most [`LINES_PER_SECOND`] times a second for
/// this call site; adds a `suppressed = N` field after lines were left out.
macro_rules! log_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::Limiter = $crate::ratelimit::Limiter::new();
        match LIMITER.allow() {
            Some(0) => tracing::$level!($($arg)+),
            Some(suppressed) => tracing::$level!(suppressed, $($arg)+),
            None => {}
        }
    }};
}
pub(crate) use log_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_at_the_limit_and_the_rest_counted() {
        let limiter = Limiter::new();
        let allowed = (0..1000).filter(|_| limiter.allow().is_some()).count();
        // The burst may straddle a second boundary, at most doubling it.
        assert!((LINES_PER_SECOND as usize..=2 * LINES_PER_SECOND as usize).contains(&allowed), "{allowed}");
        assert!(limiter.suppressed.load(Relaxed) > 0);
    }
}
