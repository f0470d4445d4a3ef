//! The real clients of `bench protocols` — `dnsperf`, `redis-benchmark`
//! and `wrk` — run for a bounded time, and what their output says.
//!
//! The clients are the measurement: the same binary with the same flags
//! drives the peer and the host, and its own numbers are reported. The
//! parsers are strict about the figure they need (no requests/s, no
//! result) and lenient about everything else, which only adds notes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tokio::time::{Instant, timeout};

/// How much longer than asked a client may run before it is killed: its
/// start, and the queries it waits for after its time limit.
const CLIENT_SLACK: Duration = Duration::from_secs(15);
/// At most this much of a client's output is kept.
const MAX_OUTPUT: usize = 1 << 20;

/// What one client run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// Requests (or queries) per second.
    pub rps: f64,
    /// Mean latency in µs, when the client gives it.
    pub avg_us: Option<f64>,
    /// The 99th percentile in µs, when the client gives it.
    pub p99_us: Option<f64>,
    /// The server's CPU time over the measurement's wall time (1.0 is one
    /// core busy), its forked workers included.
    pub server_cpu: Option<f64>,
    /// The same for the client.
    pub client_cpu: Option<f64>,
    /// Anything that makes the figure doubtful: errors, losses, wrong
    /// answers, as the client reported them.
    pub problems: Vec<String>,
}

/// Run `command` to completion, for at most `limit` plus [`CLIENT_SLACK`],
/// and return its stdout and stderr together (dnsperf and wrk write their
/// results to stdout, their complaints to stderr).
pub async fn run(mut command: Command, limit: Duration) -> anyhow::Result<String> {
    let shown = format!("{:?}", command.as_std());
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = command.spawn().with_context(|| format!("cannot start {shown}"))?;
    let limit = limit + CLIENT_SLACK;
    let output = timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{shown} did not finish within {limit:?} (killed)"))?
        .with_context(|| format!("cannot wait for {shown}"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("{shown} failed ({}): {}", output.status, last_lines(&text, 5));
    }
    Ok(text)
}

/// Run `command` for `span`, then kill it, and return its stdout so far:
/// for a client that reports its progress while it runs (redis-benchmark).
pub async fn run_for(mut command: Command, span: Duration) -> anyhow::Result<String> {
    let shown = format!("{:?}", command.as_std());
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = command.spawn().with_context(|| format!("cannot start {shown}"))?;
    let mut stdout = child.stdout.take().context("client stdout was not captured")?;
    let deadline = Instant::now() + span;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stdout.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) if out.len() < MAX_OUTPUT => out.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e).with_context(|| format!("cannot read the output of {shown}")),
        }
    }
    let _ = child.kill().await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The last `n` non-empty lines of `text`, on one line, for an error.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The first number in `s` (after leading spaces).
fn number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The text after `key` on the first line that has it.
fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.split_once(key).map(|(_, rest)| rest))
}

/// dnsperf's statistics: `Queries per second:`, `Average Latency (s):`,
/// and as problems any lost query and any response code but NOERROR (the
/// query file asks only for names in the zone).
pub fn parse_dnsperf(text: &str) -> anyhow::Result<Measured> {
    let rps = after(text, "Queries per second:")
        .and_then(number)
        .with_context(|| format!("no `Queries per second:` in dnsperf's output: {}", last_lines(text, 5)))?;
    let avg_us = after(text, "Average Latency (s):").and_then(number).map(|s| s * 1e6);
    let mut problems = Vec::new();
    if let Some(lost) = after(text, "Queries lost:").and_then(number)
        && lost > 0.0
    {
        problems.push(format!("{lost} queries lost"));
    }
    if let Some(codes) = after(text, "Response codes:") {
        let codes = codes.trim();
        if codes.split(',').any(|c| !c.trim().starts_with("NOERROR")) {
            problems.push(format!("response codes: {codes}"));
        }
    }
    Ok(Measured { rps, avg_us, problems, ..Measured::default() })
}

/// wrk's `Requests/sec:`, the thread-stats `Latency` average, the `99%`
/// line of `--latency`, and as problems non-2xx responses and socket errors.
pub fn parse_wrk(text: &str) -> anyhow::Result<Measured> {
    let rps = after(text, "Requests/sec:")
        .and_then(number)
        .with_context(|| format!("no `Requests/sec:` in wrk's output: {}", last_lines(text, 5)))?;
    let avg_us = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(wrk_duration_us);
    let p99_us = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(wrk_duration_us);
    let mut problems = Vec::new();
    if let Some(n) = after(text, "Non-2xx or 3xx responses:") {
        problems.push(format!("{} non-2xx or 3xx responses", n.trim()));
    }
    if let Some(errors) = after(text, "Socket errors:") {
        problems.push(format!("socket errors: {}", errors.trim()));
    }
    Ok(Measured { rps, avg_us, p99_us, problems, ..Measured::default() })
}

/// A wrk duration (`695.00us`, `2.30ms`, `1.01s`, `2.00m`) in µs.
fn wrk_duration_us(s: &str) -> Option<f64> {
    let unit_at = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let value: f64 = s[..unit_at].parse().ok()?;
    let scale = match &s[unit_at..] {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(value * scale)
}

/// The last progress line of a redis-benchmark run (`SET: rps=… (overall:
/// 352063.5) avg_msec=… (overall: 1.764)`) for `test`: the overall rate
/// and mean latency since the start. Lines end in `\r`, not `\n`.
pub fn parse_redis_progress(text: &str, test: &str) -> anyhow::Result<Measured> {
    let prefix = format!("{test}: rps=");
    // Only whole lines: the client was killed, perhaps in the middle of one.
    let complete = text.rfind(['\r', '\n']).map_or("", |end| &text[..end]);
    let line = complete
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let mut overall = l.split("(overall:").skip(1).map(number);
            Some((overall.next()??, overall.next().flatten()))
        })
        .next_back();
    let (rps, avg_ms) = line.with_context(|| {
        format!("no `{prefix}… (overall: N)` line in redis-benchmark's output: {}", last_lines(text, 3))
    })?;
    Ok(Measured { rps, avg_us: avg_ms.map(|ms| ms * 1e3), ..Measured::default() })
}

/// redis-benchmark's `--csv` result for `test`:
/// `"SET","387596.91","1.638","0.240","1.071","5.279","7.223","9.479"`
/// under the header `"test","rps","avg_latency_ms",…,"p99_latency_ms",…`.
pub fn parse_redis_csv(text: &str, test: &str) -> anyhow::Result<Measured> {
    let fields = |l: &str| -> Vec<String> { l.trim().split(',').map(|f| f.trim_matches('"').to_owned()).collect() };
    let mut lines = text.lines().filter(|l| l.trim_start().starts_with('"'));
    let header = lines.next().map(fields).with_context(|| format!("no CSV in redis-benchmark's output: {text:?}"))?;
    let column = |name: &str| header.iter().position(|h| h == name);
    let row = lines
        .map(fields)
        .find(|r| r.first().is_some_and(|t| t == test))
        .with_context(|| format!("no {test} row in redis-benchmark's CSV: {}", last_lines(text, 3)))?;
    let value = |name: &str| column(name).and_then(|i| row.get(i)).and_then(|v| v.parse::<f64>().ok());
    let rps = value("rps").with_context(|| format!("no rps in redis-benchmark's {test} row {row:?}"))?;
    let problems = text
        .lines()
        .filter(|l| l.contains("ERR") || l.starts_with("Error"))
        .take(3)
        .map(|l| format!("redis-benchmark: {}", l.trim()))
        .collect();
    Ok(Measured {
        rps,
        avg_us: value("avg_latency_ms").map(|ms| ms * 1e3),
        p99_us: value("p99_latency_ms").map(|ms| ms * 1e3),
        problems,
        ..Measured::default()
    })
}

/// The first line of `program`'s answer to `args` (on stdout or stderr)
/// that has a digit in it: its version, as it states it.
pub async fn version(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program).args(args).stdin(Stdio::null()).kill_on_drop(true).output();
    match timeout(Duration::from_secs(10), output).await {
        Ok(Ok(o)) => {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.lines()
                .map(str::trim)
                .find(|l| l.chars().any(|c| c.is_ascii_digit()))
                .map_or_else(|| format!("{} (no version)", program.display()), str::to_owned)
        }
        _ => format!("{} (version unknown)", program.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_statistics_are_read() {
        let m = parse_dnsperf(include_str!("testdata/dnsperf.txt")).unwrap();
        assert_eq!(m.rps, 91605.125380);
        assert_eq!(m.avg_us.map(f64::round), Some(724.0));
        assert!(m.problems.is_empty(), "{:?}", m.problems);
    }

    #[test]
    fn dnsperf_losses_and_error_codes_are_problems() {
        let text = "  Queries lost:         3 (0.01%)\n  Response codes:       NOERROR 90 (90.00%), REFUSED 10 (10.00%)\n  Queries per second:   12.5\n";
        let m = parse_dnsperf(text).unwrap();
        assert_eq!(m.rps, 12.5);
        assert_eq!(m.problems.len(), 2, "{:?}", m.problems);
        assert!(parse_dnsperf("Statistics:\n").is_err());
    }

    #[test]
    fn wrk_results_are_read() {
        let m = parse_wrk(include_str!("testdata/wrk.txt")).unwrap();
        assert_eq!(m.rps, 69652.23);
        assert_eq!(m.avg_us, Some(695.0));
        assert_eq!(m.p99_us, Some(2300.0));
        assert!(m.problems.is_empty());
        let bad = "Requests/sec:  10.5\n  Socket errors: connect 0, read 3, write 0, timeout 0\n  Non-2xx or 3xx responses: 7\n";
        assert_eq!(parse_wrk(bad).unwrap().problems.len(), 2);
        assert!(parse_wrk("Running 2s test").is_err());
        assert_eq!(wrk_duration_us("1.50s"), Some(1.5e6));
        assert_eq!(wrk_duration_us("3.2xs"), None);
    }

    #[test]
    fn redis_benchmark_progress_and_csv_output_are_read() {
        let progress = parse_redis_progress(include_str!("testdata/redis-benchmark-progress.txt"), "SET").unwrap();
        assert_eq!(progress.rps, 460760.2, "the last whole line");
        assert_eq!(progress.avg_us.map(f64::round), Some(1424.0));
        assert!(parse_redis_progress(include_str!("testdata/redis-benchmark-progress.txt"), "GET").is_err());
        // The first progress line has `-nan` averages: no number, no result.
        assert!(parse_redis_progress("SET: rps=0.0 (overall: -nan) avg_msec=-nan (overall: -nan)\r", "SET").is_err());

        let csv = include_str!("testdata/redis-benchmark.csv");
        let get = parse_redis_csv(csv, "GET").unwrap();
        assert_eq!(get.rps, 511508.94);
        assert_eq!(get.avg_us.map(f64::round), Some(1215.0));
        assert_eq!(get.p99_us.map(f64::round), Some(4031.0));
        assert_eq!(parse_redis_csv(csv, "SET").unwrap().rps, 387596.91);
        assert!(parse_redis_csv(csv, "INCR").is_err());
    }
}
