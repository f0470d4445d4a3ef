//! One test of `bench protocols`: its client run against one server, the
//! warm-up and then the measurement, with the CPU the server and the
//! client used meanwhile.

use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

use super::clients::{self, Measured};
use super::servers::Server;
use super::{Context, DNSPERF_CLIENTS, REDIS_SIZING_REQUESTS, Test};

/// Run `test`'s client against `server`: the warm-up, then the measurement.
pub(super) async fn run_test(cx: &Context<'_>, test: Test, server: &Server) -> anyhow::Result<Measured> {
    let o = cx.options;
    let tool = |name| cx.tools.get(name).map_err(anyhow::Error::msg);
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    match test {
        Test::DnsUdp | Test::DnsTcp => {
            let (mode, addr) = match test {
                Test::DnsUdp => ("udp", server.udp.context("the server has no UDP address")?),
                _ => ("tcp", server.tcp),
            };
            let dnsperf = |limit: Duration| {
                let mut c = Command::new(tool("dnsperf")?);
                c.args(["-m", mode, "-s", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
                c.arg("-d").arg(&cx.queries).args(["-c", DNSPERF_CLIENTS, "-l", &secs(limit)]);
                anyhow::Ok(c)
            };
            clients::run(dnsperf(o.warmup)?, o.warmup).await?;
            let measured = clients::run(dnsperf(o.duration)?, o.duration);
            with_cpu(server, async { clients::parse_dnsperf(&measured.await?) }).await
        }
        Test::Resp { command, pipeline } => {
            let bench = |requests: &str| {
                let mut c = Command::new(tool("redis-benchmark")?);
                c.args(["-h", "127.0.0.1", "-p", &server.tcp.port().to_string(), "-t", command]);
                c.args(["-P", &pipeline.to_string(), "-c", "50", "-n", requests]);
                anyhow::Ok(c)
            };
            // redis-benchmark runs for a count of requests, not a time: the
            // warm-up measures the rate, which sizes the measured run.
            let sizing = clients::run_for(bench(REDIS_SIZING_REQUESTS)?, o.warmup).await?;
            let rate = clients::parse_redis_progress(&sizing, command)?.rps;
            anyhow::ensure!(rate > 0.0, "redis-benchmark's warm-up completed no request");
            let requests = ((rate * o.duration.as_secs_f64()) as u64).max(1_000);
            let mut c = bench(&requests.to_string())?;
            c.arg("--csv");
            // Allowed three times the duration, for a rate that falls.
            let measured = clients::run(c, o.duration * 3);
            with_cpu(server, async { clients::parse_redis_csv(&measured.await?, command) }).await
        }
        Test::Http => {
            let url = format!("http://{}/", server.tcp);
            let wrk = |limit: Duration| {
                let mut c = Command::new(tool("wrk")?);
                // wrk takes whole seconds.
                let whole = limit.as_secs_f64().ceil().max(1.0);
                c.args(["-t1", "-c64", &format!("-d{whole}s"), "--latency", &url]);
                anyhow::Ok(c)
            };
            clients::run(wrk(o.warmup)?, o.warmup).await?;
            let measured = clients::run(wrk(o.duration)?, o.duration);
            with_cpu(server, async { clients::parse_wrk(&measured.await?) }).await
        }
    }
}

/// Run `measured` (one client run and the parse of its output) and add
/// the CPU the server and the client used meanwhile, as shares of a core.
async fn with_cpu(
    server: &Server,
    measured: impl Future<Output = anyhow::Result<Measured>>,
) -> anyhow::Result<Measured> {
    let (server_before, client_before) = (server.cpu_seconds(), crate::sys::children_cpu_seconds());
    let start = tokio::time::Instant::now();
    let mut m = measured.await?;
    let wall = start.elapsed().as_secs_f64();
    if wall > 0.0 {
        m.server_cpu = Some((server.cpu_seconds() - server_before) / wall);
        m.client_cpu = Some((crate::sys::children_cpu_seconds() - client_before) / wall);
    }
    Ok(m)
}
