//! The servers of `bench protocols`: the peers (NSD, redis-server, nginx,
//! `wasmtime serve`) and the host, each started on a free loopback port,
//! checked to answer correctly before any load, and stopped after.
//!
//! NSD and nginx fork worker processes, which the kill-on-drop of
//! [`ServerProcess`] (one process) would leave behind: they are started in
//! a process group of their own, and dropping a [`Server`] kills the group.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::compare::loopback;
use crate::process::{Log, ServerProcess};

/// How long a peer may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The body both HTTP servers must send for `GET /`.
pub const HELLO: &[u8] = b"Hello, World!\n";

/// A server under load: the child, and the process group to kill with it.
pub struct Server {
    process: Option<ServerProcess>,
    /// The group leader's pid, for a server that forks workers.
    group: Option<Pid>,
    /// Where it serves: UDP and TCP on the same port for the peers.
    pub udp: Option<SocketAddr>,
    pub tcp: SocketAddr,
}

impl Server {
    /// Ask the server to exit (SIGTERM), wait, kill what is left; return
    /// what it logged.
    pub async fn stop(mut self) -> Log {
        let log = match self.process.take() {
            Some(p) => p.stop().await,
            None => Log::default(),
        };
        self.kill_group();
        log
    }

    /// CPU seconds the server has used so far, its workers included.
    pub fn cpu_seconds(&self) -> f64 {
        match self.process.as_ref().and_then(|p| p.pid().ok()) {
            Some(pid) => crate::sys::cpu_seconds(pid, self.group.is_some()),
            None => 0.0,
        }
    }

    fn kill_group(&mut self) {
        if let Some(pid) = self.group.take() {
            // The whole group, workers included; ESRCH (all gone) is fine.
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// A loopback port free for both TCP and UDP when asked. Another process
/// may take it before the server binds it; the start then fails, and the
/// report says so.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..20 {
        let tcp = TcpListener::bind(loopback(0)).context("cannot find a free TCP port")?;
        let port = tcp.local_addr().context("cannot read a bound port")?.port();
        if StdUdpSocket::bind(loopback(port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no loopback port free for both TCP and UDP in 20 tries")
}

/// Spawn a peer in a process group of its own, then wait until `ready`
/// succeeds (or the peer exits, or [`READY_TIMEOUT`] passes).
async fn start_peer<F, Fut>(name: &str, mut command: Command, port: u16, udp: bool, ready: F) -> anyhow::Result<Server>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    command.process_group(0);
    let process = ServerProcess::spawn(name, command)?;
    let group = Some(Pid::from_raw(process.pid()? as i32));
    let server = Server { process: Some(process), group, udp: udp.then(|| loopback(port)), tcp: loopback(port) };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let process = server.process.as_ref().context("no process")?;
        match ready().await {
            Ok(()) => return Ok(server),
            Err(e) if process.log().closed || Instant::now() >= deadline => {
                bail!("{name} on port {port} did not answer: {e:#}{}", process.log().tail_text())
            }
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Start the host with `args` (plugin, listeners, options) and wait for
/// its `listening` lines; then check it answers as `ready` says.
pub async fn start_host<F, Fut>(name: &str, command: Command, udp: bool, ready: F) -> anyhow::Result<Server>
where
    F: Fn(SocketAddr, Option<SocketAddr>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let process = ServerProcess::start_listening(name, command, udp).await?;
    let (tcp, udp) = (process.tcp(), udp.then(|| process.udp()));
    ready(tcp, udp).await.with_context(|| format!("{name} answered wrongly:{}", process.log().tail_text()))?;
    Ok(Server { process: Some(process), group: None, udp, tcp })
}

/// NSD serving `zone` (named `origin`) from `dir` on `port`, with
/// `workers` server processes and response-rate limiting off.
pub async fn nsd(
    bin: &Path,
    dir: &Path,
    zone: &Path,
    origin: &Name,
    port: u16,
    workers: usize,
) -> anyhow::Result<Server> {
    let conf = dir.join("nsd.conf");
    std::fs::write(&conf, nsd_conf(dir, zone, origin, port, workers))
        .with_context(|| format!("cannot write {}", conf.display()))?;
    let mut c = Command::new(bin);
    // -d: in the foreground, logging to stderr.
    c.arg("-d").arg("-c").arg(&conf);
    let probe_origin = origin.clone();
    start_peer("nsd", c, port, true, move || dns_probe(loopback(port), probe_origin.clone())).await
}

/// The configuration NSD runs with: everything in `dir`, no chroot, no
/// user switch, no database file, no remote control, no IPv6, RRL off.
pub fn nsd_conf(dir: &Path, zone: &Path, origin: &Name, port: u16, workers: usize) -> String {
    let d = dir.display();
    let mut s = String::new();
    let _ = writeln!(s, "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  server-count: {workers}");
    let _ = writeln!(s, "  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"");
    let _ =
        writeln!(s, "  pidfile: \"{d}/nsd.pid\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"");
    let _ =
        writeln!(s, "  xfrdir: \"{d}\"\n  logfile: \"/dev/stderr\"\n  do-ip6: no\n  rrl-ratelimit: 0\n  verbosity: 1");
    let _ = writeln!(s, "remote-control:\n  control-enable: no");
    let _ = writeln!(s, "zone:\n  name: \"{origin}\"\n  zonefile: \"{}\"", zone.display());
    s
}

/// redis-server with its built-in configuration (persistence as shipped:
/// RDB snapshots on `save 3600 1 300 100 60 10000`, no AOF) in `dir`.
pub async fn redis(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Server> {
    let mut c = Command::new(bin);
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"]);
    c.arg("--dir").arg(dir).args(["--logfile", "/dev/stderr"]);
    start_peer("redis-server", c, port, false, move || resp_probe(loopback(port))).await
}

/// nginx with `workers` worker processes answering every request with
/// [`HELLO`] as `text/plain`; no access log; its files in `dir`.
pub async fn nginx(bin: &Path, dir: &Path, port: u16, workers: usize) -> anyhow::Result<Server> {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port, workers))
        .with_context(|| format!("cannot write {}", conf.display()))?;
    let mut c = Command::new(bin);
    c.arg("-p").arg(dir).arg("-c").arg(&conf).args(["-e", "stderr"]);
    start_peer("nginx", c, port, false, move || http_probe(loopback(port))).await
}

/// The nginx configuration: the defaults but for the worker count, the
/// foreground, the paths and the access log (off: the host logs no request
/// either).
pub fn nginx_conf(dir: &Path, port: u16, workers: usize) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen 127.0.0.1:{port};\n    \
         location / {{ default_type text/plain; return 200 \"Hello, World!\\n\"; }}\n  }}\n}}\n"
    )
}

/// `wasmtime serve` of `component` with `workers` tokio worker threads
/// (`TOKIO_WORKER_THREADS`: serve has no flag for them), `-Scli` (the
/// component imports `wasi:cli/environment`, as Rust's std does on
/// wasm32-wasip2, and serve links wasi:cli only when asked), and its
/// defaults otherwise: a fresh instance per request.
pub async fn wasmtime_serve(bin: &Path, component: &Path, port: u16, workers: usize) -> anyhow::Result<Server> {
    let mut c = Command::new(bin);
    // A failure to start is explained in one line, without a backtrace.
    c.env("TOKIO_WORKER_THREADS", workers.to_string()).env("RUST_BACKTRACE", "0");
    c.args(["serve", "-Scli", "--addr", &loopback(port).to_string()]).arg(component);
    start_peer("wasmtime serve", c, port, false, move || http_probe(loopback(port))).await
}

/// One UDP query for the SOA of `origin`: the answer must be an
/// authoritative NOERROR with the SOA in it.
pub async fn dns_probe(addr: SocketAddr, origin: Name) -> anyhow::Result<()> {
    let mut query = Message::new(0x6265, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(origin.clone(), RecordType::SOA));
    let bytes = query.to_vec().context("cannot encode a DNS query")?;
    let socket = UdpSocket::bind(loopback(0)).await.context("cannot open a UDP socket")?;
    socket.send_to(&bytes, addr).await.with_context(|| format!("cannot send to {addr}"))?;
    let mut buf = vec![0u8; 4096];
    let n = timeout(PROBE_TIMEOUT, socket.recv(&mut buf))
        .await
        .with_context(|| format!("no answer from {addr} to SOA {origin}"))??;
    let answer = Message::from_vec(&buf[..n]).context("the answer is not a DNS message")?;
    ensure!(
        answer.metadata.response_code == ResponseCode::NoError
            && answer.metadata.authoritative
            && answer.answers.iter().any(|r| r.record_type() == RecordType::SOA),
        "SOA {origin} was answered {} (authoritative: {}, {} answers)",
        answer.metadata.response_code,
        answer.metadata.authoritative,
        answer.answers.len()
    );
    Ok(())
}

/// `SET bench:probe ok` then `GET bench:probe` must answer `+OK` and `ok`.
pub async fn resp_probe(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await.context("connect timed out")??;
    let exchange = [
        (&b"*3\r\n$3\r\nSET\r\n$11\r\nbench:probe\r\n$2\r\nok\r\n"[..], &b"+OK\r\n"[..]),
        (b"*2\r\n$3\r\nGET\r\n$11\r\nbench:probe\r\n", b"$2\r\nok\r\n"),
    ];
    for (request, expected) in exchange {
        stream.write_all(request).await?;
        let mut reply = vec![0u8; expected.len()];
        timeout(PROBE_TIMEOUT, stream.read_exact(&mut reply)).await.context("no reply")??;
        ensure!(
            reply == expected,
            "{:?} answered {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(())
}

/// `GET /` with `Connection: close` must answer 200 and exactly [`HELLO`].
pub async fn http_probe(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await.context("connect timed out")??;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut reply = Vec::new();
    timeout(PROBE_TIMEOUT, (&mut stream).take(64 * 1024).read_to_end(&mut reply))
        .await
        .context("no whole reply (is `Connection: close` honoured?)")??;
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b);
    ensure!(
        text.starts_with("HTTP/1.1 200") && body.map(str::as_bytes) == Some(HELLO),
        "GET / answered {text:?}, not 200 with {:?}",
        String::from_utf8_lossy(HELLO)
    );
    Ok(())
}

/// The host command line shared by every row: the plugin, a compile cache
/// and a data directory of the run's own, and the worker threads.
pub fn host_command(host: &Path, plugin: &Path, cache: &Path, data: &Path, workers: usize) -> Command {
    let mut c = Command::new(host);
    c.arg("--plugin").arg(plugin).arg("--cache-dir").arg(cache).arg("--data-dir").arg(data);
    c.args(["--workers", &workers.to_string()]);
    c
}

/// A fresh directory under `parent`.
pub fn subdir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
