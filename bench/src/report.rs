//! The comparison's results and their markdown table.
//!
//! Each row holds every round's sample for each server; the table shows
//! medians, which one disturbed round (another process waking up on a
//! 2-core machine) cannot drag the way it drags a mean.

use std::fmt::{self, Write as _};

use crate::stats::median;

/// The servers compared, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Native,
    HostReuse,
    HostFresh,
    /// The host serving a `connection-handler` plugin: an instance per
    /// connection, the plugin framing its own protocol. TCP only.
    HostConn,
    /// The host with `--tcp-isolation connection`: a `handler` plugin with
    /// one instance per connection serving all its frames.
    HostPinned,
}

impl Server {
    pub const ALL: [Server; 5] =
        [Server::Native, Server::HostReuse, Server::HostFresh, Server::HostConn, Server::HostPinned];
    /// The hosts, each compared with the baseline in a column of its own.
    pub const HOSTS: [Server; 4] = [Server::HostReuse, Server::HostFresh, Server::HostConn, Server::HostPinned];

    pub fn name(self) -> &'static str {
        match self {
            Server::Native => "native",
            Server::HostReuse => "host, reuse",
            Server::HostFresh => "host, fresh",
            Server::HostConn => "host, conn",
            Server::HostPinned => "host, pinned",
        }
    }

    /// The name in a ratio column's heading: `reuse` of `host, reuse`.
    fn short_name(self) -> &'static str {
        self.name().trim_start_matches("host, ")
    }

    /// Whether it serves UDP (a `connection-handler` plugin serves TCP only).
    pub fn serves_udp(self) -> bool {
        self != Server::HostConn
    }

    /// Whether it holds a plugin instance for each open TCP connection.
    pub fn instance_per_connection(self) -> bool {
        matches!(self, Server::HostConn | Server::HostPinned)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a row measures, which decides how it is shown and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests per second; compared as a ratio (higher is better).
    Throughput,
    /// A latency in µs (a percentile, or a median); compared as a difference.
    Micros,
    /// Resident memory per connection in KiB; compared as a ratio.
    KibPerConn,
    /// Milliseconds; compared as a ratio.
    Millis,
}

/// What went wrong while measuring one cell, summed over the rounds.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    pub errors: u64,
    pub lost: u64,
    pub late: u64,
    pub first_error: Option<String>,
    /// Anything else that makes the number less than it seems.
    pub notes: Vec<String>,
}

impl Problems {
    /// Add a load's error counts and its first error.
    pub fn add(&mut self, errors: u64, lost: u64, late: u64, first_error: Option<&str>) {
        self.errors += errors;
        self.lost += lost;
        self.late += late;
        if self.first_error.is_none() {
            self.first_error = first_error.map(str::to_owned);
        }
    }

    /// A failure that left no sample.
    pub fn failed(&mut self, why: impl fmt::Display) {
        self.add(1, 0, 0, Some(&why.to_string()));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Say how one load went on stderr (after `progress`), count what went
    /// wrong in it, and give its report back if it ran. `conns` names its
    /// connections in the note about those with no reply in the warm-up.
    pub(crate) fn take_load<'r>(
        &mut self,
        progress: &str,
        report: &'r anyhow::Result<crate::load::Report>,
        conns: &str,
    ) -> Option<&'r crate::load::Report> {
        match report {
            Ok(r) => {
                let t = &r.tally;
                eprintln!(
                    "{progress}: {:.0} req/s, p50 {} µs, p99 {} µs, {} errors, {} lost, {} late, {} replies in all",
                    r.rps(),
                    t.quantile_us(0.5),
                    t.quantile_us(0.99),
                    t.errors,
                    t.lost,
                    t.late,
                    t.answered
                );
                self.add(t.errors, t.lost, t.late, t.first_error.as_deref());
                if r.cold > 0 {
                    self.note(format!("{} {conns} had no reply during the warm-up", r.cold));
                }
                Some(r)
            }
            Err(e) => {
                eprintln!("{progress}: failed: {e:#}");
                self.failed(format_args!("{e:#}"));
                None
            }
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.errors + self.lost + self.late > 0 || !self.notes.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = [(self.errors, "errors"), (self.lost, "lost"), (self.late, "late")];
        let mut parts: Vec<String> =
            counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        if let Some(e) = &self.first_error {
            parts.push(format!("first error: {e}"));
        }
        parts.extend(self.notes.iter().cloned());
        f.write_str(&parts.join("; "))
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub metric: Metric,
    samples: [Vec<f64>; Server::ALL.len()],
    problems: [Problems; Server::ALL.len()],
}

impl Row {
    pub fn new(label: impl Into<String>, metric: Metric) -> Self {
        Self { label: label.into(), metric, samples: Default::default(), problems: Default::default() }
    }

    pub fn push(&mut self, server: Server, sample: f64) {
        self.samples[server.index()].push(sample);
    }

    pub fn problems(&mut self, server: Server) -> &mut Problems {
        &mut self.problems[server.index()]
    }

    pub fn median(&self, server: Server) -> Option<f64> {
        median(&self.samples[server.index()])
    }

    fn cell(&self, server: Server) -> String {
        let Some(v) = self.median(server) else {
            return "—".to_owned();
        };
        match self.metric {
            Metric::Throughput => format!("{} req/s", si(v)),
            Metric::Micros => format!("{v:.0} µs"),
            Metric::KibPerConn => format!("{v:.1} KiB"),
            Metric::Millis => format!("{v:.0} ms"),
        }
    }

    /// The host against the baseline: a ratio, or for latency a difference.
    fn versus_native(&self, host: Server) -> String {
        let (Some(h), Some(n)) = (self.median(host), self.median(Server::Native)) else {
            return "—".to_owned();
        };
        match self.metric {
            Metric::Micros => format!("{:+.0} µs", h - n),
            _ if n == 0.0 => "—".to_owned(),
            _ => format!("{:.2}×", h / n),
        }
    }
}

/// The markdown table of `rows`, then a list of every error seen. A cell
/// a server was not measured in (a UDP load of a TCP-only host) shows `—`.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut heading = vec!["Load".to_owned()];
    heading.extend(Server::ALL.map(|s| s.name().to_owned()));
    heading.extend(Server::HOSTS.map(|s| format!("{} / native", s.short_name())));
    let _ = writeln!(out, "| {} |", heading.join(" | "));
    let _ = writeln!(out, "|---|{}", "--:|".repeat(heading.len() - 1));
    for row in rows {
        let mut cells = vec![row.label.clone()];
        cells.extend(Server::ALL.map(|s| row.cell(s)));
        cells.extend(Server::HOSTS.map(|s| row.versus_native(s)));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let problems: Vec<String> = rows
        .iter()
        .flat_map(|row| Server::ALL.map(|s| (row, s)))
        .filter(|(row, s)| row.problems[s.index()].any())
        .map(|(row, s)| format!("- {}, {}: {}", row.label, s.name(), row.problems[s.index()]))
        .collect();
    out.push('\n');
    if problems.is_empty() {
        out.push_str("Every reply matched its request: no errors, no lost or late replies.\n");
    } else {
        out.push_str("Problems (summed over the rounds):\n\n");
        for p in problems {
            out.push_str(&p);
            out.push('\n');
        }
    }
    out
}

/// `1234567.0` as `1.23M`: three significant digits are what a benchmark
/// on a shared machine can claim.
pub(crate) fn si(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.0}k", v / 1e3),
        v if v >= 1e3 => format!("{:.2}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_medians_and_the_host_against_native() {
        let mut tput = Row::new("UDP", Metric::Throughput);
        for (s, v) in [(Server::Native, 200_000.0), (Server::Native, 100_000.0), (Server::Native, 300_000.0)] {
            tput.push(s, v);
        }
        tput.push(Server::HostReuse, 100_000.0);
        let mut p99 = Row::new("p99", Metric::Micros);
        p99.push(Server::Native, 50.0);
        p99.push(Server::HostReuse, 80.0);
        p99.push(Server::HostConn, 62.0);
        let table = render(&[tput, p99]);
        let heading = "| Load | native | host, reuse | host, fresh | host, conn | host, pinned \
                       | reuse / native | fresh / native | conn / native | pinned / native |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
        assert!(table.starts_with(heading), "{table}");
        assert!(table.contains("| UDP | 200k req/s | 100k req/s | — | — | — | 0.50× | — | — | — |"), "{table}");
        assert!(table.contains("| p99 | 50 µs | 80 µs | — | 62 µs | — | +30 µs | — | +12 µs | — |"), "{table}");
        assert!(table.contains("no errors"));
    }

    #[test]
    fn problems_are_listed_with_their_first_error() {
        let mut row = Row::new("TCP", Metric::Throughput);
        row.problems(Server::HostFresh).add(2, 0, 1, Some("tcp: the server closed the connection"));
        row.problems(Server::HostReuse).note("carried 10 of 20 req/s");
        let table = render(&[row]);
        let fresh = "- TCP, host, fresh: 2 errors; 1 late; first error: tcp: the server closed the connection\n";
        assert!(table.contains(fresh), "{table}");
        assert!(table.contains("- TCP, host, reuse: carried 10 of 20 req/s\n"), "{table}");
    }

    #[test]
    fn rates_are_rounded_to_three_digits() {
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(45_678.0), "46k");
        assert_eq!(si(4_567.0), "4.57k");
        assert_eq!(si(456.0), "456");
    }
}
