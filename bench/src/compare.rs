//! `bench compare`: the host against the native baseline, one table.
//!
//! Five servers run side by side as child processes on 127.0.0.1 with the
//! same number of worker threads: the native baseline, the host reusing
//! instances (`--instance-reuse 1000000`), the host as it ships (a fresh
//! instance per request), and two hosts with an instance per TCP connection:
//! a `connection-handler` plugin framing its own lines (`line-echo.wasm`),
//! and the echo plugin with `--tcp-isolation connection`. Each load runs
//! against the servers back to back, so a disturbance on the machine touches
//! all of them alike; the whole plan runs for several rounds and the table
//! shows the medians. The two hosts with an instance per connection run the
//! TCP rows only: over UDP the one is not served and the other is the same
//! as the host as it ships.
//!
//! With `--kv` (or `--kv-only`), the key-value section follows: the UDP
//! counter of `kv-probe.wasm` on the embedded store and on Redis against the
//! echo plugin, in a table of its own ([`crate::kv`]).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use host::framing::Framing;
use tokio::process::Command;
use tokio::time::{sleep, timeout};

use crate::load::{self, Report, Spec, Target};
use crate::process::{Log, ServerProcess};
use crate::report::{Metric, Row, Server};
use crate::{startup, sys};

/// What to compare, and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: PathBuf,
    pub plugin: PathBuf,
    /// The `connection-handler` plugin: a line echo that frames its lines itself.
    pub conn_plugin: PathBuf,
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Timed starts per server for the start-up row.
    pub starts: u32,
    /// Connections timed, one after another, for the first-reply rows.
    pub first_replies: usize,
    /// Worker threads of every server.
    pub workers: usize,
    /// Worker threads of the load generator (this process).
    pub load_workers: usize,
    /// Add the key-value section ([`crate::kv`]) after the table.
    pub kv: Option<crate::kv::Options>,
    /// Run the key-value section only (`kv` must be set).
    pub kv_only: bool,
}

#[cfg(test)]
impl Options {
    /// Small options for unit tests of the command lines and plans.
    pub(crate) fn for_tests() -> Self {
        Options {
            host: "host".into(),
            plugin: "echo.wasm".into(),
            conn_plugin: "line-echo.wasm".into(),
            rounds: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            starts: 1,
            first_replies: 1,
            workers: 2,
            load_workers: 1,
            kv: None,
            kv_only: false,
        }
    }
}

/// `--instance-reuse` of the reusing host: in effect, never replace an instance.
pub(crate) const REUSE: u64 = 1_000_000;
/// Connections held open for the memory row.
const IDLE_CONNS: usize = 10_000;
/// `--max-instances` of the hosts with an instance per connection: room for
/// the 10,000 connections of the memory row and of the 10,000-connection
/// load, and for the instances of connections still closing when a load starts.
const INSTANCES_PER_CONN_POOL: usize = IDLE_CONNS + 50;
/// Untimed connections before the timed ones of a first-reply row.
const FIRST_REPLY_WARMUP: usize = 200;
/// Pause after each load, so that its connections are closed and the
/// server's tasks for them are gone before the next load starts.
pub(crate) const PAUSE: Duration = Duration::from_millis(300);
/// After opening the idle connections, let the server's memory settle.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);
/// A load may take this long beyond its warm-up and duration (connecting
/// 10,000 connections takes a few seconds) before it is abandoned.
const LOAD_SLACK: Duration = Duration::from_secs(60);
/// An open-loop load that carries less than this share of its rate did not
/// keep up, and its latency is that of a queue, not of a request.
const SUSTAINED: f64 = 0.95;

/// The connections and requests of one load.
#[derive(Debug, Clone, Copy)]
struct Shape {
    udp: bool,
    conns: usize,
    inflight: usize,
    size: usize,
}

impl Shape {
    const fn udp(conns: usize, inflight: usize, size: usize) -> Self {
        Self { udp: true, conns, inflight, size }
    }

    const fn tcp(conns: usize, inflight: usize, size: usize) -> Self {
        Self { udp: false, conns, inflight, size }
    }

    fn proto(&self) -> &'static str {
        if self.udp { "UDP" } else { "TCP" }
    }

    fn label(&self) -> String {
        let (proto, what) = (self.proto(), if self.udp { "sockets" } else { "conns" });
        let conns = group_thousands(self.conns);
        let what = if self.conns == 1 { &what[..what.len() - 1] } else { what };
        format!("{proto} {conns} {what} × {} in flight, {}", self.inflight, bytes(self.size))
    }

    fn spec(&self, server: &ServerProcess, options: &Options, rate: Option<f64>) -> Spec {
        Spec {
            target: if self.udp { Target::Udp(server.udp()) } else { Target::Tcp(server.tcp()) },
            framing: Framing::Lines,
            conns: self.conns,
            inflight: self.inflight,
            size: self.size,
            duration: options.duration,
            warmup: options.warmup,
            rate,
            fixed: None,
        }
    }
}

/// What one row of the table measures.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Closed-loop throughput.
    Throughput(Shape),
    /// p99 latency of an open-loop load at half the baseline's throughput
    /// in row `peak` of the same round: a load every server should carry,
    /// so the row shows the latency each adds, not its queueing at saturation.
    HalfPeak { shape: Shape, peak: usize },
    /// Resident memory per idle TCP connection, in a server started for it.
    IdleMemory(usize),
    /// New TCP connections one after another, each sending one 64 B line and
    /// closed after the reply: the median time from connect to reply in this
    /// row, the p99 in the scenario's `p99` row.
    FirstReply,
}

impl Kind {
    /// Whether `server` is measured in this row: every server except that
    /// the hosts with an instance per connection skip the UDP loads.
    fn measures(self, server: Server) -> bool {
        match self {
            Kind::Throughput(shape) | Kind::HalfPeak { shape, .. } => !shape.udp || !server.instance_per_connection(),
            Kind::IdleMemory(_) | Kind::FirstReply => true,
        }
    }
}

struct Scenario {
    kind: Kind,
    row: Row,
    /// The rates used by a `HalfPeak` row, one per round.
    rates: Vec<f64>,
    /// A `FirstReply` row's second row: the p99 of the same connections.
    p99: Option<Row>,
}

/// The rows, in table order. Payloads are 64 B unless a row says otherwise.
fn plan() -> Vec<Scenario> {
    const UDP: Shape = Shape::udp(16, 4, 64);
    const TCP: Shape = Shape::tcp(64, 16, 64);
    let mut kinds = vec![
        Kind::Throughput(UDP),
        Kind::Throughput(TCP),
        // In flight is only a cap in an open loop; 64 leaves room for bursts.
        Kind::HalfPeak { shape: Shape { inflight: 64, ..UDP }, peak: 0 },
        Kind::HalfPeak { shape: Shape { inflight: 64, ..TCP }, peak: 1 },
    ];
    for size in [1 << 10, 16 << 10, 60 << 10] {
        kinds.push(Kind::Throughput(Shape { size, ..UDP }));
        kinds.push(Kind::Throughput(Shape { size, ..TCP }));
    }
    // Before the rows with 10,000 connections: a server closing 10,000
    // connections (and dropping as many instances) takes a while, and any
    // server's first replies would wait for it.
    kinds.push(Kind::FirstReply);
    kinds.push(Kind::IdleMemory(IDLE_CONNS));
    for conns in [1, 100, 10_000] {
        kinds.push(Kind::Throughput(Shape::tcp(conns, 1, 64)));
    }
    for inflight in [1, 64] {
        kinds.push(Kind::Throughput(Shape { inflight, ..UDP }));
        kinds.push(Kind::Throughput(Shape { inflight, ..TCP }));
    }
    kinds
        .into_iter()
        .map(|kind| {
            let row = match kind {
                Kind::Throughput(s) => Row::new(s.label(), Metric::Throughput),
                // The rate is added to the label at the end, when it is known.
                Kind::HalfPeak { shape, .. } => {
                    Row::new(format!("{} p99 at ½ native peak", shape.proto()), Metric::Micros)
                }
                Kind::IdleMemory(n) => {
                    Row::new(format!("TCP {} idle conns: RSS per conn", group_thousands(n)), Metric::KibPerConn)
                }
                Kind::FirstReply => Row::new("TCP new conn to first reply (64 B line), median", Metric::Micros),
            };
            let p99 = matches!(kind, Kind::FirstReply)
                .then(|| Row::new("TCP new conn to first reply (64 B line), p99", Metric::Micros));
            Scenario { kind, row, rates: Vec::new(), p99 }
        })
        .collect()
}

/// Run the comparison and print the table on stdout (progress on stderr).
pub async fn run(options: &Options) -> anyhow::Result<()> {
    if let Some(kv) = &options.kv {
        crate::kv::check(options, kv)?;
        if options.kv_only {
            let cache =
                tempfile::Builder::new().prefix("bench-compile-cache").tempdir().context("cannot create a temp dir")?;
            println!("{}", crate::kv::run(options, kv, cache.path()).await?);
            return Ok(());
        }
    }
    ensure!(
        options.host.is_file(),
        "no host binary at {} (build it with `cargo build --release -p host`, or pass --host)",
        options.host.display()
    );
    for (plugin, flag) in [(&options.plugin, "--plugin"), (&options.conn_plugin, "--conn-plugin")] {
        ensure!(
            plugin.is_file(),
            "no plugin at {} (build it with scripts/build-plugins.sh --rust-only, or pass {flag})",
            plugin.display()
        );
    }
    let mut plan = plan();
    print_setup(options, &plan);
    // A compile cache of our own: the first host start fills it, every later
    // start (and the start-up row) finds it warm, and nothing of the user's
    // cache is read or written.
    let cache = tempfile::Builder::new().prefix("bench-compile-cache").tempdir().context("cannot create a temp dir")?;

    let servers = start_servers(options, cache.path()).await?;
    for round in 1..=options.rounds {
        run_round(round, options, cache.path(), &servers, &mut plan).await;
    }
    let mut logs = Vec::new();
    for process in servers {
        logs.push(process.stop().await);
    }
    // Last, with the other servers gone, so nothing else competes for the CPU.
    let startup = startup_row(options, cache.path()).await;

    let mut rows = Vec::new();
    for mut scenario in plan {
        if let Kind::HalfPeak { shape, .. } = scenario.kind
            && let Some(rate) = crate::stats::median(&scenario.rates)
        {
            let _ = write!(scenario.row.label, " ({rate:.0} req/s, ≤{} in flight per conn)", shape.inflight);
        }
        rows.push(scenario.row);
        rows.extend(scenario.p99);
    }
    rows.push(startup);
    println!("{}", crate::report::render(&rows));
    print_logs(&logs);
    if let Some(kv) = &options.kv {
        println!("\n{}", crate::kv::run(options, kv, cache.path()).await?);
    }
    Ok(())
}

/// The servers, in [`Server::ALL`] order, each listening on free ports.
async fn start_servers(options: &Options, cache: &Path) -> anyhow::Result<Vec<ServerProcess>> {
    let mut servers = Vec::new();
    for server in Server::ALL {
        servers.push(start_server(server, options, cache).await?);
    }
    Ok(servers)
}

async fn start_server(server: Server, options: &Options, cache: &Path) -> anyhow::Result<ServerProcess> {
    let command = command(server, options, cache, loopback(0))?;
    ServerProcess::start_listening(server.name(), command, server.serves_udp()).await
}

/// Every row of the plan against every server it applies to, once.
async fn run_round(round: u32, options: &Options, cache: &Path, servers: &[ServerProcess], plan: &mut [Scenario]) {
    // The baseline's throughput in each row, for the half-peak rows after it.
    let mut native_peaks: Vec<Option<f64>> = vec![None; plan.len()];
    for i in 0..plan.len() {
        for (server, process) in Server::ALL.into_iter().zip(servers) {
            if !plan[i].kind.measures(server) {
                continue;
            }
            let progress = format!("[{round}/{}] {} — {}", options.rounds, plan[i].row.label, server.name());
            let native_peak = match plan[i].kind {
                Kind::HalfPeak { peak, .. } => native_peaks[peak],
                _ => None,
            };
            let cell = Cell { server, process, options, cache, round, progress };
            let throughput = measure(&mut plan[i], &cell, native_peak).await;
            if server == Server::Native {
                native_peaks[i] = throughput;
            }
            sleep(PAUSE).await;
        }
    }
}

/// One server in one row of one round.
struct Cell<'a> {
    server: Server,
    process: &'a ServerProcess,
    options: &'a Options,
    /// The compile cache, for a server started for one measurement.
    cache: &'a Path,
    round: u32,
    /// The prefix of its progress line.
    progress: String,
}

/// Measure `cell` and add the result to `scenario`'s row. Returns the
/// throughput of a throughput row.
async fn measure(scenario: &mut Scenario, cell: &Cell<'_>, native_peak: Option<f64>) -> Option<f64> {
    let (server, row) = (cell.server, &mut scenario.row);
    match scenario.kind {
        Kind::Throughput(shape) => {
            let report = run_load(shape.spec(cell.process, cell.options, None)).await;
            let rps = report.as_ref().ok().map(Report::rps);
            record(row, server, &cell.progress, report, Report::rps);
            rps
        }
        Kind::HalfPeak { shape, .. } => {
            let Some(rate) = native_peak.map(|p| p / 2.0) else {
                row.problems(server).note(format!("no native peak was measured in round {}", cell.round));
                return None;
            };
            if server == Server::Native {
                scenario.rates.push(rate);
            }
            let report = run_load(shape.spec(cell.process, cell.options, Some(rate))).await;
            if let Ok(r) = &report
                && r.rps() < rate * SUSTAINED
            {
                let (carried, round) = (r.rps(), cell.round);
                let note =
                    format!("carried {carried:.0} of {rate:.0} req/s in round {round}, so its p99 is mostly queueing");
                row.problems(server).note(note);
            }
            let progress = format!("{} at {rate:.0} req/s", cell.progress);
            record(row, server, &progress, report, |r| r.tally.quantile_us(0.99) as f64);
            None
        }
        Kind::IdleMemory(n) => {
            // A server of its own, started for this: one that has served the
            // other loads keeps what they left resident (freed heap pages,
            // the pool slots of the instances of 10,000 connections), and new
            // connections reuse it without growing the RSS.
            let measured = async {
                let process = start_server(server, cell.options, cell.cache).await?;
                // What it does once it has logged its addresses is not part of
                // the growth.
                sleep(SETTLE).await;
                let kib = idle_memory(&process, n).await;
                process.kill().await;
                kib
            };
            match measured.await {
                Ok(kib) => {
                    eprintln!("{}: {kib:.1} KiB per connection", cell.progress);
                    row.push(server, kib);
                }
                Err(e) => {
                    eprintln!("{}: failed: {e:#}", cell.progress);
                    row.problems(server).failed(format_args!("{e:#}"));
                }
            }
            None
        }
        Kind::FirstReply => {
            // The previous load's connections are closed and gone: this row
            // times one connection at a time, and anything else the server
            // does shows in it.
            sleep(SETTLE).await;
            let n = cell.options.first_replies;
            let first = load::first_replies(cell.process.tcp(), Framing::Lines, 64, FIRST_REPLY_WARMUP, n);
            let limit = LOAD_SLACK + Duration::from_millis(10) * n as u32;
            let tally = timeout(limit, first).await.with_context(|| format!("the connections took over {limit:?}"));
            match tally.and_then(|t| t) {
                Ok(t) => {
                    let (p50, p99) = (t.quantile_us(0.5), t.quantile_us(0.99));
                    eprintln!(
                        "{}: p50 {p50} µs, p99 {p99} µs over {} connections, {} errors",
                        cell.progress, t.ok, t.errors
                    );
                    if t.ok > 0 {
                        row.push(server, p50 as f64);
                        if let Some(p99_row) = &mut scenario.p99 {
                            p99_row.push(server, p99 as f64);
                        }
                    }
                    row.problems(server).add(t.errors, 0, 0, t.first_error.as_deref());
                }
                Err(e) => {
                    eprintln!("{}: failed: {e:#}", cell.progress);
                    row.problems(server).failed(format_args!("{e:#}"));
                }
            }
            None
        }
    }
}

/// Time each server's start to its first UDP echo.
async fn startup_row(options: &Options, cache: &Path) -> Row {
    let mut row = Row::new("Start to first UDP echo (warm compile cache)", Metric::Millis);
    for server in Server::ALL.into_iter().filter(|s| s.serves_udp()) {
        let command = |udp| command(server, options, cache, udp);
        match startup::time_starts(server.name(), options.starts, command).await {
            Ok(times) => times.into_iter().for_each(|t| row.push(server, t.as_secs_f64() * 1e3)),
            Err(e) => row.problems(server).failed(format_args!("{e:#}")),
        }
    }
    row
}

fn print_setup(options: &Options, plan: &[Scenario]) {
    // Each cell: a load's warm-up, measurement and pause; a server started
    // for 10,000 idle connections, about 5 s; connections one after another,
    // about 0.15 ms each.
    let first_replies = Duration::from_micros(150) * (options.first_replies + FIRST_REPLY_WARMUP) as u32;
    let per_round: Duration = plan
        .iter()
        .map(|s| {
            let cell = match s.kind {
                Kind::Throughput(_) | Kind::HalfPeak { .. } => options.warmup + options.duration + PAUSE,
                Kind::IdleMemory(_) => Duration::from_secs(5),
                Kind::FirstReply => first_replies + SETTLE + PAUSE,
            };
            cell * Server::ALL.iter().filter(|server| s.kind.measures(**server)).count() as u32
        })
        .sum();
    let mut estimate = per_round * options.rounds;
    if options.kv.is_some() {
        estimate += crate::kv::estimate(options);
    }
    println!("## host vs native echo\n");
    println!("- machine: {}", sys::machine());
    println!(
        "- servers: `{}` serving `{}` (conn: `{}`), and `bench native`; {} worker threads each",
        options.host.display(),
        options.plugin.display(),
        options.conn_plugin.display(),
        options.workers
    );
    println!(
        "- load: {}; {} of {:?} per load after {:?} warm-up; medians shown; 64 B payloads unless noted",
        plural(options.load_workers, "thread"),
        plural(options.rounds as usize, "round"),
        options.duration,
        options.warmup
    );
    println!("- host, reuse: `--instance-reuse {REUSE}`; host, fresh: the default, a fresh instance per request");
    println!(
        "- host, conn: the connection-handler plugin, an instance per connection framing its own lines; \
         host, pinned: `--tcp-isolation connection`; both `--max-instances {INSTANCES_PER_CONN_POOL}`, TCP rows only"
    );
    println!(
        "- idle conns: a server started for the row each round; first reply: {} connections one after another, \
         after {FIRST_REPLY_WARMUP} untimed\n",
        group_thousands(options.first_replies)
    );
    eprintln!("this takes about {} s", estimate.as_secs());
}

fn print_logs(logs: &[Log]) {
    println!("Server logs:\n");
    for (server, log) in Server::ALL.iter().zip(logs) {
        let first = log.first_warning.as_deref().map(|w| format!(" (first: {w})")).unwrap_or_default();
        let stats = log.stats.as_deref().map(|s| format!("; counters at exit: {s}")).unwrap_or_default();
        println!("- {}: {} warnings or errors{first}{stats}", server.name(), log.warnings);
    }
}

/// The command that starts `server` with UDP on `udp` (if it serves UDP)
/// and TCP on a free port.
fn command(server: Server, options: &Options, cache: &Path, udp: SocketAddr) -> anyhow::Result<Command> {
    let mut c = match server {
        Server::Native => crate::process::native_command()?,
        Server::HostReuse | Server::HostFresh | Server::HostConn | Server::HostPinned => {
            let plugin = if server == Server::HostConn { &options.conn_plugin } else { &options.plugin };
            let mut c = Command::new(&options.host);
            c.arg("--plugin").arg(plugin).arg("--cache-dir").arg(cache).arg("--data-dir").arg(cache.join("data"));
            match server {
                Server::HostReuse => {
                    c.args(["--instance-reuse", &REUSE.to_string()]);
                }
                Server::HostPinned => {
                    c.args(["--tcp-isolation", "connection"]);
                }
                _ => {}
            }
            if server.instance_per_connection() {
                c.args(["--max-instances", &INSTANCES_PER_CONN_POOL.to_string()]);
            }
            c
        }
    };
    // The connection-handler plugin frames its own lines; for the others,
    // the framing is the server's.
    if server != Server::HostConn {
        c.args(["--framing", "lines"]);
    }
    c.args(["--workers", &options.workers.to_string()]);
    if server.serves_udp() {
        c.args(["--udp", &udp.to_string()]);
    }
    c.args(["--tcp", &loopback(0).to_string()]);
    Ok(c)
}

/// Run one load, bounded in time whatever happens to the server.
pub(crate) async fn run_load(spec: Spec) -> anyhow::Result<Report> {
    let limit = spec.warmup + spec.duration + LOAD_SLACK;
    timeout(limit, load::run(&spec)).await.with_context(|| format!("the load did not finish within {limit:?}"))?
}

/// Add a load's outcome to `row`: `value` of its report as the sample, and
/// its errors; and say it on stderr.
fn record(
    row: &mut Row,
    server: Server,
    progress: &str,
    report: anyhow::Result<Report>,
    value: impl Fn(&Report) -> f64,
) {
    if let Some(r) = row.problems(server).take_load(progress, &report, "connections") {
        row.push(server, value(r));
    }
}

/// Growth of `server`'s resident memory per connection while it holds `n`
/// idle TCP connections, in KiB.
async fn idle_memory(server: &ServerProcess, n: usize) -> anyhow::Result<f64> {
    let pid = server.pid()?;
    let before = sys::rss_kib(pid)?;
    let conns = timeout(LOAD_SLACK, load::connect_all(server.tcp(), Framing::Lines, n))
        .await
        .with_context(|| format!("{n} connections were not open within {LOAD_SLACK:?}"))??;
    sleep(SETTLE).await;
    let after = sys::rss_kib(pid)?;
    drop(conns);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

pub fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_like_the_readme() {
        assert_eq!(Shape::udp(16, 4, 64).label(), "UDP 16 sockets × 4 in flight, 64 B");
        assert_eq!(Shape::tcp(10_000, 1, 60 << 10).label(), "TCP 10,000 conns × 1 in flight, 60 KiB");
        assert_eq!(Shape::tcp(1, 1, 1 << 10).label(), "TCP 1 conn × 1 in flight, 1 KiB");
        assert_eq!(group_thousands(100), "100");
        assert_eq!(group_thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn hosts_with_an_instance_per_connection_run_the_tcp_rows_only() {
        let plan = plan();
        let rows = |server| plan.iter().filter(|s| s.kind.measures(server)).count();
        let tcp = plan
            .iter()
            .filter(|s| match s.kind {
                Kind::Throughput(shape) | Kind::HalfPeak { shape, .. } => !shape.udp,
                Kind::IdleMemory(_) | Kind::FirstReply => true,
            })
            .count();
        assert_eq!(rows(Server::Native), plan.len());
        assert_eq!(rows(Server::HostFresh), plan.len());
        assert_eq!(rows(Server::HostConn), tcp);
        assert_eq!(rows(Server::HostPinned), tcp);
        assert!(tcp < plan.len());
        // The rows of issue #11's goals are there.
        let labels: Vec<&str> = plan.iter().map(|s| s.row.label.as_str()).collect();
        assert!(labels.contains(&"TCP 64 conns × 16 in flight, 64 B"), "{labels:?}");
        assert!(labels.contains(&"TCP 10,000 idle conns: RSS per conn"), "{labels:?}");
        let first = plan.iter().find(|s| matches!(s.kind, Kind::FirstReply)).expect("a first-reply row");
        assert!(first.p99.is_some());
    }

    #[test]
    fn each_server_gets_its_plugin_and_flags() {
        let options = Options::for_tests();
        let args = |server| {
            let c = command(server, &options, Path::new("/cache"), loopback(7)).unwrap();
            c.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        };
        let conn = args(Server::HostConn);
        assert!(
            conn.starts_with("--plugin line-echo.wasm --cache-dir /cache --data-dir /cache/data --max-instances 10050"),
            "{conn}"
        );
        assert!(!conn.contains("--udp") && !conn.contains("--framing"), "{conn}");
        let pinned = args(Server::HostPinned);
        assert!(pinned.contains("--plugin echo.wasm") && pinned.contains("--tcp-isolation connection"), "{pinned}");
        assert!(pinned.contains("--max-instances 10050 --framing lines") && pinned.contains("--udp 127.0.0.1:7"));
        let fresh = args(Server::HostFresh);
        assert!(!fresh.contains("--max-instances") && !fresh.contains("--tcp-isolation"), "{fresh}");
    }

    #[test]
    fn every_half_peak_row_refers_to_an_earlier_throughput_row() {
        let plan = plan();
        for (i, s) in plan.iter().enumerate() {
            if let Kind::HalfPeak { shape, peak } = s.kind {
                assert!(peak < i);
                assert!(matches!(plan[peak].kind, Kind::Throughput(p) if p.udp == shape.udp));
            }
        }
    }
}
