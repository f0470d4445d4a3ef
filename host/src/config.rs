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
    #[arg(long, value_name = "ADDR", help_heading = "Operations")]
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
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Serve UDP only on ADDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub udp: Vec<SocketAddr>,

    /// Serve TCP only on ADDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub tcp: Vec<SocketAddr>,

    /// How TCP streams are cut into requests (`handler` world; a
    /// `connection-handler` plugin frames its own protocol).
    #[arg(long, value_enum, default_value_t = Framing::Lines)]
    pub framing: Framing,

    /// `handler` world over TCP: a fresh plugin instance per request, or
    /// one per connection serving all its frames.
    #[arg(long, value_enum, value_name = "PER", default_value_t = TcpIsolation::Request)]
    pub tcp_isolation: TcpIsolation,

    /// Longest one request may run in the plugin (e.g. 500ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,

    /// Most linear memory one plugin instance may use (e.g. 64MiB).
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_MEMORY, value_parser = parse_bytes)]
    pub max_memory: usize,

    /// Largest request payload; a larger datagram is dropped, a larger TCP
    /// frame closes its connection.
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_REQUEST, value_parser = parse_nonzero_bytes)]
    pub max_request: usize,

    /// Largest reply payload; a larger reply is not sent. UDP replies are
    /// also capped at 65,507 bytes.
    #[arg(long, value_name = "BYTES", default_value = DEFAULT_MAX_REPLY, value_parser = parse_bytes)]
    pub max_reply: usize,

    /// Most TCP connections open at once, over every TCP address of the
    /// host together; further ones wait in the kernel's backlog.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Close a TCP connection that completes no frame (connection world:
    /// sends nothing) for this long.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Cap a UDP reply at N times the request's size on the wire, IP and UDP
    /// headers included (0 turns the cap off). A UDP source address can be
    /// spoofed; this keeps the host from being a traffic amplifier.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_AMPLIFICATION)]
    pub max_amplification: u32,

    /// On SIGTERM or Ctrl-C, let in-flight requests finish for this long.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Give each request N units of fuel (deterministic CPU limit); off by
    /// default because metering costs speed.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,

    /// After a reload, connections that keep the old version (connection
    /// world, `--tcp-isolation connection`) are closed once it has been
    /// replaced for this long, between two calls; 0 closes them at once.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_RELOAD_GRACE, value_parser = parse_duration)]
    pub reload_grace: Duration,

    /// Plugin instances alive at once; sizes the pooling allocator. With a
    /// plugin that keeps an instance per connection, also the most
    /// connections served at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_INSTANCES)]
    pub max_instances: u32,

    /// Serve up to N requests with one plugin instance before replacing it.
    /// 1 (the default) gives every request a fresh instance, so nothing a
    /// request leaves in memory is seen by the next one. Larger values are
    /// faster but let one request's state (globals, heap) reach the next; an
    /// instance is still never shared by two requests at once and is dropped
    /// after any trap or timeout.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
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
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes, help_heading = "State and configuration")]
    pub kv_max_value: usize,

    /// Most bytes (keys and values) one bucket may hold.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes, help_heading = "State and configuration")]
    pub kv_max_bucket_bytes: usize,

    /// Key-value operations one plugin call may make (a batch counts one
    /// per key).
    #[arg(long, value_name = "N", default_value_t = crate::kv::DEFAULT_MAX_OPS, help_heading = "State and configuration")]
    pub kv_max_ops: u32,

    /// A `wasi:config` variable for the plugin (repeat for more; the last
    /// value of a name wins).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var, help_heading = "State and configuration")]
    pub vars: Vec<(String, String)>,

    /// Worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
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

    /// The `wasi:config` variables, sorted by name, the last of each name.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in &self.vars {
            map.insert(k.clone(), v.clone());
        }
        map.into_iter().collect()
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 500ms, 2s, 1m)"))
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
}
