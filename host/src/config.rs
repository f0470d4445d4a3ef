//! Command-line configuration: every flag, its default, and why.
//!
//! The binary parses [`Config`] with clap and hands it to [`crate::run`];
//! tests build the same struct with [`Config::parse_from`] so they exercise
//! exactly the flags a user types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use crate::framing::Framing;

/// The address served when no `--listen`, `--udp` or `--tcp` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// How long one request may run in the plugin before it is cut off.
pub const DEFAULT_TIMEOUT: &str = "500ms";
/// Linear memory one plugin instance may grow to. The Python and JavaScript
/// plugins here run in under 48 MiB; Rust and C ones in a few MiB.
pub const DEFAULT_MAX_MEMORY: &str = "64MiB";
/// Largest request payload (a datagram, or one TCP frame).
pub const DEFAULT_MAX_REQUEST: &str = "1MiB";
/// Largest reply payload a plugin may return.
pub const DEFAULT_MAX_REPLY: &str = "1MiB";
/// Largest UDP payload over IPv4 (65,535 - 8 UDP - 20 IP header bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Open TCP connections at once; further ones wait in the kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A connection with no complete frame for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: &str = "30s";
/// Reply bytes per request byte to an unvalidated (UDP) peer, counted on the
/// wire (payload + IP/UDP headers). 3 is QUIC's anti-amplification limit
/// (RFC 9000, section 8): enough for real protocols, too little to make the
/// host a useful reflector against a spoofed source address.
pub const DEFAULT_MAX_AMPLIFICATION: u32 = 3;
/// How long in-flight requests may take to finish after a shutdown signal.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "5s";
/// Plugin instances alive at once (sizes the pooling allocator).
pub const DEFAULT_MAX_INSTANCES: u32 = 1_000;
/// How long a connection may keep a plugin version after a reload replaced
/// it. Envoy drains listeners for the same 10 minutes by default: long
/// enough for a client to finish what it is doing, short enough that a
/// rollout is complete within minutes.
pub const DEFAULT_RELOAD_GRACE: &str = "10m";

/// The compile cache's size bound (`--cache-max-size`).
pub const DEFAULT_CACHE_MAX_SIZE: &str = "1GiB";

/// Largest `--max-memory`: a 32-bit WebAssembly memory addresses at most
/// 4 GiB, and the engine reserves that much address space per memory; a
/// larger cap would make the engine refuse to start.
pub const MAX_MEMORY_LIMIT: u64 = 4 << 30;
/// Smallest `--max-memory`: one WebAssembly page.
pub const MIN_MAX_MEMORY: u64 = 64 << 10;
/// Most `--max-instances`. Each instance slot reserves 8 GiB of address
/// space (two 4 GiB memories, whatever `--max-memory` is), so 10,800 slots
/// take 84 TiB of the 128 TiB a Linux process can address; on a 48-bit
/// machine the engine failed to start above 10,873. (10,000 connections
/// with an instance each, plus a little room, must fit.)
pub const MAX_INSTANCES_LIMIT: u32 = 10_800;
/// Most `--workers`. Each is a thread (with a 5 MiB stack) and a UDP socket
/// per address; past the CPUs it only adds switching, and at tens of
/// thousands the system refuses the threads and the runtime aborts.
pub const MAX_WORKERS: usize = 1_024;
/// Most `--max-connections`: each connection is a file descriptor, and
/// Linux allows a process at most 2^30 (`fs.nr_open`'s ceiling).
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 30;
/// Longest duration any flag takes (100 years of 365.25 days, as
/// `100years` parses). Deadlines are computed by adding to the current
/// time; 100 years is "never" and cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human text, one event per line.
    #[default]
    Text,
    /// One JSON object per line, with fields for service, plugin, version
    /// and peer.
    Json,
}

/// How many plugin instances serve the frames of one TCP connection (the
/// `handler` world; a `connection-handler` plugin always has one instance
/// per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcpIsolation {
    /// A fresh instance for every frame (or `--instance-reuse`): nothing a
    /// request leaves in memory reaches the next one.
    Request,
    /// One fresh instance per connection, serving all its frames and
    /// dropped when it closes: state is shared by the frames of one
    /// connection only. Faster for pipelined traffic; holds an instance per
    /// open connection.
    Connection,
}

/// `host`: serve a WebAssembly component plugin over UDP and TCP.
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(name = "host", version, about, long_about = None)]
pub struct Config {
    /// The plugin: a WebAssembly component (`.wasm`) implementing the world
    /// `sockets:plugin/handler` (0.1.0 or 0.2.0) or
    /// `sockets:plugin/connection-handler@0.2.0` (TCP only).
    #[arg(long, value_name = "PATH", required_unless_present = "config", conflicts_with = "config")]
    pub plugin: Option<PathBuf>,

    /// Serve the services a services file describes (TOML; see the README,
    /// "Operating it") instead of one `--plugin`. SIGHUP and a change to
    /// the file reload it.
    #[arg(long, value_name = "FILE", help_heading = "Operations")]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics (`/metrics`), health (`/healthz`,
    /// `/readyz`) and status (`/status`, JSON) over HTTP on ADDR.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, help_heading = "Operations")]
    pub metrics: Option<SocketAddr>,

    /// Log lines as human text or as one JSON object per line.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, help_heading = "Operations")]
    pub log_format: LogFormat,

    /// Bind with SO_REUSEPORT so that a second host can serve the same
    /// addresses: start the new one, wait for it to be ready, then SIGTERM
    /// the old one (a zero-downtime upgrade of the host binary).
    #[arg(long, help_heading = "Operations")]
    pub reuse_port: bool,

    /// After binding, run as this user (USER or USER:GROUP, names or
    /// numbers), e.g. to serve port 53 without staying root.
    #[arg(long, value_name = "USER[:GROUP]", help_heading = "Operations")]
    pub user: Option<String>,

    /// Requests per second each UDP source address may make (a burst of as
    /// many is allowed); datagrams over it are dropped, uncounted by the
    /// plugin. 0 turns the limit off.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Operations")]
    pub udp_source_rate: u32,

    /// Most bytes the compile cache keeps; the least recently used
    /// plugins are evicted beyond it.
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_CACHE_MAX_SIZE, value_parser = parse_bytes, help_heading = "Operations")]
    pub cache_max_size: usize,

    /// Serve UDP and TCP on ADDR (repeatable). Port 0 picks a free port; the
    /// chosen address is logged as `listening udp|tcp ADDR`.
    /// [default: 127.0.0.1:7000 when no --listen, --udp or --tcp is given]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub listen: Vec<SocketAddr>,

    /// Serve UDP only on ADDR (repeatable).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub udp: Vec<SocketAddr>,

    /// Serve TCP only on ADDR (repeatable).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub tcp: Vec<SocketAddr>,

    /// How TCP streams are cut into requests (`handler` world; a
    /// `connection-handler` plugin frames its own protocol).
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    pub framing: Framing,

    /// `handler` world over TCP: a fresh plugin instance per request, or
    /// one per connection serving all its frames.
    #[arg(long, value_enum, value_name = "PER", default_value_t = TcpIsolation::Request)]
    pub tcp_isolation: TcpIsolation,

    /// Longest one request may run in the plugin (e.g. 500ms, 2s; more
    /// than 0, counted in steps of 5ms).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Longest a plugin's `wizer-initialize` may run when the plugin is
    /// loaded (at start and at each reload).
    #[arg(long, value_name = "DURATION", default_value = crate::plugin::init::DEFAULT_INIT_TIMEOUT, value_parser = parse_init_timeout)]
    pub init_timeout: Duration,

    /// Most linear memory one plugin instance may use (e.g. 64MiB; from
    /// 64KiB to 4GiB).
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_MEMORY, value_parser = parse_max_memory)]
    pub max_memory: usize,

    /// Largest request payload; a larger datagram is dropped, a larger TCP
    /// frame closes its connection.
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_REQUEST, value_parser = parse_nonzero_bytes)]
    pub max_request: usize,

    /// Largest reply payload; a larger reply is not sent. UDP replies are
    /// also capped at 65,507 bytes.
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_REPLY, value_parser = parse_nonzero_bytes)]
    pub max_reply: usize,

    /// Most TCP connections open at once, over every TCP address of the
    /// host together; further ones wait in the kernel's backlog.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_max_connections)]
    pub max_connections: usize,

    /// Close a TCP connection that completes no frame (connection world:
    /// sends nothing) for this long (more than 0).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_idle_timeout)]
    pub idle_timeout: Duration,

    /// Cap a UDP reply at N times the request's size on the wire, IP and UDP
    /// headers included (0 turns the cap off). A UDP source address can be
    /// spoofed; this keeps the host from being a traffic amplifier.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_AMPLIFICATION)]
    pub max_amplification: u32,

    /// On SIGTERM or Ctrl-C, let in-flight requests finish for this long;
    /// 0 exits at once, abandoning them.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Give each request N units of fuel (deterministic CPU limit); off by
    /// default because metering costs speed.
    #[arg(long, value_name = "N", value_parser = parse_fuel)]
    pub fuel: Option<u64>,

    /// After a reload, connections that keep the old version (connection
    /// world, `--tcp-isolation connection`) are closed once it has been
    /// replaced for this long, between two calls; 0 closes them at once.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_RELOAD_GRACE, value_parser = parse_duration)]
    pub reload_grace: Duration,

    /// Plugin instances alive at once; sizes the pooling allocator. With a
    /// plugin that keeps an instance per connection, also the most
    /// connections served at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_INSTANCES, value_parser = parse_max_instances)]
    pub max_instances: u32,

    /// Serve up to N requests with one plugin instance before replacing it.
    /// 1 (the default) gives every request a fresh instance, so nothing a
    /// request leaves in memory is seen by the next one. Larger values are
    /// faster but let one request's state (globals, heap) reach the next; an
    /// instance is still never shared by two requests at once and is dropped
    /// after any trap or timeout.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_instance_reuse)]
    pub instance_reuse: u64,

    /// Where compiled plugins are cached, keyed by the sha256 of the file
    /// [default: $XDG_CACHE_HOME/wasm-sockets-host, else ~/.cache/wasm-sockets-host].
    /// Delete the directory to clear the cache.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins on every load instead of using the compile cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Do not watch the plugin file for changes (SIGHUP still reloads it).
    #[arg(long)]
    pub no_watch: bool,

    /// The service's name: its key-value namespace, so two services never
    /// see each other's keys, and hosts serving one service on one Redis
    /// share them [default: the plugin file's stem, e.g. `counter` for
    /// counter.wasm].
    #[arg(long, value_name = "NAME", value_parser = parse_name, help_heading = "State and configuration")]
    pub name: Option<String>,

    /// Where the embedded key-value store keeps its data (`kv.sqlite3`)
    /// [default: $XDG_DATA_HOME/wasm-sockets-host, else
    /// ~/.local/share/wasm-sockets-host].
    #[arg(long, value_name = "DIR", help_heading = "State and configuration")]
    pub data_dir: Option<PathBuf>,

    /// Keep the key-value buckets on this Redis server instead of the
    /// embedded store, e.g. redis://127.0.0.1:6379/0, so that several
    /// hosts share them.
    #[arg(long, value_name = "URL", value_parser = parse_kv_url, help_heading = "State and configuration")]
    pub kv: Option<String>,

    /// A bucket plugins may open (repeat for more); any other is
    /// `access-denied` [default: default].
    #[arg(long = "kv-bucket", value_name = "NAME", value_parser = parse_name, help_heading = "State and configuration")]
    pub kv_buckets: Vec<String>,

    /// Longest key-value key.
    #[arg(long, value_name = "BYTES", default_value = "256", value_parser = parse_nonzero_bytes, help_heading = "State and configuration")]
    pub kv_max_key: usize,

    /// Largest key-value value.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_nonzero_bytes, help_heading = "State and configuration")]
    pub kv_max_value: usize,

    /// Most bytes (keys and values) one bucket may hold.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_nonzero_bytes, help_heading = "State and configuration")]
    pub kv_max_bucket_bytes: usize,

    /// Key-value operations one plugin call may make (a batch counts one
    /// per key).
    #[arg(long, value_name = "N", default_value_t = crate::kv::DEFAULT_MAX_OPS, value_parser = parse_kv_max_ops, help_heading = "State and configuration")]
    pub kv_max_ops: u32,

    /// A `wasi:config` variable for the plugin (repeat for more; the last
    /// value of a name wins).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var, help_heading = "State and configuration")]
    pub vars: Vec<(String, String)>,

    /// A `wasi:config` variable whose value is the text of a file (UTF-8,
    /// at most 1 MiB), read at each load of the plugin: a SIGHUP picks up
    /// a changed file as a new version (repeat for more).
    #[arg(long = "var-file", value_name = "KEY=PATH", value_parser = parse_var_file, help_heading = "State and configuration")]
    pub var_files: Vec<(String, PathBuf)>,

    /// Worker threads, 1 to 1024 [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,
}

impl Config {
    /// The plugin file (`--plugin`, or a service's `plugin` in the
    /// services file).
    pub fn plugin_path(&self) -> anyhow::Result<&std::path::Path> {
        self.plugin.as_deref().ok_or_else(|| anyhow::anyhow!("no plugin: give --plugin PATH or --config FILE"))
    }

    /// The (transport, address) pairs to bind, in the order given, with the
    /// default address when none was given.
    pub fn bind_list(&self) -> Vec<(crate::request::Transport, SocketAddr)> {
        use crate::request::Transport::{Tcp, Udp};
        let mut out = Vec::new();
        let default: Vec<SocketAddr>;
        let listen = if self.listen.is_empty() && self.udp.is_empty() && self.tcp.is_empty() {
            default = vec![DEFAULT_LISTEN.parse().expect("valid default address")];
            &default
        } else {
            &self.listen
        };
        for addr in listen {
            out.push((Udp, *addr));
            out.push((Tcp, *addr));
        }
        out.extend(self.udp.iter().map(|a| (Udp, *a)));
        out.extend(self.tcp.iter().map(|a| (Tcp, *a)));
        out
    }

    /// Where the key-value buckets live: `--kv`, else the embedded store in
    /// the data directory. `None` if neither `--data-dir` nor a home
    /// directory gives one.
    pub fn kv_backend(&self) -> Option<crate::kv::Backend> {
        use crate::kv::Backend;
        match &self.kv {
            Some(url) => Some(Backend::Redis(url.clone())),
            None => self.data_dir.clone().or_else(crate::kv::default_data_dir).map(Backend::Embedded),
        }
    }

    /// The buckets plugins may open.
    pub fn kv_buckets(&self) -> Vec<String> {
        if self.kv_buckets.is_empty() { vec![crate::kv::DEFAULT_BUCKET.to_string()] } else { self.kv_buckets.clone() }
    }

    /// The `--var-file`s, the last of each name.
    pub fn var_files(&self) -> Vec<(String, PathBuf)> {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in &self.var_files {
            map.insert(k.clone(), v.clone());
        }
        map.into_iter().collect()
    }

    /// The `wasi:config` variables, sorted by name, the last of each name.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in &self.vars {
            map.insert(k.clone(), v.clone());
        }
        map.into_iter().collect()
    }

    /// Check what no single flag's parser can: flags that would have no
    /// effect together, or that would start a host unable to serve them.
    /// The error is one line naming the flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::request::Transport::Tcp;
        let list = self.bind_list();
        if !list.iter().any(|(t, _)| *t == Tcp) {
            use clap::ValueEnum as _;
            let name =
                |v: Option<clap::builder::PossibleValue>| v.map(|v| v.get_name().to_string()).unwrap_or_default();
            let unused = if self.framing != Framing::Lines {
                Some(("--framing", name(self.framing.to_possible_value())))
            } else if self.tcp_isolation != TcpIsolation::Request {
                Some(("--tcp-isolation", name(self.tcp_isolation.to_possible_value())))
            } else {
                None
            };
            if let Some((flag, value)) = unused {
                anyhow::bail!(
                    "{flag} {value} has no effect: only --udp addresses are served; add --tcp ADDR or --listen ADDR, \
                     or leave {flag} out"
                );
            }
        }
        if let Some((key, _)) = self.var_files.iter().find(|(k, _)| self.vars.iter().any(|(v, _)| v == k)) {
            anyhow::bail!("variable {key} is given by both --var and --var-file: give it one value");
        }
        let mut seen = std::collections::HashSet::new();
        for (transport, addr) in &list {
            // Port 0 picks a free port each time: never the same address.
            if addr.port() != 0 && !seen.insert((*transport, *addr)) {
                anyhow::bail!(
                    "{transport} {addr} is given twice (--listen ADDR serves udp and tcp on ADDR, --udp and --tcp \
                     one each)"
                );
            }
        }
        // With --reuse-port the two would silently share the port.
        if let Some(metrics) = self.metrics
            && metrics.port() != 0
            && list.iter().any(|(t, a)| *t == crate::request::Transport::Tcp && *a == metrics)
        {
            anyhow::bail!(
                "--metrics {metrics} is also a TCP address the service serves: give the admin endpoint its own"
            );
        }
        Ok(())
    }

    /// The compile cache directory, or `None` when caching is off.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(default_cache_dir)
    }
}

/// The default compile cache: `$XDG_CACHE_HOME/wasm-sockets-host` or
/// `~/.cache/wasm-sockets-host`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasm-sockets-host"))
}

fn parse_name(s: &str) -> Result<String, String> {
    crate::kv::check_name("name", s).map(|()| s.to_string())
}

fn parse_kv_url(s: &str) -> Result<String, String> {
    let scheme = s.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "redis+unix" | "unix") => Ok(s.to_string()),
        _ => Err("not a Redis URL: use redis://HOST[:PORT][/DB] (leave --kv out for the embedded store)".into()),
    }
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE, e.g. --var greeting=hello".into()),
    }
}

/// A socket address, with the syntax shown when it is not one: a port
/// alone (`7000`) and a host name (`localhost:7000`) are what people type.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::IpAddr;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let examples = |port: &str| {
        format!(
            "{port} on this machine only is 127.0.0.1:{port} or [::1]:{port}, on every address 0.0.0.0:{port} or [::]:{port}"
        )
    };
    if s.parse::<u16>().is_ok() {
        return Err(format!("a port alone is not an address: {}", examples(s)));
    }
    let split = s.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok());
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => return Err(format!("no port: write e.g. {ip}:7000")),
        // `::1:7000` is an IPv6 address, and most likely meant as ::1 port 7000.
        Ok(IpAddr::V6(_)) => {
            let meant = match split {
                Some((host, port)) if host.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{host}]:{port}"),
                _ => format!("[{s}]:7000"),
            };
            return Err(format!("an IPv6 address goes in brackets, before the port: e.g. {meant}"));
        }
        Err(_) => {}
    }
    let is_name = |h: &str| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    match split {
        Some((host, port)) if is_name(host) => {
            Err(format!("{host} is a name, and names are not resolved: give an IP address; port {}", examples(port)))
        }
        _ => Err(format!("not an address: give an IP address and a port; {}", examples("7000"))),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 500ms, 2s, 1m)"))?;
    if d > MAX_DURATION {
        return Err("at most 100years".into());
    }
    Ok(d)
}

/// A duration for which 0 means nothing can happen, `why` says what.
fn parse_positive_duration(s: &str, why: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("must be more than 0: {why}")),
        d => Ok(d),
    }
}

fn parse_init_timeout(s: &str) -> Result<Duration, String> {
    parse_positive_duration(s, "every plugin's wizer-initialize would be cut off before it starts")
}

fn parse_var_file(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((k, p)) if !k.is_empty() && !p.is_empty() => Ok((k.to_string(), PathBuf::from(p))),
        _ => Err("expected KEY=PATH, e.g. --var-file zone=example.zone".into()),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_positive_duration(s, "every request would be cut off before it starts")
}

fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    parse_positive_duration(s, "every connection would be closed as soon as it opens")
}

/// A whole number from `min` to `max`; `below` and `above` say why a value
/// outside is refused.
fn parse_count<T>(s: &str, min: T, max: T, below: &str, above: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let n: T = s.parse().map_err(|e| format!("not a whole number ({e})"))?;
    if n < min {
        return Err(format!("must be at least {min}: {below}"));
    }
    if n > max {
        return Err(format!("at most {max}: {above}"));
    }
    Ok(n)
}

fn parse_workers(s: &str) -> Result<usize, String> {
    parse_count(
        s,
        1,
        MAX_WORKERS,
        "no thread would serve",
        "each worker is a thread and a UDP socket per address; more than the CPUs only adds switching",
    )
}

fn parse_max_instances(s: &str) -> Result<u32, String> {
    parse_count(
        s,
        1,
        MAX_INSTANCES_LIMIT,
        "no plugin instance could ever run",
        "each instance slot reserves 8GiB of address space, and a process has 128TiB",
    )
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    parse_count(
        s,
        1,
        MAX_CONNECTIONS_LIMIT,
        "no TCP connection could be served (to serve UDP only, use --udp)",
        "more connections than Linux lets a process open",
    )
}

fn parse_fuel(s: &str) -> Result<u64, String> {
    parse_count(s, 1, u64::MAX, "every request would run out of fuel at once (leave --fuel out for no fuel limit)", "")
}

fn parse_instance_reuse(s: &str) -> Result<u64, String> {
    parse_count(s, 1, u64::MAX, "1 gives every request a fresh instance", "")
}

fn parse_kv_max_ops(s: &str) -> Result<u32, String> {
    parse_count(s, 1, u32::MAX, "every key-value call would be refused", "")
}

fn parse_max_memory(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    let size = bytesize::ByteSize(n as u64);
    if (n as u64) < MIN_MAX_MEMORY {
        return Err(format!("{size} is less than one WebAssembly page (64KiB): no plugin could start"));
    }
    if n as u64 > MAX_MEMORY_LIMIT {
        return Err(format!(
            "{size} is over the limit of 4GiB: a 32-bit WebAssembly memory cannot grow past it, and the engine \
             reserves no more per memory"
        ));
    }
    Ok(n)
}

fn parse_nonzero_bytes(s: &str) -> Result<usize, String> {
    match parse_bytes(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => Ok(n),
    }
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.parse().map_err(|e| format!("{e} (try e.g. 65536, 64KiB, 16MiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s} is too large"))
}

/// `host --plugin p.wasm ARGS`, for unit tests.
#[cfg(test)]
pub(crate) fn test_config(args: &[&str]) -> Config {
    Config::try_parse_from(["host", "--plugin", "p.wasm"].iter().chain(args)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_config as parse;

    #[test]
    fn defaults_serve_both_transports_on_7000() {
        let c = parse(&[]);
        let list = c.bind_list();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|(_, a)| a.to_string() == DEFAULT_LISTEN));
        assert_eq!(c.framing, Framing::Lines);
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.max_memory, 64 << 20);
    }

    #[test]
    fn explicit_addresses_replace_the_default() {
        let c = parse(&["--udp", "127.0.0.1:0", "--tcp", "[::1]:0"]);
        let list = c.bind_list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, crate::request::Transport::Udp);
        assert_eq!(list[1].1.to_string(), "[::1]:0");
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        let c = parse(&["--max-memory", "64MiB", "--max-request", "512", "--timeout", "2s"]);
        assert_eq!(c.max_memory, 64 << 20);
        assert_eq!(c.max_request, 512);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert!(Config::try_parse_from(["host", "--plugin", "p", "--timeout", "soon"]).is_err());
        assert!(Config::try_parse_from(["host", "--plugin", "p", "--max-request", "0"]).is_err());
    }

    #[test]
    fn state_flags_parse_and_default() {
        let c = parse(&[]);
        assert_eq!(c.kv_buckets(), ["default"]);
        assert_eq!((c.kv_max_key, c.kv_max_value, c.kv_max_ops), (256, 1 << 20, 1000));
        let c = parse(&["--var", "a=1", "--var", "b=x=y", "--var", "a=2", "--var", "empty="]);
        assert_eq!(c.vars(), [("a".into(), "2".into()), ("b".into(), "x=y".into()), ("empty".into(), String::new())]);
        let c = parse(&["--kv", "redis://127.0.0.1:6379/0", "--kv-bucket", "one", "--kv-bucket", "two"]);
        assert_eq!(c.kv_backend(), Some(crate::kv::Backend::Redis("redis://127.0.0.1:6379/0".into())));
        assert_eq!(c.kv_buckets(), ["one", "two"]);
        for bad in [["--var", "=v"], ["--var", "novalue"], ["--kv", "http://x"], ["--kv-bucket", "a/b"], ["--name", ""]]
        {
            assert!(Config::try_parse_from(["host", "--plugin", "p"].iter().chain(&bad)).is_err(), "{bad:?}");
        }
    }

    /// The error `args` give, as `host` prints it (clap's first line).
    fn refused(args: &[&str]) -> String {
        let err = Config::try_parse_from(["host", "--plugin", "p"].iter().chain(args)).unwrap_err();
        err.to_string().lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn values_that_cannot_serve_are_refused_naming_the_flag() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["--workers", "0"], &["--workers", "at least 1"]),
            (&["--workers", "5000"], &["--workers", "at most 1024"]),
            (&["--max-instances", "0"], &["--max-instances", "at least 1"]),
            (&["--max-instances", "10801"], &["--max-instances", "at most 10800", "8GiB of address space"]),
            (&["--max-connections", "0"], &["--max-connections", "at least 1"]),
            (&["--max-connections", "18446744073709551615"], &["--max-connections", "at most 1073741824"]),
            (&["--timeout", "0s"], &["--timeout", "more than 0"]),
            (&["--idle-timeout", "0ms"], &["--idle-timeout", "more than 0"]),
            (&["--timeout", "1000years"], &["--timeout", "at most 100years"]),
            (&["--max-memory", "8GiB"], &["--max-memory", "8.0 GiB", "limit of 4GiB"]),
            (&["--max-memory", "1KiB"], &["--max-memory", "64KiB"]),
            (&["--fuel", "0"], &["--fuel", "at least 1"]),
            (&["--max-reply", "0"], &["--max-reply", "at least 1 byte"]),
            (&["--kv-max-ops", "0"], &["--kv-max-ops", "at least 1"]),
            (&["--kv-max-value", "0"], &["--kv-max-value"]),
            (&["--kv-max-bucket-bytes", "0"], &["--kv-max-bucket-bytes"]),
            (&["--instance-reuse", "0"], &["--instance-reuse", "at least 1"]),
            (&["--workers", "two"], &["--workers", "not a whole number"]),
        ];
        for (args, needles) in cases {
            let err = refused(args);
            for needle in *needles {
                assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
            }
            assert!(!err.contains("0x"), "{args:?}: {err}");
        }
        // The documented zeros and the extremes that do serve.
        let c = parse(&["--reload-grace", "0s", "--drain-timeout", "0s", "--max-amplification", "0"]);
        assert_eq!((c.reload_grace, c.drain_timeout), (Duration::ZERO, Duration::ZERO));
        let c = parse(&["--max-memory", "4GiB", "--max-instances", "10000", "--workers", "1024", "--timeout", "1ms"]);
        assert_eq!((c.max_memory, c.max_instances, c.workers), (4 << 30, 10_000, Some(1024)));
        assert_eq!(parse(&["--max-memory", "64KiB"]).max_memory, 64 << 10);
        assert_eq!(parse(&["--timeout", "100years"]).timeout, MAX_DURATION);
    }

    #[test]
    fn addresses_get_the_syntax_they_need() {
        let cases = [
            ("7000", "a port alone is not an address: 7000 on this machine only is 127.0.0.1:7000 or [::1]:7000"),
            ("localhost:7000", "localhost is a name, and names are not resolved"),
            ("10.0.0.1", "no port: write e.g. 10.0.0.1:7000"),
            ("::1:7000", "an IPv6 address goes in brackets, before the port: e.g. [::1]:7000"),
            ("::1", "e.g. [::1]:7000"),
            ("fe80::1", "e.g. [fe80::1]:7000"),
            ("nowhere", "not an address: give an IP address and a port; 7000 on this machine only is 127.0.0.1:7000"),
            ("*:53", "not an address"),
        ];
        for (addr, want) in cases {
            for flag in ["--listen", "--udp", "--tcp"] {
                let err = refused(&[flag, addr]);
                assert!(err.contains(want) && err.contains(flag), "{flag} {addr}: {err}");
            }
        }
        assert!(Config::try_parse_from(["host", "--config", "h.toml", "--metrics", "9090"]).is_err());
        let c = parse(&["--listen", "[::1]:7000", "--udp", "0.0.0.0:53", "--tcp", "127.0.0.1:0"]);
        assert_eq!(c.bind_list().len(), 4);
    }

    #[test]
    fn flags_that_would_do_nothing_together_are_refused() {
        let err = |args: &[&str]| parse(args).validate().unwrap_err().to_string();
        let e = err(&["--udp", "127.0.0.1:0", "--framing", "u16"]);
        assert!(e.starts_with("--framing u16 has no effect: only --udp addresses are served"), "{e}");
        let e = err(&["--udp", "127.0.0.1:0", "--tcp-isolation", "connection"]);
        assert!(e.starts_with("--tcp-isolation connection has no effect"), "{e}");
        let e = err(&["--listen", "127.0.0.1:7000", "--tcp", "127.0.0.1:7000"]);
        assert!(e.contains("tcp 127.0.0.1:7000 is given twice"), "{e}");
        let e = err(&["--udp", "[::1]:53", "--udp", "[::1]:53"]);
        assert!(e.contains("udp [::1]:53 is given twice"), "{e}");
        for ok in [
            &["--udp", "127.0.0.1:0", "--udp", "127.0.0.1:0"][..],
            &["--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--framing", "u16"],
            &["--framing", "u32"],
            &["--udp", "127.0.0.1:7000", "--tcp", "127.0.0.1:7000"],
            &["--udp", "127.0.0.1:0"],
        ] {
            parse(ok).validate().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }
}
