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
//! - [`config`]: every command-line flag and default.
//! - [`stats`]: counters of what happened.
//!
//! [`run`] ties them together; the `host` binary only parses arguments and
//! calls it, and the tests call it the same way.
#![deny(missing_docs)]

pub mod config;
pub mod dispatch;
pub mod framing;
mod listener;
pub mod plugin;
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
use plugin::loader::{CompileCache, Loader};

/// A server with its plugin loaded and its sockets bound, not yet serving.
pub struct Server {
    config: Config,
    bound: Vec<Bound>,
    dispatcher: Arc<Dispatcher>,
    _loader: Arc<Loader>,
    _ticker: EpochTicker,
    stats: Arc<Stats>,
}

impl Server {
    /// Load the plugin and bind every address. Fails, with a message naming
    /// the file or address, if either cannot be done.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let stats = Arc::new(Stats::default());
        let engine = new_engine(EngineLimits {
            max_memory: config.max_memory,
            max_instances: config.max_instances,
            fuel: config.fuel.is_some(),
        })?;
        let ticker = EpochTicker::start(&engine)?;
        let loader = Arc::new(Loader::new(engine, CompileCache::default_dir(), stats.clone())?);
        let plugin = loader.load(&config.plugin, &dispatch::call_limits(&config)).await?;
        let dispatcher = Arc::new(Dispatcher::new(plugin, &config, stats.clone()));
        let mut bound = Vec::new();
        for (transport, addr) in config.bind_list() {
            bound.push(listener::bind(transport, addr)?);
        }
        Ok(Server { config, bound, dispatcher, _loader: loader, _ticker: ticker, stats })
    }

    /// The bound addresses, with any port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.bound.iter().filter_map(|b| Some((b.transport(), b.local_addr().ok()?))).collect()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight
    /// requests finish for up to `--drain-timeout`, and return the counters.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Snapshot> {
        let Server { config, bound, dispatcher, stats, .. } = self;
        let shared = Arc::new(Shared {
            dispatcher,
            framing: config.framing,
            max_request: config.max_request,
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
        });
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let udp_loops = config.workers.unwrap_or_else(default_workers) * 2;
        for b in bound {
            let addr = b.local_addr().context("bound socket has no address")?;
            // One parseable line per listener, e.g. `listening udp 127.0.0.1:7000`.
            tracing::info!("listening {} {addr}", b.transport());
            let (shared, token) = (shared.clone(), token.clone());
            match b {
                Bound::Udp(socket) => {
                    tracker.spawn(listener::udp::serve(socket, udp_loops, shared, token));
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
        let snapshot = stats.snapshot();
        tracing::info!("stats {snapshot}");
        Ok(snapshot)
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
