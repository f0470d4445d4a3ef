//! Servers under test, run as child processes.
//!
//! A child's stderr is read for its whole life: the `listening udp|tcp ADDR`
//! lines give its ports, warnings are counted for the report, and reading
//! keeps the pipe from filling up, which would block the child's logging
//! and so the child itself.
//!
//! Children never outlive the benchmark: dropping a [`ServerProcess`] kills
//! it (so do a `?`, a panic and Ctrl-C, which all drop it), and on Linux the
//! kernel kills it too if the benchmark itself is killed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;

/// Lines of stderr kept to explain a failure.
const TAIL_LINES: usize = 20;
/// How long a child may take to start listening. Generous: a debug build
/// of the host compiling a plugin without a warm cache takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a child may take to exit after SIGTERM (the host drains
/// in-flight requests for up to 5 s by default).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a child has written to stderr so far.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// Lines logged at WARN or ERROR level.
    pub warnings: u64,
    /// The first such line, verbatim.
    pub first_warning: Option<String>,
    /// The last `stats ...` line (the host prints its counters on exit).
    pub stats: Option<String>,
    /// One entry per `loaded plugin ... (compile cache hit|miss)` line: whether
    /// that load came from the compile cache, so a benchmark can check that
    /// a start or reload it calls warm (or cold) really was.
    pub cache_hits: Vec<bool>,
    /// What each `reloaded plugin ... in 4.9ms (...)` line says the reload
    /// took inside the host, from reading the file to the swap.
    pub reloads: Vec<Duration>,
    /// The last lines, for error messages.
    pub tail: VecDeque<String>,
    /// Stderr was closed: the child exited (or closed it).
    pub closed: bool,
}

impl Log {
    fn push(&mut self, line: String) {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `... listening udp 127.0.0.1:7000`, with or without a log prefix.
        match host::logline::listening(&line) {
            Some((host::Transport::Udp, addr)) => self.udp = Some(addr),
            Some((host::Transport::Tcp, addr)) => self.tcp = Some(addr),
            None => {}
        }
        if words.iter().take(3).any(|w| *w == "WARN" || *w == "ERROR") || line.starts_with("error") {
            self.warnings += 1;
            self.first_warning.get_or_insert_with(|| line.clone());
        }
        // `... stats requests=10 replies=9 ...`
        if let Some(pairs) = host::logline::stats(&line) {
            self.stats = Some(pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
        }
        // `... loaded plugin echo version 1a2b from p.wasm in 4.1ms (compile cache hit)`;
        // `reloaded`, a different word, starts the line that follows it on a reload.
        if words.windows(2).any(|w| w == ["loaded", "plugin"])
            && let [.., "cache", outcome] = words.as_slice()
        {
            self.cache_hits.push(*outcome == "hit)");
        }
        // `... reloaded plugin p.wasm: version 1a2b -> 3c4d in 4.9ms (FileChanged)`
        if words.windows(2).any(|w| w == ["reloaded", "plugin"])
            && let Some(took) = words.windows(2).rev().find(|w| w[0] == "in").and_then(|w| parse_debug_duration(w[1]))
        {
            self.reloads.push(took);
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The last lines, indented, for an error message.
    pub fn tail_text(&self) -> String {
        self.tail.iter().map(|l| format!("\n    {l}")).collect()
    }
}

/// A duration as Rust's `{:?}` prints it (`4.9ms`, `9.4s`, `512.3µs`, `80ns`),
/// which is how the host logs them.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let unit_at = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let value: f64 = s[..unit_at].parse().ok()?;
    let nanos_per_unit = match &s[unit_at..] {
        "s" => 1e9,
        "ms" => 1e6,
        "µs" | "us" => 1e3,
        "ns" => 1.0,
        _ => return None,
    };
    // In whole nanoseconds, so that `4.9ms` is exactly 4,900 µs. The value
    // has no sign (only digits were parsed); `as` saturates a huge one.
    Some(Duration::from_nanos((value * nanos_per_unit).round() as u64))
}

/// A running server.
pub struct ServerProcess {
    pub name: String,
    child: Child,
    log: watch::Receiver<Log>,
}

/// The command that runs this bench binary's native baseline
/// (`bench native`), to which each caller adds its addresses and workers.
pub fn native_command() -> anyhow::Result<Command> {
    let mut c = Command::new(std::env::current_exe().context("cannot find the bench binary")?);
    c.arg("native");
    Ok(c)
}

impl ServerProcess {
    /// Start `command` and wait until it has logged a UDP and a TCP address.
    pub async fn start(name: &str, command: Command) -> anyhow::Result<Self> {
        Self::start_listening(name, command, true).await
    }

    /// Start `command` and wait until it has logged a TCP address, and a UDP
    /// address too if `udp` (a server of the connection world serves TCP only).
    pub async fn start_listening(name: &str, command: Command, udp: bool) -> anyhow::Result<Self> {
        let server = Self::spawn(name, command)?;
        let mut log = server.log.clone();
        let listening = |l: &Log| (l.udp.is_some() || !udp) && l.tcp.is_some();
        let ready = tokio::time::timeout(START_TIMEOUT, log.wait_for(|l| l.closed || listening(l)))
            .await
            .map(|r| r.map(|l| l.clone()));
        match ready {
            Ok(Ok(l)) if !l.closed => Ok(server),
            Ok(_) => bail!("{name} exited before listening:{}", server.log().tail_text()),
            Err(_) => bail!("{name} did not log its addresses within {START_TIMEOUT:?}:{}", server.log().tail_text()),
        }
    }

    /// Start `command` without waiting for anything.
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        // SAFETY: the closure runs in the child between fork and exec, where
        // only async-signal-safe calls are allowed; it makes one prctl
        // system call. The signal comes when the thread that spawned the
        // child exits: the benchmark spawns from the thread that runs its
        // main future, which lives as long as the benchmark.
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {name} ({:?})", command.as_std()))?;
        let stderr = child.stderr.take().context("child stderr was not captured")?;
        let (tx, log) = watch::channel(Log::default());
        tokio::spawn(read_log(stderr, tx));
        Ok(Self { name: name.to_owned(), child, log })
    }

    /// The UDP address; only for a server started to serve UDP.
    pub fn udp(&self) -> SocketAddr {
        self.log.borrow().udp.expect("started servers have a UDP address")
    }

    pub fn tcp(&self) -> SocketAddr {
        self.log.borrow().tcp.expect("started servers have a TCP address")
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().with_context(|| format!("{} has exited", self.name))
    }

    /// A copy of what the child has logged so far.
    pub fn log(&self) -> Log {
        self.log.borrow().clone()
    }

    /// Wait until what the child has logged satisfies `done`, for at most
    /// `limit`, and return the log either way.
    pub async fn wait_for_log(&self, limit: Duration, done: impl FnMut(&Log) -> bool) -> Log {
        let mut log = self.log.clone();
        let _ = tokio::time::timeout(limit, log.wait_for(done)).await;
        self.log()
    }

    /// Return once the child has closed its stderr, which it does by exiting.
    pub async fn exited(&self) {
        let mut log = self.log.clone();
        // An error means the log reader is gone, which it is only after stderr closed.
        let _ = log.wait_for(|l| l.closed).await;
    }

    /// Kill the child at once and wait for it to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Ask the child to exit (SIGTERM) and wait for it, killing it if it
    /// takes too long; return everything it logged.
    pub async fn stop(mut self) -> Log {
        if let Ok(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
        // The exit closes stderr; give the reader a moment to take the rest.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.log.wait_for(|l| l.closed)).await;
        self.log()
    }
}

async fn read_log(stderr: ChildStderr, log: watch::Sender<Log>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.send_modify(|l| l.push(line));
    }
    log.send_modify(|l| l.closed = true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_in_host_and_native_lines() {
        let mut log = Log::default();
        log.push("2026-11-25T12:00:00.000001Z  INFO host: listening udp 127.0.0.1:41234".into());
        log.push("listening tcp [::1]:41235".into());
        assert_eq!(log.udp, Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(log.tcp, Some("[::1]:41235".parse().unwrap()));
        assert_eq!(log.warnings, 0);
    }

    #[test]
    fn warnings_and_stats_are_kept() {
        let mut log = Log::default();
        log.push("2026-11-25T12:00:00Z  WARN host::dispatch: request failed: trap".into());
        log.push("2026-11-25T12:00:01Z  INFO host: stats requests=10 replies=9".into());
        assert_eq!(log.warnings, 1);
        assert!(log.first_warning.as_deref().unwrap().contains("request failed"));
        assert_eq!(log.stats.as_deref(), Some("requests=10 replies=9"));
    }

    #[test]
    fn loads_and_reloads_are_kept() {
        let mut log = Log::default();
        log.push(
            "INFO host::plugin::loader: loaded plugin echo version 1a2b from /t/p.wasm in 4.1ms (compile cache miss)"
                .into(),
        );
        log.push(
            "INFO host::plugin::loader: loaded plugin p version 3c4d from /t/p.wasm in 2.5ms (compile cache hit)"
                .into(),
        );
        log.push("INFO host::reload: reloaded plugin /t/p.wasm: version 1a2b -> 3c4d in 4.9ms (FileChanged)".into());
        log.push("INFO host::reload: reloaded plugin /t/p.wasm: version 3c4d -> 1a2b in 10.2s (FileChanged)".into());
        assert_eq!(log.cache_hits, [false, true]);
        assert_eq!(log.reloads, [Duration::from_micros(4_900), Duration::from_millis(10_200)]);
        assert_eq!(parse_debug_duration("512.5µs"), Some(Duration::from_nanos(512_500)));
        assert_eq!(parse_debug_duration("80ns"), Some(Duration::from_nanos(80)));
        assert_eq!(parse_debug_duration("3 s"), None);
        assert_eq!(parse_debug_duration("ms"), None);
    }
}
