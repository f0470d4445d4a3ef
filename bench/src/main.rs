//! `bench`: measure the host against a hand-written tokio echo server.
//!
//! - `bench native` runs the baseline: the echo a user would write directly
//!   on tokio, with the host's own framing codec.
//! - `bench load` drives one server with a closed-loop (or rate-limited)
//!   load and reports throughput, latency percentiles and every error.
//! - `bench compare` starts the baseline and the host as child processes,
//!   runs the same loads against each, and prints a markdown table. With
//!   `--kv` it adds the key-value section: the UDP counter of kv-probe.wasm
//!   on the embedded store and on Redis against the echo plugin, with the
//!   issue's goals and a check of the counter against the replies;
//!   `--kv-only` runs that section alone.
//! - `bench languages` serves an echo-equivalent plugin in each language
//!   (Rust, C, Python, JavaScript) with fresh and with reused instances,
//!   loads each like the native baseline, and prints a markdown table.
//! - `bench startup` times the host from spawn to first reply per plugin,
//!   with a cold and a warm compile cache.
//! - `bench reload` times hot reloads from the rename of a new version to
//!   its first reply, and checks that no request is lost on the way.
//! - `bench protocols` runs the DNS, RESP and HTTP plugins against NSD,
//!   redis-server, `wasmtime serve` and nginx with dnsperf,
//!   redis-benchmark and wrk, and prints the ratios against issue 14's goals.
//!
//! This file only parses arguments and builds the tokio runtime each command
//! asks for; the work is in the modules.

mod compare;
mod kv;
mod languages;
mod load;
mod native;
mod per_plugin;
mod plugins;
mod process;
mod protocols;
mod reload;
mod report;
mod startup;
mod stats;
mod sys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use host::framing::Framing;

/// Load generator and native baseline for the host.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the native tokio echo baseline.
    Native(NativeArgs),
    /// Drive one server with load and report what it did.
    Load(LoadArgs),
    /// Start the baseline and the host, load both, print a markdown table
    /// (with --kv, also the key-value store against the echo plugin).
    Compare(CompareArgs),
    /// Serve an echo in each plugin language, fresh and reused, load each
    /// like the native baseline, print a markdown table.
    Languages(LanguagesArgs),
    /// Time the host's start to its first UDP reply per plugin, cold and warm.
    Startup(StartupArgs),
    /// Time hot reloads from the rename of a new version to its first reply.
    Reload(ReloadArgs),
    /// The DNS, RESP and HTTP plugins against NSD, redis-server, wasmtime
    /// serve and nginx, with dnsperf, redis-benchmark and wrk.
    Protocols(ProtocolsArgs),
}

#[derive(Debug, Args)]
struct NativeArgs {
    /// Serve UDP echo on ADDR (repeatable) [default: 127.0.0.1:7001 when
    /// neither --udp nor --tcp is given].
    #[arg(long, value_name = "ADDR")]
    udp: Vec<SocketAddr>,
    /// Serve TCP echo on ADDR (repeatable) [default: 127.0.0.1:7001 when
    /// neither --udp nor --tcp is given].
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<SocketAddr>,
    /// How TCP streams are cut into frames (as the host's --framing).
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    framing: Framing,
    /// Runtime worker threads, and UDP receive tasks per socket [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["udp", "tcp"]))]
struct LoadArgs {
    /// Send UDP datagrams to ADDR (a loopback address).
    #[arg(long, value_name = "ADDR")]
    udp: Option<SocketAddr>,
    /// Send TCP frames to ADDR (a loopback address).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// TCP framing; must match the server's.
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    framing: Framing,
    /// UDP sockets or TCP connections.
    #[arg(long, value_name = "N", default_value_t = 16)]
    conns: usize,
    /// Requests kept in flight on each socket or connection. With --rate,
    /// the most that may be outstanding before sends are held back.
    #[arg(long, value_name = "K", default_value_t = 4)]
    inflight: usize,
    /// Payload bytes per request (at least 16: a sequence number leads it).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// UDP only: send TEXT as every request instead of numbered echo
    /// payloads, for a plugin that is not an echo (e.g. 'incr counter' to
    /// kv-probe.wasm). Each reply is taken as the answer to its socket's
    /// oldest outstanding request, and checked as --reply says.
    #[arg(long, value_name = "TEXT", conflicts_with = "size")]
    request: Option<String>,
    /// What a reply to --request must be.
    #[arg(long, value_enum, value_name = "CHECK", default_value_t = load::ReplyCheck::Echo, requires = "request")]
    reply: load::ReplyCheck,
    /// How long to measure (after the warm-up).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// How long to run before measuring; longer if some connection has not
    /// had a reply by then.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Open loop: send R requests/s in total on a fixed schedule, and time
    /// each reply from when its request was due (beyond the timer's 1 ms
    /// granularity), not from when it was sent.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads for the load generator.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The host binary.
    #[arg(long, value_name = "PATH", default_value = "target/release/host")]
    host: PathBuf,
    /// The echo plugin the host serves.
    #[arg(long, value_name = "PATH", default_value = "target/plugins/echo.wasm")]
    plugin: PathBuf,
    /// The connection-handler plugin of the "host, conn" server: a line echo
    /// that frames its lines itself.
    #[arg(long, value_name = "PATH", default_value = "target/plugins/line-echo.wasm")]
    conn_plugin: PathBuf,
    /// Rounds of every load against every server; the table shows medians.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// How long each load is measured.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measurement.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Host starts timed for the start-up row.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    starts: u32,
    /// Connections timed, one after another, for the first-reply rows.
    #[arg(long, value_name = "N", default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    first_replies: u32,
    /// Worker threads of each server, the baseline and the host alike [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Worker threads of the load generator.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    load_workers: u16,
    /// A smoke test: one round of 0.5 s loads, 3 starts, 1,000 first replies.
    #[arg(long)]
    quick: bool,
    /// Add the key-value section after the table: UDP `incr counter` to
    /// kv-probe.wasm (one atomic increment per request) on the embedded
    /// store (--data-dir, a fresh temp dir) and on Redis (--kv, a
    /// redis-server started on a free loopback port without persistence),
    /// against echo.wasm, with fresh instances; the ratios to echo against
    /// the goals (>= 0.6 embedded, >= 0.4 Redis), and a check that the
    /// counter's final value equals the replies received.
    #[arg(long)]
    kv: bool,
    /// Run the key-value section (--kv) alone, without the main table.
    #[arg(long)]
    kv_only: bool,
    /// The key-value fixture plugin of the --kv section.
    #[arg(long, value_name = "PATH", default_value = "target/plugins/kv-probe.wasm")]
    kv_plugin: PathBuf,
    /// The Redis server binary of the --kv section.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server: PathBuf,
}

#[derive(Debug, Args)]
struct LanguagesArgs {
    /// The host binary.
    #[arg(long, value_name = "PATH", default_value = "target/release/host")]
    host: PathBuf,
    /// The Rust plugin: an echo.
    #[arg(long, value_name = "PATH", default_value = "target/plugins/echo.wasm")]
    rust_plugin: PathBuf,
    /// The C plugin: replies with the payload ROT13-encoded.
    #[arg(long, value_name = "PATH", default_value = "target/plugins/rot13.wasm")]
    c_plugin: PathBuf,
    /// The Python plugin: an echo (componentize-py).
    #[arg(long, value_name = "PATH", default_value = "target/plugins/echo-py.wasm")]
    python_plugin: PathBuf,
    /// The JavaScript plugin: an echo (componentize-js).
    #[arg(long, value_name = "PATH", default_value = "target/plugins/echo-js.wasm")]
    js_plugin: PathBuf,
    /// Rounds of the load against every server; the table shows medians.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// How long each load is measured.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measurement.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Worker threads of each server, the baseline and the hosts alike [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Worker threads of the load generator.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    load_workers: u16,
    /// A smoke test: one round of 0.5 s loads.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Args)]
struct StartupArgs {
    /// The host binary.
    #[arg(long, value_name = "PATH", default_value = "target/release/host")]
    host: PathBuf,
    /// The plugins to serve, comma-separated.
    #[arg(
        long,
        value_name = "PATH,...",
        value_delimiter = ',',
        default_values = [
            "target/plugins/echo.wasm",
            "target/plugins/json-summary.wasm",
            "target/plugins/reverse.wasm",
            "target/plugins/rot13.wasm",
        ]
    )]
    plugins: Vec<PathBuf>,
    /// Timed starts per plugin with a warm compile cache.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    starts: u32,
    /// Timed starts per plugin with a fresh, empty compile cache (seconds
    /// each for the large plugins).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    cold_starts: u32,
}

#[derive(Debug, Args)]
struct ReloadArgs {
    /// The host binary.
    #[arg(long, value_name = "PATH", default_value = "target/release/host")]
    host: PathBuf,
    /// Where echo.wasm, upper.wasm, json-summary.wasm and reverse.wasm are.
    #[arg(long, value_name = "DIR", default_value = "target/plugins")]
    plugin_dir: PathBuf,
    /// Timed reloads per case; the table shows their median and maximum.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Debug, Args)]
struct ProtocolsArgs {
    /// The host binary.
    #[arg(long, value_name = "PATH", default_value = "target/release/host")]
    host: PathBuf,
    /// The DNS plugin (handler world).
    #[arg(long, value_name = "PATH", default_value = "target/plugins/dns.wasm")]
    dns_plugin: PathBuf,
    /// The RESP plugin (connection world).
    #[arg(long, value_name = "PATH", default_value = "target/plugins/resp.wasm")]
    resp_plugin: PathBuf,
    /// The HTTP plugin (connection world).
    #[arg(long, value_name = "PATH", default_value = "target/plugins/http-rs.wasm")]
    http_plugin: PathBuf,
    /// The zone NSD and the DNS plugin serve; its record sets are the queries.
    #[arg(long, value_name = "PATH", default_value = "examples/dns/example.zone")]
    zone: PathBuf,
    /// The wasmtime 48.0.8 binary of `wasmtime serve` [default:
    /// target/tools/wasmtime-cli-48/bin/wasmtime, installed there by
    /// `cargo install` if missing].
    #[arg(long, value_name = "PATH")]
    wasmtime: Option<PathBuf>,
    /// How long each client measures.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// How long each client runs first, unmeasured.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Server processes or threads of the DNS and HTTP servers, the peers
    /// and the host alike (RESP runs on one: Redis is single-threaded).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// A smoke test: 1 s measurements after 0.5 s warm-ups.
    #[arg(long)]
    quick: bool,
    /// Install nothing: rows whose tools are missing are skipped.
    #[arg(long)]
    no_install: bool,
    /// Only these protocols, comma-separated.
    #[arg(long, value_enum, value_name = "PROTOCOL,...", value_delimiter = ',', default_values = ["dns", "resp", "http"])]
    only: Vec<protocols::Protocol>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Native(args) => native_command(args),
        Command::Load(args) => load_command(args),
        Command::Compare(args) => compare_command(args),
        Command::Languages(args) => languages_command(args),
        Command::Startup(args) => startup_command(args),
        Command::Reload(args) => reload_command(args),
        Command::Protocols(args) => protocols_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn native_command(args: NativeArgs) -> anyhow::Result<()> {
    let workers = args.workers.map_or_else(host::default_workers, usize::from);
    let (mut udp, mut tcp) = (args.udp, args.tcp);
    if udp.is_empty() && tcp.is_empty() {
        let default: SocketAddr = ([127, 0, 0, 1], 7001).into();
        (udp, tcp) = (vec![default], vec![default]);
    }
    sys::raise_nofile_limit();
    let options = native::Options { udp, tcp, framing: args.framing, workers };
    // Multi-threaded even for one worker, as the host's runtime is.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(native::serve(options))
}

fn load_command(args: LoadArgs) -> anyhow::Result<()> {
    let target = match (args.udp, args.tcp) {
        (Some(addr), None) => load::Target::Udp(addr),
        (None, Some(addr)) => load::Target::Tcp(addr),
        _ => unreachable!("clap requires exactly one of --udp and --tcp"),
    };
    let spec = load::Spec {
        target,
        framing: args.framing,
        conns: args.conns,
        inflight: args.inflight,
        size: args.size,
        duration: args.duration,
        warmup: args.warmup,
        rate: args.rate,
        fixed: args.request.map(|r| load::FixedRequest::new(r, args.reply)),
    };
    sys::raise_nofile_limit();
    let report = runtime(args.workers.into())?.block_on(load::run(&spec))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

fn compare_command(args: CompareArgs) -> anyhow::Result<()> {
    let (rounds, duration, warmup, starts, first_replies) = if args.quick {
        (1, Duration::from_millis(500), Duration::from_millis(250), 3, 1_000)
    } else {
        (args.rounds, args.duration, args.warmup, args.starts, args.first_replies)
    };
    let options = compare::Options {
        host: args.host,
        plugin: args.plugin,
        conn_plugin: args.conn_plugin,
        rounds,
        duration,
        warmup,
        starts,
        first_replies: first_replies as usize,
        workers: args.workers.map_or_else(host::default_workers, usize::from),
        load_workers: args.load_workers.into(),
        kv: (args.kv || args.kv_only)
            .then_some(kv::Options { plugin: args.kv_plugin, redis_server: args.redis_server }),
        kv_only: args.kv_only,
    };
    // 10,000 connections need more descriptors than the usual soft limit of
    // 1,024, here and in the servers, which inherit the raised limit.
    sys::raise_nofile_limit();
    until_interrupted(runtime(options.load_workers)?, compare::run(&options))
}

fn languages_command(args: LanguagesArgs) -> anyhow::Result<()> {
    let (rounds, duration, warmup) = if args.quick {
        (1, Duration::from_millis(500), Duration::from_millis(250))
    } else {
        (args.rounds, args.duration, args.warmup)
    };
    let options = languages::Options {
        host: args.host,
        // In languages::Language::ALL order.
        plugins: [args.rust_plugin, args.c_plugin, args.python_plugin, args.js_plugin],
        rounds,
        duration,
        warmup,
        workers: args.workers.map_or_else(host::default_workers, usize::from),
        load_workers: args.load_workers.into(),
    };
    until_interrupted(runtime(options.load_workers)?, languages::run(&options))
}

fn startup_command(args: StartupArgs) -> anyhow::Result<()> {
    let options = per_plugin::Options {
        host: args.host,
        plugins: args.plugins,
        cold_starts: args.cold_starts,
        warm_starts: args.starts,
    };
    // One thread: the host being timed gets the other cores.
    until_interrupted(runtime(1)?, per_plugin::run(&options))
}

fn reload_command(args: ReloadArgs) -> anyhow::Result<()> {
    let options = reload::Options { host: args.host, plugin_dir: args.plugin_dir, rounds: args.rounds };
    // One thread for the prober and the swaps: the host gets the other cores.
    until_interrupted(runtime(1)?, reload::run(&options))
}

fn protocols_command(args: ProtocolsArgs) -> anyhow::Result<()> {
    let (duration, warmup) =
        if args.quick { (Duration::from_secs(1), Duration::from_millis(500)) } else { (args.duration, args.warmup) };
    let options = protocols::Options {
        host: args.host,
        dns_plugin: args.dns_plugin,
        resp_plugin: args.resp_plugin,
        http_plugin: args.http_plugin,
        zone: args.zone,
        wasmtime: args.wasmtime,
        duration,
        warmup,
        workers: args.workers.into(),
        no_install: args.no_install,
        only: args.only,
    };
    // The clients are child processes; one thread starts them and reads them.
    until_interrupted(runtime(1)?, protocols::run(&options))
}

/// Run `work` on `runtime`, or stop at Ctrl-C. Returning (also on Ctrl-C,
/// which drops `work` mid-flight) drops the child servers, and dropping one
/// kills it; the temp dirs go the same way.
fn until_interrupted(
    runtime: tokio::runtime::Runtime,
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    runtime.block_on(async {
        tokio::select! {
            r = work => r,
            r = tokio::signal::ctrl_c() => {
                r.context("cannot listen for Ctrl-C")?;
                anyhow::bail!("interrupted")
            }
        }
    })
}

/// A runtime with `workers` threads: a current-thread runtime for one, so a
/// single-worker load generator really uses one core.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().context("cannot start the tokio runtime")
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 500ms, 3s)"))
}
