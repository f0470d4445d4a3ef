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
//!
//! [`SourceLimits`] limit per UDP source address: the datagrams one source
//! may send per second (`--udp-source-rate`), and the lines logged about
//! the datagrams dropped for it (one a second per source), so that a single
//! flooding source cannot take the whole log budget of the call site.

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

/// Cells of the request limiter: 64 Ki of 8 bytes, 512 KiB whatever the
/// number of sources.
pub const SOURCE_CELLS: usize = 1 << 16;
/// Cells of the log-line limiter (32 KiB): it only has to tell the few
/// sources being logged about apart.
const LINE_CELLS: usize = 1 << 12;

/// `--udp-source-rate`: what each UDP source may send, and how often its
/// dropped datagrams are logged.
#[derive(Debug)]
pub struct SourceLimits {
    requests: SourceLimiter,
    lines: SourceLimiter,
}

impl SourceLimits {
    /// `rate` datagrams per second per source; `None` for 0 (no limit).
    pub fn new(rate: u32) -> Option<Self> {
        let requests = SourceLimiter::new(rate, SOURCE_CELLS)?;
        let lines = SourceLimiter::new(1, LINE_CELLS)?;
        Some(Self { requests, lines })
    }

    /// The configured rate per second.
    pub fn rate(&self) -> u32 {
        self.requests.rate
    }

    /// Whether a datagram from `ip` may be served now (and if so, counted).
    #[inline]
    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        self.requests.allow(ip)
    }

    /// Whether a drop from `ip` may be logged: once a second per source
    /// (and, at the call site, [`LINES_PER_SECOND`] for all of them).
    pub fn log_drop(&self, ip: std::net::IpAddr) -> bool {
        self.lines.allow(ip)
    }
}

/// A token bucket per UDP source address: `rate` datagrams a second, with a
/// burst of `rate`. A source is an IPv4 address, or an IPv6 /64 prefix (one
/// host is usually given a whole /64, so limiting single IPv6 addresses
/// would limit nothing).
///
/// Memory is bounded against a flood from spoofed addresses: there is no
/// map of sources, but a fixed array of cells ([`SOURCE_CELLS`]), and a
/// source's bucket is two cells picked by a keyed hash of its address
/// (secret per process, so a sender cannot pick addresses that collide with
/// a victim's). A datagram is allowed if either cell has a token, and takes
/// one from both: a source is limited wrongly only when both its cells are
/// drained by heavier sources (the conservative "count-min" idea), and a
/// flood from many addresses at once is held to about `rate` per cell in
/// total. Each cell is one atomic word in GCRA form (the time at which its
/// bucket will be full again), so checking is a hash, two loads and two
/// compare-and-swaps, with no lock.
#[derive(Debug)]
struct SourceLimiter {
    cells: Box<[AtomicU64]>,
    hasher: std::hash::RandomState,
    /// Nanoseconds between two tokens.
    interval: u64,
    /// How far ahead of now a cell's time may run: the burst, less one.
    tolerance: u64,
    start: Instant,
    /// Per second.
    rate: u32,
}

impl SourceLimiter {
    /// `rate` per second per source in `cells` cells (a power of two);
    /// `None` for 0 (no limit).
    fn new(rate: u32, cells: usize) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        debug_assert!(cells.is_power_of_two() && cells >= 2);
        let interval = (1_000_000_000 / u64::from(rate)).max(1);
        Some(Self {
            cells: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
            interval,
            tolerance: interval * u64::from(rate - 1),
            start: Instant::now(),
            rate,
        })
    }

    /// Whether `ip` may go now (and if so, it is counted).
    #[inline]
    fn allow(&self, ip: std::net::IpAddr) -> bool {
        // +1: a cell's 0 (never used) must be in the past.
        self.allow_at(ip, self.start.elapsed().as_nanos() as u64 + 1)
    }

    fn allow_at(&self, ip: std::net::IpAddr, now: u64) -> bool {
        use std::hash::BuildHasher as _;
        let key = match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => (4u8, u64::from(u32::from(v4))),
            std::net::IpAddr::V6(v6) => (6u8, (u128::from(v6) >> 64) as u64),
        };
        let hash = self.hasher.hash_one(key);
        let mask = self.cells.len() as u64 - 1;
        let first = (hash & mask) as usize;
        // Two different cells, whatever the hash.
        let second = first ^ (1 + ((hash >> 32) & (mask - 1))) as usize;
        let (a, b) = (&self.cells[first], &self.cells[second]);
        let limit = now + self.tolerance;
        if a.load(Relaxed) > limit && b.load(Relaxed) > limit {
            return false;
        }
        // Take a token from both; a drained cell stays drained (its time
        // is held at the limit) rather than running further ahead.
        let take = |t: u64| Some((t.max(now) + self.interval).min(limit + self.interval));
        let _ = a.fetch_update(Relaxed, Relaxed, take);
        let _ = b.fetch_update(Relaxed, Relaxed, take);
        true
    }
}

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

#[cfg(test)]
mod source_tests {
    use super::*;
    use std::net::IpAddr;

    const SECOND: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let l = SourceLimiter::new(10, SOURCE_CELLS).unwrap();
        let t = SECOND;
        let allowed = (0..50).filter(|_| l.allow_at(ip("192.0.2.1"), t)).count();
        assert_eq!(allowed, 10);
        // One token every 100 ms.
        assert!(!l.allow_at(ip("192.0.2.1"), t + 99_000_000));
        assert!(l.allow_at(ip("192.0.2.1"), t + 100_000_000));
        assert!(!l.allow_at(ip("192.0.2.1"), t + 100_000_000));
        // A quiet second refills the burst, no more.
        let later = t + 3 * SECOND;
        assert_eq!((0..50).filter(|_| l.allow_at(ip("192.0.2.1"), later)).count(), 10);
        // Others are not limited by it.
        assert_eq!((0..10).filter(|_| l.allow_at(ip("192.0.2.2"), later)).count(), 10);
        assert!(SourceLimits::new(0).is_none());
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let l = SourceLimiter::new(4, SOURCE_CELLS).unwrap();
        let t = SECOND;
        let same: Vec<bool> = (0..8).map(|i| l.allow_at(ip(&format!("2001:db8:1:2::{i:x}")), t)).collect();
        assert_eq!(same.iter().filter(|a| **a).count(), 4, "{same:?}");
        assert!(l.allow_at(ip("2001:db8:1:3::1"), t));
        // An IPv4-mapped address is the IPv4 source.
        for _ in 0..4 {
            assert!(l.allow_at(ip("198.51.100.7"), t));
        }
        assert!(!l.allow_at(ip("::ffff:198.51.100.7"), t));
    }

    #[test]
    fn a_flood_from_many_sources_leaves_almost_every_other_source_alone() {
        let l = SourceLimiter::new(100, SOURCE_CELLS).unwrap();
        let t = SECOND;
        // 1,000 heavy sources, each far over its rate.
        for s in 0..1000u32 {
            for _ in 0..200 {
                l.allow_at(IpAddr::from((0x0a00_0000 + s).to_be_bytes()), t);
            }
        }
        // A light source is limited only if both its cells are drained:
        // about (2,000 / 65,536)^2 of them, 9 in 10,000.
        let limited = (0..10_000u32).filter(|s| !l.allow_at(IpAddr::from((0xc000_0000 + s).to_be_bytes()), t)).count();
        println!("{limited} of 10,000 light sources limited by 1,000 heavy ones");
        assert!(limited < 50, "{limited} of 10,000 light sources limited");
    }

    #[test]
    fn drops_are_logged_once_a_second_per_source() {
        let l = SourceLimits::new(5).unwrap();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!((0..20).filter(|_| l.log_drop(a)).count(), 1);
        assert!(l.log_drop(b));
    }

    /// Prints the cost of one check (`-- --nocapture` shows it).
    #[test]
    fn a_check_costs_tens_of_nanoseconds() {
        let l = SourceLimiter::new(1_000_000, SOURCE_CELLS).unwrap();
        let n = 1_000_000u32;
        let started = Instant::now();
        let mut allowed = 0;
        for i in 0..n {
            allowed += usize::from(l.allow(IpAddr::from((i % 4096).to_be_bytes())));
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(n);
        println!("SourceLimiter::allow: {per:.1} ns per datagram ({allowed} of {n} allowed)");
        // Generous: an unoptimised build on a loaded machine.
        assert!(per < 5_000.0, "{per} ns per check");
    }
}
