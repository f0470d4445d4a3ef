//! Start-up time: from spawning a server to its first UDP reply.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::UdpSocket;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::compare::loopback;
use crate::process::ServerProcess;

/// A server must answer its first datagram within this long of starting.
/// Generous: a cold start compiles the plugin, which takes 5-10 s for the
/// 12-18 MB Python and JavaScript components in a release host.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between probes; the resolution of the measurement.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A payload every plugin of the repository answers: echo, reverse and
/// rot13 answer anything, json-summary answers JSON with its summary. At 31
/// bytes it leaves that summary room under the host's UDP amplification cap
/// (a reply of at most 3 × (31 + 28) − 28 = 149 bytes by default).
const PROBE: &[u8] = br#"{"probe":"bench start-up 0001"}"#;

/// Start the server that `command` makes (given the UDP address to serve)
/// `starts` times, after one untimed start that warms the compile cache and
/// the file cache, and time each start to its first UDP reply.
pub async fn time_starts(
    name: &str,
    starts: u32,
    command: impl Fn(SocketAddr) -> anyhow::Result<Command>,
) -> anyhow::Result<Vec<Duration>> {
    time_to_first_reply(name, &command).await?;
    let mut times = Vec::new();
    for _ in 0..starts {
        let t = time_to_first_reply(name, &command).await?;
        eprintln!("start-up — {name}: {:.1} ms", t.as_secs_f64() * 1e3);
        times.push(t);
    }
    Ok(times)
}

/// Start the server that `command` makes (given the UDP address to serve
/// and a compile cache directory) `starts` times, each with a fresh, empty
/// cache directory made in `scratch` and removed after, so that every start
/// compiles; and time each start to its first UDP reply.
pub async fn time_cold_starts(
    name: &str,
    starts: u32,
    scratch: &Path,
    command: impl Fn(SocketAddr, &Path) -> anyhow::Result<Command>,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..starts {
        // Made by tempfile with mode 0700, as the host wants a cache to be.
        let cache = tempfile::Builder::new()
            .prefix("cold-cache")
            .tempdir_in(scratch)
            .with_context(|| format!("cannot create a cache directory in {}", scratch.display()))?;
        let t = time_to_first_reply(name, &|udp| command(udp, cache.path())).await?;
        eprintln!("start-up, cold cache — {name}: {:.2} s", t.as_secs_f64());
        times.push(t);
    }
    Ok(times)
}

/// Any non-empty reply ends the wait: it shows the server serves, and what
/// a plugin answers is the plugin's business.
///
/// The clock starts once the spawn has returned, when the child has
/// exec'd the server: the spawn forks this process (a `pre_exec` hook rules
/// out `posix_spawn`), and a fork takes as long as this process's memory is
/// large. That is the benchmark's cost, not the server's: after the
/// 10,000-connection loads of `bench compare` this process keeps about
/// 1.6 GB mapped, and each fork took about 75 ms of a 90 ms "start".
async fn time_to_first_reply(
    name: &str,
    command: &impl Fn(SocketAddr) -> anyhow::Result<Command>,
) -> anyhow::Result<Duration> {
    // The server must listen where the probe is already sending, so its
    // port is chosen here rather than left to the server.
    let addr = free_udp_port()?;
    let probe = UdpSocket::bind(loopback(0)).await.context("cannot open the probe socket")?;
    probe.connect(addr).await.context("cannot connect the probe socket")?;
    let mut buf = [0u8; 2048];
    let process = ServerProcess::spawn(name, command(addr)?)?;
    let started = Instant::now();
    loop {
        if started.elapsed() > STARTUP_TIMEOUT {
            bail!("{name}: no reply within {STARTUP_TIMEOUT:?} of starting:{}", process.log().tail_text());
        }
        if process.log().closed {
            bail!("{name} exited before replying:{}", process.log().tail_text());
        }
        // Before the server binds, the kernel answers with "port
        // unreachable", which the next receive reports as an error.
        let _ = probe.send(PROBE).await;
        match timeout(PROBE_INTERVAL, probe.recv(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => break,
            Ok(Err(_)) => sleep(PROBE_INTERVAL).await,
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    process.kill().await;
    Ok(elapsed)
}

/// A UDP port free right now on 127.0.0.1. Another process could take it
/// before the server binds it, but on a benchmark machine none does.
fn free_udp_port() -> anyhow::Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind(loopback(0)).context("cannot find a free UDP port")?;
    socket.local_addr().context("cannot read a bound socket's address")
}
