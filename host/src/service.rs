//! One service: a plugin, its addresses, its limits and its store, with an
//! engine of its own (the pooling allocator is sized from the service's
//! limits).
//!
//! A service goes through two steps: [`Service::bind`] binds its addresses
//! and loads its plugin (either can fail, with a message naming the file or
//! address); [`Service::serve`] starts its listeners, its reloader and its
//! housekeeping on a cancellation token of its own and returns a
//! [`Running`] service, which [`Running::stop`] drains. A host runs any
//! number of them side by side (a services file), each stopped and started
//! on its own when the file changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::{self, Config};
use crate::dispatch::{self, Dispatcher};
use crate::listener::{self, ListenerContext};
use crate::plugin::{self, admission::Admission, engine, loader::Loader};
use crate::reload::{ReloadHandle, Reloader};
use crate::request::Transport;
use crate::stats::{Snapshot, Stats};
use crate::status::ServiceStatus;

/// A service with its plugin loaded and its addresses bound, not yet
/// serving.
pub struct Service {
    name: String,
    config: Config,
    bound: Vec<listener::Bound>,
    dispatcher: Arc<Dispatcher>,
    reloader: Reloader,
    ticker: engine::EpochTicker,
    span: tracing::Span,
}

/// A service's addresses, bound, before its plugin is loaded.
pub struct Bound {
    name: String,
    config: Config,
    bound: Vec<listener::Bound>,
    span: tracing::Span,
}

impl Bound {
    /// Bind every address of `config`. An address in use is reported at
    /// once, not after a plugin has compiled for seconds. Until serving
    /// starts, TCP is not listening (connections are refused) and datagrams
    /// wait in the kernel's queue.
    pub fn bind(config: Config) -> anyhow::Result<Bound> {
        let name = service_name(&config)?;
        let span = tracing::info_span!("service", service = %name);
        let _entered = span.enter();
        let mut bound = Vec::new();
        let workers = config.workers.unwrap_or_else(crate::default_workers);
        for (transport, addr) in config.bind_list() {
            let b = listener::bind(transport, addr, workers, config.reuse_port)?;
            tracing::info!("bound {transport} {}; serving once the plugin is loaded", b.local_addr());
            bound.push(b);
        }
        drop(_entered);
        Ok(Bound { name, config, bound, span })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Open the service's store and load its plugin.
    pub async fn load(self) -> anyhow::Result<Service> {
        let span = self.span.clone();
        self.load_in_span().instrument(span).await
    }

    async fn load_in_span(self) -> anyhow::Result<Service> {
        let Bound { name, config, bound, span } = self;
        let stats = Arc::new(Stats::default());
        let limits = engine::EngineLimits {
            max_memory: config.max_memory,
            max_instances: config.max_instances,
            fuel: config.fuel.is_some(),
        };
        let engine = engine::new_engine(limits)?;
        let ticker = engine::EpochTicker::start(&engine)?;
        let services = Arc::new(open_services(&config, &name, stats.clone()).await?);
        let loader = Loader::new(engine, Admission::new(&limits), config.cache_dir(), stats.clone(), services)?;
        let loader = Arc::new(loader.with_cache_max_size(config.cache_max_size).with_init_timeout(config.init_timeout));
        let path = config.plugin_path()?.to_path_buf();
        let plugin = loader.load(&path, &dispatch::call_limits(&config)).await?;
        let bound = fit_to_world(bound, &config, &plugin)?;
        let dispatcher = Arc::new(Dispatcher::new(plugin, &config, stats.clone()));
        let reloader = Reloader::new(path, loader, dispatcher.clone(), stats);
        Ok(Service { name, config, bound, dispatcher, reloader, ticker, span })
    }
}

impl Service {
    /// Bind every address of `config` and load its plugin.
    pub async fn bind(config: Config) -> anyhow::Result<Service> {
        Bound::bind(config)?.load().await
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bound addresses, with any port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.bound.iter().map(|b| (b.transport(), b.local_addr())).collect()
    }

    /// A handle that reloads the plugin file, as SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reloader.handle()
    }

    /// Start serving; the service runs until [`Running::stop`] or until
    /// `parent` is cancelled.
    pub async fn serve(self, parent: &CancellationToken) -> anyhow::Result<Running> {
        let span = self.span.clone();
        self.serve_in_span(parent).instrument(span).await
    }

    async fn serve_in_span(self, parent: &CancellationToken) -> anyhow::Result<Running> {
        let Service { name, config, bound, dispatcher, reloader, ticker, span } = self;
        let addrs: Vec<_> = bound.iter().map(|b| (b.transport(), b.local_addr())).collect();
        let token = parent.child_token();
        let reload = reloader.handle();
        let mut tasks = Vec::new();
        let reload_task = reloader.start(!config.no_watch, token.clone())?;
        tasks.push(tokio::spawn(reload_task.instrument(span.clone())));
        tasks.push(tokio::spawn(
            expire_idle_instances(dispatcher.clone(), config.instance_reuse, token.clone()).instrument(span.clone()),
        ));
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
                for task in tasks {
                    task.abort();
                }
                return Err(e);
            }
        }
        let info = dispatcher.versions().current().plugin().info().clone();
        tracing::info!("serving plugin {} version {}", info.name, info.version);
        Ok(Running { name, config, addrs, dispatcher, ctx, token, tracker, tasks, reload, _ticker: ticker })
    }
}

/// A service that is serving.
pub struct Running {
    name: String,
    config: Config,
    addrs: Vec<(Transport, SocketAddr)>,
    dispatcher: Arc<Dispatcher>,
    ctx: Arc<ListenerContext>,
    token: CancellationToken,
    tracker: TaskTracker,
    tasks: Vec<JoinHandle<()>>,
    reload: ReloadHandle,
    _ticker: engine::EpochTicker,
}

impl Running {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The addresses it serves.
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.addrs
    }

    /// A handle that reloads its plugin, as SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// What `/status` and `/metrics` report about it.
    pub fn status(&self) -> ServiceStatus {
        let (totals, versions) = self.dispatcher.report();
        let in_flight: u64 = versions.iter().map(|v| v.stats.requests.saturating_sub(v.latency.count)).sum();
        let current = versions
            .iter()
            .find(|v| v.current)
            .map(|v| v.version.clone())
            .unwrap_or_else(|| self.dispatcher.versions().current().describe());
        ServiceStatus {
            name: self.name.clone(),
            addresses: self.addrs.clone(),
            ready: !self.token.is_cancelled(),
            current,
            open_connections: totals.connections.saturating_sub(totals.connections_closed),
            in_flight,
            totals,
            versions,
        }
    }

    /// Stop accepting, let in-flight requests finish for up to
    /// `drain_timeout`, and return the service's counters.
    pub async fn stop(self, drain_timeout: Duration) -> Snapshot {
        let Running { name, dispatcher, ctx, token, tracker, tasks, .. } = self;
        token.cancel();
        tracker.close();
        listener::drain(&ctx, &tracker, drain_timeout)
            .instrument(tracing::info_span!("service", service = %name))
            .await;
        // The reload task ends at `token`, abandoning a compile in progress;
        // aborting it too means no reload can hold up the exit.
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        dispatcher.totals()
    }
}

/// Instance slots of the engine a services-file reload's check builds.
pub const CHECK_INSTANCES: u32 = 64;

/// A plugin checked by [`check`].
pub struct Checked {
    /// The plugin, loaded and validated.
    pub plugin: plugin::Plugin,
    /// How long it took to compile; `None` if it came from the compile
    /// cache.
    pub compiled_in: Option<std::time::Duration>,
}

/// Load, compile, link and validate `config`'s plugin as the service
/// would, without binding anything or opening its store: `host check`, and
/// a services-file reload before it changes anything. The engine gets at
/// most `pool` instance slots: a reload's check runs beside the running
/// services' pools and needs one instance (the compiled code does not
/// depend on the pool's size); `host check` gives `--max-instances`, to
/// find a value the machine cannot reserve.
pub async fn check(config: &Config, pool: u32) -> anyhow::Result<Checked> {
    use anyhow::Context as _;
    let limits = engine::EngineLimits {
        max_memory: config.max_memory,
        max_instances: config.max_instances.min(pool),
        fuel: config.fuel.is_some(),
    };
    let engine = engine::new_engine(limits).with_context(|| {
        format!(
            "--max-instances {} with --max-memory {}",
            limits.max_instances,
            bytesize::ByteSize(config.max_memory as u64)
        )
    })?;
    let stats = Arc::new(Stats::default());
    let services = plugin::services::Services {
        store: Arc::new(crate::kv::Store::Unavailable("not opened by a check".into())),
        namespace: service_name(config)?.into(),
        buckets: config.kv_buckets().into_iter().map(Into::into).collect(),
        limits: kv_limits(config),
        vars: config.vars(),
        var_files: config.var_files(),
        stats: stats.clone(),
    };
    // A plugin's `wizer-initialize` is cut off by the epoch deadline.
    let _ticker = engine::EpochTicker::start(&engine)?;
    let loader = Loader::new(engine, Admission::new(&limits), config.cache_dir(), stats.clone(), Arc::new(services))?
        .with_init_timeout(config.init_timeout);
    let started = std::time::Instant::now();
    let plugin = loader.load(config.plugin_path()?, &dispatch::call_limits(config)).await?;
    let compiled_in = (stats.snapshot().cache_hits == 0).then(|| started.elapsed());
    if plugin.world() == plugin::World::Connection
        && let Some(addr) = config.udp.first()
    {
        anyhow::bail!(
            "plugin {}: implements the world sockets:plugin/connection-handler@0.2.0, which serves TCP only; \
             it cannot serve --udp {addr}",
            plugin.info().path.display()
        );
    }
    Ok(Checked { plugin, compiled_in })
}

/// The key-value limits of `config`.
pub(crate) fn kv_limits(config: &Config) -> plugin::services::KvLimits {
    plugin::services::KvLimits {
        max_key: config.kv_max_key,
        max_value: config.kv_max_value,
        max_bucket_bytes: config.kv_max_bucket_bytes as u64,
        max_ops: config.kv_max_ops,
    }
}

/// The service's name: `--name`, else the plugin file's stem, which must
/// then be a valid name.
pub(crate) fn service_name(config: &Config) -> anyhow::Result<String> {
    if let Some(name) = &config.name {
        return Ok(name.clone());
    }
    let stem = config.plugin_path()?.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    crate::kv::check_name("the plugin file's stem", &stem)
        .map_err(|e| anyhow::anyhow!("{e}; give the service a name with --name"))?;
    Ok(stem)
}

/// Keep the bound addresses the plugin's world can serve: a
/// `connection-handler` plugin serves TCP only, so the UDP half of a
/// `--listen` (or of the default address) is let go, and `--udp` is an
/// error.
fn fit_to_world(
    bound: Vec<listener::Bound>,
    config: &Config,
    plugin: &plugin::Plugin,
) -> anyhow::Result<Vec<listener::Bound>> {
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

/// The host services for the plugin: its namespace, buckets, limits and
/// variables, on the store `--kv` (or the data directory) names.
pub(crate) async fn open_services(
    config: &Config,
    namespace: &str,
    stats: Arc<Stats>,
) -> anyhow::Result<plugin::services::Services> {
    use crate::kv;
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
        limits: kv_limits(config),
        vars: config.vars(),
        var_files: config.var_files(),
        stats,
    })
}
