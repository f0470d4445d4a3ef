//! The core contract: UDP and TCP, every framing, v4 and v6, concurrency,
//! split and coalesced frames, empty payloads, startup errors, traps.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

fn echo() -> String {
    plugin("echo").display().to_string()
}

#[test]
fn echo_over_udp_and_tcp_on_v4_and_v6() {
    let host = Host::start(&["--plugin", &echo(), "--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
    assert_eq!(host.udp.len(), 2);
    assert_eq!(host.tcp.len(), 2);
    for addr in &host.udp {
        assert_eq!(udp_roundtrip(*addr, b"hello"), b"hello", "udp {addr}");
    }
    for addr in &host.tcp {
        let mut s = tcp_connect(*addr);
        assert_eq!(line_roundtrip(&mut s, b"hello"), b"hello\n", "tcp {addr}");
    }
}

#[test]
fn plugin_sees_transport_and_runs_for_every_request() {
    let host = Host::start(&["--plugin", &plugin("upper").display().to_string(), "--listen", "127.0.0.1:0"]);
    assert_eq!(udp_roundtrip(host.udp(), b"MiXeD case 123"), b"MIXED CASE 123");
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"abc"), b"ABC\n");
    // `ok(none)`: no reply for an empty payload, and the connection stays open.
    host.assert_no_udp_reply(b"", &["no_reply"]);
    s.write_all(b"\nxyz\n").unwrap();
    assert_eq!(read_line(&mut s), b"XYZ\n");
}

#[test]
fn udp_only_and_tcp_only_flags() {
    let host = Host::start(&["--plugin", &echo(), "--udp", "127.0.0.1:0", "--tcp", "[::1]:0"]);
    assert_eq!(host.udp.len(), 1);
    assert_eq!(host.tcp.len(), 1);
    assert!(host.udp().is_ipv4());
    assert!(host.tcp().is_ipv6());
    assert_eq!(udp_roundtrip(host.udp(), b"u"), b"u");
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"t"), b"t\n");
}

#[test]
fn every_framing_split_and_coalesced() {
    for framing in ["lines", "u16", "u32"] {
        let host = Host::start(&["--plugin", &echo(), "--tcp", "127.0.0.1:0", "--framing", framing]);
        let binary: &[u8] = if framing == "lines" { b"bin \x00\xff\xfe" } else { b"bin \x00\n\xff\r\n" };
        let payloads: [&[u8]; 4] = [b"first", b"", binary, &[b'z'; 5000]];
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(framing, p)).collect();

        // Several frames in one write.
        let mut s = tcp_connect(host.tcp());
        s.write_all(&stream).unwrap();
        assert_eq!(read_n(&mut s, stream.len()), stream, "{framing}: coalesced");

        // The same frames one byte at a time (for the first 64 bytes), then in chunks.
        let mut s = tcp_connect(host.tcp());
        for (i, b) in stream.iter().enumerate().take(64) {
            s.write_all(&[*b]).unwrap();
            if i % 8 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for chunk in stream[64..].chunks(777) {
            s.write_all(chunk).unwrap();
        }
        assert_eq!(read_n(&mut s, stream.len()), stream, "{framing}: split");
    }
}

#[test]
fn raw_framing_replies_to_each_read() {
    let host =
        Host::start(&["--plugin", &plugin("upper").display().to_string(), "--tcp", "127.0.0.1:0", "--framing", "raw"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"no newline needed").unwrap();
    assert_eq!(read_n(&mut s, 17), b"NO NEWLINE NEEDED");
    s.write_all(b"again\x00\xff").unwrap();
    assert_eq!(read_n(&mut s, 7), b"AGAIN\x00\xff");
}

#[test]
fn empty_payloads() {
    let host = Host::start(&["--plugin", &echo(), "--listen", "127.0.0.1:0"]);
    assert_eq!(udp_roundtrip(host.udp(), b""), b"");
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b""), b"\n");
    let host = Host::start(&["--plugin", &echo(), "--tcp", "127.0.0.1:0", "--framing", "u16"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"\x00\x00").unwrap();
    assert_eq!(read_n(&mut s, 2), b"\x00\x00");
}

#[test]
fn unterminated_last_line_is_answered_before_close() {
    let host = Host::start(&["--plugin", &echo(), "--tcp", "127.0.0.1:0"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"a\nlast").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_n(&mut s, 7), b"a\nlast\n");
}

#[test]
fn fifty_connections_times_a_hundred_frames() {
    let host = Host::start(&["--plugin", &echo(), "--listen", "127.0.0.1:0"]);
    let addr = host.tcp();
    let clients: Vec<_> = (0..50)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = tcp_connect(addr);
                if c % 2 == 0 {
                    // Pipelined: all frames in one go, then all replies.
                    let mut all = Vec::new();
                    for i in 0..100 {
                        all.extend_from_slice(format!("client {c} frame {i}\n").as_bytes());
                    }
                    s.write_all(&all).unwrap();
                    assert_eq!(read_n(&mut s, all.len()), all, "client {c}");
                } else {
                    for i in 0..100 {
                        let msg = format!("client {c} frame {i}");
                        assert_eq!(line_roundtrip(&mut s, msg.as_bytes()), format!("{msg}\n").into_bytes());
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // And UDP from many sockets at once.
    let udp = host.udp();
    let clients: Vec<_> = (0..20)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    let msg = format!("udp {c} {i}");
                    assert_eq!(udp_roundtrip(udp, msg.as_bytes()), msg.as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn a_trap_costs_one_request_not_the_host() {
    let host = Host::start(&["--plugin", &plugin("hostile").display().to_string(), "--listen", "127.0.0.1:0"]);
    // UDP: the trapping request gets no reply, the next one does.
    host.assert_no_udp_reply(b"panic", &["traps"]);
    assert_eq!(udp_roundtrip(host.udp(), b"fine"), b"fine");
    // TCP: the connection that trapped is closed, after earlier replies.
    let mut s = tcp_connect(host.tcp());
    s.write_all(b"before\npanic\nafter\n").unwrap();
    assert_eq!(read_line(&mut s), b"before\n");
    assert!(closed_within(&mut s, Duration::from_secs(5)), "connection not closed after a trap");
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"next"), b"next\n");
    assert!(host.logs.wait_for("asked to panic", 2, REPLY_TIMEOUT) >= 2, "guest panic message not logged");
    assert!(host.logs.wait_for("request failed", 2, REPLY_TIMEOUT) >= 2);
}

/// The TCP policy, the same for every framing: `ok(none)` sends nothing
/// and keeps the connection; `err` is logged, and the connection is closed
/// after the replies to earlier frames (a pipelining peer would otherwise
/// pair every later reply with the wrong request).
#[test]
fn tcp_policy_for_no_reply_and_plugin_errors() {
    let hostile = plugin("hostile").display().to_string();
    for framing in ["lines", "u16", "u32", "raw"] {
        let host = Host::start(&["--plugin", &hostile, "--tcp", "127.0.0.1:0", "--framing", framing]);
        let mut s = tcp_connect(host.tcp());
        if framing == "raw" {
            // One read is one request: one request at a time.
            s.write_all(b"none").unwrap();
            host.wait_stat("no_reply", 1);
            s.write_all(b"ok").unwrap();
            assert_eq!(read_n(&mut s, 2), b"ok");
            s.write_all(b"err").unwrap();
        } else {
            s.write_all(&[frame(framing, b"none"), frame(framing, b"ok")].concat()).unwrap();
            let ok = frame(framing, b"ok");
            assert_eq!(read_n(&mut s, ok.len()), ok, "{framing}: the frame after ok(none) is answered");
            s.write_all(&[frame(framing, b"first"), frame(framing, b"err"), frame(framing, b"never")].concat())
                .unwrap();
            let first = frame(framing, b"first");
            assert_eq!(read_n(&mut s, first.len()), first, "{framing}: replies before the error are sent");
        }
        assert!(closed_within(&mut s, REPLY_TIMEOUT), "{framing}: connection not closed after err");
        assert_eq!(host.logs.wait_for("plugin returned an error: refused", 1, REPLY_TIMEOUT), 1);
        let stats = host.stats();
        assert_eq!((stats["plugin_errors"], stats["no_reply"], stats["connections_closed_by_host"]), (1, 1, 1));
    }
}

#[test]
fn plugin_output_reaches_the_log() {
    let host = Host::start(&["--plugin", &plugin("hostile").display().to_string(), "--listen", "127.0.0.1:0"]);
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"print"), b"printed\n");
    assert_eq!(host.logs.wait_for("hello from stdout", 1, REPLY_TIMEOUT), 1);
    assert_eq!(host.logs.wait_for("hello from stderr", 1, REPLY_TIMEOUT), 1);
}

/// What the plugin is told: the transport, the peer's address and the
/// address the peer sent to, over v4 and v6.
#[test]
fn plugin_sees_transport_peer_and_local_address() {
    let host = Host::start(&[
        "--plugin",
        &plugin("hostile").display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
    ]);
    for addr in &host.udp {
        let s = udp_client(*addr);
        s.send(b"whoami").unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).unwrap();
        let want = format!("udp {} {addr}", s.local_addr().unwrap());
        assert_eq!(String::from_utf8_lossy(&buf[..n]), want);
    }
    for addr in &host.tcp {
        let mut s = tcp_connect(*addr);
        let want = format!("tcp {} {addr}\n", s.local_addr().unwrap());
        assert_eq!(String::from_utf8_lossy(&line_roundtrip(&mut s, b"whoami")), want);
    }
}

// ---- startup errors: one line naming the file or address, exit code 2 ----

fn assert_startup_error(args: &[&str], needles: &[&str]) {
    let (code, stderr) = run_host(args);
    assert_eq!(code, Some(2), "exit code for {args:?}; stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "{:?} does not mention {n:?}", errors[0]);
    }
}

#[test]
fn missing_plugin_file() {
    assert_startup_error(&["--plugin", "/nonexistent/p.wasm"], &["/nonexistent/p.wasm", "No such file"]);
}

#[test]
fn not_a_wasm_file() {
    let (_d, p) = temp_file("text.wasm", b"hello, I am text\n");
    assert_startup_error(&["--plugin", &p, "--listen", "127.0.0.1:0"], &[&p, "not a WebAssembly file"]);
}

#[test]
fn core_module_instead_of_component() {
    let (_d, p) = temp_file("core.wasm", &wat::parse_str("(module (func (export \"handle\")))").unwrap());
    assert_startup_error(
        &["--plugin", &p, "--listen", "127.0.0.1:0"],
        &[&p, "core WebAssembly module, not a component"],
    );
}

#[test]
fn component_without_handle() {
    let (_d, p) = temp_file("empty.wasm", &wat::parse_str("(component)").unwrap());
    assert_startup_error(
        &["--plugin", &p, "--listen", "127.0.0.1:0"],
        &[
            &p,
            "does not implement a world of sockets:plugin/handler (0.1.0 or 0.2.0) or sockets:plugin/connection-handler@0.2.0",
            "exports neither `handle` nor `sockets:plugin/connection@0.2.0`",
        ],
    );
}

#[test]
fn component_with_mistyped_handle() {
    let (_d, p) = temp_file("wrong.wasm", &wrong_world_component());
    assert_startup_error(&["--plugin", &p, "--listen", "127.0.0.1:0"], &[&p, "`handle` has the wrong type"]);
}

#[test]
fn truncated_component() {
    let bytes = std::fs::read(plugin("echo")).unwrap();
    let (_d, p) = temp_file("cut.wasm", &bytes[..bytes.len() / 2]);
    assert_startup_error(&["--plugin", &p, "--listen", "127.0.0.1:0"], &[&p, "invalid component"]);
}

#[test]
fn address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_startup_error(&["--plugin", &echo(), "--tcp", &addr], &[&format!("tcp {addr}"), "in use"]);
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_startup_error(&["--plugin", &echo(), "--udp", &addr], &[&format!("udp {addr}"), "in use"]);
}

#[test]
fn bad_flags() {
    assert_startup_error(&["--plugin", &echo(), "--frobnicate"], &["--frobnicate"]);
    assert_startup_error(&["--plugin", &echo(), "--framing", "xml"], &["xml"]);
    assert_startup_error(&["--plugin", &echo(), "--listen", "nowhere"], &["nowhere"]);
    assert_startup_error(&["--listen", "127.0.0.1:0"], &["--plugin"]);
}

#[test]
fn help_documents_every_flag_with_its_default() {
    use clap::CommandFactory as _;
    let out = std::process::Command::new(host_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let command = host::Config::command();
    let flags: Vec<String> = command.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
    assert!(flags.len() >= 20, "{flags:?}");
    for flag in &flags {
        assert!(help.contains(flag.as_str()), "--help lacks {flag}");
    }
    // Every flag that has a default shows it.
    for arg in command.get_arguments() {
        for default in arg.get_default_values() {
            let shown = format!("default: {}", default.to_string_lossy());
            assert!(help.contains(&shown), "--help lacks {shown} for --{}", arg.get_long().unwrap_or_default());
        }
    }
    for default in ["127.0.0.1:7000", "every TCP address of the host together"] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }
}

#[test]
fn logged_addresses_are_the_bound_ones() {
    let host = Host::start(&["--plugin", &echo(), "--listen", "127.0.0.1:0"]);
    let addrs: Vec<SocketAddr> = host.udp.iter().chain(&host.tcp).copied().collect();
    assert!(addrs.iter().all(|a| a.port() != 0 && a.ip().is_loopback()));
}

/// The counters the README lists are the ones SIGUSR1 logs.
#[test]
fn sigusr1_logs_every_documented_counter() {
    let host = Host::start(&["--plugin", &echo(), "--udp", "127.0.0.1:0"]);
    let stats = host.stats();
    let documented = [
        "requests",
        "replies",
        "no_reply",
        "plugin_errors",
        "traps",
        "timeouts",
        "replies_dropped",
        "requests_dropped",
        "udp_send_errors",
        "udp_rate_limited",
        "connections",
        "connections_closed",
        "connections_closed_by_host",
        "sessions_closed",
        "connections_retired",
        "instances_expired",
        "reloads",
        "reload_failures",
        "cache_hits",
        "cache_misses",
        "kv_ops",
        "kv_errors",
    ];
    let mut names: Vec<&str> = stats.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = documented.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for name in documented {
        assert!(readme.contains(&format!("`{name}`")), "README does not document the counter {name}");
    }
}
