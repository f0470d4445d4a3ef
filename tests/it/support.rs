//! Shared test helpers: start the real `host` binary on port 0, find the
//! addresses it logged, and talk to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for the host to start (big plugins compile for
/// seconds on a cold cache) or for a reply.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built plugin, `target/plugins/NAME.wasm`. Panics with the fix if missing.
pub fn plugin(name: &str) -> PathBuf {
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh first", path.display());
    path
}

/// The `host` binary under test.
pub fn host_bin() -> &'static str {
    env!("CARGO_BIN_EXE_host")
}

/// Log lines collected from a running host's stderr.
#[derive(Clone, Default)]
pub struct Logs(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Logs {
    pub fn lines(&self) -> Vec<String> {
        self.0.0.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.0.0.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait until `count(needle) >= n`; returns the final count.
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.0;
        let mut lines = lock.lock().unwrap();
        loop {
            let c = lines.iter().filter(|l| l.contains(needle)).count();
            let now = Instant::now();
            if c >= n || now >= deadline {
                return c;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    fn push(&self, line: String) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().push(line);
        cv.notify_all();
    }
}

/// A running `host` process, killed when dropped.
pub struct Host {
    child: Child,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub logs: Logs,
    /// The host's own data directory, removed when it is dropped.
    _data_dir: Option<tempfile::TempDir>,
}

impl Host {
    /// Start `host` with `args` (e.g. `["--plugin", p, "--listen", "127.0.0.1:0"]`)
    /// and wait until every listener has logged its address.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Host {
        Self::start_env(args, &[])
    }

    pub fn start_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Host {
        Self::start_with(args, env, |_| {})
    }

    /// Start with `env` set and `configure` applied to the command, and
    /// wait until it serves.
    pub fn start_with<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Host {
        let mut host = Self::spawn_with(args, env, configure);
        host.wait_ready();
        host
    }

    /// Start the process and return at once, before it serves.
    pub fn spawn_with<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Host {
        let strs: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        let mut cmd = Command::new(host_bin());
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        if !strs.iter().any(|a| a == "--cache-dir" || a == "--no-cache") {
            cmd.arg("--cache-dir").arg(test_cache_dir());
        }
        // Each host gets a key-value store of its own unless the test
        // names one: tests never share data, and never touch ~/.local.
        let data_dir = if strs.iter().any(|a| a == "--data-dir" || a == "--kv")
            || env.iter().any(|(k, _)| *k == "XDG_DATA_HOME")
        {
            None
        } else {
            let dir = tempfile::Builder::new().prefix("host-data-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            cmd.arg("--data-dir").arg(dir.path());
            Some(dir)
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn host");
        let stderr = child.stderr.take().unwrap();
        let logs = Logs::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("HOST_TEST_VERBOSE").is_some() {
                    eprintln!("[host] {line}");
                }
                sink.push(line);
            }
            sink.push("<stderr closed>".into());
        });
        Host { child, udp: Vec::new(), tcp: Vec::new(), logs, _data_dir: data_dir }
    }

    /// Wait until the host logs `ready` (after every listener), and take
    /// the addresses it logged as `listening udp|tcp ADDR`.
    pub fn wait_ready(&mut self) {
        if self.logs.wait_for("ready: serving", 1, START_TIMEOUT) < 1 {
            let _ = self.child.kill();
            panic!("host did not start; log:\n{}", self.logs.lines().join("\n"));
        }
        for line in self.logs.lines() {
            match host::logline::listening(&line) {
                Some((host::Transport::Udp, addr)) => self.udp.push(addr),
                Some((host::Transport::Tcp, addr)) => self.tcp.push(addr),
                None => {}
            }
        }
    }

    /// Send SIGTERM.
    pub fn sigterm(&self) {
        signal(&self.child, libc_sigterm());
    }

    /// Send a signal by number.
    pub fn signal(&self, sig: i32) {
        signal(&self.child, sig);
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn udp(&self) -> SocketAddr {
        self.udp[0]
    }

    pub fn tcp(&self) -> SocketAddr {
        self.tcp[0]
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn libc_sigterm() -> i32 {
    15
}

fn signal(child: &Child, sig: i32) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// The compile cache of every test host that is not given one: a temporary
/// directory for this test run (under the target dir, never `~/.cache`),
/// shared by its hosts so each plugin compiles once per run.
pub fn test_cache_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Runs that were killed leave theirs behind: remove those first.
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("test-cache-")) else { continue };
                let pid = pid.split('.').next().unwrap_or_default();
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        tempfile::Builder::new()
            .prefix(&format!("test-cache-{}.", std::process::id()))
            .tempdir_in(base)
            .expect("a temporary compile cache")
    })
    .path()
}

/// Run `host` to completion (for startup errors): (exit code, stderr).
pub fn run_host<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let out = Command::new(host_bin()).args(args).stdin(Stdio::null()).output().expect("run host");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A UDP socket bound to loopback of the same family as `to`.
pub fn udp_client(to: SocketAddr) -> UdpSocket {
    let bind = if to.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s.connect(to).unwrap();
    s
}

/// Send one datagram and return the reply, or `None` if none came within `wait`.
pub fn udp_exchange(to: SocketAddr, payload: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = udp_client(to);
    s.set_read_timeout(Some(wait)).unwrap();
    s.send(payload).unwrap();
    let mut buf = vec![0u8; 70_000];
    match s.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Send one datagram and return the reply; panics if none comes.
pub fn udp_roundtrip(to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    udp_exchange(to, payload, REPLY_TIMEOUT).unwrap_or_else(|| panic!("no UDP reply from {to}"))
}

/// A TCP connection with a read timeout.
pub fn tcp_connect(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Send a line, read the reply line (with its `\n`).
pub fn line_roundtrip(s: &mut TcpStream, line: &[u8]) -> Vec<u8> {
    s.write_all(line).unwrap();
    s.write_all(b"\n").unwrap();
    read_line(s)
}

/// Read up to and including `\n`.
pub fn read_line(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => panic!("connection closed after {:?}", String::from_utf8_lossy(&out)),
            Ok(_) => {
                out.push(byte[0]);
                if byte[0] == b'\n' {
                    return out;
                }
            }
            Err(e) => panic!("reading a line: {e} (got {:?})", String::from_utf8_lossy(&out)),
        }
    }
}

/// True if the peer closed the connection (EOF or reset) within `wait`.
pub fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

impl Host {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The counters, read by sending SIGUSR1 and parsing the `stats` line.
    pub fn stats(&self) -> std::collections::HashMap<String, u64> {
        let before = self.logs.count("stats requests=");
        self.signal(10); // SIGUSR1
        assert!(self.logs.wait_for("stats requests=", before + 1, REPLY_TIMEOUT) > before, "no stats line");
        let line = self.logs.lines().into_iter().rev().find(|l| l.contains("stats requests=")).unwrap();
        parse_stats(&line)
    }

    /// Resident memory of the host process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The most resident memory the host process has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Host {
    /// Wait until counter `name` reaches `at_least`, polling the host's
    /// counters; returns its last value.
    pub fn wait_stat(&self, name: &str, at_least: u64) -> u64 {
        let value = || self.stats().get(name).copied().unwrap_or_else(|| panic!("no counter {name}"));
        eventually(REPLY_TIMEOUT, || value() >= at_least);
        value()
    }

    /// The sum of the counters `names`.
    pub fn stat_sum(&self, names: &[&str]) -> u64 {
        let stats = self.stats();
        names.iter().map(|n| stats.get(*n).copied().unwrap_or_else(|| panic!("no counter {n}"))).sum()
    }

    /// Send `payload` over UDP and check that it gets no reply: wait until
    /// the host has counted the request under one of `counters` (polling
    /// them, no fixed sleep), then check that nothing arrived.
    pub fn assert_no_udp_reply(&self, payload: &[u8], counters: &[&str]) {
        let before = self.stat_sum(counters);
        let s = udp_client(self.udp());
        s.send(payload).unwrap();
        assert!(
            eventually(REPLY_TIMEOUT, || self.stat_sum(counters) > before),
            "{counters:?} did not count the request {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(64)])
        );
        assert_no_datagram(&s);
    }
}

/// Assert that no datagram is waiting on `s`.
pub fn assert_no_datagram(s: &UdpSocket) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    match s.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("expected no datagram, got {other:?}"),
    }
    s.set_nonblocking(false).unwrap();
}

/// `stats a=1 b=2` -> {a: 1, b: 2}.
pub fn parse_stats(line: &str) -> std::collections::HashMap<String, u64> {
    let pairs = host::logline::stats(line).unwrap_or_else(|| panic!("not a stats line: {line}"));
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Well-behaved clients that keep sending echo requests over UDP and TCP
/// while a test does something hostile, and check every reply.
pub struct GoodTraffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl GoodTraffic {
    /// One UDP and one TCP (newline framing) client against `host`.
    pub fn start(host: &Host) -> GoodTraffic {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        let (udp, tcp) = (host.udp.first().copied(), host.tcp.first().copied());
        if let Some(addr) = udp {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let msg = format!("good udp {n}");
                    assert_eq!(udp_roundtrip(addr, msg.as_bytes()), msg.as_bytes(), "good UDP request {n}");
                    n += 1;
                }
                n
            }));
        }
        if let Some(addr) = tcp {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut s = tcp_connect(addr);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let msg = format!("good tcp {n}");
                    assert_eq!(
                        line_roundtrip(&mut s, msg.as_bytes()),
                        format!("{msg}\n").as_bytes(),
                        "good TCP frame {n}"
                    );
                    n += 1;
                }
                n
            }));
        }
        GoodTraffic { stop, threads }
    }

    /// Stop and return how many good requests were answered correctly;
    /// panics if any client saw a wrong or missing reply.
    pub fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().expect("a good client failed")).sum()
    }
}

/// Frames encoded for `framing`.
pub fn frame(framing: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match framing {
        "lines" => {
            out.extend_from_slice(payload);
            out.push(b'\n');
        }
        "u16" => {
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            out.extend_from_slice(payload);
        }
        "u32" => {
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        _ => out.extend_from_slice(payload),
    }
    out
}

/// `bytes` in a file `name` of a new temporary directory: (the directory,
/// which removes the file when dropped, and the file's path).
pub fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path.display().to_string())
}

/// A valid component that exports `handle` with the wrong type: it
/// compiles and links, and must be refused as not implementing the world.
pub fn wrong_world_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 7))
            (core instance $i (instantiate $m))
            (func (export "handle") (result u32) (canon lift (core func $i "f"))))"#,
    )
    .unwrap()
}

/// Wait until `probe` returns true, polling; false on timeout.
pub fn eventually(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `bytes` with a custom section appended: a valid component with another
/// sha256, so the host sees a new version.
pub fn variant(bytes: &[u8], tag: u32) -> Vec<u8> {
    let name = b"variant";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&tag.to_le_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}
