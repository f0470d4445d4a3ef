//! Isolation and limits: hostile plugins and hostile input never take the
//! host down, and good requests keep being answered meanwhile.
//!
//! Each test fails if the protection it names is removed: the hostile
//! request would hang, crash the host, or the good traffic would stall or
//! get wrong bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn hostile() -> String {
    plugin("hostile").display().to_string()
}

/// Start `hostile` on loopback with `extra` flags.
fn start(extra: &[&str]) -> Host {
    let plugin = hostile();
    let mut args = vec!["--plugin", plugin.as_str(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Host::start(&args)
}

/// The counters of requests that failed.
const FAILED: &[&str] = &["traps", "timeouts", "replies_dropped", "plugin_errors"];

/// Send `payload` over UDP and TCP while good traffic flows; the hostile
/// request must get no reply, its TCP connection must be closed, and the
/// good clients must see every reply. Returns the host for more checks.
fn survives(host: &mut Host, payload: &[u8], wait: Duration) {
    let good = GoodTraffic::start(host);
    host.assert_no_udp_reply(payload, FAILED);
    let mut s = tcp_connect(host.tcp());
    s.write_all(payload).unwrap();
    s.write_all(b"\n").unwrap();
    assert!(closed_within(&mut s, wait + Duration::from_secs(5)), "TCP connection not closed");
    let answered = good.finish();
    assert!(answered > 0, "no good request was answered");
    assert!(host.is_running(), "host died");
    assert_eq!(udp_roundtrip(host.udp(), b"after"), b"after");
}

#[test]
fn infinite_loop_is_cut_off_at_the_timeout() {
    let mut host = start(&["--timeout", "300ms"]);
    let started = Instant::now();
    survives(&mut host, b"loop", Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(8));
    let stats = host.stats();
    assert_eq!(stats["timeouts"], 2, "{stats:?}");
    assert!(host.logs.wait_for("cut off after 300ms (--timeout)", 2, REPLY_TIMEOUT) >= 2);
}

#[test]
fn a_plugin_blocked_in_a_host_call_is_cut_off_too() {
    // `sleep` blocks in WASI (a host function, where the epoch cannot
    // interrupt it); the per-request timer drops the call.
    let mut host = start(&["--timeout", "300ms"]);
    survives(&mut host, b"sleep", Duration::from_secs(2));
    assert_eq!(host.stats()["timeouts"], 2);
}

#[test]
fn fuel_gives_a_deterministic_cpu_limit() {
    let mut host = start(&["--fuel", "5000000", "--timeout", "10s"]);
    let started = Instant::now();
    survives(&mut host, b"loop", Duration::from_secs(3));
    assert!(started.elapsed() < Duration::from_secs(8), "fuel did not stop the loop before the timeout");
    assert!(host.logs.wait_for("ran out of fuel (--fuel)", 2, REPLY_TIMEOUT) >= 2);
}

#[test]
fn memory_bomb_traps_at_max_memory_and_rss_stays_bounded() {
    let mut host = start(&["--max-memory", "32MiB"]);
    let before = host.rss_kib();
    for _ in 0..5 {
        survives(&mut host, b"alloc", Duration::from_secs(2));
    }
    let stats = host.stats();
    assert_eq!(stats["traps"], 10, "{stats:?}");
    assert!(host.logs.wait_for("memory", 1, REPLY_TIMEOUT) >= 1, "no memory-limit message");
    // Ten 32 MiB bombs ran; what stays resident is far less than one each.
    let after = host.rss_kib();
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
}

#[test]
fn deep_recursion_is_a_clean_trap_never_a_crash() {
    let mut host = start(&[]);
    // On the wasm stack: wasmtime's stack limit (--max-wasm-stack).
    survives(&mut host, b"deep", Duration::from_secs(2));
    assert!(
        host.logs.wait_for("wasm trap: call stack exhausted (in hostile::deep", 2, REPLY_TIMEOUT) >= 2,
        "{}",
        host.logs.lines().join("\n")
    );
    // On the shadow stack Rust keeps in linear memory: it runs off the
    // bottom of memory, an out-of-bounds trap.
    survives(&mut host, b"recurse", Duration::from_secs(2));
    assert!(host.logs.wait_for("wasm trap: out of bounds memory access (in hostile::recurse", 2, REPLY_TIMEOUT) >= 2);
    // One line per failure, not a backtrace per frame.
    assert!(host.logs.lines().iter().all(|l| l.len() < 1000), "a log line is a backtrace");
}

#[test]
fn a_panic_costs_one_request_and_the_next_gets_a_fresh_instance() {
    let mut host = start(&[]);
    survives(&mut host, b"panic", Duration::from_secs(1));
    assert_eq!(host.stats()["traps"], 2);
}

#[test]
fn oversized_replies_are_not_sent_nor_copied() {
    let mut host = start(&["--max-reply", "1000", "--max-amplification", "0"]);
    assert_eq!(udp_roundtrip(host.udp(), b"big:1000").len(), 1000);
    // 20 MB replies: refused before the host copies them out of the plugin.
    // The plugin's own 20 MB are host memory too; a copy would double the
    // peak.
    let before = host.peak_rss_kib();
    for _ in 0..3 {
        survives(&mut host, b"big:20000000", Duration::from_secs(2));
    }
    let peak = host.peak_rss_kib();
    assert!(peak < before + 30 * 1024, "peak RSS went from {before} KiB to {peak} KiB: was a reply copied?");
    assert_eq!(host.stats()["replies_dropped"], 6);
    assert!(
        host.logs.wait_for(
            "reply of 20000000 bytes not sent: over the limit of 1000 bytes (--max-reply)",
            2,
            REPLY_TIMEOUT
        ) >= 2
    );
}

#[test]
fn udp_replies_never_exceed_a_datagram() {
    let host = start(&["--max-reply", "10MiB", "--max-amplification", "0"]);
    assert_eq!(udp_roundtrip(host.udp(), b"big:65507").len(), 65_507);
    host.assert_no_udp_reply(b"big:65508", &["replies_dropped"]);
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"big:100000").len(), 100_001);
}

#[test]
fn state_never_leaks_between_requests_by_default() {
    let host = start(&[]);
    for _ in 0..5 {
        assert_eq!(udp_roundtrip(host.udp(), b"count"), b"1");
    }
    // With reuse, the same instance serves several requests: its global
    // counter goes up (this is the isolation trade-off of --instance-reuse).
    let host = start(&["--instance-reuse", "100", "--workers", "1"]);
    let counts: Vec<u64> =
        (0..5).map(|_| String::from_utf8(udp_roundtrip(host.udp(), b"count")).unwrap().parse().unwrap()).collect();
    assert!(counts.iter().max().unwrap() > &1, "reuse mode never reused an instance: {counts:?}");
}

#[test]
fn reused_instances_are_dropped_after_a_trap() {
    let host = start(&["--instance-reuse", "1000", "--workers", "1"]);
    for _ in 0..3 {
        udp_roundtrip(host.udp(), b"count");
    }
    host.assert_no_udp_reply(b"panic", &["traps"]);
    // Whatever instance serves next, it is not the one that trapped, and it
    // still works.
    assert_eq!(udp_roundtrip(host.udp(), b"ok"), b"ok");
}

// ---- hostile network input ----

#[test]
fn oversized_and_empty_datagrams() {
    let host = start(&["--max-request", "1000", "--max-amplification", "0"]);
    let good = GoodTraffic::start(&host);
    host.assert_no_udp_reply(&[b'a'; 1001], &["requests_dropped"]);
    host.assert_no_udp_reply(&[b'a'; 65_507], &["requests_dropped"]);
    assert_eq!(udp_roundtrip(host.udp(), &[b'a'; 1000]), [b'a'; 1000]);
    assert_eq!(udp_roundtrip(host.udp(), b""), b"");
    good.finish();
    assert_eq!(host.stats()["requests_dropped"], 2);
    // The largest datagrams pass whole with the default limit.
    let host = start(&[]);
    let max = vec![b'z'; 65_507];
    assert_eq!(udp_roundtrip(host.udp(), &max), max);
}

#[test]
fn a_giant_length_prefix_closes_the_connection_before_allocating() {
    let host = start(&["--framing", "u32", "--max-request", "64KiB"]);
    let before = host.rss_kib();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = tcp_connect(host.tcp());
        s.write_all(&[0xff, 0xff, 0xff, 0xf0]).unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        assert!(closed_within(s, Duration::from_secs(5)), "connection with a 4 GB prefix left open");
    }
    let after = host.rss_kib();
    assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert!(host.logs.wait_for("exceeds the limit of 65536 bytes", 50, REPLY_TIMEOUT) >= 50);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"\x00\x00\x00\x02hi").unwrap();
    assert_eq!(read_n(&mut s, 6), b"\x00\x00\x00\x02hi");
}

#[test]
fn a_line_longer_than_max_request_closes_the_connection() {
    let host = start(&["--max-request", "1000"]);
    let mut s = tcp_connect(host.tcp());
    // No newline in sight: refused once 1000 bytes are buffered.
    let _ = s.write_all(&[b'x'; 5000]);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // Also when the whole line, newline included, arrives in one read: it is
    // refused, not passed to the plugin.
    let mut s = tcp_connect(host.tcp());
    let _ = s.write_all(&[vec![b'y'; 1500], b"\n".to_vec()].concat());
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert_eq!(host.stats()["requests"], 0);
}

#[test]
fn slowloris_is_closed_after_the_idle_timeout() {
    let host = start(&["--idle-timeout", "500ms"]);
    let good = GoodTraffic::start(&host);
    let started = Instant::now();
    let mut half = tcp_connect(host.tcp());
    half.write_all(b"half a fra").unwrap();
    // A peer trickling a byte at a time never completes a frame either.
    let mut trickle = tcp_connect(host.tcp());
    let trickled = std::thread::spawn(move || {
        for _ in 0..30 {
            if trickle.write_all(b"x").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        closed_within(&mut trickle, Duration::from_millis(10))
    });
    assert!(closed_within(&mut half, Duration::from_secs(5)));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "closed after only {elapsed:?}");
    assert!(trickled.join().unwrap(), "trickling connection not closed");
    // Busy connections are not idle: the good client ran for longer than the
    // idle timeout on one connection.
    assert!(good.finish() > 0);
}

#[test]
fn connections_over_the_limit_wait_until_one_closes() {
    let host = start(&["--max-connections", "2"]);
    let mut a = tcp_connect(host.tcp());
    let mut b = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut a, b"a"), b"a\n");
    assert_eq!(line_roundtrip(&mut b, b"b"), b"b\n");
    // The third connection is queued by the kernel, not served.
    let mut c = tcp_connect(host.tcp());
    c.write_all(b"c\n").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 8];
    assert!(c.read(&mut buf).is_err(), "third connection served over --max-connections 2");
    drop(a);
    c.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    assert_eq!(read_line(&mut c), b"c\n");
}

#[test]
fn accept_keeps_working_through_emfile() {
    // The host gets 48 file descriptors; clients open 80 connections.
    let plugin = hostile();
    let mut host = Host::start_with(&["--plugin", &plugin, "--listen", "127.0.0.1:0", "--workers", "1"], &[], |cmd| {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: only async-signal-safe setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 48, 48)
                    .map_err(std::io::Error::from)
            });
        }
    });
    let mut conns: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(host.tcp()).unwrap()).collect();
    assert!(host.logs.wait_for("accept failed", 1, REPLY_TIMEOUT) >= 1, "never ran out of descriptors");
    assert!(host.is_running());
    // Free descriptors: the queued connections are accepted and served.
    conns.truncate(10);
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"after emfile"), b"after emfile\n");
    assert_eq!(udp_roundtrip(host.udp(), b"udp too"), b"udp too");
}

#[test]
fn udp_amplification_is_capped() {
    let host = start(&[]);
    // A 7-byte request is 35 bytes on the wire: 3x allows a 77-byte reply
    // (105 on the wire), not 78.
    host.assert_no_udp_reply(b"big:078", &["replies_dropped"]);
    assert_eq!(udp_roundtrip(host.udp(), b"big:077").len(), 77);
    host.assert_no_udp_reply(b"big:100", &["replies_dropped"]);
    // TCP peers completed a handshake: no cap.
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"big:100").len(), 101);
    assert!(host.logs.wait_for("--max-amplification", 1, REPLY_TIMEOUT) >= 1);
    let host = start(&["--max-amplification", "0"]);
    assert_eq!(udp_roundtrip(host.udp(), b"big:100").len(), 100);
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_0() {
    let mut host = start(&["--timeout", "5s", "--drain-timeout", "5s"]);
    let (udp, tcp) = (host.udp(), host.tcp());
    let udp_client = std::thread::spawn(move || udp_exchange(udp, b"sleep:1000", Duration::from_secs(5)));
    let tcp_client = std::thread::spawn(move || {
        let mut s = tcp_connect(tcp);
        line_roundtrip(&mut s, b"sleep:1000")
    });
    // Both requests are in the plugin.
    assert_eq!(host.wait_stat("requests", 2), 2);
    host.sigterm();
    assert_eq!(udp_client.join().unwrap().as_deref(), Some(&b"slept"[..]));
    assert_eq!(tcp_client.join().unwrap(), b"slept\n");
    let status = host.wait(Duration::from_secs(10)).expect("host did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    // New connections are refused once draining started.
    assert!(TcpStream::connect(tcp).is_err());
}

#[test]
fn drain_timeout_bounds_the_shutdown() {
    let mut host = start(&["--timeout", "30s", "--drain-timeout", "300ms"]);
    let udp = host.udp();
    let _client = std::thread::spawn(move || udp_exchange(udp, b"sleep:20000", Duration::from_secs(25)));
    // The request is in the plugin.
    assert_eq!(host.wait_stat("requests", 1), 1);
    let started = Instant::now();
    host.sigterm();
    let status = host.wait(Duration::from_secs(10)).expect("host did not exit");
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(host.logs.wait_for("drain timeout: 1 tasks still running are abandoned", 1, REPLY_TIMEOUT), 1);
    assert!(host.logs.lines().iter().any(|l| l.contains("stats requests=1 replies=0")), "{:?}", host.logs.lines());
}

#[test]
fn a_slow_request_does_not_hold_up_the_rest_of_its_batch() {
    let host = start(&["--timeout", "10s"]);
    let udp = udp_client(host.udp());
    // Same socket, back to back: the slow one and the quick ones share a
    // receive batch (or land on the socket's other receive loop).
    udp.send(b"sleep:3000").unwrap();
    for i in 0..20 {
        udp.send(format!("quick {i}").as_bytes()).unwrap();
    }
    let started = Instant::now();
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        let n = udp.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"quick"), "got {:?} first", String::from_utf8_lossy(&buf[..n]));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "quick replies waited {:?}", started.elapsed());
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = udp.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"slept");
}

#[test]
fn a_flood_of_bad_input_does_not_flood_the_log() {
    let host = start(&["--max-request", "100"]);
    let udp = udp_client(host.udp());
    for _ in 0..2000 {
        udp.send(&[b'x'; 200]).unwrap();
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(udp_roundtrip(host.udp(), b"still fine"), b"still fine");
    // Every datagram is counted; at most 100 lines a second are logged.
    let stats = host.stats();
    assert!(stats["requests_dropped"] > 1000, "{stats:?}");
    let logged = host.logs.count("datagram dropped");
    assert!(logged <= 300, "{logged} log lines for one flood");
    assert!(host.logs.count("suppressed=") <= 3);
}
