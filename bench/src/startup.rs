//! Start-up time: from spawning a server to its first UDP echo.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::UdpSocket;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::compare::loopback;
use crate::process::ServerProcess;

/// A server must answer its first datagram within this long of starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between probes; the resolution of the measurement.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
const PROBE: &[u8] = b"bench start-up probe";

/// Start the server that `command` makes (given the UDP address to serve)
/// `starts` times, after one untimed start that warms the compile cache and
/// the file cache, and time each start to its first UDP echo.
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

async fn time_to_first_reply(
    name: &str,
    command: &impl Fn(SocketAddr) -> anyhow::Result<Command>,
) -> anyhow::Result<Duration> {
    // The server must listen where the probe is already sending, so its
    // port is chosen here rather than left to the server.
    let addr = free_udp_port()?;
    let probe = UdpSocket::bind(loopback(0)).await.context("cannot open the probe socket")?;
    probe.connect(addr).await.context("cannot connect the probe socket")?;
    let mut buf = [0u8; 64];
    let started = Instant::now();
    let process = ServerProcess::spawn(name, command(addr)?)?;
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
            Ok(Ok(n)) if &buf[..n] == PROBE => break,
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
