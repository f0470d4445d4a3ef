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
//!   and a plugin's own lines per plugin version; UDP requests per source
//!   (`--udp-source-rate`).
//! - [`privdrop`]: `--user`, running unprivileged after binding.
//! - [`systemd`]: sockets passed by socket activation, and `sd_notify`.
//!
//! Around the data path, operations:
//!
//! - [`service`]: one service (a plugin, its addresses, limits and store),
//!   bound, loaded, served and drained on its own.
//! - [`servicefile`]: the services file (`--config`), whose keys are the
//!   flags.
//! - [`status`] and [`admin`]: what the running services report, and the
//!   `--metrics` endpoint that serves it (metrics, health, status).
//! - [`cli`]: `host check`, `host invoke`, `host rollback`, and the log
//!   filter.
//!
//! [`run`] ties them together: [`Server`] binds every service, serves them
//! side by side, applies a changed services file, and drains them at the
//! end. The `host` binary only parses arguments and calls it, and the tests
//! call it the same way.
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod framing;
pub mod kv;
mod listener;
pub mod logline;
pub mod plugin;
pub mod privdrop;
mod ratelimit;
pub mod reload;
pub mod request;
pub mod service;
pub mod servicefile;
pub mod stats;
pub mod status;
pub mod systemd;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::signal::unix::SignalKind;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use request::{Request, Transport};
pub use stats::{Snapshot, Stats};

use reload::Trigger;
use service::{Running, Service};
use status::{Inventory, ServiceStatus};

/// A host with every service bound and loaded, not yet serving: the one
/// plugin of the command line, or the services of a services file.
pub struct Server {
    /// The command line (host-wide settings; `--config`).
    config: Config,
    /// The services file, if one was given.
    file: Option<servicefile::ServicesFile>,
    services: Vec<Service>,
    /// The admin endpoint's socket (`--metrics`), bound with the services.
    admin: Option<tokio::net::TcpListener>,
}

impl Server {
    /// Load every plugin and bind every address. Fails, with a message
    /// naming the file or address, if any cannot be done.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let (file, configs) = match &config.config {
            Some(path) => {
                let file = servicefile::with_command_line(servicefile::load(path)?, &config)?;
                let configs = file.services.clone();
                (Some(file), configs)
            }
            None => (None, vec![config.clone()]),
        };
        let settings = file.as_ref().map_or(&config, |f| &f.host);
        // Bound first, like the services' addresses: an address in use is
        // reported before any plugin compiles.
        let admin = match settings.metrics {
            Some(addr) => Some(admin::bind(addr, settings.reuse_port).await?),
            None => None,
        };
        let mut bound = Vec::with_capacity(configs.len());
        for c in configs {
            bound.push(service::Bound::bind(c)?);
        }
        systemd::warn_unclaimed();
        // --user: every address is bound; stores, caches and plugins are
        // opened as the user.
        privdrop::drop_after_bind(settings)?;
        let mut services = Vec::with_capacity(bound.len());
        for b in bound {
            services.push(b.load().await?);
        }
        Ok(Server { config, file, services, admin })
    }

    /// The bound addresses of every service, with any port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.services.iter().flat_map(|s| s.local_addrs()).collect()
    }

    /// The admin endpoint's address (`--metrics`), port 0 resolved.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle that reloads the (first) service's plugin file, as SIGHUP
    /// does.
    pub fn reload_handle(&self) -> Option<reload::ReloadHandle> {
        self.services.first().map(|s| s.reload_handle())
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight
    /// requests finish for up to `--drain-timeout`, and return the counters
    /// of every service together.
    ///
    /// While serving, plugins are reloaded when their files change (unless
    /// `--no-watch`) and on SIGHUP, the services file too, and SIGUSR1 logs
    /// the counters.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Snapshot> {
        let Server { config, file, services, admin } = self;
        let settings = file.as_ref().map_or(&config, |f| &f.host).clone();
        let token = CancellationToken::new();
        // Installed here, before `ready` is logged: a signal that arrives
        // before its handler exists would kill the process.
        let usr1 = signal(SignalKind::user_defined1(), "SIGUSR1")?;
        let hup = match &file {
            Some(_) => Some(signal(SignalKind::hangup(), "SIGHUP")?),
            None => None,
        };
        let registry = Arc::new(Registry::default());
        for service in services {
            match service.serve(&token).await {
                Ok(running) => registry.services.lock().expect("registry lock").push(running),
                Err(e) => {
                    registry.stop_all(std::time::Duration::ZERO).await;
                    return Err(e);
                }
            }
        }
        let mut tasks = vec![tokio::spawn(dump_stats_on_sigusr1(usr1, registry.clone(), token.clone()))];
        if let Some(listener) = admin {
            tracing::info!("admin listening http://{}", listener.local_addr()?);
            let inventory: Arc<dyn Inventory> = registry.clone();
            tasks.push(tokio::spawn(admin::serve(listener, inventory, token.clone())));
        }
        let mut file_reload = None;
        if let (Some(file), Some(hup)) = (file, hup) {
            let reload = reload_services_file(config.clone(), file, hup, registry.clone(), token.clone())?;
            file_reload = Some(tokio::spawn(reload));
        }
        tracing::info!("ready: {}", registry.describe());
        systemd::notify_ready();
        shutdown.await;
        systemd::notify_stopping();
        tracing::info!("shutting down: draining in-flight requests for up to {:?}", settings.drain_timeout);
        token.cancel();
        // A services-file reload under way finishes first (its own drains
        // are bounded by the drain timeout too), so that every service it
        // stops is drained and counted, and every one it starts is in the
        // registry to be stopped.
        if let Some(mut reload) = file_reload
            && tokio::time::timeout(settings.drain_timeout, &mut reload).await.is_err()
        {
            reload.abort();
        }
        let snapshot = registry.stop_all(settings.drain_timeout).await;
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!("stats {snapshot}");
        Ok(snapshot)
    }
}

fn signal(kind: SignalKind, name: &str) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).map_err(|e| anyhow::anyhow!("cannot install a {name} handler: {e}"))
}

/// The running services: what `/status`, `/metrics` and SIGUSR1 report,
/// and what a reload of the services file changes.
#[derive(Default)]
struct Registry {
    services: Mutex<Vec<Running>>,
    /// The counters of earlier runs of each service name (a service a
    /// reload restarted, or removed): its totals never go back, and the
    /// final `stats` line counts every run.
    earlier: Mutex<HashMap<String, Snapshot>>,
    /// Services the services file asks for that do not run (a reload could
    /// not start them): reported as not ready.
    missing: Mutex<Vec<Config>>,
    /// Reloads of the services file: applied, refused.
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl Registry {
    /// `serving plugin echo version 0123456789ab`, or `serving 3 services:
    /// a, b, c`.
    fn describe(&self) -> String {
        let services = self.services.lock().expect("registry lock");
        match services.as_slice() {
            [one] => {
                let v = one.status().current;
                format!("serving plugin {} version {}", v.plugin, v.version)
            }
            many => {
                let names: Vec<&str> = many.iter().map(|s| s.name()).collect();
                format!("serving {} services: {}", names.len(), names.join(", "))
            }
        }
    }

    /// Stop every service at once; the counters of every run of every
    /// service, added up.
    async fn stop_all(&self, drain_timeout: std::time::Duration) -> Snapshot {
        let services = std::mem::take(&mut *self.services.lock().expect("registry lock"));
        self.stop(services, drain_timeout).await;
        let mut total = Snapshot::default();
        for snapshot in self.earlier.lock().expect("registry lock").values() {
            total += *snapshot;
        }
        total
    }

    /// Stop `services` at once (each drains its own), keeping their counts.
    async fn stop(&self, services: Vec<Running>, drain_timeout: std::time::Duration) {
        let mut set = tokio::task::JoinSet::new();
        for service in services {
            let name = service.name().to_string();
            set.spawn(async move { (name, service.stop(drain_timeout).await) });
        }
        while let Some(done) = set.join_next().await {
            if let Ok((name, snapshot)) = done {
                *self.earlier.lock().expect("registry lock").entry(name).or_default() += snapshot;
            }
        }
    }
}

impl Inventory for Registry {
    fn services(&self) -> Vec<ServiceStatus> {
        let mut out: Vec<ServiceStatus> =
            self.services.lock().expect("registry lock").iter().map(Running::status).collect();
        let earlier = self.earlier.lock().expect("registry lock");
        for status in &mut out {
            if let Some(before) = earlier.get(&status.name) {
                status.totals += *before;
            }
        }
        for config in self.missing.lock().expect("registry lock").iter() {
            out.push(ServiceStatus::not_running(
                config,
                earlier.get(&service::service_name(config).unwrap_or_default()).copied(),
            ));
        }
        out
    }

    fn config_reloads(&self) -> (u64, u64) {
        (self.reloads.load(Relaxed), self.reload_failures.load(Relaxed))
    }
}

/// Reload the services file on SIGHUP and when it changes: apply what
/// changed, leave the rest alone.
fn reload_services_file(
    cli: Config,
    file: servicefile::ServicesFile,
    hup: tokio::signal::unix::Signal,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = match file.host.no_watch {
        false => Some(reload::watch::FileWatch::start(&file.path)?),
        true => None,
    };
    if watch.is_none() {
        tracing::info!("not watching services file {} (no-watch): SIGHUP reloads it", file.path.display());
    }
    Ok(async move {
        if let Some(watch) = watch {
            tokio::spawn(watch.run(tx.clone(), shutdown.clone()));
        }
        tokio::spawn(reload::forward_sighup(hup, tx.clone(), shutdown.clone()));
        let mut current = file;
        loop {
            let trigger = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                t = reload::debounced(&mut rx) => match t { Some(t) => t, None => return },
            };
            match apply_services_file(&cli, &current, &registry, &shutdown, trigger).await {
                Ok(Some(next)) => {
                    registry.reloads.fetch_add(1, Relaxed);
                    current = next;
                }
                Ok(None) => {}
                Err(e) => {
                    registry.reload_failures.fetch_add(1, Relaxed);
                    tracing::warn!("services file reload failed: {e:#}");
                }
            }
        }
    })
}

/// Read the services file again and apply the difference: services that
/// are gone are drained and stopped, new ones started, changed ones
/// restarted with their new settings; unchanged ones keep their sockets,
/// connections and instances. The difference is taken against the services
/// that run, so a service that failed to start is tried again at the next
/// reload. Host-wide keys are not applied (they wait for the next start),
/// so changing one restarts nothing.
///
/// A file that does not parse, a new or changed service whose plugin does
/// not load, or a new address that cannot be bound changes nothing: the
/// plugins are checked and the new addresses bound before any service
/// stops. A changed service that keeps one of the addresses a stopping
/// service holds binds after that one stopped; if it then cannot start,
/// its old settings are started again.
async fn apply_services_file(
    cli: &Config,
    current: &servicefile::ServicesFile,
    registry: &Arc<Registry>,
    shutdown: &CancellationToken,
    trigger: Trigger,
) -> anyhow::Result<Option<servicefile::ServicesFile>> {
    use anyhow::Context as _;
    let unchanged = "nothing changed";
    let mut next = servicefile::load(&current.path)
        .and_then(|file| servicefile::with_command_line(file, cli))
        .context(unchanged)?;
    if next.host != current.host {
        tracing::warn!(
            "services file {}: host-wide settings changed; they take effect at the next start",
            next.path.display()
        );
    }
    next.host = current.host.clone();
    next.services = next.services.iter().map(|c| servicefile::with_host_settings(c, &current.host)).collect();
    let name_of = |c: &Config| service::service_name(c).unwrap_or_default();
    // What runs now: each service's settings and the addresses it holds.
    let running: HashMap<String, (Config, Vec<(Transport, SocketAddr)>)> = {
        let services = registry.services.lock().expect("registry lock");
        services.iter().map(|s| (s.name().to_string(), (s.config().clone(), s.local_addrs().to_vec()))).collect()
    };
    let wanted: Vec<String> = next.services.iter().map(name_of).collect();
    let to_start: Vec<&Config> =
        next.services.iter().filter(|c| running.get(&name_of(c)).is_none_or(|(old, _)| old != *c)).collect();
    let to_stop: Vec<String> =
        running.keys().filter(|n| !wanted.contains(n) || to_start.iter().any(|c| name_of(c) == **n)).cloned().collect();
    if to_start.is_empty() && to_stop.is_empty() {
        tracing::info!("services file {} reloaded ({trigger:?}): unchanged", next.path.display());
        return Ok(None);
    }
    // Every new plugin loads before anything changes.
    for config in &to_start {
        service::check(config, service::CHECK_INSTANCES).await.context(unchanged)?;
    }
    // Bind before anything stops, unless an address is held by a service
    // that is about to stop (its own old self, or another one).
    let stopping: Vec<(Transport, SocketAddr)> =
        to_stop.iter().filter_map(|n| running.get(n)).flat_map(|(_, held)| held.iter().copied()).collect();
    let waits_for_a_stop = |c: &Config| {
        c.bind_list().iter().any(|(t, a)| a.port() != 0 && stopping.iter().any(|(st, sa)| st == t && sa == a))
    };
    let mut early = Vec::new();
    for config in to_start.iter().filter(|c| !waits_for_a_stop(c)) {
        early.push(service::Bound::bind((*config).clone()).context(unchanged)?);
    }
    let gone = {
        let mut services = registry.services.lock().expect("registry lock");
        let (gone, kept): (Vec<Running>, Vec<Running>) =
            std::mem::take(&mut *services).into_iter().partition(|s| to_stop.iter().any(|n| n == s.name()));
        *services = kept;
        gone
    };
    registry.stop(gone, current.host.drain_timeout).await;
    let mut started = Vec::new();
    let mut failed = Vec::new();
    let mut early = early.into_iter();
    for config in &to_start {
        let name = name_of(config);
        let result = if waits_for_a_stop(config) {
            match service::Bound::bind((*config).clone()) {
                Ok(bound) => start(bound, shutdown).await,
                Err(e) => Err(e),
            }
        } else {
            match early.next() {
                Some(bound) => start(bound, shutdown).await,
                None => Err(anyhow::anyhow!("not bound")),
            }
        };
        let serving = match result {
            Ok(service) => {
                started.push(name.clone());
                Some(service)
            }
            Err(e) => {
                tracing::warn!("services file {}: service {name} not started: {e:#}", next.path.display());
                failed.push(name.clone());
                // Rather than leave a changed service down, take its old
                // settings back.
                match running.get(&name) {
                    Some((old, _)) => match service::Bound::bind(old.clone()) {
                        Ok(bound) => start(bound, shutdown).await.ok(),
                        Err(_) => None,
                    },
                    None => None,
                }
            }
        };
        let mut missing = registry.missing.lock().expect("registry lock");
        missing.retain(|c| name_of(c) != name);
        match serving {
            Some(service) => registry.services.lock().expect("registry lock").push(service),
            None => missing.push((*config).clone()),
        }
    }
    registry.missing.lock().expect("registry lock").retain(|c| wanted.contains(&name_of(c)));
    // The file's order, for /status.
    registry
        .services
        .lock()
        .expect("registry lock")
        .sort_by_key(|s| wanted.iter().position(|n| n == s.name()).unwrap_or(usize::MAX));
    tracing::info!(
        "services file {} reloaded ({trigger:?}): stopped [{}], started [{}], unchanged {}",
        next.path.display(),
        to_stop.join(", "),
        started.join(", "),
        next.services.len().saturating_sub(to_start.len())
    );
    if !failed.is_empty() {
        anyhow::bail!(
            "service(s) {} not running as the file says (see above; a changed service keeps its old settings if \
             they could start again); the next reload tries again",
            failed.join(", ")
        );
    }
    Ok(Some(next))
}

/// Load a bound service and start serving it.
async fn start(bound: service::Bound, shutdown: &CancellationToken) -> anyhow::Result<Running> {
    bound.load().await?.serve(shutdown).await
}

/// Log the counters on every SIGUSR1 (`kill -USR1 PID`), one
/// `stats name=value ...` line per service.
async fn dump_stats_on_sigusr1(
    mut usr1: tokio::signal::unix::Signal,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            s = usr1.recv() => if s.is_none() { return },
        }
        for status in registry.services() {
            tracing::info!(service = %status.name, "stats {}", status.totals);
        }
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
