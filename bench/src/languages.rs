//! `bench languages`: what a plugin's language costs a request, with a fresh
//! instance per request and with instance reuse.
//!
//! One echo-equivalent plugin per language: `echo.wasm` (Rust),
//! `rot13.wasm` (C: ROT13 of the payload, the repository's C plugin; it
//! also formats a line and calls the host's `log` import per request, which
//! the others do not: its row is an upper bound of C's cost),
//! `echo-py.wasm` (Python, componentize-py) and `echo-js.wasm` (JavaScript,
//! componentize-js). Nine servers run side by side as child processes on
//! 127.0.0.1, with the same worker threads: the native baseline, and for
//! each plugin a host as it ships (a fresh instance per request) and a host
//! with `--instance-reuse 1000000`. Each gets the same closed-loop UDP load,
//! `compare`'s main UDP row (16 sockets × 4 in flight, 64-byte datagrams),
//! one server after another within a round, so a disturbance on the machine
//! touches all alike; the whole plan runs `--rounds` times and the table
//! shows the medians, each server's throughput against native's and against
//! the Rust plugin's with fresh instances, then the goals for Python
//! and JavaScript.
//!
//! rot13's reply is not its request, so every server gets the load's
//! fixed-request mode, the same 64 bytes ([`REQUEST`]) every time, and every
//! reply is taken as the answer to its socket's oldest outstanding request
//! (so a latency is that request's). The echoes' replies must be the request
//! byte for byte; rot13's may be any non-empty reply (its exact bytes are
//! checked by `tests/it/languages.rs`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use host::framing::Framing;
use tokio::process::Command;
use tokio::time::sleep;

use crate::compare::{self, loopback};
use crate::load::{self, FixedRequest, ReplyCheck, Report, Spec, Target};
use crate::process::{Log, ServerProcess};
use crate::report::{Problems, si};
use crate::stats::median;
use crate::{per_plugin, plugins, sys};

/// What to measure, and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: PathBuf,
    /// The echo-equivalent plugin of each language, in [`Language::ALL`] order.
    pub plugins: [PathBuf; 4],
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Worker threads of every server.
    pub workers: usize,
    /// Worker threads of the load generator (this process).
    pub load_workers: usize,
}

/// Every request to every server: 64 bytes, as `compare`'s UDP row, with
/// letters for rot13 to turn.
const REQUEST: &[u8; 64] = b"bench languages: one 64-byte datagram, the same for every server";
/// Sockets and requests in flight: `compare`'s main UDP row.
const CONNS: usize = 16;
const INFLIGHT: usize = 4;

/// The languages, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    C,
    Python,
    JavaScript,
}

impl Language {
    pub const ALL: [Language; 4] = [Language::Rust, Language::C, Language::Python, Language::JavaScript];

    fn name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::C => "C",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        }
    }

    /// The option that names this language's plugin.
    pub fn flag(self) -> &'static str {
        match self {
            Language::Rust => "--rust-plugin",
            Language::C => "--c-plugin",
            Language::Python => "--python-plugin",
            Language::JavaScript => "--js-plugin",
        }
    }

    /// How the default plugin is built.
    fn build(self) -> &'static str {
        match self {
            Language::Rust => "scripts/build-plugins.sh --rust-only",
            Language::C => "bash plugins/rot13/build.sh target/plugins/rot13.wasm",
            Language::Python => "bash plugins/echo-py/build.sh target/plugins/echo-py.wasm",
            Language::JavaScript => "bash plugins/echo-js/build.sh target/plugins/echo-js.wasm",
        }
    }

    /// What its plugin replies to [`REQUEST`]: the request, but for rot13.
    fn reply(self) -> ReplyCheck {
        if self == Language::C { ReplyCheck::Any } else { ReplyCheck::Echo }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A server of the table, one per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Native,
    Host { language: Language, reuse: bool },
}

impl Server {
    /// In table order: native, then each language fresh, then reused.
    fn all() -> Vec<Server> {
        let hosts =
            Language::ALL.into_iter().flat_map(|language| [false, true].map(|reuse| Server::Host { language, reuse }));
        std::iter::once(Server::Native).chain(hosts).collect()
    }

    fn name(self) -> String {
        match self {
            Server::Native => "native".to_owned(),
            Server::Host { language, reuse } => format!("{}, {}", language.name(), mode(reuse)),
        }
    }

    fn reply(self) -> ReplyCheck {
        match self {
            Server::Native => ReplyCheck::Echo,
            Server::Host { language, .. } => language.reply(),
        }
    }
}

fn mode(reuse: bool) -> &'static str {
    if reuse { "reuse" } else { "fresh" }
}

/// The goals: `language`'s plugin with fresh instances, at least
/// `goal` times the Rust plugin's throughput with fresh instances.
const GOALS: [(Language, f64); 2] = [(Language::Python, 0.5), (Language::JavaScript, 0.5)];

/// What was measured of one server over every round.
#[derive(Debug, Default)]
struct Cell {
    /// Requests per second, p50 and p99 in µs: one of each per round.
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    problems: Problems,
}

/// One line of the table: a server, its plugin (file name and bytes), and
/// what it did.
#[derive(Debug)]
struct Line {
    server: Server,
    plugin: Option<(String, u64)>,
    cell: Cell,
}

/// Check that the host and every plugin are there before anything runs,
/// naming every missing plugin with the command that builds it.
pub fn check(options: &Options) -> anyhow::Result<()> {
    ensure!(
        options.host.is_file(),
        "no host binary at {} (build it with `cargo build --release -p host`, or pass --host)",
        options.host.display()
    );
    let missing: Vec<String> = Language::ALL
        .into_iter()
        .zip(&options.plugins)
        .filter(|(_, path)| !path.is_file())
        .map(|(language, path)| {
            format!(
                "no {} plugin at {} (build it with `{}`, or pass {})",
                language.name(),
                path.display(),
                language.build(),
                language.flag()
            )
        })
        .collect();
    ensure!(missing.is_empty(), "{}", missing.join("; "));
    Ok(())
}

/// Run the plan and print the tables on stdout (progress on stderr).
pub async fn run(options: &Options) -> anyhow::Result<()> {
    check(options)?;
    let servers = Server::all();
    print_setup(options, servers.len());
    // A compile cache and data dirs of our own: the first start of each
    // plugin fills the cache (seconds for the Python and JavaScript
    // components), its reusing host finds it warm, and nothing of the
    // user's is read or written.
    let scratch = tempfile::Builder::new().prefix("bench-languages").tempdir().context("cannot create a temp dir")?;

    let mut cells: Vec<Cell> = servers.iter().map(|_| Cell::default()).collect();
    let mut processes = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let started = match command(*server, options, scratch.path(), i) {
            Ok(c) => ServerProcess::start(&server.name(), c).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(process) => processes.push(Some(process)),
            Err(e) => {
                eprintln!("{}: failed to start: {e:#}", server.name());
                cells[i].problems.failed(format_args!("{e:#}"));
                processes.push(None);
            }
        }
    }

    for round in 1..=options.rounds {
        // Each round starts one server further on, so that a drift within a
        // round does not always fall on the same servers.
        let n = servers.len();
        for i in (0..n).map(|k| (k + round as usize - 1) % n) {
            let (server, Some(process), cell) = (&servers[i], &processes[i], &mut cells[i]) else { continue };
            let progress = format!("[{round}/{}] {}", options.rounds, server.name());
            let report = compare::run_load(spec(*server, process.udp(), options)).await;
            record(cell, &progress, report);
            sleep(compare::PAUSE).await;
        }
    }

    let mut logs = Vec::new();
    for (server, process) in servers.iter().zip(processes) {
        if let Some(process) = process {
            logs.push((*server, process.stop().await));
        }
    }

    let lines: Vec<Line> = servers
        .into_iter()
        .zip(cells)
        .map(|(server, cell)| {
            let plugin = match server {
                Server::Native => None,
                Server::Host { language, .. } => {
                    let path = &options.plugins[language.index()];
                    Some((plugins::name(path), std::fs::metadata(path).map_or(0, |m| m.len())))
                }
            };
            Line { server, plugin, cell }
        })
        .collect();
    print!("{}", render(&lines));
    print!("{}", server_logs(&logs));
    Ok(())
}

/// The load of one round against `server` at `udp`.
fn spec(server: Server, udp: SocketAddr, options: &Options) -> Spec {
    Spec {
        target: Target::Udp(udp),
        framing: Framing::Lines,
        conns: CONNS,
        inflight: INFLIGHT,
        size: REQUEST.len(),
        duration: options.duration,
        warmup: options.warmup,
        rate: None,
        fixed: Some(FixedRequest::new(REQUEST.as_slice(), server.reply())),
    }
}

/// The command that starts `server` on free loopback ports. Each host gets
/// the shared compile cache under `scratch` and a data dir of its own there
/// (the host opens a store whatever the plugin), named by its `index`.
fn command(server: Server, options: &Options, scratch: &Path, index: usize) -> anyhow::Result<Command> {
    let mut c = match server {
        Server::Native => crate::process::native_command()?,
        Server::Host { language, reuse } => {
            let mut c = Command::new(&options.host);
            c.arg("--plugin").arg(&options.plugins[language.index()]);
            c.arg("--cache-dir").arg(scratch.join("cache"));
            c.arg("--data-dir").arg(scratch.join(format!("data-{index}")));
            if reuse {
                c.args(["--instance-reuse", &compare::REUSE.to_string()]);
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
        // A load with no correct reply measured has no latency.
        if r.tally.ok > 0 {
            cell.p50.push(r.tally.quantile_us(0.5) as f64);
            cell.p99.push(r.tally.quantile_us(0.99) as f64);
        }
    }
}

fn print_setup(options: &Options, servers: usize) {
    let cell = options.warmup + options.duration + compare::PAUSE + load::LOSS_TIMEOUT / 10;
    let estimate = cell * (servers as u32 * options.rounds);
    println!("## Plugin languages: an echo in each, fresh and reused\n");
    println!("- machine: {}", sys::machine());
    let plugins: Vec<String> = Language::ALL
        .into_iter()
        .zip(&options.plugins)
        .map(|(language, path)| format!("`{}` ({})", path.display(), language.name()))
        .collect();
    println!(
        "- servers: `{}` serving {}, each twice: fresh (the default, a new instance per request) and reuse \
         (`--instance-reuse {}`); and `bench native`; {} worker threads each",
        options.host.display(),
        plugins.join(", "),
        compare::REUSE,
        options.workers
    );
    println!(
        "- load: UDP {CONNS} sockets × {INFLIGHT} in flight, closed loop, every request {} to every server; \
         {} thread{}; {} of {:?} per load after {:?} warm-up, the servers one after another; medians shown",
        FixedRequest::new(REQUEST.as_slice(), ReplyCheck::Echo).describe(),
        options.load_workers,
        if options.load_workers == 1 { "" } else { "s" },
        if options.rounds == 1 { "1 round".to_owned() } else { format!("{} rounds", options.rounds) },
        options.duration,
        options.warmup
    );
    println!(
        "- replies: an echo's must be the request, rot13's (C) any non-empty reply; each answers its socket's \
         oldest outstanding request, whose latency it gives\n"
    );
    eprintln!(
        "this takes about {} s, plus compiling the Python and JavaScript plugins at their first start \
         (about 10 s each with a release host on 2 cores)",
        estimate.as_secs()
    );
}

/// The table, the goals and every problem, in markdown.
fn render(lines: &[Line]) -> String {
    let rps = |server: Server| lines.iter().find(|l| l.server == server).and_then(|l| median(&l.cell.rps));
    let native = rps(Server::Native);
    let rust_fresh = rps(Server::Host { language: Language::Rust, reuse: false });
    let mut out = String::new();
    out.push_str("| language | plugin | size | mode | requests/s | p50 | p99 | / native | / Rust fresh |\n");
    out.push_str("|---|---|--:|---|--:|--:|--:|--:|--:|\n");
    for line in lines {
        let (language, mode) = match line.server {
            Server::Native => ("native (tokio)", "—"),
            Server::Host { language, reuse } => (language.name(), mode(reuse)),
        };
        let (plugin, size) = match &line.plugin {
            Some((name, bytes)) => (format!("{name}.wasm"), per_plugin::size(*bytes)),
            None => ("`bench native`".to_owned(), "—".to_owned()),
        };
        let mine = median(&line.cell.rps);
        let micros = |v: &[f64]| median(v).map_or_else(|| "—".to_owned(), latency);
        let _ = writeln!(
            out,
            "| {language} | {plugin} | {size} | {mode} | {} | {} | {} | {} | {} |",
            mine.map_or_else(|| "—".to_owned(), si),
            micros(&line.cell.p50),
            micros(&line.cell.p99),
            show_ratio(ratio(mine, native)),
            show_ratio(ratio(mine, rust_fresh)),
        );
    }

    out.push_str("\n| goal | measured | goal | |\n|---|--:|--:|---|\n");
    for (language, goal) in GOALS {
        let r = ratio(rps(Server::Host { language, reuse: false }), rust_fresh);
        let verdict = match r {
            Some(r) if r >= goal => "met",
            Some(_) => "**not met**",
            None => "not measured",
        };
        let label = format!("{} echo-equivalent, fresh instance per request, UDP / Rust fresh", language.name());
        let _ = writeln!(out, "| {label} | {} | ≥ {goal} | {verdict} |", show_ratio(r));
    }

    let problems: Vec<String> = lines
        .iter()
        .filter(|l| l.cell.problems.any())
        .map(|l| format!("- {}: {}\n", l.server.name(), l.cell.problems))
        .collect();
    if problems.is_empty() {
        out.push_str("\nEvery reply was correct: no errors, no lost or late replies.\n\n");
    } else {
        out.push_str("\nProblems (summed over the rounds):\n\n");
        problems.iter().for_each(|p| out.push_str(p));
        out.push('\n');
    }
    out
}

/// `a / b`, if both were measured.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then(|| a / b)
}

/// A ratio rounded down, so that one just under its goal never shows as
/// the goal: to two decimals, or three under 0.1 (a Python plugin with fresh
/// instances against native would otherwise show as 0.00).
fn show_ratio(r: Option<f64>) -> String {
    match r {
        None => "—".to_owned(),
        Some(r) if r < 0.1 => format!("{:.3}×", (r * 1000.0).floor() / 1000.0),
        Some(r) => format!("{:.2}×", (r * 100.0).floor() / 100.0),
    }
}

/// A latency in µs, in ms from 10 ms on (queueing behind a slow server).
fn latency(micros: f64) -> String {
    if micros >= 10_000.0 { format!("{:.1} ms", micros / 1e3) } else { format!("{micros:.0} µs") }
}

fn server_logs(logs: &[(Server, Log)]) -> String {
    let mut out = "Server logs:\n\n".to_owned();
    for (server, log) in logs {
        let first = log.first_warning.as_deref().map(|w| format!(" (first: {w})")).unwrap_or_default();
        let stats = log.stats.as_deref().map(|s| format!("; counters at exit: {s}")).unwrap_or_default();
        let _ = writeln!(out, "- {}: {} warnings or errors{first}{stats}", server.name(), log.warnings);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            host: "host".into(),
            plugins: ["echo.wasm".into(), "rot13.wasm".into(), "echo-py.wasm".into(), "echo-js.wasm".into()],
            rounds: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            workers: 2,
            load_workers: 1,
        }
    }

    fn args(c: &Command) -> String {
        c.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn every_plugin_is_served_fresh_and_reused_with_the_same_workers() {
        let servers = Server::all();
        assert_eq!(servers.len(), 9);
        assert_eq!(servers[0], Server::Native);
        assert_eq!(servers[5].name(), "Python, fresh");
        assert_eq!(servers[6].name(), "Python, reuse");
        let scratch = Path::new("/s");
        let fresh = args(&command(servers[5], &options(), scratch, 5).unwrap());
        assert_eq!(
            fresh,
            "--plugin echo-py.wasm --cache-dir /s/cache --data-dir /s/data-5 \
             --framing lines --workers 2 --udp 127.0.0.1:0 --tcp 127.0.0.1:0"
        );
        let reuse = args(&command(servers[8], &options(), scratch, 8).unwrap());
        assert!(reuse.starts_with("--plugin echo-js.wasm --cache-dir /s/cache --data-dir /s/data-8"), "{reuse}");
        assert!(reuse.contains("--instance-reuse 1000000 --framing lines --workers 2"), "{reuse}");
        let native = args(&command(Server::Native, &options(), scratch, 0).unwrap());
        assert!(native.starts_with("native --framing lines --workers 2 --udp"), "{native}");
    }

    #[test]
    fn every_server_gets_the_same_64_byte_request_and_only_rot13_is_not_an_echo() {
        for server in Server::all() {
            let s = spec(server, loopback(9), &options());
            let fixed = s.fixed.expect("a fixed request");
            assert_eq!(fixed.request, REQUEST);
            assert_eq!((s.conns, s.inflight, fixed.request.len()), (16, 4, 64));
            let c = matches!(server, Server::Host { language: Language::C, .. });
            assert_eq!(fixed.reply, if c { ReplyCheck::Any } else { ReplyCheck::Echo }, "{server:?}");
        }
    }

    #[test]
    fn a_missing_plugin_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        std::fs::write(&host, "").unwrap();
        let echo = dir.path().join("echo.wasm");
        std::fs::write(&echo, "").unwrap();
        let mut o = options();
        o.host = host;
        o.plugins[0] = echo.clone();
        o.plugins[1] = echo.clone();
        let err = check(&o).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "no Python plugin at echo-py.wasm (build it with \
                 `bash plugins/echo-py/build.sh target/plugins/echo-py.wasm`, or pass --python-plugin); "
            ),
            "{err}"
        );
        assert!(err.contains("no JavaScript plugin at echo-js.wasm"), "{err}");
        assert!(err.contains("or pass --js-plugin"), "{err}");
        o.plugins = [echo.clone(), echo.clone(), echo.clone(), echo];
        assert!(check(&o).is_ok());
    }

    #[test]
    fn the_table_shows_ratios_to_native_and_to_rust_fresh_and_the_goals() {
        let cell = |rps: f64, p50: f64, p99: f64| Cell {
            rps: vec![rps, rps * 2.0, rps / 2.0],
            p50: vec![p50],
            p99: vec![p99],
            problems: Problems::default(),
        };
        let host = |language, reuse| Server::Host { language, reuse };
        let mut python = cell(49_990.0, 900.0, 2_400.0);
        python.problems.add(0, 3, 0, None);
        let lines = vec![
            Line { server: Server::Native, plugin: None, cell: cell(200_000.0, 60.0, 150.0) },
            Line {
                server: host(Language::Rust, false),
                plugin: Some(("echo".into(), 65_000)),
                cell: cell(100_000.0, 120.0, 300.0),
            },
            Line {
                server: host(Language::C, false),
                plugin: Some(("rot13".into(), 22_878)),
                cell: cell(1_365.0, 47_103.0, 101_119.0),
            },
            Line { server: host(Language::Python, false), plugin: Some(("echo-py".into(), 18_347_327)), cell: python },
            Line {
                server: host(Language::JavaScript, true),
                plugin: Some(("echo-js".into(), 12_009_588)),
                cell: Cell::default(),
            },
        ];
        let table = render(&lines);
        let heading = "| language | plugin | size | mode | requests/s | p50 | p99 | / native | / Rust fresh |\n";
        assert!(table.starts_with(heading), "{table}");
        assert!(table.contains("| native (tokio) | `bench native` | — | — | 200k | 60 µs | 150 µs | 1.00× | 2.00× |"));
        assert!(table.contains("| Rust | echo.wasm | 65 kB | fresh | 100k | 120 µs | 300 µs | 0.50× | 1.00× |"));
        // Ratios under 0.1 get a third decimal; latencies from 10 ms on are in ms.
        assert!(
            table.contains("| C | rot13.wasm | 23 kB | fresh | 1.36k | 47.1 ms | 101.1 ms | 0.006× | 0.013× |"),
            "{table}"
        );
        // 0.4999 of Rust fresh is shown as 0.49, and is below the goal.
        assert!(
            table.contains("| Python | echo-py.wasm | 18.3 MB | fresh | 50k | 900 µs | 2400 µs | 0.24× | 0.49× |"),
            "{table}"
        );
        assert!(table.contains("| JavaScript | echo-js.wasm | 12.0 MB | reuse | — | — | — | — | — |"), "{table}");
        assert!(table.contains(
            "| Python echo-equivalent, fresh instance per request, UDP / Rust fresh | 0.49× | ≥ 0.5 | **not met** |"
        ));
        assert!(table.contains(
            "| JavaScript echo-equivalent, fresh instance per request, UDP / Rust fresh | — | ≥ 0.5 | not measured |"
        ));
        assert!(table.contains("- Python, fresh: 3 lost\n"), "{table}");
    }
}
