//! The connection world (`sockets:plugin/connection-handler@0.2.0`): a TCP
//! connection is a `session` of the plugin, in an instance of its own.
//!
//! Most tests use `session-probe` (plugins/session-probe), a line protocol
//! whose commands show what the session saw; `line-echo` is the plugin-side
//! line framing echo the benchmarks use.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::support::*;

fn probe_host(extra: &[&str]) -> Host {
    let p = plugin("session-probe");
    let mut args = vec!["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Host::start(&args)
}

/// Send `line` and read one reply line.
fn ask(s: &mut TcpStream, line: &str) -> String {
    let reply = line_roundtrip(s, line.as_bytes());
    String::from_utf8(reply).unwrap()
}

/// Everything the host sends until it closes the connection.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("the host closes the connection");
    out
}

#[test]
fn a_connection_plugin_is_served_on_tcp_only() {
    let p = plugin("session-probe");
    let mut host = Host::start(&["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(host.udp.is_empty(), "a connection plugin must not serve UDP");
    assert_eq!(host.logs.count("not serving udp"), 1, "{}", host.logs.lines().join("\n"));
    let mut s = tcp_connect(host.tcp());
    let local = s.local_addr().unwrap();
    assert_eq!(ask(&mut s, "whoami"), format!("peer={local} local={}\n", host.tcp()));
    assert_eq!(ask(&mut s, "plain text"), "plain text\n");
    drop(s);
    host.sigterm();
    assert!(host.wait(REPLY_TIMEOUT).is_some());

    // Asking for UDP explicitly is an error that says why.
    let (code, log) = run_host(&["--plugin", p.to_str().unwrap(), "--udp", "127.0.0.1:0"]);
    assert_ne!(code, Some(0));
    assert!(log.contains("serves TCP only") && log.contains("--udp 127.0.0.1:0"), "{log}");
}

#[test]
fn bytes_split_at_every_boundary_reach_the_plugin_in_order() {
    let host = probe_host(&[]);
    let message = b"set a\nget\ncount\n";
    for cut in 1..message.len() {
        let mut s = tcp_connect(host.tcp());
        let before = host.stats()["requests"];
        s.write_all(&message[..cut]).unwrap();
        // The first part was a call of its own before the rest is sent.
        host.wait_stat("requests", before + 1);
        s.write_all(&message[cut..]).unwrap();
        let mut replies = read_n(&mut s, b"ok\na\n3 16\n".len());
        replies.extend(line_roundtrip(&mut s, b"calls"));
        let text = String::from_utf8(replies).unwrap();
        let calls: u64 = text.lines().last().unwrap().parse().unwrap();
        assert!(text.starts_with("ok\na\n3 16\n"), "cut at {cut}: {text:?}");
        assert!(calls >= 3, "cut at {cut}: the bytes came in {calls} calls, expected the split and the calls line");
    }
}

#[test]
fn many_messages_in_one_write_and_one_message_larger_than_a_read() {
    let p = plugin("line-echo");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let mut s = tcp_connect(host.tcp());
    // 2,000 lines in one write.
    let lines: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    s.write_all(lines.as_bytes()).unwrap();
    assert_eq!(read_n(&mut s, lines.len()), lines.as_bytes());
    // One 300 KB line, many times the host's 8 KiB read: sent from another
    // thread, since the echo comes back while it is still being written.
    let big: Vec<u8> = (0..300_000).map(|i| b'a' + (i % 26) as u8).chain([b'\n']).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = big.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    assert_eq!(read_n(&mut s, big.len()), big);
    t.join().unwrap();
}

#[test]
fn a_slow_writer_is_served_byte_by_byte() {
    let host = probe_host(&[]);
    let mut s = tcp_connect(host.tcp());
    for &b in b"set slowly\nget\n" {
        s.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_n(&mut s, 10), b"ok\nslowly\n");
}

#[test]
fn connections_never_share_state_and_a_trap_ends_only_its_own() {
    let host = probe_host(&[]);
    let (mut a, mut b) = (tcp_connect(host.tcp()), tcp_connect(host.tcp()));
    assert_eq!(ask(&mut a, "set alice"), "ok\n");
    assert_eq!(ask(&mut b, "set bob"), "ok\n");
    assert_eq!(ask(&mut a, "get"), "alice\n");
    assert_eq!(ask(&mut b, "get"), "bob\n");
    // A global of the plugin: every connection has an instance of its own.
    assert_eq!(ask(&mut a, "global"), "1\n");
    assert_eq!(ask(&mut a, "global"), "2\n");
    assert_eq!(ask(&mut b, "global"), "1\n");

    a.write_all(b"trap\n").unwrap();
    assert!(read_to_close(&mut a).is_empty());
    assert_eq!(host.wait_stat("traps", 1), 1);
    assert_eq!(ask(&mut b, "get"), "bob\n", "the other connection is untouched");
    // A timeout too ends its connection only.
    let mut c = tcp_connect(host.tcp());
    c.write_all(b"spin\n").unwrap();
    assert!(read_to_close(&mut c).is_empty());
    assert_eq!(host.wait_stat("timeouts", 1), 1);
    assert_eq!(ask(&mut b, "count"), format!("{} {}\n", 5, "set bob\nget\nglobal\nget\ncount\n".len()));
}

/// Whether the destructor ran for the connection from `peer`: its log line.
fn dropped(host: &Host, peer: std::net::SocketAddr) -> bool {
    let needle = format!("peer={peer} ");
    eventually(REPLY_TIMEOUT, || {
        host.logs.lines().iter().any(|l| l.contains("session-probe: dropped after") && l.contains(&needle))
    })
}

#[test]
fn the_destructor_runs_however_the_connection_ends() {
    let host = probe_host(&["--idle-timeout", "500ms"]);

    // The plugin asks to close: its last bytes arrive, then the close.
    let mut s = tcp_connect(host.tcp());
    let peer = s.local_addr().unwrap();
    s.write_all(b"hello\nquit\nnever read\n").unwrap();
    assert_eq!(read_to_close(&mut s), b"hello\nbye\n");
    // The host lingers until the peer closes too (or 2 s).
    drop(s);
    assert!(dropped(&host, peer), "plugin close");

    // The peer half-closes: `on-end`'s bytes are still delivered.
    let mut s = tcp_connect(host.tcp());
    let peer = s.local_addr().unwrap();
    s.write_all(b"one\ntwo\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut s), b"one\ntwo\nend after 2 lines\n");
    assert!(dropped(&host, peer), "half-close");

    // The peer resets the connection.
    let s = tcp_connect(host.tcp());
    let peer = s.local_addr().unwrap();
    let mut s = s;
    assert_eq!(ask(&mut s, "x"), "x\n");
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    assert!(dropped(&host, peer), "reset");

    // Idle: closed by the host after --idle-timeout.
    let mut s = tcp_connect(host.tcp());
    let peer = s.local_addr().unwrap();
    assert_eq!(ask(&mut s, "x"), "x\n");
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    assert!(dropped(&host, peer), "idle timeout");

    let stats = host.stats();
    assert_eq!(stats["sessions_closed"], 4, "{stats:?}");
    assert_eq!(stats["connections_closed"], 4, "{stats:?}");
}

#[test]
fn sigterm_drains_connections_and_runs_their_destructors() {
    let mut host = probe_host(&[]);
    let mut conns: Vec<TcpStream> = (0..3).map(|_| tcp_connect(host.tcp())).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        assert_eq!(ask(s, &format!("conn {i}")), format!("conn {i}\n"));
    }
    host.sigterm();
    for s in &mut conns {
        assert!(read_to_close(s).is_empty());
    }
    assert!(host.wait(REPLY_TIMEOUT).is_some(), "the host did not exit");
    assert_eq!(host.logs.count("session-probe: dropped after 1 lines"), 3, "{}", host.logs.lines().join("\n"));
    let last = host.logs.lines().into_iter().rev().find(|l| l.contains("stats requests=")).unwrap();
    assert_eq!(parse_stats(&last)["sessions_closed"], 3, "{last}");
}

#[test]
fn calls_get_at_most_max_request_bytes_and_replies_at_most_max_reply() {
    let host = probe_host(&["--max-request", "100", "--max-reply", "2000"]);
    let mut s = tcp_connect(host.tcp());
    let long = "y".repeat(1000);
    assert_eq!(ask(&mut s, &long), format!("{long}\n"));
    let calls: u64 = ask(&mut s, "calls").trim().parse().unwrap();
    assert!(calls >= 11, "1,006 bytes in calls of at most 100: {calls} calls");
    // A reply over --max-reply is not sent, and ends the connection.
    assert_eq!(ask(&mut s, "big 900").len(), 901);
    s.write_all(b"big 5000\n").unwrap();
    assert!(read_to_close(&mut s).is_empty());
    assert_eq!(host.wait_stat("replies_dropped", 1), 1);
}

#[test]
fn a_reply_larger_than_the_output_bound_is_written_whole() {
    let host = probe_host(&[]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"big 1000000\nget\n").unwrap();
    let reply = read_n(&mut s, 1_000_001 + 1);
    assert!(reply[..1_000_000].iter().all(|&b| b == b'x'));
    assert_eq!(&reply[1_000_000..], b"\n\n");
}

#[test]
fn connections_wait_for_an_instance_instead_of_failing() {
    // Room for two instances: the third connection waits for one.
    let host = probe_host(&["--max-instances", "2"]);
    let (mut a, mut b) = (tcp_connect(host.tcp()), tcp_connect(host.tcp()));
    assert_eq!(ask(&mut a, "a"), "a\n");
    assert_eq!(ask(&mut b, "b"), "b\n");
    let mut c = tcp_connect(host.tcp());
    c.write_all(b"c\n").unwrap();
    // Accepted, but no session yet: nothing was called for it.
    host.wait_stat("connections", 3);
    assert_eq!(host.stats()["requests"], 2);
    drop(a);
    assert_eq!(read_line(&mut c), b"c\n");
    assert_eq!(host.stats()["traps"], 0);
}

#[test]
fn connections_keep_their_version_across_twenty_reloads() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.wasm");
    let probe = std::fs::read(plugin("session-probe")).unwrap();
    std::fs::write(&path, &probe).unwrap();
    let host = Host::start(&["--plugin", path.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let stop = Arc::new(AtomicBool::new(false));
    // Rounds each connection has completed.
    let rounds: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(0)).collect());
    // 16 connections stream requests for the whole test. Each checks that
    // every reply comes from the instance it started with: the value it set
    // is there, and the line count goes on by exactly two per round.
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (stop, rounds, addr) = (stop.clone(), rounds.clone(), host.tcp());
            std::thread::spawn(move || {
                let mut s = tcp_connect(addr);
                assert_eq!(ask(&mut s, &format!("set conn-{i}")), "ok\n");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(b"get\ncount\n").unwrap();
                    assert_eq!(read_line(&mut s), format!("conn-{i}\n").as_bytes(), "conn {i}, round {n}");
                    let count = String::from_utf8(read_line(&mut s)).unwrap();
                    let lines: u64 = count.split(' ').next().unwrap().parse().unwrap();
                    n += 1;
                    assert_eq!(lines, 1 + 2 * n, "conn {i}, round {n}");
                    rounds[i].store(n, Ordering::Relaxed);
                }
                s
            })
        })
        .collect();
    for reload in 1..=20u64 {
        let tmp = dir.path().join("next.wasm");
        std::fs::write(&tmp, variant(&probe, reload as u32)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        host.wait_stat("reloads", reload);
        // Every connection sends more requests after this swap.
        let seen: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();
        assert!(
            eventually(REPLY_TIMEOUT, || rounds.iter().zip(&seen).all(|(r, s)| r.load(Ordering::Relaxed) > *s)),
            "a connection stopped getting replies after reload {reload}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let conns: Vec<TcpStream> = clients.into_iter().map(|c| c.join().expect("a client saw a wrong reply")).collect();
    // A new connection gets the newest version.
    let mut fresh = tcp_connect(host.tcp());
    assert_eq!(ask(&mut fresh, "get"), "\n");
    let newest = host.logs.lines().into_iter().rev().find(|l| l.contains("reloaded plugin")).unwrap();
    let newest = newest.split("-> ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let needle = format!("session-probe: open peer={} ", fresh.local_addr().unwrap());
    assert_eq!(host.logs.wait_for(&needle, 1, REPLY_TIMEOUT), 1);
    let open = host.logs.lines().into_iter().find(|l| l.contains(&needle)).unwrap();
    assert!(open.contains(&format!("version={newest}")), "{open} (newest {newest})");
    let stats = host.stats();
    assert_eq!((stats["connections_closed"], stats["traps"], stats["reload_failures"]), (0, 0, 0), "{stats:?}");
    assert_eq!(stats["reloads"], 20);
    drop(conns);
}

#[test]
fn a_connection_with_its_own_handler_instance_keeps_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.wasm");
    std::fs::copy(plugin("echo"), &path).unwrap();
    let args = ["--plugin", path.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--tcp-isolation", "connection"];
    let host = Host::start(&[&args[..], &["--reload-grace", "1h"]].concat());
    let mut old = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut old, b"before"), b"before\n");
    let tmp = dir.path().join("next.wasm");
    std::fs::copy(plugin("upper"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    host.wait_stat("reloads", 1);
    let mut new = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut new, b"after"), b"AFTER\n");
    assert_eq!(line_roundtrip(&mut old, b"after"), b"after\n", "the old connection keeps its version");
}

#[test]
fn old_versions_are_closed_after_the_reload_grace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.wasm");
    let probe = std::fs::read(plugin("session-probe")).unwrap();
    std::fs::write(&path, &probe).unwrap();
    let host = Host::start(&["--plugin", path.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--reload-grace", "2s"]);
    let mut old = tcp_connect(host.tcp());
    assert_eq!(ask(&mut old, "set before"), "ok\n");
    std::fs::write(dir.path().join("next.wasm"), variant(&probe, 1)).unwrap();
    std::fs::rename(dir.path().join("next.wasm"), &path).unwrap();
    host.wait_stat("reloads", 1);
    // Within the grace the old connection is still served by its version;
    // once it is over, the connection is closed between calls, its
    // destructor having run.
    assert_eq!(ask(&mut old, "get"), "before\n");
    let mut new = tcp_connect(host.tcp());
    assert_eq!(ask(&mut new, "get"), "\n");
    assert!(read_to_close(&mut old).is_empty());
    assert_eq!(host.wait_stat("connections_retired", 1), 1);
    assert_eq!(host.wait_stat("sessions_closed", 1), 1);
    // The new version's connection is not touched.
    assert_eq!(ask(&mut new, "set after"), "ok\n");
    assert_eq!(host.stats()["connections_retired"], 1);
}

#[test]
fn a_reload_cannot_change_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.wasm");
    std::fs::copy(plugin("session-probe"), &path).unwrap();
    let host = Host::start(&["--plugin", path.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let tmp = dir.path().join("next.wasm");
    std::fs::copy(plugin("echo"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    host.wait_stat("reload_failures", 1);
    let line = host.logs.lines().into_iter().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("cannot change the world"), "{line}");
    let mut s = tcp_connect(host.tcp());
    assert_eq!(ask(&mut s, "whoami").split(' ').next().unwrap(), format!("peer={}", s.local_addr().unwrap()));
}

#[test]
fn handler_plugins_can_keep_one_instance_per_connection() {
    let hostile = plugin("hostile");
    for (isolation, expect) in [("request", ["1", "1", "1"]), ("connection", ["1", "2", "3"])] {
        let host =
            Host::start(&["--plugin", hostile.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--tcp-isolation", isolation]);
        let mut s = tcp_connect(host.tcp());
        s.write_all(b"count\ncount\n").unwrap();
        let got = [read_line(&mut s), read_line(&mut s), line_roundtrip(&mut s, b"count")];
        let got: Vec<String> = got.iter().map(|l| String::from_utf8_lossy(l).trim().to_string()).collect();
        assert_eq!(got, expect, "--tcp-isolation {isolation}");
        // Another connection starts from a fresh instance either way.
        let mut t = tcp_connect(host.tcp());
        assert_eq!(line_roundtrip(&mut t, b"count"), b"1\n", "--tcp-isolation {isolation}");
        // A failed request closes the connection, and its instance with it.
        s.write_all(b"panic\n").unwrap();
        assert!(closed_within(&mut s, REPLY_TIMEOUT));
        assert_eq!(line_roundtrip(&mut t, b"count").len(), 2);
    }
}

/// Serve the connection plugin `name` and hold one conversation with it:
/// every `(send, expect)` in turn, on one connection; `None` expects the
/// host to close the connection (after any bytes still due).
fn converse(name: &str, turns: &[(&[u8], Option<&[u8]>)]) -> Host {
    let p = plugin(name);
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let mut s = tcp_connect(host.tcp());
    for (i, (send, expect)) in turns.iter().enumerate() {
        s.write_all(send).unwrap();
        match expect {
            Some(want) => {
                let got = read_n(&mut s, want.len());
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(want),
                    "{name}, turn {i}: sent {:?}",
                    String::from_utf8_lossy(send)
                );
            }
            None => assert!(closed_within(&mut s, REPLY_TIMEOUT), "{name}, turn {i}: not closed"),
        }
    }
    host
}

#[test]
fn readme_example_counter() {
    converse(
        "counter",
        &[
            (b"hi\nyo\n", Some(b"1 hi\n2 yo\n")),
            // Half a line gets no reply yet; its end completes it.
            (b"half", Some(b"")),
            (b" a line\n", Some(b"3 half a line\n")),
            (&[b'x'; 5000], None),
        ],
    );
}

#[test]
fn example_greeter() {
    converse(
        "greeter",
        &[
            (b"HELLO\n", Some(b"HELLO stranger\n")),
            (b"NAME Ada\r\nHEL", Some(b"OK\n")),
            (b"LO\n", Some(b"HELLO Ada\n")),
            (b"DANCE\nCOUNT\n", Some(b"ERR unknown command\n5\n")),
            (b"QUIT\nHELLO\n", Some(b"BYE\n")),
            (b"", None),
        ],
    );
}

#[test]
fn rust_line_echo() {
    converse(
        "line-echo",
        &[
            (b"one\ntw", Some(b"one\n")),
            (b"o\n\n", Some(b"two\n\n")),
            ("héllo \x00\u{7f}\n".as_bytes(), Some("héllo \x00\u{7f}\n".as_bytes())),
        ],
    );
}

#[test]
fn a_peer_that_does_not_read_is_not_read_from() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const TOTAL: usize = 32 << 20;
    let p = plugin("line-echo");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let rss_before = host.rss_kib();
    let s = tcp_connect(host.tcp());
    let line: Vec<u8> = (0..1023).map(|i| b'a' + (i % 26) as u8).chain([b'\n']).collect();
    let written = Arc::new(AtomicU64::new(0));
    let mut w = s.try_clone().unwrap();
    let (line2, written2) = (line.clone(), written.clone());
    // Write 32 MiB of lines to an echo without reading a byte of it.
    let writer = std::thread::spawn(move || {
        for _ in 0..TOTAL / line2.len() {
            w.write_all(&line2).unwrap();
            written2.fetch_add(line2.len() as u64, Ordering::Relaxed);
        }
    });
    // The writer stalls: the host stopped reading once its output was not
    // taken. (What was written sits in kernel buffers: a few MiB.)
    let mut last = u64::MAX;
    assert!(
        eventually(REPLY_TIMEOUT, || {
            std::thread::sleep(Duration::from_millis(200));
            let now = written.load(Ordering::Relaxed);
            std::mem::replace(&mut last, now) == now
        }),
        "the writer never stalled"
    );
    let stalled_at = written.load(Ordering::Relaxed) as usize;
    assert!(stalled_at < TOTAL / 2, "the host kept reading: {stalled_at} bytes taken without a read");
    let grown = host.rss_kib().saturating_sub(rss_before);
    assert!(grown < 24 << 10, "the host grew by {grown} KiB while the peer did not read");
    // Now read: every byte comes back, in order, and the writer finishes.
    let mut s = s;
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut buf = vec![0u8; line.len()];
    for i in 0..TOTAL / line.len() {
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, line, "line {i}");
    }
    writer.join().unwrap();
}

#[test]
fn python_numbered() {
    converse(
        "numbered",
        &[
            (b"hi\nyo\n", Some(b"1 hi\n2 yo\n")),
            // A UTF-8 character split across two writes.
            (b"h\xc3", Some(b"")),
            (b"\xa9llo\n", Some("3 h\u{e9}llo\n".as_bytes())),
            (b"quit\nnever\n", Some(b"bye\n")),
            (b"", None),
        ],
    );
    // The peer half-closes: on-end's line comes last.
    let p = plugin("numbered");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"a\nb\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut s), b"1 a\n2 b\n2 lines\n");
    // A line over 64 KiB is an `err`: the connection is closed.
    let mut s = tcp_connect(host.tcp());
    s.write_all(&[b'x'; 70_000]).unwrap();
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    assert_eq!(host.wait_stat("plugin_errors", 1), 1);
}

#[test]
fn javascript_shout() {
    converse(
        "shout",
        &[
            (b"hello\nname ada\n", Some(b"HELLO\nHELLO ADA\n")),
            ("h\u{e9}".as_bytes(), Some(b"")),
            (b"y\n", Some("H\u{e9}Y\n".as_bytes())),
            (b"quit\nnever\n", Some(b"BYE\n")),
            (b"", None),
        ],
    );
    let p = plugin("shout");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"a\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut s), b"A\nEND\n");
}

#[test]
fn the_destructor_is_skipped_only_after_the_instance_failed() {
    let host = probe_host(&["--max-reply", "1000"]);
    let peer_of = |s: &TcpStream| s.local_addr().unwrap();
    // `err` and an output over --max-reply close the connection, but the
    // instance is sound: its destructor runs.
    let mut failed = tcp_connect(host.tcp());
    failed.write_all(b"err\n").unwrap();
    assert!(read_to_close(&mut failed).is_empty());
    assert!(dropped(&host, peer_of(&failed)), "after err");
    let mut big = tcp_connect(host.tcp());
    big.write_all(b"big 5000\n").unwrap();
    assert!(read_to_close(&mut big).is_empty());
    assert!(dropped(&host, peer_of(&big)), "after an output over --max-reply");
    // `quit` and the end of the stream in one segment: no `on-end` after
    // the plugin asked to close.
    let mut quit = tcp_connect(host.tcp());
    quit.write_all(b"quit\n").unwrap();
    quit.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut quit), b"bye\n");
    assert!(dropped(&host, peer_of(&quit)), "after quit");
    // A trap and a timeout: the instance is never called again.
    for cmd in ["trap\n", "spin\n"] {
        let mut s = tcp_connect(host.tcp());
        s.write_all(cmd.as_bytes()).unwrap();
        assert!(read_to_close(&mut s).is_empty());
    }
    host.wait_stat("connections_closed", 5);
    let stats = host.stats();
    assert_eq!((stats["traps"], stats["timeouts"], stats["sessions_closed"]), (1, 1, 3), "{stats:?}");
}

#[test]
fn a_reload_is_not_held_up_by_a_full_pool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.wasm");
    let probe = std::fs::read(plugin("session-probe")).unwrap();
    std::fs::write(&path, &probe).unwrap();
    let host = Host::start(&["--plugin", path.to_str().unwrap(), "--tcp", "127.0.0.1:0", "--max-instances", "2"]);
    let (mut a, mut b) = (tcp_connect(host.tcp()), tcp_connect(host.tcp()));
    assert_eq!(ask(&mut a, "a"), "a\n");
    assert_eq!(ask(&mut b, "b"), "b\n");
    // Both instances are held by open connections; the new version is
    // still validated and swapped in.
    std::fs::write(dir.path().join("next.wasm"), variant(&probe, 1)).unwrap();
    std::fs::rename(dir.path().join("next.wasm"), &path).unwrap();
    assert_eq!(host.wait_stat("reloads", 1), 1);
    assert_eq!(ask(&mut a, "count"), "2 8\n");
}

#[test]
fn reload_grace_zero_closes_old_connections_at_the_reload() {
    // With --tcp-isolation connection, a handler plugin's connections keep
    // their version too, and are retired the same way.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.wasm");
    std::fs::copy(plugin("echo"), &path).unwrap();
    let host = Host::start(&[
        "--plugin",
        path.to_str().unwrap(),
        "--tcp",
        "127.0.0.1:0",
        "--tcp-isolation",
        "connection",
        "--reload-grace",
        "0",
    ]);
    let mut old = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut old, b"hi"), b"hi\n");
    let tmp = dir.path().join("next.wasm");
    std::fs::copy(plugin("upper"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    host.wait_stat("reloads", 1);
    assert!(read_to_close(&mut old).is_empty());
    assert_eq!(host.wait_stat("connections_retired", 1), 1);
    let mut new = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut new, b"hi"), b"HI\n");
}

#[test]
fn a_connection_that_finds_no_instance_is_closed_and_counted() {
    let host = probe_host(&["--max-instances", "1", "--idle-timeout", "300ms"]);
    let mut holder = tcp_connect(host.tcp());
    assert_eq!(ask(&mut holder, "hold"), "hold\n");
    let mut waiting = tcp_connect(host.tcp());
    waiting.write_all(b"never served\n").unwrap();
    // The holder keeps its instance busy with traffic; the other
    // connection gives up after --idle-timeout.
    let closed = eventually(REPLY_TIMEOUT, || {
        assert_eq!(ask(&mut holder, "ping"), "ping\n");
        closed_within(&mut waiting, Duration::from_millis(50))
    });
    assert!(closed, "the waiting connection was not closed");
    assert_eq!(host.wait_stat("requests_dropped", 1), 1);
    assert!(host.logs.count("no plugin instance free within") >= 1);
}

/// A plugin that answers and closes before it has read the whole request
/// (HTTP 413 for a body over the limit) gets its answer to the peer: the
/// host closes its side and reads what the peer still sends, instead of
/// dropping a socket with unread input, which the kernel answers with a
/// reset that can destroy the answer in flight.
#[test]
fn an_answer_sent_before_the_request_ends_is_not_lost_to_a_reset() {
    let p = plugin("http-rs");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--tcp", "127.0.0.1:0"]);
    let body = vec![b'x'; 3_000_000];
    for _ in 0..3 {
        let mut s = tcp_connect(host.tcp());
        let head = format!("PUT /kv/big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len());
        // The whole request first, as a client that does not wait for
        // `100 Continue` does; the plugin answers 413 after the head.
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("the answer, then end of stream, not a reset");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413 ") && text.contains("Connection: close\r\n"), "{text}");
    }
}
