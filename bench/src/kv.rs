//! `bench compare --kv`: what the key-value store costs a request.
//!
//! Four servers run side by side as child processes on 127.0.0.1, with the
//! same worker threads as the rest of `compare`: the native baseline, the
//! host serving `echo.wasm`, and the host serving `kv-probe.wasm` twice, once
//! on the embedded SQLite store (`--data-dir`, a fresh temp dir) and once on
//! a Redis server of its own (`--kv redis://127.0.0.1:PORT/0`, a
//! `redis-server` started for the run on a free loopback port, without
//! persistence). All hosts create a fresh instance per request, the default.
//!
//! Every server gets the same UDP load, 16 sockets × 4 in flight, and the
//! same datagram, `incr counter`: the native baseline and the echo plugin
//! send it back, kv-probe increments the counter once in the store and
//! replies its new value. As in the rest of `compare`, the loads run back to
//! back, `--rounds` times, and the table shows medians, with the counter's
//! throughput as a ratio to the echo plugin's and the goals for the
//! two ratios (≥ 0.6 embedded, ≥ 0.4 Redis).
//!
//! Then a correctness check: each counter server's final value, read with
//! `get counter`, must equal the correct replies the load received from it
//! over every round (warm-ups, and the drain after each load, included).
//! A request or reply dropped by the kernel would make them differ, and the
//! report says how many requests went unanswered.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use host::framing::Framing;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::compare::{self, loopback};
use crate::load::{self, FixedRequest, ReplyCheck, Report, Spec, Target};
use crate::process::{Log, ServerProcess};
use crate::report::Problems;
use crate::stats::median;

/// What the key-value section needs beyond `compare`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fixture plugin answering `incr K` with the counter's new value.
    pub plugin: PathBuf,
    /// The `redis-server` binary (looked up on `PATH` if it has no slash).
    pub redis_server: PathBuf,
}

/// The request of every load, to every server.
const REQUEST: &str = "incr counter";
/// How the counter is read at the end.
const READ: &str = "get counter";
/// Sockets and requests in flight: `compare`'s UDP row.
const CONNS: usize = 16;
const INFLIGHT: usize = 4;
/// How long `redis-server` may take to answer a PING after its start.
const REDIS_START: Duration = Duration::from_secs(10);

/// The servers, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Native,
    Echo,
    Embedded,
    Redis,
}

impl Column {
    const ALL: [Column; 4] = [Column::Native, Column::Echo, Column::Embedded, Column::Redis];
    /// The columns whose replies are the counter.
    const COUNTERS: [Column; 2] = [Column::Embedded, Column::Redis];

    fn name(self) -> &'static str {
        match self {
            Column::Native => "native",
            Column::Echo => "echo",
            Column::Embedded => "counter, embedded",
            Column::Redis => "counter, Redis",
        }
    }

    /// The name in a ratio column's heading.
    fn short_name(self) -> &'static str {
        match self {
            Column::Embedded => "embedded",
            Column::Redis => "Redis",
            other => other.name(),
        }
    }

    fn reply(self) -> ReplyCheck {
        if Column::COUNTERS.contains(&self) { ReplyCheck::Integer } else { ReplyCheck::Echo }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A goal of the issue: the median throughput of `column` over the echo
/// plugin's, at least `goal`.
struct Goal {
    label: &'static str,
    column: Column,
    goal: f64,
}

const GOALS: [Goal; 2] = [
    Goal {
        label: "UDP counter plugin (one increment per request), embedded store / echo plugin, fresh instances",
        column: Column::Embedded,
        goal: 0.6,
    },
    Goal { label: "same on Redis (redis-server on loopback) / echo plugin", column: Column::Redis, goal: 0.4 },
];

/// What was measured of one server over every round.
#[derive(Debug, Default)]
struct Cell {
    /// Requests per second, one per round.
    rps: Vec<f64>,
    problems: Problems,
    /// Correct replies received in all, warm-ups and drains included.
    answered: u64,
    /// Requests with no reply in all.
    lost: u64,
}

/// Check what the section needs before anything long runs.
pub fn check(options: &compare::Options, kv: &Options) -> anyhow::Result<()> {
    ensure!(
        options.host.is_file(),
        "no host binary at {} (build it with `cargo build --release -p host`, or pass --host)",
        options.host.display()
    );
    for (plugin, flag) in [(&options.plugin, "--plugin"), (&kv.plugin, "--kv-plugin")] {
        ensure!(
            plugin.is_file(),
            "no plugin at {} (build it with scripts/build-plugins.sh --rust-only, or pass {flag})",
            plugin.display()
        );
    }
    Ok(())
}

/// Run the section and return its markdown (progress on stderr). `cache`
/// is the compile cache the hosts share.
pub async fn run(options: &compare::Options, kv: &Options, cache: &Path) -> anyhow::Result<String> {
    check(options, kv)?;
    eprintln!("key-value section: this takes about {} s", estimate(options).as_secs());
    let dirs = tempfile::Builder::new().prefix("bench-kv").tempdir().context("cannot create a temp dir")?;
    let mut cells: Vec<Cell> = Column::ALL.iter().map(|_| Cell::default()).collect();

    // Redis first: the Redis host connects to it on start.
    let redis = match Redis::start(&kv.redis_server, &dirs.path().join("redis")).await {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("{}: failed: {e:#}", Column::Redis.name());
            cells[Column::Redis.index()].problems.failed(format_args!("{e:#}"));
            None
        }
    };
    let mut servers = Vec::new();
    for column in Column::ALL {
        let command = match (column, &redis) {
            (Column::Redis, None) => {
                servers.push(None);
                continue;
            }
            _ => command(column, options, kv, cache, dirs.path(), redis.as_ref()),
        };
        let started = match command {
            Ok(c) => ServerProcess::start(column.name(), c).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(process) => servers.push(Some(process)),
            Err(e) => {
                eprintln!("{}: failed to start: {e:#}", column.name());
                cells[column.index()].problems.failed(format_args!("{e:#}"));
                servers.push(None);
            }
        }
    }

    for round in 1..=options.rounds {
        for (column, process) in Column::ALL.into_iter().zip(&servers) {
            let Some(process) = process else { continue };
            let progress = format!("[{round}/{}] kv {REQUEST:?} — {}", options.rounds, column.name());
            let report = compare::run_load(spec(column, process.udp(), options)).await;
            record(&mut cells[column.index()], &progress, report);
            sleep(compare::PAUSE).await;
        }
    }

    // The correctness check: every load has drained, so the counter holds
    // exactly the increments the servers made.
    sleep(compare::SETTLE).await;
    let mut counters = Vec::new();
    for column in Column::COUNTERS {
        let value = match &servers[column.index()] {
            Some(process) => Some(read_counter(process.udp()).await),
            None => None,
        };
        counters.push((column, value));
    }

    let mut logs = Vec::new();
    for (column, process) in Column::ALL.into_iter().zip(servers) {
        if let Some(process) = process {
            logs.push((column, process.stop().await));
        }
    }
    let redis_port = redis.as_ref().map(|r| r.port);
    if let Some(redis) = redis {
        redis.process.stop().await;
    }

    let mut out = String::new();
    setup(&mut out, options, kv, redis_port);
    table(&mut out, &cells);
    goals(&mut out, &cells);
    counter_check(&mut out, &cells, &counters);
    problems(&mut out, &cells);
    server_logs(&mut out, &logs);
    Ok(out)
}

/// Roughly how long the section takes: the loads, their pauses and drains,
/// and starting five servers.
pub fn estimate(options: &compare::Options) -> Duration {
    let cell = options.warmup + options.duration + compare::PAUSE + load::LOSS_TIMEOUT / 10;
    cell * (Column::ALL.len() as u32 * options.rounds) + Duration::from_secs(3)
}

/// The load of one round against `column`'s server at `udp`.
fn spec(column: Column, udp: SocketAddr, options: &compare::Options) -> Spec {
    Spec {
        target: Target::Udp(udp),
        framing: Framing::Lines,
        conns: CONNS,
        inflight: INFLIGHT,
        size: REQUEST.len(),
        duration: options.duration,
        warmup: options.warmup,
        rate: None,
        fixed: Some(FixedRequest::new(REQUEST, column.reply())),
    }
}

/// The command that starts `column`'s server on free loopback ports; data
/// directories go under `dirs`.
fn command(
    column: Column,
    options: &compare::Options,
    kv: &Options,
    cache: &Path,
    dirs: &Path,
    redis: Option<&Redis>,
) -> anyhow::Result<Command> {
    let mut c = match column {
        Column::Native => crate::process::native_command()?,
        Column::Echo | Column::Embedded | Column::Redis => {
            let plugin = if column == Column::Echo { &options.plugin } else { &kv.plugin };
            let mut c = Command::new(&options.host);
            c.arg("--plugin").arg(plugin).arg("--cache-dir").arg(cache);
            match column {
                // The echo host has a store too (it opens one whatever the
                // plugin); a fresh one, so nothing of the user's is touched.
                Column::Echo | Column::Embedded => {
                    let dir = dirs.join(column.short_name());
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    c.arg("--data-dir").arg(dir);
                }
                _ => {
                    let redis = redis.context("no Redis server")?;
                    c.args(["--kv", &redis.url()]);
                }
            }
            c
        }
    };
    c.args(["--framing", "lines", "--workers", &options.workers.to_string()]);
    c.args(["--udp", &loopback(0).to_string(), "--tcp", &loopback(0).to_string()]);
    Ok(c)
}

/// Add a load's outcome to `cell`, and say it on stderr.
fn record(cell: &mut Cell, progress: &str, report: anyhow::Result<Report>) {
    if let Some(r) = cell.problems.take_load(progress, &report, "sockets") {
        cell.rps.push(r.rps());
        cell.answered += r.tally.answered;
        cell.lost += r.tally.lost;
    }
}

/// The counter's value, asked of the host at `udp` with `get counter`
/// (`(nil)`, never incremented, is 0).
async fn read_counter(udp: SocketAddr) -> anyhow::Result<u64> {
    let socket = UdpSocket::bind(loopback(0)).await.context("cannot open a UDP socket")?;
    socket.connect(udp).await.with_context(|| format!("cannot connect a UDP socket to {udp}"))?;
    let mut buf = vec![0u8; 1024];
    for _ in 0..5 {
        socket.send(READ.as_bytes()).await.context("udp send")?;
        let Ok(received) = timeout(Duration::from_secs(1), socket.recv(&mut buf)).await else {
            continue;
        };
        let reply = &buf[..received.context("udp receive")?];
        if reply == b"(nil)" {
            return Ok(0);
        }
        return load::parse_integer(reply)
            .with_context(|| format!("{READ:?} replied {:?}, not a number", String::from_utf8_lossy(reply)));
    }
    bail!("no reply to {READ:?} in 5 tries")
}

/// A `redis-server` of our own on a free loopback port, without persistence.
struct Redis {
    process: ServerProcess,
    port: u16,
}

impl Redis {
    /// The arguments after `--port P`, as the report shows them.
    const ARGS: [&'static str; 8] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"];

    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Free when asked; another process taking it before redis-server
        // binds it makes the start fail, and the report says so.
        let port = std::net::TcpListener::bind(loopback(0))
            .and_then(|l| l.local_addr())
            .context("cannot find a free TCP port")?
            .port();
        let mut c = Command::new(bin);
        c.args(["--port", &port.to_string()]).args(Redis::ARGS);
        // Its working directory (nothing is written there without
        // persistence), and its log on stderr, where a failure is explained.
        c.arg("--dir").arg(dir).args(["--logfile", "/dev/stderr"]);
        let process = ServerProcess::spawn("redis-server", c)?;
        let deadline = Instant::now() + REDIS_START;
        loop {
            match ping(port).await {
                Ok(()) => return Ok(Self { process, port }),
                Err(e) if process.log().closed || Instant::now() >= deadline => {
                    bail!("redis-server on port {port} did not answer PING: {e:#}{}", process.log().tail_text())
                }
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The command line, for the report.
    fn describe(port: u16) -> String {
        let args: Vec<String> =
            Redis::ARGS.iter().map(|a| if a.is_empty() { "''".to_owned() } else { (*a).to_owned() }).collect();
        format!("redis-server --port {port} {}", args.join(" "))
    }
}

async fn ping(port: u16) -> anyhow::Result<()> {
    let step = Duration::from_secs(1);
    let mut stream = timeout(step, TcpStream::connect(loopback(port))).await.context("connect timed out")??;
    stream.write_all(b"PING\r\n").await?;
    let mut reply = [0u8; 7];
    timeout(step, stream.read_exact(&mut reply)).await.context("no reply")??;
    ensure!(&reply == b"+PONG\r\n", "PING answered {:?}", String::from_utf8_lossy(&reply));
    Ok(())
}

fn setup(out: &mut String, options: &compare::Options, kv: &Options, redis_port: Option<u16>) {
    let _ = writeln!(out, "## Key-value store: a UDP counter against the echo plugin\n");
    let _ = writeln!(
        out,
        "- servers: `{}` serving `{}` (echo) and `{}` (counter), each a fresh instance per request \
         (the default), and `bench native`; {} worker threads each",
        options.host.display(),
        options.plugin.display(),
        kv.plugin.display(),
        options.workers
    );
    let redis = match redis_port {
        Some(port) => format!(
            "`--kv redis://127.0.0.1:{port}/0` to `{}` started for this run (no RDB snapshots, no AOF: \
             not the persistence Redis ships with)",
            Redis::describe(port)
        ),
        None => format!("`{}` did not start (see the problems)", kv.redis_server.display()),
    };
    let _ = writeln!(out, "- counter, embedded: `--data-dir` a fresh temp dir (SQLite store); counter, Redis: {redis}");
    let _ = writeln!(
        out,
        "- load: UDP {CONNS} sockets × {INFLIGHT} in flight, every request {} to every server: native and \
         echo send it back, the counter (one atomic increment in the store) replies its new value; \
         each reply answers its socket's oldest outstanding request; {} of {:?} per load after {:?} warm-up; \
         medians shown\n",
        FixedRequest::new(REQUEST, ReplyCheck::Integer).describe(),
        plural(options.rounds),
        options.duration,
        options.warmup
    );
}

fn cell_median(cells: &[Cell], column: Column) -> Option<f64> {
    median(&cells[column.index()].rps)
}

/// `column`'s median throughput over the echo plugin's.
fn ratio(cells: &[Cell], column: Column) -> Option<f64> {
    let (c, e) = (cell_median(cells, column)?, cell_median(cells, Column::Echo)?);
    (e > 0.0).then(|| c / e)
}

fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
}

fn table(out: &mut String, cells: &[Cell]) {
    let mut heading = vec!["Load".to_owned()];
    heading.extend(Column::ALL.map(|c| c.name().to_owned()));
    heading.extend(Column::COUNTERS.map(|c| format!("{} / echo", c.short_name())));
    heading.push("echo / native".to_owned());
    let _ = writeln!(out, "| {} |", heading.join(" | "));
    let _ = writeln!(out, "|---|{}", "--:|".repeat(heading.len() - 1));
    let mut row = vec![format!("UDP {CONNS} sockets × {INFLIGHT} in flight, `{REQUEST}`")];
    row.extend(
        Column::ALL.map(|c| cell_median(cells, c).map_or_else(|| "—".to_owned(), |v| format!("{} req/s", si(v)))),
    );
    row.extend(Column::COUNTERS.map(|c| show_ratio(ratio(cells, c))));
    let echo_native = cell_median(cells, Column::Echo)
        .zip(cell_median(cells, Column::Native))
        .and_then(|(e, n)| (n > 0.0).then(|| e / n));
    row.push(show_ratio(echo_native));
    let _ = writeln!(out, "| {} |\n", row.join(" | "));
}

fn goals(out: &mut String, cells: &[Cell]) {
    let _ = writeln!(out, "| Goal | measured | goal | |");
    let _ = writeln!(out, "|---|--:|--:|---|");
    for g in &GOALS {
        let r = ratio(cells, g.column);
        let verdict = match r {
            Some(r) if r >= g.goal => "met",
            Some(_) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | ≥ {} | {verdict} |", g.label, show_ratio(r), g.goal);
    }
    out.push('\n');
}

fn counter_check(out: &mut String, cells: &[Cell], counters: &[(Column, Option<anyhow::Result<u64>>)]) {
    let _ = writeln!(
        out,
        "Counter check: the counter's final value (`{READ}`) against the correct replies received from \
         that server, every round's warm-up, measurement and drain included:\n"
    );
    for (column, value) in counters {
        let cell = &cells[column.index()];
        let verdict = match value {
            None => "not measured".to_owned(),
            Some(Err(e)) => format!("cannot read the counter: {e:#}"),
            Some(Ok(v)) => {
                let (v, replies) = (*v, cell.answered);
                let verdict = match v.abs_diff(replies) {
                    0 => "equal".to_owned(),
                    d if d <= cell.lost => format!(
                        "**differ** by {d}; {} requests went unanswered, and a reply the kernel dropped \
                         after the increment would explain it",
                        cell.lost
                    ),
                    d => format!("**differ** by {d}, more than the {} requests that went unanswered", cell.lost),
                };
                format!("counter {}, replies {}: {verdict}", group(v), group(replies))
            }
        };
        let _ = writeln!(out, "- {}: {verdict}", column.name());
    }
    out.push('\n');
}

fn problems(out: &mut String, cells: &[Cell]) {
    let listed: Vec<String> = Column::ALL
        .into_iter()
        .filter(|c| cells[c.index()].problems.any())
        .map(|c| format!("- {}: {}", c.name(), cells[c.index()].problems))
        .collect();
    if listed.is_empty() {
        out.push_str(
            "Every reply was correct (an echo of the request, or a number): no errors, no lost or late replies.\n\n",
        );
    } else {
        out.push_str("Problems (summed over the rounds):\n\n");
        for p in listed {
            let _ = writeln!(out, "{p}");
        }
        out.push('\n');
    }
}

fn server_logs(out: &mut String, logs: &[(Column, Log)]) {
    out.push_str("Server logs:\n\n");
    for (column, log) in logs {
        let first = log.first_warning.as_deref().map(|w| format!(" (first: {w})")).unwrap_or_default();
        let stats = log.stats.as_deref().map(|s| format!("; counters at exit: {s}")).unwrap_or_default();
        let _ = writeln!(out, "- {}: {} warnings or errors{first}{stats}", column.name(), log.warnings);
    }
}

fn si(v: f64) -> String {
    crate::report::si(v)
}

fn plural(n: u32) -> String {
    if n == 1 { "1 round".to_owned() } else { format!("{n} rounds") }
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> String {
        c.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn each_server_gets_its_plugin_and_store() {
        let dirs = tempfile::tempdir().unwrap();
        let kv = Options { plugin: "kv-probe.wasm".into(), redis_server: "redis-server".into() };
        let cache = Path::new("/cache");
        let echo = args(&command(Column::Echo, &compare::Options::for_tests(), &kv, cache, dirs.path(), None).unwrap());
        assert!(echo.starts_with("--plugin echo.wasm --cache-dir /cache --data-dir "), "{echo}");
        assert!(echo.contains("--workers 2 --udp 127.0.0.1:0"), "{echo}");
        let embedded =
            args(&command(Column::Embedded, &compare::Options::for_tests(), &kv, cache, dirs.path(), None).unwrap());
        assert!(embedded.starts_with("--plugin kv-probe.wasm --cache-dir /cache --data-dir "), "{embedded}");
        assert!(!embedded.contains("--kv "), "{embedded}");
        // The Redis host needs its Redis server.
        assert!(command(Column::Redis, &compare::Options::for_tests(), &kv, cache, dirs.path(), None).is_err());
        // Each data dir is its own.
        assert!(dirs.path().join("echo").is_dir() && dirs.path().join("embedded").is_dir());
    }

    #[test]
    fn counters_reply_numbers_and_the_others_echo() {
        let s = spec(Column::Redis, loopback(9), &compare::Options::for_tests());
        assert_eq!(s.fixed, Some(FixedRequest::new("incr counter", ReplyCheck::Integer)));
        assert_eq!((s.conns, s.inflight), (16, 4));
        assert_eq!(
            spec(Column::Echo, loopback(9), &compare::Options::for_tests()).fixed.unwrap().reply,
            ReplyCheck::Echo
        );
        assert_eq!(
            spec(Column::Native, loopback(9), &compare::Options::for_tests()).fixed.unwrap().reply,
            ReplyCheck::Echo
        );
    }

    #[test]
    fn the_report_shows_ratios_to_echo_goals_and_the_counter_check() {
        let mut cells: Vec<Cell> = Column::ALL.iter().map(|_| Cell::default()).collect();
        for (c, v) in [(Column::Native, 200_000.0), (Column::Echo, 50_000.0), (Column::Embedded, 35_000.0)] {
            cells[c.index()].rps.push(v);
        }
        cells[Column::Redis.index()].rps.push(15_000.0);
        cells[Column::Embedded.index()].answered = 1_234_567;
        cells[Column::Redis.index()].answered = 99;
        let mut out = String::new();
        table(&mut out, &cells);
        goals(&mut out, &cells);
        counter_check(&mut out, &cells, &[(Column::Embedded, Some(Ok(1_234_567))), (Column::Redis, Some(Ok(100)))]);
        assert!(
            out.contains("| native | echo | counter, embedded | counter, Redis | embedded / echo | Redis / echo |")
        );
        assert!(out.contains("| 200k req/s | 50k req/s | 35k req/s | 15k req/s | 0.70× | 0.30× | 0.25× |"), "{out}");
        assert!(out.contains("embedded store / echo plugin, fresh instances | 0.70× | ≥ 0.6 | met |"), "{out}");
        assert!(out.contains("/ echo plugin | 0.30× | ≥ 0.4 | **not met** |"), "{out}");
        assert!(out.contains("- counter, embedded: counter 1,234,567, replies 1,234,567: equal"), "{out}");
        assert!(out.contains("- counter, Redis: counter 100, replies 99: **differ** by 1, more than"), "{out}");
        assert_eq!(
            Redis::describe(7),
            "redis-server --port 7 --bind 127.0.0.1 --save '' --appendonly no --daemonize no"
        );
    }
}
