//! `/metrics`: the host's counters in the OpenMetrics text format.
//!
//! Nothing is registered ahead of time: a [`Collector`] reads
//! [`Inventory::services`] at each scrape, so the numbers are the ones the
//! services count anyway ([`crate::stats`]) and a service or plugin version
//! that came or went since the last scrape simply appears or disappears.
//! Labels come only from service names and version ids, which the
//! configuration bounds; never from a peer.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::stats::{HistogramSnapshot, Snapshot};
use crate::status::{Inventory, ServiceStatus};

/// The content type of the OpenMetrics text format `prometheus-client`
/// writes (it ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The counters [`crate::status::VersionStatus::stats`] counts per plugin
/// version; the others stay 0 there.
pub const VERSION_COUNTERS: [&str; 8] = [
    "requests",
    "no_reply",
    "plugin_errors",
    "traps",
    "timeouts",
    "replies_dropped",
    "sessions_closed",
    "connections_retired",
];

/// A registry holding one collector over `inventory`.
pub fn registry(inventory: Arc<dyn Inventory>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(inventory)));
    registry
}

/// Encode every metric, ending with `# EOF`.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

/// Reads the inventory at scrape time.
struct Scrape(Arc<dyn Inventory>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let services = self.0.services();
        encode_services(&mut encoder, &services, self.0.config_reloads())
    }
}

type ServiceLabels<'a> = [(&'static str, &'a str); 1];
type VersionLabels<'a> = [(&'static str, &'a str); 2];

fn service_labels(s: &ServiceStatus) -> ServiceLabels<'_> {
    [("service", s.name.as_str())]
}

/// Every (service, live version) pair with its labels.
fn versions(services: &[ServiceStatus]) -> impl Iterator<Item = (VersionLabels<'_>, &crate::status::VersionStatus)> {
    services.iter().flat_map(|s| {
        s.versions.iter().map(move |v| ([("service", s.name.as_str()), ("version", v.version.version.as_str())], v))
    })
}

/// Each family once, its samples together (OpenMetrics requires it).
fn encode_services(
    encoder: &mut DescriptorEncoder,
    services: &[ServiceStatus],
    (reloads_ok, reloads_failed): (u64, u64),
) -> fmt::Result {
    let totals: Vec<_> = services.iter().map(|s| (service_labels(s), s.totals.fields())).collect();
    for (i, (name, _)) in Snapshot::default().fields().into_iter().enumerate() {
        let help = format!("{} (every version of the service, since it started)", counter_help(name));
        let samples = totals.iter().map(|(labels, fields)| (*labels, fields[i].1));
        counter(encoder, &format!("wasm_sockets_{name}"), &help, samples)?;
    }
    for name in VERSION_COUNTERS {
        let help = format!("{} (this plugin version)", counter_help(name));
        let samples = versions(services).map(|(labels, v)| (labels, field(&v.stats, name)));
        counter(encoder, &format!("wasm_sockets_version_{name}"), &help, samples)?;
    }
    histogram(
        encoder,
        "wasm_sockets_request_duration",
        "Time from a request's start to its outcome, in the plugin",
        versions(services).map(|(labels, v)| (labels, &v.latency)),
    )?;
    histogram(
        encoder,
        "wasm_sockets_instantiation_duration",
        "Time to create a fresh plugin instance",
        versions(services).map(|(labels, v)| (labels, &v.instantiation)),
    )?;
    gauge(
        encoder,
        "wasm_sockets_in_flight_requests",
        "Requests running in the plugin now",
        services.iter().map(|s| (service_labels(s), s.in_flight)),
    )?;
    gauge(
        encoder,
        "wasm_sockets_open_connections",
        "TCP connections open now",
        services.iter().map(|s| (service_labels(s), s.open_connections)),
    )?;
    gauge(
        encoder,
        "wasm_sockets_service_ready",
        "1 if the service's plugin is loaded and every address listens, else 0",
        services.iter().map(|s| (service_labels(s), u64::from(s.ready))),
    )?;
    let mut info = encoder.encode_descriptor(
        "wasm_sockets_plugin",
        "Each live plugin version (sha256 prefix) of each service; current=\"true\" serves new requests",
        None,
        MetricType::Info,
    )?;
    for s in services {
        for v in &s.versions {
            info.encode_info(&[
                ("service", s.name.as_str()),
                ("plugin", v.version.plugin.as_str()),
                ("version", v.version.version.as_str()),
                ("current", if v.current { "true" } else { "false" }),
            ])?;
        }
    }
    counter(
        encoder,
        "wasm_sockets_config_reloads",
        "Reloads of the services file (--config), by result",
        [([("result", "ok")], reloads_ok), ([("result", "failed")], reloads_failed)],
    )
}

fn field(snapshot: &Snapshot, name: &str) -> u64 {
    snapshot.fields().into_iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| v)
}

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        metric.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A histogram in seconds (`name` gets the `_seconds` suffix).
fn histogram<'a, L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, &'a HistogramSnapshot)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in samples {
        metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &per_bucket(h), None)?;
    }
    Ok(())
}

/// The encoder sums the buckets itself: it wants each bucket's own count,
/// and the `+Inf` bucket as the last.
fn per_bucket(h: &HistogramSnapshot) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut out = Vec::with_capacity(h.buckets.len() + 1);
    for &(bound, cumulative) in &h.buckets {
        out.push((bound, cumulative.saturating_sub(below)));
        below = below.max(cumulative);
    }
    out.push((f64::INFINITY, h.count.saturating_sub(below)));
    out
}

/// `# HELP` of a [`Snapshot`] counter (the README lists the same).
fn counter_help(name: &str) -> &'static str {
    match name {
        "requests" => "Requests handed to the plugin",
        "replies" => "Replies sent",
        "no_reply" => "Requests the plugin answered with no reply",
        "plugin_errors" => "Requests the plugin answered with an error",
        "traps" => "Calls whose plugin instance trapped",
        "timeouts" => "Requests cut off at the timeout or out of fuel",
        "replies_dropped" => "Replies not sent: over --max-reply or the amplification cap",
        "requests_dropped" => "Requests dropped before the plugin saw them",
        "udp_send_errors" => "UDP replies the kernel refused to send",
        "connections" => "TCP connections accepted",
        "connections_closed_by_host" => "TCP connections closed by the host",
        "connections_closed" => "TCP connections that ended, for any reason",
        "sessions_closed" => "Connection-world sessions whose destructor ran",
        "connections_retired" => "Connections closed because their plugin version was replaced",
        "instances_expired" => "Idle instances dropped after waiting too long for reuse",
        "reloads" => "Plugin versions swapped in by a reload",
        "reload_failures" => "Plugin reloads refused because the new file was not a valid plugin",
        "cache_hits" => "Plugin loads served from the compile cache",
        "cache_misses" => "Plugin loads that compiled the component",
        "kv_ops" => "Key-value operations plugins made",
        "kv_errors" => "Key-value operations that returned an error to the plugin",
        "udp_rate_limited" => "Datagrams dropped unseen because their source was over --udp-source-rate",
        _ => "A host counter (see the README)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_own_help() {
        for (name, _) in Snapshot::default().fields() {
            assert_ne!(counter_help(name), counter_help("not a counter"), "no # HELP for {name}");
        }
    }

    #[test]
    fn version_counters_are_snapshot_fields() {
        let names: Vec<_> = Snapshot::default().fields().into_iter().map(|(n, _)| n).collect();
        for name in VERSION_COUNTERS {
            assert!(names.contains(&name), "{name} is not a Snapshot field");
        }
    }

    #[test]
    fn buckets_are_uncumulated_with_inf_last() {
        let h = HistogramSnapshot { buckets: vec![(0.1, 1), (0.5, 3), (1.0, 3)], count: 5, sum_seconds: 9.0 };
        assert_eq!(per_bucket(&h), vec![(0.1, 1), (0.5, 2), (1.0, 0), (f64::INFINITY, 2)]);
    }
}
