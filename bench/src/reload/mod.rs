//! `bench reload`: how long a hot reload takes, as a client sees it.
//!
//! Each case runs one host serving a plugin file in a temp dir, and a
//! [`Prober`] sends it a UDP request about every millisecond. A round
//! deploys the new version as the README says to (write it next to the
//! served file, then `rename(2)` it over) and times from the rename to the
//! first reply by the new version. It then swaps the old version back the
//! same way and waits for it to answer, so that every round starts alike.
//!
//! Warm: the compile cache already holds both versions (an untimed swap
//! there and back fills it), as when rolling back or redeploying. Cold: the
//! cache directory is removed before each round, so the reload compiles the
//! new version, as for a first deployment. The host logs whether each load
//! hit its cache, which checks that a warm round was warm and a cold one cold.
//!
//! Throughout, every request must get exactly one reply, by either version:
//! a swap that lost or garbled a request would show in the prober's tally.

mod prober;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tempfile::TempDir;
use tokio::process::Command;
use tokio::time::{Instant, sleep};

use crate::plugins::{self, Answer};
use crate::process::{Log, ServerProcess};
use crate::stats::median;
use crate::sys;
use prober::{Prober, Tally, Version};

/// The longest a swap may take to show in the replies. A cold reload of
/// the 12-18 MB plugins compiles for 5-10 s in a release host.
const SWAP_TIMEOUT: Duration = Duration::from_secs(120);
/// After a reply by the new version, how long the host's `reloaded` log
/// line (written just after the swap) may take to reach us.
const LOG_WAIT: Duration = Duration::from_secs(2);
/// The old version serves this long between rounds.
const PAUSE: Duration = Duration::from_millis(100);
/// How long the host waits after a rename into place before it reloads
/// (`host::reload::SETTLED_DEBOUNCE`): the floor of every time here.
const HOST_DEBOUNCE_MS: u128 = host::reload::SETTLED_DEBOUNCE.as_millis();

/// Where the host and the plugins are, and how many rounds to time.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: PathBuf,
    /// The directory with echo.wasm, upper.wasm, json-summary.wasm and reverse.wasm.
    pub plugin_dir: PathBuf,
    pub rounds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    Warm,
    Cold,
}

/// One line of the table: swapping `old` for `new`, `rounds` times.
#[derive(Debug, Clone, Copy)]
struct Case {
    old: &'static str,
    new: &'static str,
    cache: Cache,
}

/// A small Rust plugin, and the two large ones, whose compile time a cold
/// reload pays.
const CASES: [Case; 6] = [
    Case { old: "echo", new: "upper", cache: Cache::Warm },
    Case { old: "echo", new: "upper", cache: Cache::Cold },
    Case { old: "echo", new: "json-summary", cache: Cache::Warm },
    Case { old: "echo", new: "json-summary", cache: Cache::Cold },
    Case { old: "echo", new: "reverse", cache: Cache::Warm },
    Case { old: "echo", new: "reverse", cache: Cache::Cold },
];

impl Case {
    fn swap(&self) -> String {
        format!("{} → {} ({})", self.old, self.new, plugins::language(self.new))
    }

    fn cache(&self) -> &'static str {
        match self.cache {
            Cache::Warm => "warm",
            Cache::Cold => "cold",
        }
    }
}

/// What one case measured.
struct Outcome {
    case: Case,
    /// From each round's rename to the first reply by the new version.
    latencies: Vec<Duration>,
    /// The host's own reload time, from its log, for each round.
    host_reloads: Vec<Duration>,
    /// The prober's tally, and swaps made, if the case ran to the end.
    tally: Option<(Tally, u64)>,
    log: Option<Log>,
    /// Why the case stopped early.
    failure: Option<String>,
    /// Anything else that makes the numbers less than they seem.
    notes: Vec<String>,
}

/// Run every case and print the table on stdout (progress on stderr).
pub async fn run(options: &Options) -> anyhow::Result<()> {
    ensure!(
        options.host.is_file(),
        "no host binary at {} (build it with `cargo build --release -p host`, or pass --host)",
        options.host.display()
    );
    for case in &CASES {
        for name in [case.old, case.new] {
            let path = plugin_path(options, name);
            ensure!(
                path.is_file(),
                "no plugin at {} (build it with scripts/build-plugins.sh, or pass --plugin-dir)",
                path.display()
            );
        }
    }
    print_setup(options);
    let mut outcomes = Vec::new();
    for case in CASES {
        let mut outcome = Outcome {
            case,
            latencies: Vec::new(),
            host_reloads: Vec::new(),
            tally: None,
            log: None,
            failure: None,
            notes: Vec::new(),
        };
        if let Err(e) = run_case(options, &mut outcome).await {
            eprintln!("reload — {}, {}: failed: {e:#}", case.swap(), case.cache());
            outcome.failure = Some(format!("{e:#}"));
        }
        outcomes.push(outcome);
    }
    print!("{}", render(&outcomes));
    Ok(())
}

fn plugin_path(options: &Options, name: &str) -> PathBuf {
    options.plugin_dir.join(format!("{name}.wasm"))
}

/// Every round of one case, recorded in `outcome` as they go, so that a
/// failure keeps the rounds before it.
async fn run_case(options: &Options, outcome: &mut Outcome) -> anyhow::Result<()> {
    let case = outcome.case;
    let mut session = Session::start(options, case).await?;
    if case.cache == Cache::Warm {
        // Untimed: compiles the new version into the cache, then loads the
        // old one back from it.
        session.swap(Version::New).await?;
        session.swap(Version::Old).await?;
    }
    for round in 1..=options.rounds {
        if case.cache == Cache::Cold {
            session.remove_cache().await?;
        }
        let swap = session.swap(Version::New).await?;
        let host = swap.host_reload.map(|t| format!("{:.1} ms in the host", ms(t))).unwrap_or_default();
        let from_cache = match swap.cache_hit {
            Some(true) => "compile cache hit",
            Some(false) => "compile cache miss",
            None => "no load logged",
        };
        eprintln!(
            "reload — {}, {} [{round}/{}]: {:.1} ms ({host}, {from_cache})",
            case.swap(),
            case.cache(),
            options.rounds,
            ms(swap.latency)
        );
        if swap.cache_hit != Some(case.cache == Cache::Warm) {
            outcome.notes.push(format!("round {round}: {from_cache}, in a {} case", case.cache()));
        }
        outcome.latencies.push(swap.latency);
        outcome.host_reloads.extend(swap.host_reload);
        session.swap(Version::Old).await?;
        sleep(PAUSE).await;
    }
    let (tally, swaps, log) = session.finish().await;
    outcome.tally = Some((tally, swaps));
    outcome.log = Some(log);
    Ok(())
}

/// One host serving one plugin file, and the prober on it.
struct Session {
    /// Holds the served file, the file being deployed and the compile cache.
    dir: TempDir,
    served: PathBuf,
    cache: PathBuf,
    /// The old and new versions' files.
    old: PathBuf,
    new: PathBuf,
    host: ServerProcess,
    prober: Prober,
    /// Renames made so far.
    swaps: u64,
}

/// What one swap took.
struct Swap {
    /// From the rename to the first reply by the version swapped in.
    latency: Duration,
    /// The host's own time for the reload, from its log line.
    host_reload: Option<Duration>,
    /// Whether the host loaded that version from its compile cache.
    cache_hit: Option<bool>,
}

impl Session {
    /// Start a host serving the old version, and wait until it answers.
    async fn start(options: &Options, case: Case) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-reload").tempdir().context("cannot create a temp dir")?;
        let served = dir.path().join("plugin.wasm");
        let cache = dir.path().join("cache");
        let (old, new) = (plugin_path(options, case.old), plugin_path(options, case.new));
        copy(&old, &served).await?;
        let mut command = Command::new(&options.host);
        command.arg("--plugin").arg(&served).arg("--cache-dir").arg(&cache);
        command.args(["--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0"]);
        let host = ServerProcess::start(&format!("host serving {}", case.old), command).await?;
        let answer = |name| Answer::of(name).with_context(|| format!("the benchmark does not know {name}'s replies"));
        let prober = Prober::start(host.udp(), answer(case.old)?, answer(case.new)?).await?;
        let mut session = Self { dir, served, cache, old, new, host, prober, swaps: 0 };
        session.wait_for(Version::Old, Instant::now()).await.with_context(|| {
            format!("the host does not answer as {} does:{}", case.old, session.host.log().tail_text())
        })?;
        Ok(session)
    }

    /// The first reply by `version` to a request sent at or after `since`;
    /// an error if it does not come within [`SWAP_TIMEOUT`] or the host exits.
    async fn wait_for(&mut self, version: Version, since: Instant) -> anyhow::Result<prober::Reply> {
        tokio::select! {
            r = self.prober.wait_for(version, since, since + SWAP_TIMEOUT) => r,
            () = self.host.exited() => anyhow::bail!("the host exited"),
        }
    }

    /// Deploy `version`: copy it next to the served file, rename it over,
    /// and wait for the first reply by it to a request sent after the rename.
    async fn swap(&mut self, version: Version) -> anyhow::Result<Swap> {
        let source = match version {
            Version::Old => self.old.clone(),
            Version::New => self.new.clone(),
        };
        // A name the host does not watch for: only the rename concerns it.
        let staged = self.dir.path().join(".plugin.wasm.new");
        copy(&source, &staged).await?;
        let before = self.host.log();
        let renamed = Instant::now();
        // Blocking, but one system call: its instant is what is measured from.
        std::fs::rename(&staged, &self.served)
            .with_context(|| format!("cannot rename {} to {}", staged.display(), self.served.display()))?;
        self.swaps += 1;
        let reply = self.wait_for(version, renamed).await.with_context(|| {
            format!("swapping in the {version} version {}:{}", source.display(), self.host.log().tail_text())
        })?;
        let (reloads, loads) = (before.reloads.len(), before.cache_hits.len());
        let log = self.host.wait_for_log(LOG_WAIT, |l| l.reloads.len() > reloads).await;
        Ok(Swap {
            latency: reply.received - renamed,
            host_reload: log.reloads.get(reloads).copied(),
            cache_hit: log.cache_hits.get(loads).copied(),
        })
    }

    /// Remove the compile cache directory; the host makes a fresh, empty one
    /// when it next compiles (it keeps no compiled code in memory).
    async fn remove_cache(&self) -> anyhow::Result<()> {
        match tokio::fs::remove_dir_all(&self.cache).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.cache.display()))
            }
            _ => Ok(()),
        }
    }

    /// Stop probing, then the host; the prober's tally, the swaps made and
    /// the host's log.
    async fn finish(self) -> (Tally, u64, Log) {
        let tally = self.prober.finish().await;
        let log = self.host.stop().await;
        (tally, self.swaps, log)
    }
}

async fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    tokio::fs::copy(from, to).await.with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn print_setup(options: &Options) {
    println!("## hot reload: from rename(2) to the first reply by the new version\n");
    println!("- machine: {}", sys::machine());
    println!(
        "- host: `{}` with its default options; the new version is written next to the served file and renamed over it",
        options.host.display()
    );
    println!(
        "- a prober sends a UDP request about every millisecond (holding back while 4 are unanswered); the time \
         ends at the first reply by the new version to a request sent after the rename"
    );
    println!(
        "- warm: both versions in the compile cache; cold: the cache removed before each round, so the reload \
         compiles; {} rounds, each from the old version served",
        options.rounds
    );
    println!(
        "- after a rename into place the host waits {HOST_DEBOUNCE_MS} ms for the events that come with it, then \
         reloads; \"in the host\" is its own \
         reload time from its log (reading, compiling or loading from the cache, validating)\n"
    );
}

/// The table, what the prober saw in each case, and the hosts' logs.
fn render(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    out.push_str("| swap | cache | median (ms) | max (ms) | in the host, median (ms) |\n");
    out.push_str("|---|---|--:|--:|--:|\n");
    for o in outcomes {
        let latencies: Vec<f64> = o.latencies.iter().copied().map(ms).collect();
        let host: Vec<f64> = o.host_reloads.iter().copied().map(ms).collect();
        let max = latencies.iter().copied().reduce(f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            o.case.swap(),
            o.case.cache(),
            number(median(&latencies)),
            number(max),
            number(median(&host))
        );
    }
    out.push_str("\nRequests during the swaps (each must get exactly one reply, by the old or the new version):\n\n");
    let mut clean = true;
    for o in outcomes {
        let label = format!("{}, {}", o.case.swap(), o.case.cache());
        match &o.tally {
            Some((t, swaps)) => {
                clean &= t.clean();
                let _ = writeln!(out, "- {label}: {}", describe(t, *swaps));
            }
            None => clean = false,
        }
        if let Some(f) = &o.failure {
            let _ = writeln!(out, "- {label}: failed after {} rounds: {f}", o.latencies.len());
        }
        for note in &o.notes {
            let _ = writeln!(out, "- {label}: {note}");
        }
    }
    out.push_str(if clean {
        "\nNo request was lost, duplicated or wrong during the swaps.\n"
    } else {
        "\nSome requests were lost, duplicated or wrong, or a case did not finish: see above.\n"
    });
    out.push_str("\nHost logs:\n\n");
    for o in outcomes {
        let Some(log) = &o.log else { continue };
        let first = log.first_warning.as_deref().map(|w| format!(" (first: {w})")).unwrap_or_default();
        let stats = log.stats.as_deref().map(|s| format!("; counters at exit: {s}")).unwrap_or_default();
        let _ =
            writeln!(out, "- {}, {}: {} warnings or errors{first}{stats}", o.case.swap(), o.case.cache(), log.warnings);
    }
    out
}

/// One case's tally as a sentence.
fn describe(t: &Tally, swaps: u64) -> String {
    let mut s = format!(
        "{} sent; {} answered by the old version, {} by the new; {} lost, {} wrong, {} duplicated, {} errors; \
         the answering version changed {} times in the order sent, for {swaps} swaps",
        t.sent, t.old, t.new, t.lost, t.wrong, t.duplicates, t.errors, t.version_changes
    );
    if t.version_changes > swaps {
        // Not a loss: the host picks the version when a request starts, and
        // requests from one client may start out of the order they were sent.
        s.push_str(
            " (a request was served by the version being replaced although one sent before it was served by \
             its replacement: requests started out of the order they were sent)",
        );
    }
    if t.held > 0 {
        let _ = write!(s, "; {} ticks held back with 4 requests unanswered", t.held);
    }
    if let Some(e) = &t.first_error {
        let _ = write!(s, "; first error: {e}");
    }
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Milliseconds with the digits they can claim: a tenth below 100 ms (the
/// prober's resolution is about 1 ms, the host's log line has 2-3 digits),
/// whole milliseconds above.
fn number(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(case: Case, latencies_ms: &[u64], tally: Tally) -> Outcome {
        Outcome {
            case,
            latencies: latencies_ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            host_reloads: vec![Duration::from_micros(1_500)],
            tally: Some((tally, 2 * latencies_ms.len() as u64)),
            log: Some(Log::default()),
            failure: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_table_shows_median_and_max() {
        let tally = Tally { sent: 10, old: 6, new: 4, version_changes: 6, ..Tally::default() };
        let table = render(&[outcome(CASES[0], &[152, 170, 151], tally)]);
        assert!(table.contains("| echo → upper (Rust) | warm | 152 | 170 | 1.5 |\n"), "{table}");
        assert_eq!(number(Some(9_300.0)), "9300");
        assert_eq!(number(None), "—");
        assert!(table.contains("changed 6 times in the order sent, for 6 swaps"), "{table}");
        assert!(table.contains("No request was lost"), "{table}");
    }

    #[test]
    fn a_lost_request_is_reported() {
        let tally = Tally { sent: 10, old: 9, lost: 1, version_changes: 4, ..Tally::default() };
        let table = render(&[outcome(CASES[3], &[9_000], tally)]);
        assert!(table.contains("| echo → json-summary (Python) | cold | 9000 | 9000 |"), "{table}");
        assert!(table.contains("1 lost"), "{table}");
        assert!(table.contains("Some requests were lost"), "{table}");
        assert!(table.contains("for 2 swaps (a request was served by the version being replaced"), "{table}");
    }

    #[test]
    fn every_case_swaps_between_plugins_the_prober_knows() {
        for case in CASES {
            assert!(Answer::of(case.old).is_some() && Answer::of(case.new).is_some());
        }
    }
}
