//! The report of `bench protocols`: the setup (machine, versions, how each
//! server runs), the markdown table with the ratios against the goals,
//! and the notes (every problem, skip and failure, and the servers' logs).

use std::fmt::Write as _;

use super::clients::{self, Measured};
use super::{Context, REUSE};
use crate::process::Log;
use crate::report::si;

/// One side of a row.
#[derive(Debug, Clone)]
pub enum Side {
    Measured(Measured),
    /// Not run, and why (a missing tool, peer or plugin).
    Skipped(String),
    /// Run, and failed.
    Failed(String),
}

/// A row of the table.
#[derive(Debug)]
pub struct Row {
    /// Its place in the table.
    pub order: usize,
    pub label: String,
    pub client: String,
    pub peer: &'static str,
    /// The issue's goal for host / peer, if it sets one.
    pub goal: Option<f64>,
    pub peer_side: Side,
    pub host_side: Side,
}

impl Row {
    /// Both sides measured.
    pub fn complete(&self) -> bool {
        matches!((&self.peer_side, &self.host_side), (Side::Measured(_), Side::Measured(_)))
    }

    fn ratio(&self) -> Option<f64> {
        match (&self.peer_side, &self.host_side) {
            (Side::Measured(p), Side::Measured(h)) if p.rps > 0.0 => Some(h.rps / p.rps),
            _ => None,
        }
    }
}

/// ` (avg 724 µs, p99 2.3 ms)`, what the client gave of the latency.
pub fn latency(m: &Measured) -> String {
    let parts: Vec<String> = [("avg", m.avg_us), ("p99", m.p99_us)]
        .into_iter()
        .filter_map(|(name, v)| v.map(|us| format!("{name} {}", micros(us))))
        .collect();
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

fn micros(us: f64) -> String {
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.0} µs") }
}

fn cell(side: &Side) -> String {
    match side {
        Side::Measured(m) => format!("{}{}", si(m.rps), latency(m)),
        Side::Skipped(_) => "skipped".to_owned(),
        Side::Failed(_) => "failed".to_owned(),
    }
}

/// The table, one line per row, in markdown.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| row | client | peer | peer req/s | host req/s | host / peer | goal |\n|---|---|---|---:|---:|---:|---|\n",
    );
    for row in rows {
        // Rounded down: a ratio just under its goal never shows as the goal.
        let ratio = row.ratio().map_or_else(|| "—".to_owned(), |r| format!("{:.2}", (r * 100.0).floor() / 100.0));
        let goal = match (row.goal, row.ratio()) {
            (Some(g), Some(r)) if r >= g => format!("≥ {g} met"),
            (Some(g), Some(_)) => format!("≥ {g} **below**"),
            (Some(g), None) => format!("≥ {g}"),
            (None, _) => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {ratio} | {goal} |",
            row.label,
            row.client,
            row.peer,
            cell(&row.peer_side),
            cell(&row.host_side)
        );
    }
    out
}

/// The CPU each side's server and client used during the measurement: a
/// first look at what limits a row (on 2 cores, a client that takes one
/// leaves one to the server).
pub fn cpu(rows: &[Row]) -> String {
    let mut out = String::from(
        "CPU during the measurement (1.00 = one core busy):\n\n\
         | row | peer | peer: server | peer: client | host: server | host: client |\n|---|---|---:|---:|---:|---:|\n",
    );
    let share = |side: &Side, pick: fn(&Measured) -> Option<f64>| match side {
        Side::Measured(m) => pick(m).map_or_else(|| "—".to_owned(), |v| format!("{v:.2}")),
        _ => "—".to_owned(),
    };
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.label,
            row.peer,
            share(&row.peer_side, |m| m.server_cpu),
            share(&row.peer_side, |m| m.client_cpu),
            share(&row.host_side, |m| m.server_cpu),
            share(&row.host_side, |m| m.client_cpu),
        );
    }
    out
}

/// What ran, on what, with which versions and settings.
pub async fn setup(cx: &Context<'_>, rows: &[Row]) -> String {
    let o = cx.options;
    let mut out = String::from("## Protocols against their usual servers\n\n");
    let _ = writeln!(out, "- machine: {}; load average at the start: {}", crate::sys::machine(), cx.load);
    let _ = writeln!(
        out,
        "- each measurement: `--warmup` {:?} (unmeasured; sizes redis-benchmark's run), then {:?}; \
         one server at a time, the client on the same machine",
        o.warmup, o.duration
    );
    let _ = writeln!(
        out,
        "- workers: {} for DNS and HTTP (host `--workers`, NSD `server-count`, nginx `worker_processes`, \
         wasmtime serve `TOKIO_WORKER_THREADS`); 1 for RESP (redis-server is single-threaded; host `--workers 1`)",
        o.workers
    );
    let mut versions = Vec::new();
    for (program, args) in [
        ("nsd", &["-v"][..]),
        ("dnsperf", &["-d", "/nonexistent"][..]),
        ("redis-server", &["--version"][..]),
        ("redis-benchmark", &["--version"][..]),
        ("wrk", &["-v"][..]),
        ("nginx", &["-v"][..]),
    ] {
        if let Ok(path) = cx.tools.get(program) {
            versions.push(format!("{program}: {}", clients::version(path, args).await));
        }
    }
    if let Ok(wasmtime) = &cx.wasmtime {
        versions.push(format!("wasmtime: {}", clients::version(wasmtime, &["--version"]).await));
    }
    if o.host.is_file() {
        versions.push(format!("host: {}", clients::version(&o.host, &["--version"]).await));
    }
    let _ = writeln!(out, "- versions: {}", versions.join("; "));
    let zone = match &cx.zone {
        Ok(z) => {
            format!("`{}` (origin `{}`, {} queries in the file, cycled)", z.path.display(), z.origin, z.queries.len())
        }
        Err(e) => format!("none: {e}"),
    };
    let _ = writeln!(
        out,
        "- DNS: zone {zone}; NSD `-d` with `server-count: {}`, `rrl-ratelimit: 0`, no database, no chroot; host `--plugin {} --udp A --tcp A --framing u16 --max-amplification 0 --var zone=<the zone file>`, the reuse rows with `--instance-reuse {REUSE}`",
        o.workers,
        o.dns_plugin.display()
    );
    let _ = writeln!(
        out,
        "- RESP: `redis-server --port P --bind 127.0.0.1 --dir TMP` (persistence as shipped: RDB `save 3600 1 300 100 60 10000`, no AOF); host `--plugin {} --tcp A --workers 1 --data-dir TMP` (embedded store); redis-benchmark without `-r` (one key), 3-byte values, `-n` the warm-up's rate × the duration",
        o.resp_plugin.display()
    );
    let hello = cx.hello.as_ref().map_or_else(|_| "hello.wasm".to_owned(), |p| p.display().to_string());
    let _ = writeln!(
        out,
        "- HTTP: `TOKIO_WORKER_THREADS={} wasmtime serve -Scli --addr A {hello}` (bench/peers/wasi-http-hello, built for wasm32-wasip2; a fresh instance per request, serve's default); nginx `return 200 \"Hello, World!\\n\"`, `access_log off`, defaults otherwise; host `--plugin {} --tcp A --workers {}`; every server checked to answer `GET /` with 200 and `Hello, World!\\n` first",
        o.workers,
        o.http_plugin.display(),
        o.workers
    );
    let _ = writeln!(
        out,
        "- rows: {} ({} measured on both sides)",
        rows.len(),
        rows.iter().filter(|r| r.complete()).count()
    );
    out
}

/// Every problem, skip and failure, then each server's warnings and counters.
pub fn notes(rows: &[Row], logs: &[(String, Log)]) -> String {
    let mut out = String::new();
    for row in rows {
        for (who, side) in [(row.peer, &row.peer_side), ("host", &row.host_side)] {
            let what = match side {
                Side::Measured(m) if !m.problems.is_empty() => m.problems.join("; "),
                Side::Measured(_) => continue,
                Side::Skipped(why) => format!("skipped: {why}"),
                Side::Failed(why) => format!("failed: {why}"),
            };
            let _ = writeln!(out, "- {}, {who}: {what}", row.label);
        }
    }
    if !out.is_empty() {
        out.insert_str(0, "\nProblems:\n\n");
    }
    if !logs.is_empty() {
        out.push_str("\nServers:\n\n");
    }
    for (name, log) in logs {
        let warnings = match &log.first_warning {
            Some(first) => format!("{} warnings, the first: {first}", log.warnings),
            None => "no warnings".to_owned(),
        };
        let stats = log.stats.as_deref().map_or_else(String::new, |s| format!("; {s}"));
        let _ = writeln!(out, "- {name}: {warnings}{stats}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: Side, host: Side, goal: Option<f64>) -> Row {
        Row { order: 0, label: "r".into(), client: "c".into(), peer: "p", goal, peer_side: peer, host_side: host }
    }

    fn rate(rps: f64) -> Side {
        Side::Measured(Measured { rps, avg_us: Some(724.0), ..Measured::default() })
    }

    #[test]
    fn ratios_are_rounded_down_against_their_goal() {
        let table = render(&[
            row(rate(1000.0), rate(999.0), Some(1.0)),
            row(rate(1000.0), rate(3000.0), Some(3.0)),
            row(rate(1000.0), Side::Skipped("no plugin".into()), Some(0.5)),
        ]);
        let lines: Vec<&str> = table.lines().skip(2).collect();
        assert!(lines[0].ends_with("| 0.99 | ≥ 1 **below** |"), "{}", lines[0]);
        assert!(lines[0].contains("| 1.00k (avg 724 µs) |"), "{}", lines[0]);
        assert!(lines[1].ends_with("| 3.00 | ≥ 3 met |"), "{}", lines[1]);
        assert!(lines[2].ends_with("| skipped | — | ≥ 0.5 |"), "{}", lines[2]);
    }

    #[test]
    fn skips_and_failures_are_explained_in_the_notes() {
        let rows = [row(Side::Failed("nsd did not answer".into()), Side::Skipped("no plugin".into()), None)];
        let notes = notes(&rows, &[]);
        assert!(notes.contains("- r, p: failed: nsd did not answer"), "{notes}");
        assert!(notes.contains("- r, host: skipped: no plugin"), "{notes}");
        assert!(!rows[0].complete());
    }
}
