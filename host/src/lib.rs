//! `host`: serve WebAssembly component plugins over UDP and TCP.
//!
//! The data path, one module per stage:
//!
//! - [`request`]: what a request is (a leaf module every stage uses).
//! - `listener`: the UDP sockets and TCP listeners the host owns, and their
//!   receive and accept loops (`listener/udp.rs`, `listener/tcp.rs`).
//! - [`framing`]: TCP bytes to frames and back (pure code, no I/O).
//! - [`dispatch`]: picks the current plugin version, applies the limits,
//!   counts and logs the outcome.
//! - [`plugin`]: the wasmtime engine ([`plugin::engine`]), loading and
//!   caching compiled plugins ([`plugin::loader`]), and sandboxed instances.
//! - [`reload`]: hot reload on a file change or SIGHUP.
//! - [`config`]: every command-line flag and default.
//! - [`stats`]: counters of what happened.
//! - [`logline`]: the log lines scripts read (`listening ...`, `stats ...`).
//! - `ratelimit`: log lines a peer can trigger are rate-limited per call site,
//!   and a plugin's own lines per plugin version.
//! - [`systemd`]: sockets passed by socket activation, and `sd_notify`.
//!
//! [`run`] ties them together; the `host` binary only parses arguments and
//! calls it, and the tests call it the same way.
#![deny(missing_docs)]

pub mod config;
pub mod dispatch;
pub mod framing;
pub mod kv;
mod listener;
pub mod logline;
pub mod plugin;
mod ratelimit;
pub mod reload;
pub mod request;
pub mod stats;
pub mod status;
pub mod systemd;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use request::{Request, Transport};
pub use stats::{Snapshot, Stats};

use dispatch::Dispatcher;
use listener::{Bound, ListenerContext};
use plugin::admission::Admission;
use plugin::engine::{EngineLimits, EpochTicker, new_engine};
use plugin::loader::Loader;
use reload::{ReloadHandle, Reloader};

/// A server with its plugin loaded and its sockets bound, not yet serving.
pub struct Server {
    config: Config,
    bound: Vec<Bound>,
    dispatcher: Arc<Dispatcher>,
    reloader: Reloader,
    _ticker: EpochTicker,
    stats: Arc<Stats>,
}

impl Server {
    /// Load the plugin and bind every address. Fails, with a message naming
    /// the file or address, if either cannot be done.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        // Bind first: an address in use is reported at once, not after a
        // plugin has compiled for seconds. Until serving starts, TCP is not
        // listening (connections are refused) and datagrams wait in the
        // kernel's queue.
        let mut bound = Vec::new();
        let workers = config.workers.unwrap_or_else(default_workers);
        for (transport, addr) in config.bind_list() {
            let b = listener::bind(transport, addr, workers, config.reuse_port)?;
            tracing::info!("bound {transport} {}; serving once the plugin is loaded", b.local_addr());
            bound.push(b);
        }
        systemd::warn_unclaimed();
        let stats = Arc::new(Stats::default());
        let limits = EngineLimits {
            max_memory: config.max_memory,
            max_instances: config.max_instances,
            fuel: config.fuel.is_some(),
        };
        let engine = new_engine(limits)?;
        let ticker = EpochTicker::start(&engine)?;
        let services = Arc::new(open_services(&config, stats.clone()).await?);
        let loader =
            Arc::new(Loader::new(engine, Admission::new(&limits), config.cache_dir(), stats.clone(), services)?);
        let path = config.plugin_path()?.to_path_buf();
        let plugin = loader.load(&path, &dispatch::call_limits(&config)).await?;
        let bound = fit_to_world(bound, &config, &plugin)?;
        let dispatcher = Arc::new(Dispatcher::new(plugin, &config, stats.clone()));
        let reloader = Reloader::new(path, loader, dispatcher.clone(), stats.clone());
        Ok(Server { config, bound, dispatcher, reloader, _ticker: ticker, stats })
    }

    /// The bound addresses, with any port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.bound.iter().map(|b| (b.transport(), b.local_addr())).collect()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// A handle that reloads the plugin file, as SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reloader.handle()
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight
    /// requests finish for up to `--drain-timeout`, and return the counters.
    ///
    /// While serving, the plugin is reloaded when its file changes (unless
    /// `--no-watch`) and on SIGHUP, and SIGUSR1 logs the counters.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Snapshot> {
        let Server { config, bound, dispatcher, reloader, stats, .. } = self;
        let token = CancellationToken::new();
        // Installed here, before `ready` is logged: a SIGUSR1 that arrives
        // before the handler exists would kill the process.
        let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .map_err(|e| anyhow::anyhow!("cannot install a SIGUSR1 handler: {e}"))?;
        let reload_task = reloader.start(!config.no_watch, token.clone())?;
        let reload_task = tokio::spawn(reload_task);
        let stats_task = tokio::spawn(dump_stats_on_sigusr1(usr1, stats.clone(), token.clone()));
        let expiry_task = tokio::spawn(expire_idle_instances(dispatcher.clone(), config.instance_reuse, token.clone()));
        let tracker = TaskTracker::new();
        let ctx = Arc::new(ListenerContext::new(&config, dispatcher.clone(), tracker.clone()));
        for b in bound {
            // `listen` can still fail here: another socket with
            // SO_REUSEADDR may have bound the port, and listened, while the
            // plugin loaded. Stop everything already started, then say so.
            if let Err(e) = b.serve(&ctx, token.clone()) {
                token.cancel();
                tracker.close();
                tracker.wait().await;
                return Err(e);
            }
        }
        let info = dispatcher.versions().current().plugin().info().clone();
        tracing::info!("ready: serving plugin {} version {}", info.name, info.version);
        systemd::notify_ready();
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests for up to {:?}", config.drain_timeout);
        systemd::notify_stopping();
        token.cancel();
        tracker.close();
        listener::drain(&ctx, &tracker, config.drain_timeout).await;
        // The reload task ends at `token`, abandoning a compile in progress;
        // aborting it too means no reload can hold up the exit.
        reload_task.abort();
        let _ = tokio::join!(reload_task, stats_task, expiry_task);
        let snapshot = stats.snapshot();
        tracing::info!("stats {snapshot}");
        Ok(snapshot)
    }
}

/// Keep the bound addresses the plugin's world can serve: a
/// `connection-handler` plugin serves TCP only, so the UDP half of a
/// `--listen` (or of the default address) is let go, and `--udp` is an
/// error.
fn fit_to_world(bound: Vec<Bound>, config: &Config, plugin: &plugin::Plugin) -> anyhow::Result<Vec<Bound>> {
    let info = plugin.info();
    let per_connection =
        plugin.world() == plugin::World::Connection || config.tcp_isolation == config::TcpIsolation::Connection;
    if per_connection && let Some(fit) = tcp_connections_per_pool(config, plugin) {
        tracing::info!(
            "--max-connections is {} but the instance pool holds {fit} instances of plugin {}, one per \
             connection: further connections wait for one (raise --max-instances)",
            config.max_connections,
            info.name
        );
    }
    if plugin.world() == plugin::World::Handler {
        if config.framing == config::Framing::Raw {
            tracing::info!(
                "--framing raw: each TCP read is one request, split wherever the stream was split, each in a \
                 fresh call; a stream protocol (HTTP/1.1, RESP, ...) needs a connection-handler plugin"
            );
        }
        return Ok(bound);
    }
    if config.framing != config::Framing::Lines || config.tcp_isolation != config::TcpIsolation::Request {
        tracing::warn!(
            "--framing and --tcp-isolation have no effect: plugin {} implements the connection-handler world, \
             which frames its own protocol in one instance per connection",
            info.name
        );
    }
    if let Some(addr) = config.udp.first() {
        anyhow::bail!(
            "plugin {}: implements the world sockets:plugin/connection-handler@0.2.0, which serves TCP only; \
             it cannot serve --udp {addr}",
            info.path.display()
        );
    }
    let (tcp, udp): (Vec<_>, Vec<_>) = bound.into_iter().partition(|b| b.transport() == Transport::Tcp);
    for b in udp {
        tracing::info!(
            "not serving udp {}: plugin {} implements the connection-handler world (TCP only)",
            b.local_addr(),
            info.name
        );
    }
    Ok(tcp)
}

/// How many connections can hold an instance at once, if that is fewer
/// than `--max-connections`.
fn tcp_connections_per_pool(config: &Config, plugin: &plugin::Plugin) -> Option<usize> {
    let fit = (config.max_instances / plugin.weight().permits().max(1)) as usize;
    (fit < config.max_connections).then_some(fit)
}

/// Log the counters on every SIGUSR1 (`kill -USR1 PID`), as one
/// `stats name=value ...` line.
async fn dump_stats_on_sigusr1(mut usr1: tokio::signal::unix::Signal, stats: Arc<Stats>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            s = usr1.recv() => if s.is_none() { return },
        }
        tracing::info!("stats {}", stats.snapshot());
    }
}

/// In reuse mode, drop instances that have waited too long for a request.
async fn expire_idle_instances(dispatcher: Arc<Dispatcher>, reuse: u64, shutdown: CancellationToken) {
    if reuse <= 1 {
        return;
    }
    let mut tick = tokio::time::interval(dispatch::version::IDLE_INSTANCE_TTL / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => dispatcher.expire_idle(),
        }
    }
}

/// Load, bind and serve until `shutdown`; the whole server in one call.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Snapshot> {
    Server::bind(config).await?.serve(shutdown).await
}

/// The host services for the plugin: its namespace, buckets, limits and
/// variables, on the store `--kv` (or the data directory) names.
async fn open_services(config: &Config, stats: Arc<Stats>) -> anyhow::Result<plugin::services::Services> {
    let stem = config.plugin_path()?.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let namespace = match &config.name {
        Some(name) => name.clone(),
        None => {
            kv::check_name("the plugin file's stem", &stem)
                .map_err(|e| anyhow::anyhow!("{e}; give the service a name with --name"))?;
            stem
        }
    };
    // A store the operator named (`--data-dir`, `--kv`) must open; the
    // default one may fail (no HOME, a read-only home, as under some
    // service managers) without stopping a plugin that never uses it.
    let store = match config.kv_backend() {
        Some(backend) if config.data_dir.is_some() || config.kv.is_some() => {
            kv::Store::open(&backend, config.timeout).await?
        }
        Some(backend) => kv::Store::open(&backend, config.timeout).await.unwrap_or_else(|e| {
            tracing::warn!(
                "key-value store unavailable: {e:#}; plugins that use wasi:keyvalue get errors (set --data-dir)"
            );
            kv::Store::Unavailable(format!("{e:#}"))
        }),
        None => {
            tracing::warn!("key-value store unavailable: no data directory (set --data-dir, or HOME)");
            kv::Store::Unavailable("no data directory (set --data-dir)".into())
        }
    };
    let store = Arc::new(store);
    let buckets = config.kv_buckets();
    tracing::info!(
        "key-value store: {}; service {namespace} may open bucket(s) {}",
        store.describe(),
        buckets.join(", ")
    );
    Ok(plugin::services::Services {
        store,
        namespace: namespace.into(),
        buckets: buckets.into_iter().map(Into::into).collect(),
        limits: plugin::services::KvLimits {
            max_key: config.kv_max_key,
            max_value: config.kv_max_value,
            max_bucket_bytes: config.kv_max_bucket_bytes as u64,
            max_ops: config.kv_max_ops,
        },
        vars: config.vars(),
        stats,
    })
}

/// One worker per available CPU.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
