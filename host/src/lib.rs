//! `host`: serve WebAssembly component plugins over UDP and TCP.
//!
//! The data path, one module per stage:
//!
//! - [`listener`]: the UDP sockets and TCP listeners the host owns, and their
//!   receive and accept loops (`listener/udp.rs`, `listener/tcp.rs`).
//! - [`framing`]: TCP bytes to frames and back (pure code, no I/O).
//! - [`dispatch`]: picks the current plugin version, applies the limits,
//!   counts and logs the outcome.
//! - [`plugin`]: the wasmtime engine ([`plugin::engine`]), loading and
//!   caching compiled plugins ([`plugin::loader`]), and sandboxed instances.
//! - [`reload`]: hot reload on a file change or SIGHUP.
//! - [`config`]: every command-line flag and default.
//! - [`stats`]: counters of what happened.
//! - `ratelimit`: log lines a peer can trigger are rate-limited per call site.
//!
//! [`run`] ties them together; the `host` binary only parses arguments and
//! calls it, and the tests call it the same way.
#![deny(missing_docs)]

pub mod config;
pub mod dispatch;
pub mod framing;
mod listener;
pub mod plugin;
mod ratelimit;
pub mod reload;
pub mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use plugin::Transport;
pub use stats::{Snapshot, Stats};

use dispatch::Dispatcher;
use listener::{Bound, Shared};
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
        // plugin has compiled for seconds. Until serving starts, datagrams
        // and connections wait in the kernel's queues.
        let mut bound = Vec::new();
        let workers = config.workers.unwrap_or_else(default_workers);
        for (transport, addr) in config.bind_list() {
            bound.push(listener::bind(transport, addr, workers)?);
        }
        let stats = Arc::new(Stats::default());
        let engine = new_engine(EngineLimits {
            max_memory: config.max_memory,
            max_instances: config.max_instances,
            fuel: config.fuel.is_some(),
        })?;
        let ticker = EpochTicker::start(&engine)?;
        let loader = Arc::new(Loader::new(engine, config.cache_dir(), stats.clone())?);
        let plugin = loader.load(&config.plugin, &dispatch::call_limits(&config)).await?;
        let dispatcher = Arc::new(Dispatcher::new(plugin, &config, stats.clone()));
        let reloader = Reloader::new(config.plugin.clone(), loader, dispatcher.clone(), stats.clone());
        Ok(Server { config, bound, dispatcher, reloader, _ticker: ticker, stats })
    }

    /// The bound addresses, with any port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.bound.iter().filter_map(|b| Some((b.transport(), b.local_addr().ok()?))).collect()
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
        let reload_task = reloader.start(!config.no_watch, token.clone())?;
        let reload_task = tokio::spawn(reload_task);
        let stats_task = tokio::spawn(dump_stats_on_sigusr1(stats.clone(), token.clone()));
        let shared = Arc::new(Shared {
            dispatcher,
            framing: config.framing,
            max_request: config.max_request,
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
        });
        let tracker = TaskTracker::new();
        for b in bound {
            let addr = b.local_addr().context("bound socket has no address")?;
            // One parseable line per listener, e.g. `listening udp 127.0.0.1:7000`.
            tracing::info!("listening {} {addr}", b.transport());
            let (shared, token) = (shared.clone(), token.clone());
            match b {
                Bound::Udp(sockets) => {
                    tracker.spawn(listener::udp::serve(sockets, shared, token));
                }
                Bound::Tcp(l) => {
                    tracker.spawn(listener::tcp::serve(l, shared, token, tracker.clone()));
                }
            }
        }
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests for up to {:?}", config.drain_timeout);
        token.cancel();
        tracker.close();
        if tokio::time::timeout(config.drain_timeout, tracker.wait()).await.is_err() {
            tracing::warn!("drain timeout: {} tasks still running are abandoned", tracker.len());
        }
        let _ = tokio::join!(reload_task, stats_task);
        let snapshot = stats.snapshot();
        tracing::info!("stats {snapshot}");
        Ok(snapshot)
    }
}

/// Log the counters on every SIGUSR1 (`kill -USR1 PID`), as one
/// `stats name=value ...` line.
async fn dump_stats_on_sigusr1(stats: Arc<Stats>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            s = usr1.recv() => if s.is_none() { return },
        }
        tracing::info!("stats {}", stats.snapshot());
    }
}

/// Load, bind and serve until `shutdown`; the whole server in one call.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Snapshot> {
    Server::bind(config).await?.serve(shutdown).await
}

/// One worker per available CPU.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
