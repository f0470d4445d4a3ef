//! The load generator.
//!
//! Closed loop by default: every UDP socket or TCP connection keeps
//! `inflight` requests outstanding and sends the next one as soon as a reply
//! comes back, which finds the server's peak throughput. With a rate it runs
//! open loop: requests are due on a fixed schedule, and latency is measured
//! from when a request was due, so a server that falls behind shows its
//! queueing delay instead of silently slowing the load down ("coordinated
//! omission"). `inflight` then caps what may be outstanding.
//!
//! Each connection is one task with its own [`Tally`]; nothing is shared
//! while the load runs. Every reply is checked byte for byte.
//!
//! Over UDP, a load can also send one [`FixedRequest`] over and over, for a
//! plugin that answers something other than an echo (`incr counter`, whose
//! reply is the counter's new value). Its replies are checked for their
//! form only, and each is taken as the reply to its socket's oldest
//! outstanding request (with no sequence number, nothing says which
//! request it answers), so latencies are those of the oldest request.

mod payload;
mod tcp;
mod udp;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use host::framing::Framing;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::Tally;
use payload::{HEADER_LEN, Payloads};

pub use payload::{ReplyCheck, parse_integer};

pub use tcp::{connect_all, first_replies};

/// A UDP request with no reply for this long counts as lost, and its slot
/// is used for a new request.
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(500);
/// Tokio's timer wakes a task up to a millisecond after the deadline asked
/// for; an open-loop request sent that late is on time.
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// The warm-up waits at most this long beyond `--warmup` for every
/// connection to have had a reply, then measures anyway.
const WARM_LIMIT: Duration = Duration::from_secs(10);
/// Past the end of the measurement, how long connections may take to stop
/// before the load is abandoned as stuck.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The server under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl Target {
    pub fn addr(self) -> SocketAddr {
        match self {
            Target::Udp(a) | Target::Tcp(a) => a,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Udp(a) => write!(f, "udp {a}"),
            Target::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

/// One load: what to send, where, how much and for how long.
#[derive(Debug, Clone)]
pub struct Spec {
    pub target: Target,
    /// TCP framing; must match the server's.
    pub framing: Framing,
    /// UDP sockets or TCP connections.
    pub conns: usize,
    /// Requests outstanding per connection (the cap, with `rate`).
    pub inflight: usize,
    /// Payload bytes per request.
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Total requests per second for an open-loop load.
    pub rate: Option<f64>,
    /// Send this request every time instead of numbered echo payloads of
    /// `size` bytes (UDP only; `size` is then unused).
    pub fixed: Option<FixedRequest>,
}

/// A request sent unchanged every time, and what its replies must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedRequest {
    pub request: Vec<u8>,
    pub reply: ReplyCheck,
}

impl FixedRequest {
    pub fn new(request: impl Into<Vec<u8>>, reply: ReplyCheck) -> Self {
        Self { request: request.into(), reply }
    }

    /// The request for a report: `incr counter` (12 B).
    pub fn describe(&self) -> String {
        format!("`{}` ({} B)", String::from_utf8_lossy(&self.request).escape_debug(), self.request.len())
    }
}

impl Spec {
    /// Refuse what cannot be run, above all any address off this machine.
    fn validate(&self) -> anyhow::Result<()> {
        let addr = self.target.addr();
        ensure!(
            addr.ip().is_loopback(),
            "{addr} is not a loopback address: bench only loads servers on this machine (127.0.0.0/8 or [::1])"
        );
        ensure!(self.conns >= 1, "--conns must be at least 1");
        ensure!(self.inflight >= 1, "--inflight must be at least 1");
        ensure!(!self.duration.is_zero(), "--duration must be more than 0");
        if let Some(fixed) = &self.fixed {
            ensure!(matches!(self.target, Target::Udp(_)), "a fixed request (--request) is sent over UDP only");
            ensure!(!fixed.request.is_empty(), "--request must not be empty");
            ensure!(
                fixed.request.len() <= host::config::MAX_UDP_PAYLOAD,
                "the request does not fit a UDP datagram (at most {} bytes)",
                host::config::MAX_UDP_PAYLOAD
            );
            return self.validate_rate();
        }
        ensure!(self.size >= HEADER_LEN, "--size must be at least {HEADER_LEN} bytes (the sequence number)");
        match self.target {
            Target::Udp(_) => ensure!(
                self.size <= host::config::MAX_UDP_PAYLOAD,
                "--size {} does not fit a UDP datagram (at most {} bytes)",
                self.size,
                host::config::MAX_UDP_PAYLOAD
            ),
            Target::Tcp(_) if self.framing == Framing::U16 => {
                ensure!(self.size <= usize::from(u16::MAX), "--size {} does not fit u16 framing", self.size)
            }
            Target::Tcp(_) => {}
        }
        self.validate_rate()
    }

    fn validate_rate(&self) -> anyhow::Result<()> {
        if let Some(rate) = self.rate {
            ensure!(rate.is_finite() && rate > 0.0, "--rate must be a positive number of requests per second");
        }
        Ok(())
    }
}

/// What a load measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub spec: Spec,
    pub tally: Tally,
    /// The warm-up as it was: at least `spec.warmup`.
    pub warmup: Duration,
    /// The measurement as it was: `spec.duration` and a timer tick.
    pub measured: Duration,
    /// Connections with no reply by the end of the warm-up.
    pub cold: usize,
}

impl Report {
    /// Correct replies per second of measurement.
    pub fn rps(&self) -> f64 {
        self.tally.ok as f64 / self.measured.as_secs_f64()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (transport, addr) = match self.spec.target {
            Target::Udp(a) => ("udp", a),
            Target::Tcp(a) => ("tcp", a),
        };
        let t = &self.tally;
        serde_json::json!({
            "transport": transport,
            "addr": addr.to_string(),
            "conns": self.spec.conns,
            "inflight": self.spec.inflight,
            "size": self.spec.fixed.as_ref().map_or(self.spec.size, |f| f.request.len()),
            "request": self.spec.fixed.as_ref().map(|f| String::from_utf8_lossy(&f.request).into_owned()),
            "answered": t.answered,
            "rate": self.spec.rate,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.measured.as_secs_f64(),
            "cold_conns": self.cold,
            "requests": t.ok,
            "requests_per_s": self.rps(),
            "latency_us": {
                "p50": t.quantile_us(0.5),
                "p99": t.quantile_us(0.99),
                "p999": t.quantile_us(0.999),
                "max": t.latency.max(),
            },
            "errors": t.errors,
            "lost": t.lost,
            "late": t.late,
            "first_error": t.first_error,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, t) = (&self.spec, &self.tally);
        let mode = match s.rate {
            Some(r) => format!("open loop at {r:.0} req/s, at most {} in flight each", s.inflight),
            None => format!("{} in flight each", s.inflight),
        };
        match &s.fixed {
            Some(fixed) => writeln!(f, "{}: {} conns, {mode}, request {}", s.target, s.conns, fixed.describe())?,
            None => writeln!(f, "{}: {} conns, {mode}, {} B payloads", s.target, s.conns, s.size)?,
        }
        writeln!(f, "measured   {:.2?} after {:.2?} warm-up", self.measured, self.warmup)?;
        if self.cold > 0 {
            writeln!(f, "warning    {} connections had no reply during the warm-up", self.cold)?;
        }
        writeln!(f, "requests/s {:.0}", self.rps())?;
        writeln!(
            f,
            "latency    p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            t.quantile_us(0.5),
            t.quantile_us(0.99),
            t.quantile_us(0.999),
            t.latency.max()
        )?;
        writeln!(f, "errors     {}, lost {}, late {}", t.errors, t.lost, t.late)?;
        if s.fixed.is_some() {
            writeln!(f, "answered   {} correct replies in all (warm-up and drain included)", t.answered)?;
        }
        if let Some(e) = &t.first_error {
            writeln!(f, "first error: {e}")?;
        }
        Ok(())
    }
}

/// Run `spec` to completion: connect, warm up, measure, stop.
pub async fn run(spec: &Spec) -> anyhow::Result<Report> {
    spec.validate()?;
    let payloads = Arc::new(match &spec.fixed {
        Some(fixed) => Payloads::fixed(&fixed.request, fixed.reply),
        None => Payloads::new(spec.size),
    });
    // Connect first, so a slow connect phase (10,000 TCP handshakes) is not
    // part of the warm-up or the measurement.
    let conns: Vec<Conn> = match spec.target {
        Target::Udp(addr) => udp::bind_all(addr, spec.conns).await?.into_iter().map(Conn::Udp).collect(),
        Target::Tcp(addr) => connect_all(addr, spec.framing, spec.conns).await?.into_iter().map(Conn::Tcp).collect(),
    };
    let begin = Instant::now();
    let clock = Arc::new(Clock::new(spec.conns));
    let mut tasks = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let job = Job {
            payloads: payloads.clone(),
            inflight: spec.inflight,
            framing: spec.framing,
            clock: clock.clone(),
            schedule: Schedule::new(spec.rate, spec.conns, i, begin),
        };
        match conn {
            Conn::Udp(socket) => tasks.spawn(udp::drive(socket, job)),
            Conn::Tcp(stream) => tasks.spawn(tcp::drive(stream, job)),
        };
    }

    // Warm up for `warmup`, and on until every connection has had a reply.
    // Started together, N connections send N requests at once, and on one
    // thread the first replies wait until every connection has sent; with
    // 10,000 connections that start-up alone can outlast a short warm-up.
    let all_warm = tokio::time::timeout(spec.warmup + WARM_LIMIT, clock.all_warm.notified()).await.is_ok();
    tokio::time::sleep_until(begin + spec.warmup).await;
    let start = Instant::now();
    clock.start.set(start).expect("the measurement starts once");
    tokio::time::sleep(spec.duration).await;
    clock.stop.cancel();
    let measured = start.elapsed();
    let warmup = start - begin;

    let mut tally = Tally::new();
    loop {
        match tokio::time::timeout(STOP_GRACE, tasks.join_next()).await {
            Ok(Some(done)) => tally.merge(&done.context("a load task panicked")?),
            Ok(None) => break,
            Err(_) => bail!("{} connections did not stop within {STOP_GRACE:?} of the end", tasks.len()),
        }
    }
    let cold = if all_warm { 0 } else { spec.conns - clock.warm.load(Relaxed).min(spec.conns) };
    Ok(Report { spec: spec.clone(), tally, warmup, measured, cold })
}

enum Conn {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream),
}

/// The phases of a load, shared by its connections: replies are measured
/// once `start` is set, and the connections stop when `stop` is cancelled.
#[derive(Debug)]
struct Clock {
    start: OnceLock<Instant>,
    stop: CancellationToken,
    conns: usize,
    /// Connections that have had a reply.
    warm: AtomicUsize,
    /// Notified when the last connection has had its first reply.
    all_warm: Notify,
}

impl Clock {
    fn new(conns: usize) -> Self {
        Self { start: OnceLock::new(), stop: CancellationToken::new(), conns, warm: 0.into(), all_warm: Notify::new() }
    }

    /// Whether a reply received `at` counts.
    fn measures(&self, at: Instant) -> bool {
        self.start.get().is_some_and(|start| at >= *start)
    }

    /// Called by each connection on its first reply.
    fn warmed(&self) {
        if self.warm.fetch_add(1, Relaxed) + 1 == self.conns {
            // Stores a permit if the coordinator is not waiting yet.
            self.all_warm.notify_one();
        }
    }
}

/// What one connection's task needs.
struct Job {
    payloads: Arc<Payloads>,
    inflight: usize,
    framing: Framing,
    clock: Arc<Clock>,
    schedule: Schedule,
}

/// When a connection may send its next request.
#[derive(Debug)]
enum Schedule {
    /// Whenever fewer than `inflight` requests are outstanding.
    Closed,
    /// Every `interval`, from `next` on.
    Open { next: Instant, interval: Duration },
}

impl Schedule {
    /// Connection `index` of `conns` sharing `rate` requests/s: each gets an
    /// equal share, and their first requests are spread over one interval so
    /// the connections do not send in lockstep.
    fn new(rate: Option<f64>, conns: usize, index: usize, begin: Instant) -> Self {
        match rate {
            None => Schedule::Closed,
            Some(rate) => {
                let interval = Duration::from_secs_f64(conns as f64 / rate);
                Schedule::Open { next: begin + interval.mul_f64(index as f64 / conns as f64), interval }
            }
        }
    }

    /// If a request is due at `now`, take it and return when its latency is
    /// timed from: `now` for a closed loop; for an open loop, when it was due,
    /// which is earlier if the connection is behind schedule. Lateness up to
    /// [`TIMER_SLACK`] is the timer's, not the server's, and is not counted.
    fn take_due(&mut self, now: Instant) -> Option<Instant> {
        match self {
            Schedule::Closed => Some(now),
            Schedule::Open { next, interval } if *next <= now => {
                let due = *next;
                *next += *interval;
                Some(now.min(due + TIMER_SLACK))
            }
            Schedule::Open { .. } => None,
        }
    }

    /// Wait until the next request is due; never, for a closed loop (whose
    /// sends are triggered by replies).
    async fn next_due(&self) {
        match self {
            Schedule::Closed => std::future::pending().await,
            Schedule::Open { next, .. } => tokio::time::sleep_until(*next).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: Target) -> Spec {
        Spec {
            target,
            framing: Framing::Lines,
            conns: 1,
            inflight: 1,
            size: 64,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            rate: None,
            fixed: None,
        }
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(spec(Target::Udp("127.0.0.1:9".parse().unwrap())).validate().is_ok());
        assert!(spec(Target::Tcp("[::1]:9".parse().unwrap())).validate().is_ok());
        for addr in ["10.0.0.1:9", "192.168.1.1:9", "8.8.8.8:53", "[2001:db8::1]:9", "0.0.0.0:9"] {
            let err = spec(Target::Udp(addr.parse().unwrap())).validate().unwrap_err();
            assert!(err.to_string().contains("not a loopback address"), "{addr}: {err}");
        }
    }

    #[test]
    fn impossible_sizes_and_rates_are_refused() {
        let mut s = spec(Target::Udp("127.0.0.1:9".parse().unwrap()));
        s.size = 70_000;
        assert!(s.validate().is_err());
        s.size = 8;
        assert!(s.validate().is_err());
        s.size = 64;
        s.rate = Some(0.0);
        assert!(s.validate().is_err());
        s.rate = None;
        // A fixed request ignores the size, and is UDP only.
        s.size = 8;
        s.fixed = Some(FixedRequest::new("incr counter", ReplyCheck::Integer));
        assert!(s.validate().is_ok());
        s.fixed = Some(FixedRequest::new("", ReplyCheck::Integer));
        assert!(s.validate().is_err());
        let mut t = spec(Target::Tcp("127.0.0.1:9".parse().unwrap()));
        t.fixed = Some(FixedRequest::new("incr counter", ReplyCheck::Integer));
        assert!(t.validate().unwrap_err().to_string().contains("UDP only"));
    }

    #[test]
    fn open_loop_connections_share_the_rate_and_are_staggered() {
        let begin = Instant::now();
        let mut a = Schedule::new(Some(1000.0), 4, 0, begin);
        let b = Schedule::new(Some(1000.0), 4, 2, begin);
        // 1000 req/s over 4 connections: one request every 4 ms each.
        assert_eq!(a.take_due(begin), Some(begin));
        assert_eq!(a.take_due(begin), None);
        assert_eq!(a.take_due(begin + Duration::from_millis(4)), Some(begin + Duration::from_millis(4)));
        // Sent 1 ms late: timed from the send. 10 ms late: from 2 ms after it was due.
        let at = |ms| begin + Duration::from_millis(ms);
        assert_eq!(a.take_due(at(9)), Some(at(9)));
        assert_eq!(a.take_due(at(22)), Some(at(14)));
        match b {
            Schedule::Open { next, .. } => assert_eq!(next, begin + Duration::from_millis(2)),
            Schedule::Closed => panic!("a rate gives an open loop"),
        }
        assert_eq!(Schedule::new(None, 4, 0, begin).take_due(begin), Some(begin));
    }
}
