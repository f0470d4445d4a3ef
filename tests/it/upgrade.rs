//! Zero-downtime upgrade of the host binary (`--reuse-port`): a second host
//! joins the addresses of a running one, the first is sent SIGTERM and
//! drains, and under UDP and TCP load no request is lost and no connection
//! is refused or reset.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

/// UDP clients, each with its own socket, one request in flight at a time.
const UDP_CLIENTS: usize = 4;
/// Threads opening a connection per request, one after another.
const TCP_OPENERS: usize = 4;
/// Connections open through the whole upgrade, one request after another.
const TCP_LONG_LIVED: usize = 2;
/// How long a request may wait for its reply before it counts as lost.
const LOST_AFTER: Duration = REPLY_TIMEOUT;

/// What one load thread saw.
#[derive(Debug, Default)]
struct Seen {
    answered: u64,
    failures: Vec<String>,
}

/// Load against `udp` and `tcp` until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Seen>>,
}

impl Load {
    fn start(udp: SocketAddr, tcp: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for c in 0..UDP_CLIENTS {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || udp_client_loop(c, udp, &stop)));
        }
        for c in 0..TCP_OPENERS {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || tcp_opener_loop(c, tcp, &stop)));
        }
        for c in 0..TCP_LONG_LIVED {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || tcp_long_lived_loop(c, tcp, &stop)));
        }
        Load { stop, threads }
    }

    /// Stop and sum up: (requests answered, every failure seen).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        let mut total = Seen::default();
        for t in self.threads {
            let seen = t.join().expect("a load thread panicked");
            total.answered += seen.answered;
            total.failures.extend(seen.failures);
        }
        (total.answered, total.failures)
    }
}

fn udp_client_loop(client: usize, to: SocketAddr, stop: &AtomicBool) -> Seen {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(LOST_AFTER)).unwrap();
    let mut seen = Seen::default();
    let mut buf = [0u8; 256];
    let mut id = 0u64;
    while !stop.load(Relaxed) {
        let msg = format!("udp {client} {id}");
        s.send(msg.as_bytes()).unwrap();
        match s.recv(&mut buf) {
            Ok(n) if buf[..n] == *msg.as_bytes() => seen.answered += 1,
            Ok(n) => seen.failures.push(format!("{msg:?}: got {:?}", String::from_utf8_lossy(&buf[..n]))),
            Err(e) => seen.failures.push(format!("{msg:?}: no reply within {LOST_AFTER:?} ({e})")),
        }
        id += 1;
    }
    seen
}

fn tcp_opener_loop(client: usize, to: SocketAddr, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut id = 0u64;
    while !stop.load(Relaxed) {
        let msg = format!("tcp-new {client} {id}");
        match TcpStream::connect(to).and_then(|s| exchange(s, &msg)) {
            Ok(reply) if reply == format!("{msg}\n") => seen.answered += 1,
            Ok(reply) => seen.failures.push(format!("{msg:?}: got {reply:?}")),
            Err(e) => seen.failures.push(format!("{msg:?}: {e}")),
        }
        id += 1;
    }
    seen
}

fn tcp_long_lived_loop(client: usize, to: SocketAddr, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(LOST_AFTER)).unwrap();
    let (mut writer, mut reader) = (s.try_clone().unwrap(), BufReader::new(s));
    let mut id = 0u64;
    while !stop.load(Relaxed) {
        let msg = format!("tcp-long {client} {id}");
        let mut reply = String::new();
        let result = writer.write_all(format!("{msg}\n").as_bytes()).and_then(|_| reader.read_line(&mut reply));
        match result {
            Ok(_) if reply == format!("{msg}\n") => seen.answered += 1,
            Ok(_) => {
                seen.failures.push(format!("{msg:?}: got {reply:?}"));
                break;
            }
            Err(e) => {
                seen.failures.push(format!("{msg:?}: {e}"));
                break;
            }
        }
        id += 1;
    }
    seen
}

/// One line out, one line back, on a fresh connection.
fn exchange(s: TcpStream, msg: &str) -> std::io::Result<String> {
    s.set_read_timeout(Some(LOST_AFTER))?;
    let mut reply = String::new();
    (&s).write_all(format!("{msg}\n").as_bytes())?;
    BufReader::new(&s).read_line(&mut reply)?;
    Ok(reply)
}

fn echo_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--plugin".to_string(), plugin("echo").display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_second_host_takes_over_under_load_without_losing_a_request() {
    hand_over(Stop::Old);
}

/// Aborting an upgrade: the new host is stopped and the old one keeps the
/// address (the new listener is not the first of its group: steering must
/// find its index).
#[test]
fn the_new_host_stops_under_load_without_losing_a_request() {
    hand_over(Stop::New);
}

enum Stop {
    Old,
    New,
}

/// Two hosts share the addresses under load; `stop` is sent SIGTERM and
/// drains; the other serves every request from then on.
fn hand_over(stop: Stop) {
    // Long-lived connections stay with the stopped host until their peers
    // close them: the drain must outlast the load.
    let drain = ["--reuse-port", "--drain-timeout", "20s"];
    let old = Host::start(&echo_args(&[&["--listen", "127.0.0.1:0"][..], &drain].concat()));
    let (udp, tcp) = (old.udp(), old.tcp());
    let load = Load::start(udp, tcp);
    std::thread::sleep(Duration::from_millis(300));

    let (u, t) = (udp.to_string(), tcp.to_string());
    let new = Host::start(&echo_args(&[&["--udp", &u, "--tcp", &t][..], &drain].concat()));
    assert_eq!((new.udp(), new.tcp()), (udp, tcp), "the new host serves the same addresses");
    std::thread::sleep(Duration::from_millis(300));

    let (mut stopped, kept) = match stop {
        Stop::Old => (old, new),
        Stop::New => (new, old),
    };
    stopped.sigterm();
    // It hands over: new connections are steered away at once, then it
    // waits a second for handshakes under way before it closes.
    assert_eq!(stopped.logs.wait_for("new connections go to the 1 other listener", 1, REPLY_TIMEOUT), 1);
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let (answered, failures) = load.finish();
    // Its long-lived connections closed by their peers, it exits.
    let status = stopped.wait(Duration::from_secs(10)).expect("the stopped host did not exit");
    assert!(status.success(), "stopped host: {status}\n{}", stopped.logs.lines().join("\n"));
    assert!(started.elapsed() < Duration::from_secs(10));

    assert!(failures.is_empty(), "{} of {} requests failed:\n{}", failures.len(), answered, failures.join("\n"));
    assert!(answered > 100, "only {answered} requests under load");
    // Everything now goes to the host that was kept.
    assert_eq!(udp_roundtrip(udp, b"after"), b"after");
    assert_eq!(line_roundtrip(&mut tcp_connect(tcp), b"after"), b"after\n");
    let stats = kept.stats();
    assert!(stats["requests"] > 0 && stats["connections"] > 0, "the kept host served nothing: {stats:?}");
}

#[test]
fn without_reuse_port_a_second_host_on_the_same_address_fails_in_one_line() {
    for first in [&["--listen", "127.0.0.1:0"][..], &["--listen", "127.0.0.1:0", "--reuse-port"]] {
        let running = Host::start(&echo_args(first));
        for (flag, addr) in [("--udp", running.udp()), ("--tcp", running.tcp())] {
            let (code, stderr) = run_host(&echo_args(&[flag, &addr.to_string()]));
            assert_eq!(code, Some(2), "{first:?} then {flag} {addr}: {stderr}");
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
            assert_eq!(errors.len(), 1, "{stderr}");
            let transport = &flag[2..];
            assert!(errors[0].contains(&format!("cannot listen on {transport} {addr}")), "{}", errors[0]);
            assert!(errors[0].contains("--reuse-port"), "{}", errors[0]);
        }
    }
}

/// A new host that cannot start (here: its plugin is not WebAssembly) takes
/// no traffic meanwhile: its UDP sockets join the group only once it
/// serves, as its TCP listener does, so nothing is queued to it and lost.
#[test]
fn a_new_host_that_fails_to_start_loses_nothing() {
    let old = Host::start(&echo_args(&["--listen", "127.0.0.1:0", "--reuse-port"]));
    let (udp, tcp) = (old.udp(), old.tcp());
    let load = Load::start(udp, tcp);
    std::thread::sleep(Duration::from_millis(200));
    let (dir, broken) = temp_file("broken.wasm", b"not a component");
    let data = dir.path().join("data").display().to_string();
    for _ in 0..5 {
        let (u, t) = (udp.to_string(), tcp.to_string());
        let args = ["--plugin", &broken, "--udp", &u, "--tcp", &t, "--reuse-port", "--no-cache", "--data-dir", &data];
        let (code, stderr) = run_host(&args);
        assert_eq!(code, Some(2), "{stderr}");
    }
    let (answered, failures) = load.finish();
    assert!(failures.is_empty(), "{} of {} requests failed:\n{}", failures.len(), answered, failures.join("\n"));
    assert!(answered > 10, "only {answered} requests under load");
}

/// A lone host with `--reuse-port` has nobody to hand its address over
/// to: on SIGTERM it stops accepting at once and ends its connections
/// between requests, as without `--reuse-port`, rather than serving new
/// connections until shortly before `--drain-timeout`.
#[test]
fn a_lone_host_with_reuse_port_refuses_new_connections_at_once() {
    let mut host = Host::start(&echo_args(&["--listen", "127.0.0.1:0", "--reuse-port", "--drain-timeout", "20s"]));
    let tcp = host.tcp();
    let mut long = tcp_connect(tcp);
    assert_eq!(line_roundtrip(&mut long, b"long"), b"long\n");
    let stop = Arc::new(AtomicBool::new(false));
    let opener = {
        let stop = stop.clone();
        std::thread::spawn(move || tcp_opener_loop(0, tcp, &stop))
    };
    host.wait_stat("connections", 20);
    let started = Instant::now();
    host.sigterm();
    assert_eq!(host.logs.wait_for("shutting down", 1, REPLY_TIMEOUT), 1);
    // The opener keeps connecting: a listener waiting for a quiet second
    // would never close.
    let refused = eventually(
        Duration::from_secs(2),
        || matches!(TcpStream::connect(tcp), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
    );
    stop.store(true, Relaxed);
    let seen = opener.join().expect("the opener panicked");
    let logs = host.logs.lines().join("\n");
    assert!(refused, "new connections still accepted 2 s after SIGTERM:\n{logs}");
    assert!(seen.answered > 0, "{seen:?}");
    assert!(closed_within(&mut long, Duration::from_secs(5)), "the open connection was not closed:\n{logs}");
    let status = host.wait(Duration::from_secs(5)).expect("the host did not exit within 5 s of --drain-timeout 20s");
    assert!(status.success(), "{status}\n{logs}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(host.logs.count("no other host listens on it; new connections are refused from now"), 1, "{logs}");
}
