//! What a running host reports about itself: its services, their
//! addresses, plugin versions and counters. The admin endpoint
//! (`/metrics`, `/status`, `/readyz`) and SIGUSR1 read it; nothing here
//! knows about HTTP or Prometheus.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::request::Transport;
use crate::stats::{HistogramSnapshot, Snapshot};

/// The source of [`ServiceStatus`]es: the running host.
pub trait Inventory: Send + Sync + 'static {
    /// Every service the host runs now, in the order of the services file
    /// (one service for the single-plugin command line).
    fn services(&self) -> Vec<ServiceStatus>;

    /// Reloads of the services file (`--config`), ok and failed.
    fn config_reloads(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// One service, now.
#[derive(Clone, Debug)]
pub struct ServiceStatus {
    /// The service's name (`name` in the services file; `--name`, else the
    /// plugin file's stem, on the command line).
    pub name: String,
    /// The addresses it serves, port 0 resolved.
    pub addresses: Vec<(Transport, SocketAddr)>,
    /// Its plugin is loaded and every address is listening.
    pub ready: bool,
    /// The version serving new requests.
    pub current: PluginVersion,
    /// Counters of the whole service since it started (every version,
    /// including versions since dropped).
    pub totals: Snapshot,
    /// Requests running in the plugin now.
    pub in_flight: u64,
    /// TCP connections open now.
    pub open_connections: u64,
    /// Versions still alive (the current one first, then replaced versions
    /// that still serve a request or a connection), with their own counters.
    pub versions: Vec<VersionStatus>,
}

impl ServiceStatus {
    /// A service the services file asks for that does not run (a reload
    /// could not start it): not ready, with the counters of its earlier
    /// runs, if any.
    pub fn not_running(config: &crate::Config, earlier: Option<Snapshot>) -> ServiceStatus {
        let path = config.plugin.clone().unwrap_or_default();
        ServiceStatus {
            name: crate::service::service_name(config).unwrap_or_default(),
            addresses: Vec::new(),
            ready: false,
            current: PluginVersion {
                plugin: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                version: String::new(),
                path,
                since: SystemTime::now(),
            },
            totals: earlier.unwrap_or_default(),
            in_flight: 0,
            open_connections: 0,
            versions: Vec::new(),
        }
    }
}

/// A plugin version: which file, which content, since when.
#[derive(Clone, Debug)]
pub struct PluginVersion {
    /// The plugin's name (file stem).
    pub plugin: String,
    /// The first 12 hex digits of the file's sha256.
    pub version: String,
    /// The file it was loaded from.
    pub path: std::path::PathBuf,
    /// When it started serving.
    pub since: SystemTime,
}

/// One live version's own counters.
#[derive(Clone, Debug)]
pub struct VersionStatus {
    /// Which version.
    pub version: PluginVersion,
    /// Whether it serves new requests.
    pub current: bool,
    /// Counted on this version: `requests`, `no_reply`, `plugin_errors`,
    /// `traps`, `timeouts`, `replies_dropped`, `sessions_closed`,
    /// `connections_retired` (the others stay 0 here; they are the
    /// service's).
    pub stats: Snapshot,
    /// Time from a request's start to its outcome, in the plugin.
    pub latency: HistogramSnapshot,
    /// Time to create a fresh instance.
    pub instantiation: HistogramSnapshot,
}
