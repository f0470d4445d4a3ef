//! systemd socket activation and readiness, with the variables set the
//! way systemd sets them: the test binds the sockets, passes them as fds 3
//! and 4 with `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, and listens
//! on its own `NOTIFY_SOCKET`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// What systemd would pass: a TCP listener and a UDP socket on loopback.
struct Sockets {
    tcp: TcpListener,
    udp: UdpSocket,
}

impl Sockets {
    fn bind() -> Sockets {
        Sockets { tcp: TcpListener::bind("127.0.0.1:0").unwrap(), udp: UdpSocket::bind("127.0.0.1:0").unwrap() }
    }

    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.tcp.local_addr().unwrap(), self.udp.local_addr().unwrap())
    }
}

/// Start `host` as systemd would: `fds` become 3, 4, ... (named `names`),
/// `LISTEN_PID` is the host's own pid (the shell `exec`s it), and
/// readiness goes to `notify`.
fn spawn_activated(args: &[String], fds: &[RawFd], names: &str, notify: &std::path::Path) -> Host {
    let count = fds.len().to_string();
    let env = [("LISTEN_FDS", count.as_str()), ("LISTEN_FDNAMES", names), ("NOTIFY_SOCKET", notify.to_str().unwrap())];
    let fds = fds.to_vec();
    Host::spawn_with(args, &env, move |cmd| {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(r#"LISTEN_PID=$$ exec "$0" "$@""#).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: between fork and exec the closure calls only fcntl,
        // dup2 and close, which are async-signal-safe, on descriptors this
        // process owns (its copies of the test's sockets).
        unsafe {
            sh.pre_exec(move || {
                use nix::libc::{F_DUPFD, close, dup2, fcntl};
                // Out of the way first: a socket may already be fd 3 or 4.
                let high: Vec<RawFd> = fds.iter().map(|&fd| fcntl(fd, F_DUPFD, 100)).collect();
                for (i, &fd) in high.iter().enumerate() {
                    if fd < 0 || dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    close(fd);
                }
                Ok(())
            })
        };
        *cmd = sh;
    })
}

/// The notifications sent to `socket`, until one equals `want` (or time is up).
fn wait_notification(socket: &UnixDatagram, want: &str) -> Vec<String> {
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
            if seen.iter().any(|l| l == want) {
                break;
            }
        }
    }
    seen
}

fn echo(tcp: SocketAddr, udp: SocketAddr) -> Vec<String> {
    let p = plugin("echo").display().to_string();
    ["--plugin", &p, "--tcp", &tcp.to_string(), "--udp", &udp.to_string()].map(String::from).to_vec()
}

/// A peer that connects (or sends) while no host runs: it waits in the
/// socket systemd holds.
struct Early {
    tcp: TcpStream,
    udp: UdpSocket,
}

impl Early {
    fn send(tcp: SocketAddr, udp: SocketAddr, msg: &str) -> Early {
        let mut s = TcpStream::connect(tcp).expect("the listen backlog takes the connection");
        s.set_read_timeout(Some(START_TIMEOUT)).unwrap();
        s.write_all(format!("{msg}\n").as_bytes()).unwrap();
        let u = udp_client(udp);
        u.set_read_timeout(Some(START_TIMEOUT)).unwrap();
        u.send(msg.as_bytes()).unwrap();
        Early { tcp: s, udp: u }
    }

    fn assert_answered(self, msg: &str) {
        let mut line = String::new();
        BufReader::new(&self.tcp).read_line(&mut line).unwrap();
        assert_eq!(line, format!("{msg}\n"));
        let mut buf = [0u8; 256];
        let n = self.udp.recv(&mut buf).expect("the queued datagram is answered");
        assert_eq!(&buf[..n], msg.as_bytes());
    }
}

#[test]
fn passed_sockets_are_served_without_binding_and_survive_a_restart() {
    let sockets = Sockets::bind();
    let (tcp, udp) = sockets.addrs();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let fds = [sockets.tcp.as_raw_fd(), sockets.udp.as_raw_fd()];

    for run in ["first", "restarted"] {
        // Sent before the host runs (for the restart: between two hosts).
        let early = Early::send(tcp, udp, &format!("{run} early"));
        let mut host = spawn_activated(&echo(tcp, udp), &fds, "web:dns", &notify_path);
        host.wait_ready();
        let ready = wait_notification(&notify, "READY=1");
        assert!(ready.contains(&"READY=1".to_string()), "{run}: {ready:?}");
        assert_eq!((host.tcp(), host.udp()), (tcp, udp));
        assert_eq!(host.logs.count("passed by systemd"), 2, "{}", host.logs.lines().join("\n"));
        assert_eq!(host.logs.count("socket web, fd 3"), 1);
        assert_eq!(host.logs.count("socket dns, fd 4"), 1);
        assert_eq!(host.logs.count("is not served"), 0);

        early.assert_answered(&format!("{run} early"));
        assert_eq!(line_roundtrip(&mut tcp_connect(tcp), b"later"), b"later\n");
        assert_eq!(udp_roundtrip(udp, b"later"), b"later");

        host.sigterm();
        let stopping = wait_notification(&notify, "STOPPING=1");
        assert!(stopping.contains(&"STOPPING=1".to_string()), "{run}: {stopping:?}");
        let status = host.wait(REPLY_TIMEOUT).expect("the host did not exit");
        assert!(status.success(), "{run}: {status}");
    }
}

#[test]
fn a_passed_socket_no_address_asks_for_is_a_warning() {
    let sockets = Sockets::bind();
    let (tcp, udp) = sockets.addrs();
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let _notify = UnixDatagram::bind(&notify_path).unwrap();
    let p = plugin("echo").display().to_string();
    let args = ["--plugin", &p, "--tcp", &tcp.to_string()].map(String::from).to_vec();
    let fds = [sockets.tcp.as_raw_fd(), sockets.udp.as_raw_fd()];
    let mut host = spawn_activated(&args, &fds, "web:dns", &notify_path);
    host.wait_ready();
    assert_eq!(host.logs.count(&format!("socket dns (fd 4, udp {udp})")), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(host.logs.count("is not served"), 1);
    assert_eq!(line_roundtrip(&mut tcp_connect(tcp), b"hi"), b"hi\n");
}

/// `KEY=value` lines of a unit file, continuation lines joined.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    joined.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(|v| v.trim().to_string()).collect()
}

#[test]
fn the_example_units_agree_with_each_other_and_with_the_host() {
    let dir = root().join("examples/systemd");
    let socket = std::fs::read_to_string(dir.join("wasm-sockets.socket")).unwrap();
    let service = std::fs::read_to_string(dir.join("wasm-sockets.service")).unwrap();
    assert_eq!(unit_values(&service, "Type"), ["notify"]);
    assert_eq!(unit_values(&service, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);

    // What the socket unit passes is exactly what the host is told to serve.
    let exec = unit_values(&service, "ExecStart").join(" ");
    let words: Vec<&str> = exec.split_whitespace().collect();
    let mut asked: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "--listen")
        .flat_map(|w| [format!("tcp {}", w[1]), format!("udp {}", w[1])])
        .collect();
    let mut passed: Vec<String> = unit_values(&socket, "ListenStream").iter().map(|a| format!("tcp {a}")).collect();
    passed.extend(unit_values(&socket, "ListenDatagram").iter().map(|a| format!("udp {a}")));
    asked.sort();
    passed.sort();
    assert_eq!(asked, passed);

    // Every flag it gives exists.
    let help = Command::new(host_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "host has no {flag}");
    }

    // systemd's own check, where it is installed, with the binary under test.
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the units are not verified by systemd");
        return;
    };
    assert!(out.status.success());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("wasm-sockets.socket"), &socket).unwrap();
    std::fs::write(tmp.path().join("wasm-sockets.service"), service.replace("/usr/local/bin/host", host_bin()))
        .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "wasm-sockets.socket", "wasm-sockets.service"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}
