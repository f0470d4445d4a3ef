//! The admin endpoint (`--metrics ADDR`): `/metrics`, `/healthz`, `/readyz`
//! and `/status` over HTTP/1.1.
//!
//! An operator's scraper and probes talk to it, not peers of the services,
//! but anyone who can reach the address can connect, so a slow or hostile
//! client gets bounded time and memory: HTTP is parsed by hyper (never
//! here); at most [`MAX_CONNECTIONS`] connections are served at once
//! (further ones wait in the kernel's backlog, not in memory here); a
//! request's head must arrive within [`HEADER_READ_TIMEOUT`] (an idle
//! keep-alive connection included) and fit in [`MAX_HEADER_BYTES`];
//! request bodies are never read; a connection is closed after
//! [`MAX_CONNECTION_AGE`] whatever it does. Every handler is a short,
//! non-blocking read of the [`Inventory`], so the endpoint never holds up
//! the runtime's workers, which it shares with the services. Nothing is
//! kept between requests.

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ratelimit::log_limited;
use crate::stats::Snapshot;
use crate::status::{Inventory, PluginVersion, ServiceStatus};

pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, VERSION_COUNTERS};

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's head, counted from the moment
/// the connection waits for one (so it is also the keep-alive idle time).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a request's head may take (hyper answers 431 beyond).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A connection older than this is asked to close (after the response in
/// progress, if any), and dropped [`CLOSE_GRACE`] later: a client that stops
/// reading a response cannot keep its slot.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a connection asked to close (at shutdown or at its age) may
/// take to finish the response in progress, or a client the request head it
/// started.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bind the admin address. Done before the plugins load, like the
/// services' own addresses, so an address in use is reported at once.
///
/// With `reuse_port` (`--reuse-port`), the address may be shared with
/// another host during an upgrade of the binary, as the services' are:
/// scrapes and probes go to either until the old one exits.
pub async fn bind(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        if reuse_port {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind().map_err(|e| anyhow::anyhow!("cannot serve --metrics on {addr}: {e}"))
}

/// Serve the admin endpoint on `listener` until `shutdown` is cancelled,
/// then let open connections finish their response for up to
/// [`CLOSE_GRACE`] before it returns.
pub async fn serve(listener: TcpListener, inventory: Arc<dyn Inventory>, shutdown: CancellationToken) {
    serve_with(listener, inventory, shutdown, Arc::new(Semaphore::new(MAX_CONNECTIONS)), LIMITS).await
}

/// The time bounds (tests shorten them).
#[derive(Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    max_age: Duration,
    close_grace: Duration,
}

const LIMITS: Limits =
    Limits { header_read_timeout: HEADER_READ_TIMEOUT, max_age: MAX_CONNECTION_AGE, close_grace: CLOSE_GRACE };

async fn serve_with(
    listener: TcpListener,
    inventory: Arc<dyn Inventory>,
    shutdown: CancellationToken,
    slots: Arc<Semaphore>,
    limits: Limits,
) {
    let router = router(inventory);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(MAX_HEADER_BYTES);
    let http = Arc::new(http);
    let tracker = TaskTracker::new();
    loop {
        // The slot first: without one, connections wait in the backlog
        // rather than as accepted sockets here.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    log_limited!(warn, "admin endpoint: accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    drop(slot);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        // Responses are written whole; no need to wait for more.
        let _ = stream.set_nodelay(true);
        let (http, service, shutdown) = (http.clone(), TowerToHyperService::new(router.clone()), shutdown.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                // Errors here are the client's (a bad request, a timeout,
                // a reset): hyper has answered what could be answered.
                _ = conn.as_mut() => return,
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(limits.max_age) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.close_grace, conn).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

#[derive(Clone)]
struct AdminState {
    inventory: Arc<dyn Inventory>,
    registry: Arc<Registry>,
}

/// The routes; any other path is 404, any method but GET (and HEAD) 405.
fn router(inventory: Arc<dyn Inventory>) -> Router {
    let state = AdminState { registry: Arc::new(metrics::registry(inventory.clone())), inventory };
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /status\n") })
        .with_state(state)
}

async fn serve_metrics(State(state): State<AdminState>) -> Response {
    match metrics::encode(&state.registry) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        // Writing to a String cannot fail; the collector does not either.
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n").into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let not_ready: String =
        state.inventory.services().iter().filter(|s| !s.ready).map(|s| format!("not ready: {}\n", s.name)).collect();
    if not_ready.is_empty() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, not_ready).into_response()
    }
}

async fn status(State(state): State<AdminState>) -> Json<StatusBody> {
    let (ok, failed) = state.inventory.config_reloads();
    Json(StatusBody {
        services: state.inventory.services().iter().map(ServiceJson::from).collect(),
        config_reloads: ConfigReloads { ok, failed },
    })
}

/// `/status`.
#[derive(Serialize)]
struct StatusBody {
    services: Vec<ServiceJson>,
    config_reloads: ConfigReloads,
}

#[derive(Serialize)]
struct ConfigReloads {
    ok: u64,
    failed: u64,
}

#[derive(Serialize)]
struct ServiceJson {
    name: String,
    ready: bool,
    addresses: Vec<AddressJson>,
    plugin: PluginJson,
    in_flight: u64,
    open_connections: u64,
    counters: Counters,
    versions: Vec<VersionJson>,
}

#[derive(Serialize)]
struct AddressJson {
    transport: String,
    address: String,
}

#[derive(Serialize)]
struct PluginJson {
    name: String,
    version: String,
    path: String,
    since: String,
}

#[derive(Serialize)]
struct VersionJson {
    version: String,
    since: String,
    current: bool,
    counters: Counters,
}

/// Counters as a JSON object, in [`Snapshot`]'s order; `only` keeps the
/// per-version ones.
struct Counters {
    snapshot: Snapshot,
    only: Option<&'static [&'static str]>,
}

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.snapshot.fields();
        serializer.collect_map(fields.into_iter().filter(|(name, _)| self.only.is_none_or(|only| only.contains(name))))
    }
}

impl From<&ServiceStatus> for ServiceJson {
    fn from(s: &ServiceStatus) -> Self {
        ServiceJson {
            name: s.name.clone(),
            ready: s.ready,
            addresses: s
                .addresses
                .iter()
                .map(|(transport, addr)| AddressJson { transport: transport.to_string(), address: addr.to_string() })
                .collect(),
            plugin: PluginJson::from(&s.current),
            in_flight: s.in_flight,
            open_connections: s.open_connections,
            counters: Counters { snapshot: s.totals, only: None },
            versions: s
                .versions
                .iter()
                .map(|v| VersionJson {
                    version: v.version.version.clone(),
                    since: rfc3339(v.version.since),
                    current: v.current,
                    counters: Counters { snapshot: v.stats, only: Some(&VERSION_COUNTERS) },
                })
                .collect(),
        }
    }
}

impl From<&PluginVersion> for PluginJson {
    fn from(p: &PluginVersion) -> Self {
        PluginJson {
            name: p.plugin.clone(),
            version: p.version.clone(),
            path: p.path.display().to_string(),
            since: rfc3339(p.since),
        }
    }
}

/// RFC 3339 in UTC to the second, e.g. `2025-01-31T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    // humantime panics outside years 1970..=9999; a clock set that far
    // off is not worth a panic.
    let latest = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_seconds(t.clamp(UNIX_EPOCH, latest)).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::request::Transport;
    use crate::stats::Histogram;
    use crate::status::VersionStatus;

    /// Every wait in these tests is capped by this, so a bug fails rather
    /// than hangs.
    const CAP: Duration = Duration::from_secs(5);

    struct Fake(Mutex<Vec<ServiceStatus>>);

    impl Inventory for Fake {
        fn services(&self) -> Vec<ServiceStatus> {
            self.0.lock().unwrap().clone()
        }
        fn config_reloads(&self) -> (u64, u64) {
            (3, 1)
        }
    }

    fn plugin(name: &str, version: &str) -> PluginVersion {
        PluginVersion {
            plugin: name.into(),
            version: version.into(),
            path: format!("/srv/plugins/{name}.wasm").into(),
            // 2025-01-01T00:00:00Z
            since: UNIX_EPOCH + Duration::from_secs(1_735_689_600),
        }
    }

    fn histogram(observations_us: &[u64]) -> crate::stats::HistogramSnapshot {
        let h = Histogram::default();
        for &us in observations_us {
            h.observe(Duration::from_micros(us));
        }
        h.snapshot()
    }

    /// `echo`: ready, two addresses, a current and a replaced version;
    /// `dns`: not ready.
    fn services() -> Vec<ServiceStatus> {
        let current = plugin("echo", "abcdef012345");
        let echo = ServiceStatus {
            name: "echo".into(),
            addresses: vec![
                (Transport::Udp, "127.0.0.1:7000".parse().unwrap()),
                (Transport::Tcp, "127.0.0.1:7001".parse().unwrap()),
            ],
            ready: true,
            current: current.clone(),
            totals: Snapshot { requests: 7, replies: 6, no_reply: 1, kv_ops: 2, ..Snapshot::default() },
            in_flight: 2,
            open_connections: 1,
            versions: vec![
                VersionStatus {
                    version: current,
                    current: true,
                    stats: Snapshot { requests: 5, traps: 1, replies: 4, ..Snapshot::default() },
                    latency: histogram(&[30, 2_000, 20_000_000]),
                    instantiation: histogram(&[1_000]),
                },
                VersionStatus {
                    version: plugin("echo", "0123456789ab"),
                    current: false,
                    stats: Snapshot { requests: 2, ..Snapshot::default() },
                    latency: histogram(&[]),
                    instantiation: histogram(&[]),
                },
            ],
        };
        let dns = ServiceStatus {
            name: "dns".into(),
            addresses: vec![],
            ready: false,
            current: plugin("dns", "ffffffffffff"),
            totals: Snapshot::default(),
            in_flight: 0,
            open_connections: 0,
            versions: vec![],
        };
        vec![echo, dns]
    }

    struct Admin {
        addr: SocketAddr,
        fake: Arc<Fake>,
        slots: Arc<Semaphore>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(limits: Limits) -> Admin {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake(Mutex::new(services())));
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_with(listener, fake.clone(), shutdown.clone(), slots.clone(), limits));
        Admin { addr, fake, slots, shutdown, task }
    }

    async fn start_default() -> Admin {
        start(LIMITS).await
    }

    impl Admin {
        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(CLOSE_GRACE + CAP, self.task).await.expect("serve returns").unwrap();
        }
    }

    /// The status code, head and body of the response to `raw`, sent on an
    /// open connection.
    async fn exchange(stream: &mut TcpStream, raw: &str) -> (u16, String, String) {
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(CAP, stream.read_to_end(&mut response)).await.expect("a response").unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, head.to_string(), body.to_string())
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        exchange(&mut stream, &format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")).await
    }

    #[tokio::test]
    async fn routes_answer_with_their_status_and_body() {
        let admin = start_default().await;
        assert_eq!(request(admin.addr, "GET", "/healthz").await.0, 200);
        assert_eq!(request(admin.addr, "GET", "/healthz").await.2, "ok\n");
        let (code, _, body) = request(admin.addr, "GET", "/readyz").await;
        assert_eq!((code, body.as_str()), (503, "not ready: dns\n"));
        admin.fake.0.lock().unwrap()[1].ready = true;
        let (code, _, body) = request(admin.addr, "GET", "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ready\n"));

        let (code, head, body) = request(admin.addr, "GET", "/nope").await;
        assert_eq!(code, 404, "{head}");
        assert!(body.starts_with("not found"), "{body}");
        assert_eq!(request(admin.addr, "GET", "/metrics/").await.0, 404);
        let (code, head, _) = request(admin.addr, "POST", "/metrics").await;
        assert_eq!(code, 405, "{head}");
        assert_eq!(request(admin.addr, "DELETE", "/status").await.0, 405);
        // A body is never read, and does not stop the answer.
        let mut stream = TcpStream::connect(admin.addr).await.unwrap();
        let raw = "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(exchange(&mut stream, raw).await.0, 200);
        admin.stop().await;
    }

    #[tokio::test]
    async fn status_is_json_with_every_service() {
        let admin = start_default().await;
        let (code, head, body) = request(admin.addr, "GET", "/status").await;
        assert_eq!(code, 200);
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let echo = &json["services"][0];
        assert_eq!(echo["name"], "echo");
        assert_eq!(echo["ready"], true);
        assert_eq!(echo["addresses"][0], serde_json::json!({"transport": "udp", "address": "127.0.0.1:7000"}));
        assert_eq!(echo["addresses"][1]["transport"], "tcp");
        assert_eq!(
            echo["plugin"],
            serde_json::json!({
                "name": "echo", "version": "abcdef012345", "path": "/srv/plugins/echo.wasm",
                "since": "2025-01-01T00:00:00Z",
            })
        );
        assert_eq!((echo["in_flight"].as_u64(), echo["open_connections"].as_u64()), (Some(2), Some(1)));
        let counters = echo["counters"].as_object().unwrap();
        assert_eq!(counters.len(), Snapshot::default().fields().len());
        assert_eq!((counters["requests"].as_u64(), counters["kv_ops"].as_u64()), (Some(7), Some(2)));
        let versions = echo["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 2);
        assert_eq!((&versions[0]["version"], &versions[0]["current"]), (&"abcdef012345".into(), &true.into()));
        assert_eq!(versions[0]["counters"]["traps"], 1);
        // Only what is counted per version: `replies` is the service's.
        assert!(versions[0]["counters"].get("replies").is_none());
        assert_eq!(versions[0]["counters"].as_object().unwrap().len(), VERSION_COUNTERS.len());
        assert_eq!((&versions[1]["current"], &versions[1]["counters"]["requests"]), (&false.into(), &2.into()));
        assert_eq!(json["services"][1]["ready"], false);
        assert_eq!(json["config_reloads"], serde_json::json!({"ok": 3, "failed": 1}));
        admin.stop().await;
    }

    #[tokio::test]
    async fn metrics_carry_the_inventorys_numbers_as_openmetrics() {
        let admin = start_default().await;
        let (code, head, body) = request(admin.addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        assert!(head.contains(metrics::CONTENT_TYPE), "{head}");
        check_openmetrics(&body);
        let v = r#"service="echo",version="abcdef012345""#;
        for line in [
            r#"wasm_sockets_requests_total{service="echo"} 7"#.to_string(),
            r#"wasm_sockets_replies_total{service="echo"} 6"#.into(),
            r#"wasm_sockets_kv_ops_total{service="echo"} 2"#.into(),
            r#"wasm_sockets_requests_total{service="dns"} 0"#.into(),
            format!("wasm_sockets_version_requests_total{{{v}}} 5"),
            format!("wasm_sockets_version_traps_total{{{v}}} 1"),
            r#"wasm_sockets_version_requests_total{service="echo",version="0123456789ab"} 2"#.into(),
            // 30 µs, 2 ms and 20 s: the last only in +Inf (`le` comes first).
            format!("wasm_sockets_request_duration_seconds_count{{{v}}} 3"),
            format!("wasm_sockets_request_duration_seconds_bucket{{le=\"0.00005\",{v}}} 1"),
            format!("wasm_sockets_request_duration_seconds_bucket{{le=\"0.0025\",{v}}} 2"),
            format!("wasm_sockets_request_duration_seconds_bucket{{le=\"10.0\",{v}}} 2"),
            format!("wasm_sockets_request_duration_seconds_bucket{{le=\"+Inf\",{v}}} 3"),
            format!("wasm_sockets_instantiation_duration_seconds_count{{{v}}} 1"),
            r#"wasm_sockets_in_flight_requests{service="echo"} 2"#.into(),
            r#"wasm_sockets_open_connections{service="echo"} 1"#.into(),
            r#"wasm_sockets_service_ready{service="echo"} 1"#.into(),
            r#"wasm_sockets_service_ready{service="dns"} 0"#.into(),
            r#"wasm_sockets_plugin_info{service="echo",plugin="echo",version="abcdef012345",current="true"} 1"#.into(),
            r#"wasm_sockets_plugin_info{service="echo",plugin="echo",version="0123456789ab",current="false"} 1"#.into(),
            r#"wasm_sockets_config_reloads_total{result="ok"} 3"#.into(),
            r#"wasm_sockets_config_reloads_total{result="failed"} 1"#.into(),
        ] {
            assert!(body.lines().any(|l| l == line), "no line {line} in\n{body}");
        }
        let sum =
            body.lines().find_map(|l| l.strip_prefix(&format!("wasm_sockets_request_duration_seconds_sum{{{v}}} ")));
        let sum: f64 = sum.unwrap().parse().unwrap();
        assert!((sum - 20.00203).abs() < 1e-9, "{sum}");
        // Read at scrape time: a change shows in the next scrape.
        admin.fake.0.lock().unwrap()[0].totals.requests = 8;
        let body = request(admin.addr, "GET", "/metrics").await.2;
        assert!(body.contains("wasm_sockets_requests_total{service=\"echo\"} 8\n"));
        admin.stop().await;
    }

    /// The OpenMetrics text format's structure: each family once, HELP and
    /// TYPE before its samples, sample names the family's name plus the
    /// suffix its type allows, numeric values, `# EOF` last.
    fn check_openmetrics(text: &str) {
        let body = text.strip_suffix("# EOF\n").expect("ends with # EOF");
        let mut families = HashSet::new();
        let (mut family, mut kind) = (String::new(), String::new());
        for line in body.lines() {
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (what, name, rest) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
                match what {
                    "HELP" => {
                        assert!(families.insert(name.to_string()), "family {name} twice");
                        family = name.to_string();
                    }
                    "TYPE" => {
                        assert_eq!(name, family, "TYPE after HELP");
                        assert!(["counter", "gauge", "histogram", "info"].contains(&rest), "{line}");
                        kind = rest.to_string();
                    }
                    "UNIT" => assert!(name == family && family.ends_with(&format!("_{rest}")), "{line}"),
                    _ => panic!("unexpected line {line}"),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "value in {line}");
            let name = series.split('{').next().unwrap();
            let suffix = name.strip_prefix(family.as_str()).unwrap_or_else(|| panic!("{line} outside {family}"));
            let allowed: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "gauge" => &[""],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &["_info"],
            };
            assert!(allowed.contains(&suffix), "{line} in a {kind}");
            if let Some(labels) = series.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
            }
            assert!(name.starts_with("wasm_sockets_"), "{line}");
        }
    }

    #[tokio::test]
    async fn a_large_scrape_is_served_whole() {
        let admin = start_default().await;
        let many: Vec<_> =
            (0..300).map(|i| ServiceStatus { name: format!("service-{i}"), ..services().swap_remove(0) }).collect();
        *admin.fake.0.lock().unwrap() = many;
        let (code, _, body) = request(admin.addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        // Far over the connection's buffer bound, which limits what is read,
        // not what is written.
        assert!(body.len() > 20 * MAX_HEADER_BYTES, "{} bytes", body.len());
        check_openmetrics(&body);
        assert!(body.contains("wasm_sockets_service_ready{service=\"service-299\"} 1\n"));
        admin.stop().await;
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_another() {
        let admin = start(Limits { close_grace: Duration::from_millis(100), ..LIMITS }).await;
        let _silent = TcpStream::connect(admin.addr).await.unwrap();
        let mut half = TcpStream::connect(admin.addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost:").await.unwrap();
        assert_eq!(request(admin.addr, "GET", "/healthz").await.0, 200);
        admin.stop().await;
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_free_slot() {
        let admin = start_default().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(admin.addr).await.unwrap());
        }
        // Every slot taken by an idle connection (none of them sent a byte).
        tokio::time::timeout(CAP, async {
            while admin.slots.available_permits() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("all idle connections accepted");
        let mut waiting = TcpStream::connect(admin.addr).await.unwrap();
        waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
        // No slot, so not accepted: the request waits in the kernel.
        let mut byte = [0; 1];
        assert!(tokio::time::timeout(Duration::from_millis(100), waiting.read(&mut byte)).await.is_err());
        drop(idle.pop());
        assert_eq!(exchange(&mut waiting, "").await.0, 200);
        admin.stop().await;
    }

    /// Read until the server closes; `Err` if it did not within `CAP`.
    async fn closed_by_server(stream: &mut TcpStream) -> Result<(), tokio::time::error::Elapsed> {
        let mut sink = Vec::new();
        tokio::time::timeout(CAP, stream.read_to_end(&mut sink)).await.map(|_| ())
    }

    #[tokio::test]
    async fn slow_and_old_connections_are_closed() {
        let admin = start(Limits { header_read_timeout: Duration::from_millis(200), ..LIMITS }).await;
        let mut idle = TcpStream::connect(admin.addr).await.unwrap();
        let mut slow = TcpStream::connect(admin.addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost").await.unwrap();
        closed_by_server(&mut idle).await.expect("idle connection closed");
        closed_by_server(&mut slow).await.expect("slow connection closed");
        admin.stop().await;

        let admin = start(Limits { max_age: Duration::from_millis(200), ..LIMITS }).await;
        let mut kept = TcpStream::connect(admin.addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        closed_by_server(&mut kept).await.expect("connection closed at its age");
        admin.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let admin = start_default().await;
        let mut stream = TcpStream::connect(admin.addr).await.unwrap();
        let raw = format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEADER_BYTES));
        let (code, head, _) = exchange(&mut stream, &raw).await;
        assert_eq!(code, 431, "{head}");
        admin.stop().await;
    }

    #[tokio::test]
    async fn shutdown_ends_serve_with_connections_open() {
        let admin = start_default().await;
        let mut idle = TcpStream::connect(admin.addr).await.unwrap();
        assert_eq!(request(admin.addr, "GET", "/healthz").await.0, 200);
        admin.stop().await;
        closed_by_server(&mut idle).await.expect("closed at shutdown");
    }

    #[test]
    fn times_before_1970_or_after_9999_do_not_panic() {
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(300_000_000_000)), "9999-12-31T23:59:59Z");
    }

    #[tokio::test]
    async fn bind_names_the_flag_and_address() {
        let taken = bind("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr, false).await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot serve --metrics on {addr}: ")), "{e}");
    }
}
