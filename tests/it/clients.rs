//! Real clients, not ours: netcat and socat from the distribution get their
//! bytes back over UDP and TCP, IPv4 and IPv6, with each framing.
//! (scripts/setup.sh installs them.)

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

/// Run `program args` with `input` on stdin; return its stdout.
fn client(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (run scripts/setup.sh): {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn echo_host(framing: &str) -> Host {
    let echo = plugin("echo").display().to_string();
    Host::start(&["--plugin", &echo, "--listen", "127.0.0.1:0", "--listen", "[::1]:0", "--framing", framing])
}

#[test]
fn netcat_over_udp_and_tcp() {
    let host = echo_host("lines");
    for (udp, tcp) in host.udp.iter().zip(&host.tcp) {
        let (ip, port) = (udp.ip().to_string(), udp.port().to_string());
        assert_eq!(client("nc", &["-u", "-w1", &ip, &port], b"hello\n"), b"hello\n", "nc -u {udp}");
        let (ip, port) = (tcp.ip().to_string(), tcp.port().to_string());
        assert_eq!(client("nc", &["-q1", &ip, &port], b"hello\nworld\n"), b"hello\nworld\n", "nc {tcp}");
    }
}

#[test]
fn socat_with_every_framing() {
    let cases: [(&str, &[u8]); 4] = [
        ("lines", b"one\ntwo\n"),
        ("u16", b"\x00\x03one\x00\x00\x00\x05t\nw\x00o"),
        ("u32", b"\x00\x00\x00\x03one\x00\x00\x00\x00"),
        ("raw", b"anything at all"),
    ];
    for (framing, stream) in cases {
        let host = echo_host(framing);
        for tcp in &host.tcp {
            let to = format!("TCP:{tcp}");
            assert_eq!(client("socat", &["-t2", "-", &to], stream), stream, "socat {framing} {tcp}");
        }
    }
    let host = echo_host("lines");
    for udp in &host.udp {
        let to = format!("UDP:{udp}");
        assert_eq!(client("socat", &["-t1", "-", &to], b"datagram \x00\xff"), b"datagram \x00\xff", "socat {udp}");
    }
}
