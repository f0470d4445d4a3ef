//! `bench protocols`: the DNS, RESP and HTTP plugins against the servers
//! people would otherwise run — NSD, redis-server, `wasmtime serve` and
//! nginx — driven by the same real client, in one run, with the ratios
//! and the goals of issue 14.
//!
//! The rows come in groups that share a peer and a host configuration: the
//! peer is started, every test of the group runs against it, it is
//! stopped; then the same for the host. One server at a time, so the
//! client and the server under test have the machine to themselves. Each
//! test runs its client for `--warmup` (unmeasured, or to size the run)
//! and then for `--duration`; the client's own figures are the result.
//!
//! A row whose tool, peer or plugin is missing is shown as skipped, with
//! why; nothing is ever estimated. The run fails (exit status 1) unless
//! every row was measured on both sides.

mod clients;
mod measure;
mod servers;
mod table;
mod tools;
mod zone;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use self::servers::Server;
use self::table::{Row, Side};
use crate::process::Log;

/// What `bench protocols` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: PathBuf,
    pub dns_plugin: PathBuf,
    pub resp_plugin: PathBuf,
    pub http_plugin: PathBuf,
    pub zone: PathBuf,
    pub wasmtime: Option<PathBuf>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Server threads or processes of the DNS and HTTP servers, peers and host alike.
    pub workers: usize,
    pub no_install: bool,
    /// Which protocols to run (`dns`, `resp`, `http`).
    pub only: Vec<Protocol>,
}

/// A protocol, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Dns,
    Resp,
    Http,
}

/// `--instance-reuse` of the reuse rows: as `bench compare`'s.
const REUSE: u32 = 1_000_000;
/// dnsperf's clients (UDP sockets, or TCP connections); it keeps up to 100
/// queries outstanding over them (its default `-q`).
const DNSPERF_CLIENTS: &str = "16";
/// redis-benchmark's requests in its sizing run: more than it can send in
/// the warm-up, which ends it.
const REDIS_SIZING_REQUESTS: &str = "1000000000";

/// One test: what the client does. Each is a row of the table.
#[derive(Debug, Clone, Copy)]
enum Test {
    DnsUdp,
    DnsTcp,
    /// redis-benchmark `-t SET` or `-t GET` with `-P pipeline -c 50`.
    Resp {
        command: &'static str,
        pipeline: u32,
    },
    Http,
}

/// The peer of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Nsd,
    Redis,
    WasmtimeServe,
    Nginx,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Nsd => "NSD",
            Peer::Redis => "redis-server",
            Peer::WasmtimeServe => "wasmtime serve",
            Peer::Nginx => "nginx",
        }
    }
}

/// Tests against one peer and one host configuration.
struct Group {
    protocol: Protocol,
    peer: Peer,
    /// For DNS: the host reuses instances (`--instance-reuse`).
    reuse: bool,
    /// Each test with its row's place in the table, label and goal.
    tests: Vec<(usize, Test, &'static str, Option<f64>)>,
}

fn plan() -> Vec<Group> {
    let resp = |pipeline, goal, first| Group {
        protocol: Protocol::Resp,
        peer: Peer::Redis,
        reuse: false,
        tests: vec![
            (first, Test::Resp { command: "SET", pipeline }, "", Some(goal)),
            (first + 1, Test::Resp { command: "GET", pipeline }, "", Some(goal)),
        ],
    };
    vec![
        Group {
            protocol: Protocol::Dns,
            peer: Peer::Nsd,
            reuse: false,
            tests: vec![
                (0, Test::DnsUdp, "DNS over UDP, fresh instance per request", Some(0.6)),
                (2, Test::DnsTcp, "DNS over TCP, fresh instance per request", Some(1.0)),
            ],
        },
        Group {
            protocol: Protocol::Dns,
            peer: Peer::Nsd,
            reuse: true,
            tests: vec![
                (1, Test::DnsUdp, "DNS over UDP, instance reuse", Some(1.0)),
                (3, Test::DnsTcp, "DNS over TCP, instance reuse (not in the issue)", None),
            ],
        },
        resp(16, 0.5, 4),
        resp(1, 0.8, 6),
        Group {
            protocol: Protocol::Http,
            peer: Peer::WasmtimeServe,
            reuse: false,
            tests: vec![(8, Test::Http, "HTTP hello", Some(3.0))],
        },
        Group {
            protocol: Protocol::Http,
            peer: Peer::Nginx,
            reuse: false,
            tests: vec![(9, Test::Http, "HTTP hello", Some(0.5))],
        },
    ]
}

/// Everything the tests share: tools, paths, the temp dir.
struct Context<'a> {
    options: &'a Options,
    tools: tools::Tools,
    dir: &'a Path,
    cache: PathBuf,
    zone: Result<zone::Zone, String>,
    queries: PathBuf,
    wasmtime: Result<PathBuf, String>,
    hello: Result<PathBuf, String>,
    /// `/proc/loadavg` when the run started: whether the machine was idle.
    load: String,
}

/// Run the benchmark and print its report on stdout (progress on stderr).
pub async fn run(options: &Options) -> anyhow::Result<()> {
    let groups: Vec<Group> = plan().into_iter().filter(|g| options.only.contains(&g.protocol)).collect();
    let tests: usize = groups.iter().map(|g| g.tests.len()).sum();
    let per_test = (options.warmup + options.duration + Duration::from_millis(500)) * 2;
    eprintln!("bench protocols: {tests} rows, about {} s of loads", (per_test * tests as u32).as_secs());

    let load = std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".to_owned(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let tmp = tempfile::Builder::new().prefix("bench-protocols").tempdir().context("cannot create a temp dir")?;
    let tools = tools::debian(options.no_install).await;
    let wants = |p| options.only.contains(&p);
    let zone = if wants(Protocol::Dns) {
        zone::load(&options.zone).map_err(|e| format!("{e:#}"))
    } else {
        Err("not run".into())
    };
    let queries = tmp.path().join("queries.txt");
    if let Ok(z) = &zone {
        std::fs::write(&queries, z.query_file()).with_context(|| format!("cannot write {}", queries.display()))?;
    }
    let wasmtime = if wants(Protocol::Http) {
        tools::wasmtime(options.wasmtime.as_deref(), options.no_install).await.map_err(|e| format!("{e:#}"))
    } else {
        Err("not run".into())
    };
    let hello = if wasmtime.is_ok() {
        tools::hello_component().await.map_err(|e| format!("{e:#}"))
    } else {
        Err("not run".into())
    };
    let cache = servers::subdir(tmp.path(), "compile-cache")?;
    let cx = Context { options, tools, dir: tmp.path(), cache, zone, queries, wasmtime, hello, load };

    let mut rows = Vec::new();
    let mut logs = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let peer = run_side(&cx, group, false, i, &mut logs).await;
        let host = run_side(&cx, group, true, i, &mut logs).await;
        for (((order, test, label, goal), peer), host) in group.tests.iter().zip(peer).zip(host) {
            rows.push(Row {
                order: *order,
                label: row_label(*test, label),
                client: client_label(*test, options),
                peer: group.peer.name(),
                goal: *goal,
                peer_side: peer,
                host_side: host,
            });
        }
    }
    rows.sort_by_key(|r| r.order);

    println!("{}", table::setup(&cx, &rows).await);
    println!("{}", table::render(&rows));
    println!("{}", table::cpu(&rows));
    print!("{}", table::notes(&rows, &logs));
    let missing = rows.iter().filter(|r| !r.complete()).count();
    anyhow::ensure!(missing == 0, "{missing} of {} rows were not measured on both sides", rows.len());
    Ok(())
}

fn row_label(test: Test, label: &str) -> String {
    match test {
        Test::Resp { command, pipeline } => format!("RESP {command}, `-P {pipeline}`"),
        _ => label.to_owned(),
    }
}

fn client_label(test: Test, options: &Options) -> String {
    let d = options.duration.as_secs_f64();
    match test {
        Test::DnsUdp => format!("`dnsperf -c {DNSPERF_CLIENTS} -l {d}`"),
        Test::DnsTcp => format!("`dnsperf -m tcp -c {DNSPERF_CLIENTS} -l {d}`"),
        Test::Resp { command, pipeline } => {
            format!("`redis-benchmark -t {} -P {pipeline} -c 50 -n N`", command.to_lowercase())
        }
        Test::Http => format!("`wrk -t1 -c64 -d{}s`", d.ceil().max(1.0)),
    }
}

/// Start one side of `group` (the peer, or with `host` the host), run its
/// tests, stop it. One [`Side`] per test, in order.
async fn run_side(
    cx: &Context<'_>,
    group: &Group,
    host: bool,
    index: usize,
    logs: &mut Vec<(String, Log)>,
) -> Vec<Side> {
    let name = if host { format!("host, {}", group_host_name(group)) } else { group.peer.name().to_owned() };
    let all = |side: Side| group.tests.iter().map(|_| side.clone()).collect();
    if let Some(why) = missing(cx, group, host) {
        eprintln!("{name}: skipped: {why}");
        return all(Side::Skipped(why));
    }
    let dir = match servers::subdir(cx.dir, &format!("{index}-{}", if host { "host" } else { "peer" })) {
        Ok(d) => d,
        Err(e) => return all(Side::Failed(format!("{e:#}"))),
    };
    let started = if host { start_host(cx, group, &dir).await } else { start_peer(cx, group.peer, &dir).await };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: failed to start: {e:#}");
            return all(Side::Failed(format!("{e:#}")));
        }
    };
    let mut sides = Vec::new();
    for (_, test, label, _) in &group.tests {
        let progress = format!("{} — {name}", row_label(*test, label));
        let side = match measure::run_test(cx, *test, &server).await {
            Ok(m) => {
                eprintln!("{progress}: {:.0} req/s{}", m.rps, table::latency(&m));
                Side::Measured(m)
            }
            Err(e) => {
                eprintln!("{progress}: failed: {e:#}");
                Side::Failed(format!("{e:#}"))
            }
        };
        sides.push(side);
    }
    logs.push((name, server.stop().await));
    sides
}

fn group_host_name(group: &Group) -> &'static str {
    match (group.protocol, group.reuse) {
        (Protocol::Dns, false) => "dns.wasm",
        (Protocol::Dns, true) => "dns.wasm, reuse",
        (Protocol::Resp, _) => "resp.wasm",
        (Protocol::Http, _) => "http-rs.wasm",
    }
}

/// Why a side cannot run: a missing client, peer, plugin or input.
fn missing(cx: &Context<'_>, group: &Group, host: bool) -> Option<String> {
    let o = cx.options;
    let need_file = |p: &Path, what: &str| (!p.is_file()).then(|| format!("no {what} at {}", p.display()));
    let client = match group.protocol {
        Protocol::Dns => "dnsperf",
        Protocol::Resp => "redis-benchmark",
        Protocol::Http => "wrk",
    };
    if let Err(why) = cx.tools.get(client) {
        return Some(why);
    }
    if let (Protocol::Dns, Err(why)) = (group.protocol, &cx.zone) {
        return Some(why.clone());
    }
    if host {
        let plugin = match group.protocol {
            Protocol::Dns => &o.dns_plugin,
            Protocol::Resp => &o.resp_plugin,
            Protocol::Http => &o.http_plugin,
        };
        return need_file(&o.host, "host binary (cargo build --release -p host)")
            .or_else(|| need_file(plugin, "plugin (scripts/build-plugins.sh --rust-only)"));
    }
    match group.peer {
        Peer::Nsd => cx.tools.get("nsd").err(),
        Peer::Redis => cx.tools.get("redis-server").err(),
        Peer::Nginx => cx.tools.get("nginx").err(),
        Peer::WasmtimeServe => cx.wasmtime.as_ref().err().or(cx.hello.as_ref().err()).cloned(),
    }
}

async fn start_peer(cx: &Context<'_>, peer: Peer, dir: &Path) -> anyhow::Result<Server> {
    let port = servers::free_port()?;
    let workers = cx.options.workers;
    let tool = |name| cx.tools.get(name).map_err(anyhow::Error::msg);
    match peer {
        Peer::Nsd => {
            let zone = cx.zone.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            servers::nsd(tool("nsd")?, dir, &zone.path.canonicalize()?, &zone.origin, port, workers).await
        }
        Peer::Redis => servers::redis(tool("redis-server")?, dir, port).await,
        Peer::Nginx => servers::nginx(tool("nginx")?, dir, port, workers).await,
        Peer::WasmtimeServe => {
            let wasmtime = cx.wasmtime.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let hello = cx.hello.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            servers::wasmtime_serve(wasmtime, hello, port, workers).await
        }
    }
}

/// The host of `group`, on port 0 (it logs the ports it got).
async fn start_host(cx: &Context<'_>, group: &Group, dir: &Path) -> anyhow::Result<Server> {
    let o = cx.options;
    let any = crate::compare::loopback(0).to_string();
    match group.protocol {
        Protocol::Dns => {
            let zone = cx.zone.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut c = servers::host_command(&o.host, &o.dns_plugin, &cx.cache, dir, o.workers);
            // No amplification cap: NSD has none, and a 32-byte query may
            // have a 500-byte answer (the cap would drop it).
            c.args(["--udp", &any, "--tcp", &any, "--framing", "u16", "--max-amplification", "0"]);
            c.arg("--var").arg(format!("zone={}", zone.text));
            if group.reuse {
                c.args(["--instance-reuse", &REUSE.to_string()]);
            }
            let origin = zone.origin.clone();
            let ready = move |_, udp: Option<std::net::SocketAddr>| {
                let origin = origin.clone();
                async move { servers::dns_probe(udp.context("the host has no UDP address")?, origin).await }
            };
            servers::start_host("host (dns)", c, true, ready).await
        }
        Protocol::Resp => {
            // Redis serves from one thread: so does the host here.
            let mut c = servers::host_command(&o.host, &o.resp_plugin, &cx.cache, dir, 1);
            c.args(["--tcp", &any]);
            servers::start_host("host (resp)", c, false, |tcp, _| servers::resp_probe(tcp)).await
        }
        Protocol::Http => {
            let mut c = servers::host_command(&o.host, &o.http_plugin, &cx.cache, dir, o.workers);
            c.args(["--tcp", &any]);
            servers::start_host("host (http)", c, false, |tcp, _| servers::http_probe(tcp)).await
        }
    }
}
