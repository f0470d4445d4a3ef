//! `bench startup`: the host's start-up time per plugin, and so per
//! language, with a cold and a warm compile cache.
//!
//! Cold: every start gets a fresh, empty `--cache-dir`, so the time includes
//! compiling the plugin, which is what deploying a new version to a fresh
//! machine costs (seconds for the 12-18 MB Python and JavaScript
//! components). Warm: every start shares one cache directory, filled by an
//! untimed start first, which is what a restart costs. Both are timed from
//! spawning the host to its first UDP reply (see [`crate::startup`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::process::Command;

use crate::stats::median;
use crate::{plugins, startup, sys};

/// What to start, and how often.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: PathBuf,
    pub plugins: Vec<PathBuf>,
    /// Timed starts per plugin with a fresh cache directory each.
    pub cold_starts: u32,
    /// Timed starts per plugin with a warm cache directory.
    pub warm_starts: u32,
}

/// One plugin's line of the table.
struct Row {
    name: String,
    language: &'static str,
    bytes: u64,
    cold: Result<Vec<Duration>, String>,
    warm: Result<Vec<Duration>, String>,
}

/// Time every plugin's starts and print the table on stdout (progress on stderr).
pub async fn run(options: &Options) -> anyhow::Result<()> {
    ensure!(
        options.host.is_file(),
        "no host binary at {} (build it with `cargo build --release -p host`, or pass --host)",
        options.host.display()
    );
    for plugin in &options.plugins {
        ensure!(
            plugin.is_file(),
            "no plugin at {} (build it with scripts/build-plugins.sh, or pass --plugins)",
            plugin.display()
        );
    }
    println!("## host start-up per plugin\n");
    println!("- machine: {}", sys::machine());
    println!("- host: `{}`, serving UDP on 127.0.0.1 with its default options", options.host.display());
    println!(
        "- cold: median of {} starts, each with a fresh empty `--cache-dir` (so it compiles the plugin); \
         warm: median of {} starts sharing one cache dir, after one untimed start\n",
        options.cold_starts, options.warm_starts
    );
    // The cache directories live in here, and go with it.
    let scratch = tempfile::Builder::new().prefix("bench-startup").tempdir().context("cannot create a temp dir")?;
    let mut rows = Vec::new();
    for plugin in &options.plugins {
        rows.push(measure(options, plugin, scratch.path()).await);
    }
    print!("{}", render(&rows));
    Ok(())
}

/// Cold starts first, then warm ones, of the host serving `plugin`.
async fn measure(options: &Options, plugin: &Path, scratch: &Path) -> Row {
    let name = plugins::name(plugin);
    let bytes = std::fs::metadata(plugin).map_or(0, |m| m.len());
    let command = |udp: SocketAddr, cache: &Path| -> anyhow::Result<Command> {
        let mut c = Command::new(&options.host);
        c.arg("--plugin").arg(plugin).arg("--cache-dir").arg(cache).args(["--udp", &udp.to_string()]);
        Ok(c)
    };
    let label = format!("host serving {name}");
    let cold = startup::time_cold_starts(&label, options.cold_starts, scratch, command).await;
    let warm = match tempfile::Builder::new().prefix("warm-cache").tempdir_in(scratch) {
        Ok(cache) => startup::time_starts(&label, options.warm_starts, |udp| command(udp, cache.path())).await,
        Err(e) => Err(e).context("cannot create a cache directory"),
    };
    let language = plugins::language(&name);
    Row { name, language, bytes, cold: cold.map_err(|e| format!("{e:#}")), warm: warm.map_err(|e| format!("{e:#}")) }
}

/// The markdown table, then every failure.
fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| plugin | language | size | cold median (s) | warm median (ms) |\n");
    out.push_str("|---|---|--:|--:|--:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.name,
            r.language,
            size(r.bytes),
            median_cell(&r.cold, 1.0),
            median_cell(&r.warm, 1e3)
        );
    }
    let failures: Vec<String> = rows
        .iter()
        .flat_map(|r| [("cold", &r.name, &r.cold), ("warm", &r.name, &r.warm)])
        .filter_map(|(kind, name, times)| times.as_ref().err().map(|e| format!("- {name}, {kind}: {e}\n")))
        .collect();
    if !failures.is_empty() {
        out.push_str("\nFailures:\n\n");
        failures.iter().for_each(|f| out.push_str(f));
    }
    out
}

/// The median of `times` in seconds × `scale`, to three significant digits
/// at most: more would be noise from one start to the next.
fn median_cell(times: &Result<Vec<Duration>, String>, scale: f64) -> String {
    let Ok(times) = times else { return "failed".to_owned() };
    match median(&times.iter().map(|d| d.as_secs_f64() * scale).collect::<Vec<_>>()) {
        Some(m) if m < 1.0 => format!("{m:.3}"),
        Some(m) if m < 10.0 => format!("{m:.2}"),
        Some(m) if m < 100.0 => format!("{m:.1}"),
        Some(m) => format!("{m:.0}"),
        None => "—".to_owned(),
    }
}

/// A file size in decimal units, as `ls -h --si` and the README say it.
pub(crate) fn size(bytes: u64) -> String {
    match bytes as f64 {
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b => format!("{:.0} kB", b / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_medians_in_seconds_and_milliseconds() {
        let ms = |v: &[u64]| Ok(v.iter().map(|&m| Duration::from_millis(m)).collect());
        let rows = [
            Row {
                name: "json-summary".into(),
                language: "Python",
                bytes: 18_511_542,
                cold: ms(&[9_400, 9_000, 9_800]),
                warm: ms(&[40, 42, 41]),
            },
            Row {
                name: "rot13".into(),
                language: "C",
                bytes: 22_878,
                cold: Err("it died".into()),
                warm: Ok(vec![Duration::from_micros(24)]),
            },
        ];
        let table = render(&rows);
        assert!(table.contains("| json-summary | Python | 18.5 MB | 9.40 | 41.0 |\n"), "{table}");
        assert!(table.contains("| rot13 | C | 23 kB | failed | 0.024 |\n"), "{table}");
        assert!(table.contains("- rot13, cold: it died\n"), "{table}");
    }
}
