//! The admin endpoint (`--metrics`): Prometheus metrics checked against
//! the traffic a test sent, health, readiness and status.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use crate::support::*;

/// `GET path` over HTTP/1.1: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // Chunked bodies: the test only needs the text, so drop the chunk sizes.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// The admin address the host logged (`admin listening http://ADDR`).
pub fn admin_addr(host: &Host) -> SocketAddr {
    let line = host.logs.lines().into_iter().find(|l| l.contains("admin listening http://")).expect("admin line");
    line.rsplit("http://").next().unwrap().trim().parse().unwrap()
}

/// The value of the sample `name{labels...}` whose labels include every
/// one of `labels` (e.g. `service="a"`).
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_count_the_traffic_sent_per_service_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let a_plugin = dir.path().join("a.wasm");
    std::fs::copy(plugin("echo"), &a_plugin).unwrap();
    let file = dir.path().join("host.toml");
    std::fs::write(
        &file,
        format!(
            "metrics = \"127.0.0.1:0\"\n[[service]]\nname = \"a\"\nplugin = \"{}\"\nudp = [\"127.0.0.1:0\"]\n\
             [[service]]\nname = \"b\"\nplugin = \"{}\"\ntcp = [\"127.0.0.1:0\"]\n",
            a_plugin.display(),
            plugin("upper").display()
        ),
    )
    .unwrap();
    let host = Host::start(&["--config", file.to_str().unwrap()]);
    let admin = admin_addr(&host);
    let (udp, tcp) = (host.udp(), host.tcp());

    for i in 0..20 {
        assert_eq!(udp_roundtrip(udp, format!("r{i}").as_bytes()), format!("r{i}").as_bytes());
    }
    let mut conn = tcp_connect(tcp);
    for _ in 0..7 {
        assert_eq!(line_roundtrip(&mut conn, b"x"), b"X\n");
    }

    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    let a = &["service=\"a\""][..];
    let b = &["service=\"b\""][..];
    assert_eq!(sample(&metrics, "wasm_sockets_requests_total", a), Some(20.0), "{metrics}");
    assert_eq!(sample(&metrics, "wasm_sockets_replies_total", a), Some(20.0));
    assert_eq!(sample(&metrics, "wasm_sockets_requests_total", b), Some(7.0));
    assert_eq!(sample(&metrics, "wasm_sockets_replies_total", b), Some(7.0));
    assert_eq!(sample(&metrics, "wasm_sockets_open_connections", b), Some(1.0));
    assert_eq!(sample(&metrics, "wasm_sockets_connections_total", b), Some(1.0));
    assert_eq!(sample(&metrics, "wasm_sockets_in_flight_requests", a), Some(0.0));
    assert_eq!(sample(&metrics, "wasm_sockets_service_ready", a), Some(1.0));
    assert_eq!(sample(&metrics, "wasm_sockets_version_requests_total", a), Some(20.0));
    assert_eq!(sample(&metrics, "wasm_sockets_request_duration_seconds_count", a), Some(20.0));
    assert_eq!(sample(&metrics, "wasm_sockets_instantiation_duration_seconds_count", a), Some(20.0));
    assert_eq!(sample(&metrics, "wasm_sockets_plugin_info", &["service=\"a\"", "plugin=\"a\""]), Some(1.0));
    // No peer address is ever a label.
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");

    // A new version counts on its own; the service's totals keep going.
    let old_version = status_json(admin)["services"][0]["plugin"]["version"].as_str().unwrap().to_string();
    let tmp = dir.path().join(".a.wasm.new");
    std::fs::copy(plugin("upper"), &tmp).unwrap();
    std::fs::rename(&tmp, &a_plugin).unwrap();
    assert!(eventually(REPLY_TIMEOUT, || udp_roundtrip(udp, b"v") == b"V"), "the reload never took effect");
    for _ in 0..4 {
        assert_eq!(udp_roundtrip(udp, b"v"), b"V");
    }
    let status = status_json(admin);
    let new_version = status["services"][0]["plugin"]["version"].as_str().unwrap().to_string();
    assert_ne!(new_version, old_version);
    let (_, metrics) = http_get(admin, "/metrics");
    let requests = sample(&metrics, "wasm_sockets_requests_total", a).unwrap();
    let on_new =
        sample(&metrics, "wasm_sockets_version_requests_total", &["service=\"a\"", &format!("\"{new_version}\"")])
            .unwrap();
    assert!(requests >= 25.0 && on_new >= 5.0 && requests - on_new >= 20.0, "{requests} {on_new}\n{metrics}");
    assert_eq!(sample(&metrics, "wasm_sockets_reloads_total", a), Some(1.0));
}

fn status_json(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn health_readiness_and_status() {
    let host = Host::start(&[
        "--plugin",
        plugin("echo").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&host);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    assert_eq!(http_get(admin, "/readyz").0, 200);
    assert_eq!(http_get(admin, "/nope").0, 404);
    udp_roundtrip(host.udp(), b"one");
    let status = status_json(admin);
    let service = &status["services"][0];
    assert_eq!(service["name"], "echo");
    assert_eq!(service["ready"], true);
    assert_eq!(service["plugin"]["version"].as_str().unwrap().len(), 12);
    assert_eq!(service["counters"]["requests"], 1);
    let addresses = service["addresses"].as_array().unwrap();
    assert_eq!(addresses.len(), 2, "{service}");
    assert!(addresses.iter().any(|a| a["transport"] == "udp" && a["address"] == host.udp().to_string()));
}

#[test]
fn an_admin_address_in_use_is_refused_before_any_plugin_loads() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) =
        run_host(&["--plugin", plugin("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", "--metrics", &addr]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--metrics") && stderr.contains(&addr), "{stderr}");
    assert!(!stderr.contains("loaded plugin"), "{stderr}");
}
