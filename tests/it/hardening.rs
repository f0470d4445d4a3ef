//! What a hostile peer or a slow plugin could once do to the host, each
//! reproduced the way it was found (issue "Hardening"), and checked to cost
//! the host nothing more than the request or connection it came with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::support::*;

fn hostile() -> String {
    plugin("hostile").display().to_string()
}

/// One connection, one write of many frames that each ask for a 1 MB
/// reply, and a peer that does not read: the host writes replies out as
/// they accumulate and stops reading while they are not taken, so its
/// memory does not grow with the number of frames.
#[test]
fn replies_to_one_read_do_not_pile_up_in_memory() {
    const FRAMES: usize = 100;
    const REPLY: usize = 1_000_000;
    let host = Host::start(&["--plugin", &hostile(), "--tcp", "127.0.0.1:0", "--max-reply", "2MiB"]);
    let mut s = tcp_connect(host.tcp());
    // Warm up: the instance memory and allocator arenas a big reply needs.
    s.write_all(format!("big:{REPLY}\n").as_bytes()).unwrap();
    assert_eq!(read_n(&mut s, REPLY + 1).len(), REPLY + 1);
    let before = host.peak_rss_kib();

    let frames = format!("big:{REPLY}\n").repeat(FRAMES);
    s.write_all(frames.as_bytes()).unwrap();
    // The host fills the socket buffers, then waits for this peer.
    host.wait_stat("requests", 3);
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while got < FRAMES * (REPLY + 1) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        assert!(buf[..n].iter().all(|&b| b == b'x' || b == b'\n'));
        got += n;
    }
    assert_eq!(got, FRAMES * (REPLY + 1));
    let grown = host.peak_rss_kib().saturating_sub(before);
    // Before the fix: the whole 100 MB of replies of one read was buffered.
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB for {FRAMES} MB of replies");
    assert_eq!(line_roundtrip(&mut s, b"still here"), b"still here\n");
}

/// Many slow UDP requests (inside --timeout) on every socket; quick
/// requests from another peer are answered while they all still wait.
#[test]
fn slow_udp_requests_do_not_stall_their_socket() {
    let host = Host::start(&["--plugin", &hostile(), "--udp", "127.0.0.1:0", "--timeout", "20s", "--workers", "2"]);
    let slow: Vec<UdpSocket> = (0..16)
        .map(|_| {
            let s = udp_client(host.udp());
            s.send(b"sleep:4000").unwrap();
            s
        })
        .collect();
    // Every slow request is in the plugin.
    assert_eq!(host.wait_stat("requests", 16), 16);
    let quick = udp_client(host.udp());
    for i in 0..20 {
        let msg = format!("quick {i}");
        quick.send(msg.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = quick.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    // Order, not time: all quick replies came while every slow request
    // was still sleeping.
    for s in &slow {
        assert_no_datagram(s);
    }
    for s in &slow {
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"slept");
    }
}

/// `--max-connections` counts every TCP address of the host together.
#[test]
fn max_connections_is_one_limit_for_the_whole_host() {
    let host = Host::start(&[
        "--plugin",
        &hostile(),
        "--tcp",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
        "--max-connections",
        "1",
    ]);
    // The second address first: a listener waiting for a peer must not
    // hold the host's only slot.
    let (a_addr, b_addr) = (host.tcp[1], host.tcp[0]);
    let mut a = tcp_connect(a_addr);
    assert_eq!(line_roundtrip(&mut a, b"a"), b"a\n");
    // The kernel completes the handshake; the host must not accept it.
    let mut b = tcp_connect(b_addr);
    b.write_all(b"b\n").unwrap();
    for i in 0..20 {
        let msg = format!("a {i}");
        assert_eq!(line_roundtrip(&mut a, msg.as_bytes()), format!("{msg}\n").as_bytes());
    }
    assert_eq!(host.stats()["connections"], 1, "a second connection was accepted over --max-connections 1");
    b.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(b.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
    b.set_nonblocking(false).unwrap();
    // Closing the first lets the second in.
    drop(a);
    assert_eq!(read_line(&mut b), b"b\n");
    assert_eq!(host.stats()["connections"], 2);
}

/// On a wildcard address, the plugin is told the address the peer sent to,
/// and a UDP reply leaves from it: a connected client (which accepts
/// datagrams from that address only) gets its reply.
#[test]
fn wildcard_listeners_tell_and_reply_from_the_real_local_address() {
    let host = Host::start(&["--plugin", &hostile(), "--listen", "0.0.0.0:0", "--listen", "[::]:0"]);
    let port = |v4: bool| host.udp.iter().find(|a| a.is_ipv4() == v4).unwrap().port();
    let tcp_port = |v4: bool| host.tcp.iter().find(|a| a.is_ipv4() == v4).unwrap().port();
    for local in ["127.0.0.2", "127.0.0.3", "::1"] {
        let v4 = !local.contains(':');
        let to = SocketAddr::new(local.parse().unwrap(), port(v4));
        let s = UdpSocket::bind(if v4 { "127.0.0.1:0" } else { "[::1]:0" }).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.connect(to).unwrap();
        s.send(b"whoami").unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("no reply from {to}: {e}"));
        assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("udp {} {to}", s.local_addr().unwrap()));

        let to = SocketAddr::new(local.parse().unwrap(), tcp_port(v4));
        let mut c = tcp_connect(to);
        let want = format!("tcp {} {to}\n", c.local_addr().unwrap());
        assert_eq!(String::from_utf8_lossy(&line_roundtrip(&mut c, b"whoami")), want);
    }
}

/// While a big plugin compiles, TCP is bound (the address is taken) but
/// not listening: connections are refused, not accepted and left waiting.
#[test]
fn tcp_refuses_connections_until_the_plugin_is_ready() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().display().to_string();
    let python = plugin("json-summary").display().to_string();
    let mut host = Host::spawn_with(&["--plugin", &python, "--tcp", "127.0.0.1:0", "--cache-dir", &cache], &[], |_| {});
    assert_eq!(host.logs.wait_for("bound tcp ", 1, START_TIMEOUT), 1);
    let line = host.logs.lines().into_iter().find(|l| l.contains("bound tcp ")).unwrap();
    let addr: SocketAddr = line.split("bound tcp ").nth(1).unwrap().split([';', ' ']).next().unwrap().parse().unwrap();
    // The compile of an 18 MB component takes seconds; this is before it.
    assert_eq!(host.logs.count("ready: serving"), 0);
    let refused = TcpStream::connect(addr).expect_err("connected before the plugin was loaded");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(host.logs.count("ready: serving"), 0, "the plugin loaded too fast for this test to mean anything");
    host.wait_ready();
    let mut s = tcp_connect(addr);
    assert_eq!(line_roundtrip(&mut s, b"[1]"), b"{\"type\":\"array\",\"length\":1,\"bytes\":3}\n");
}

/// A reply too big for a u16 length prefix is caught before it is copied
/// out of the plugin, counted, and the connection closed.
#[test]
fn a_reply_too_big_for_its_length_prefix_is_not_sent() {
    let host = Host::start(&["--plugin", &hostile(), "--tcp", "127.0.0.1:0", "--framing", "u16"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(&[frame("u16", b"big:65535"), frame("u16", b"big:65536")].concat()).unwrap();
    let first = read_n(&mut s, 2 + 65_535);
    assert_eq!(&first[..2], &[0xff, 0xff]);
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    assert_eq!(host.stats()["replies_dropped"], 1);
    assert_eq!(
        host.logs.wait_for("reply of 65536 bytes not sent: over the limit of 65535 bytes (a u16", 1, REPLY_TIMEOUT),
        1
    );
}

/// The largest datagrams are served whatever --max-request is (a datagram
/// the kernel had to cut is always dropped, never served cut short).
#[test]
fn the_largest_datagrams_are_served_with_any_max_request() {
    for max in ["64KiB", "1MiB"] {
        let host = Host::start(&["--plugin", &hostile(), "--listen", "127.0.0.1:0", "--max-request", max]);
        let payload = vec![b'd'; 65_507];
        assert_eq!(udp_roundtrip(host.udp(), &payload), payload, "--max-request {max}");
    }
    let host = Host::start(&["--plugin", &hostile(), "--listen", "[::1]:0", "--max-request", "1MiB"]);
    let payload = vec![b'6'; 65_507];
    assert_eq!(udp_roundtrip(host.udp(), &payload), payload);
}

/// In reuse mode an idle instance is dropped after a second: what a
/// request left in it does not wait for the next peer forever.
#[test]
fn idle_reused_instances_expire() {
    let host =
        Host::start(&["--plugin", &hostile(), "--udp", "127.0.0.1:0", "--instance-reuse", "100", "--workers", "1"]);
    let count = || String::from_utf8(udp_roundtrip(host.udp(), b"count")).unwrap();
    let first: u64 = count().parse().unwrap();
    let second: u64 = count().parse().unwrap();
    assert!(second > first, "reuse mode reused nothing: {first} then {second}");
    assert!(host.wait_stat("instances_expired", 1) >= 1, "no idle instance expired");
    assert_eq!(count(), "1", "an expired instance served again");
}

/// A smaller UDP receive buffer than asked for is said at start-up.
#[test]
fn a_small_udp_receive_buffer_is_logged() {
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
    let host = Host::start(&["--plugin", &hostile(), "--udp", "127.0.0.1:0"]);
    // Linux grants at most rmem_max; the host asks for 4 MiB.
    let expected = usize::from(rmem_max < 4 << 20);
    assert_eq!(host.logs.count("less than the 4096 KiB asked for"), expected, "rmem_max {rmem_max}");
}

/// A Python component has a dozen core instances and several memories and
/// tables: as many of them as `--max-instances` allows can live at once,
/// and when the pool is full the next instantiation waits for room instead
/// of failing (which a request would see as a trap).
#[test]
fn big_components_wait_for_room_in_the_pool_instead_of_failing() {
    use std::sync::Arc;

    use host::plugin::CallLimits;
    use host::plugin::admission::Admission;
    use host::plugin::engine::{EngineLimits, EpochTicker, new_engine};
    use host::plugin::loader::Loader;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let limits = EngineLimits { max_memory: 64 << 20, max_instances: 6, fuel: false };
        let engine = new_engine(limits).unwrap();
        let _ticker = EpochTicker::start(&engine).unwrap();
        let admission = Admission::new(&limits);
        let cache = Some(test_cache_dir().to_path_buf());
        let stats = Arc::new(host::Stats::default());
        let data = tempfile::tempdir().unwrap();
        let store = host::kv::Store::open(&host::kv::Backend::Embedded(data.path().into()), Duration::from_secs(1))
            .await
            .unwrap();
        let services = Arc::new(host::plugin::services::Services::new(Arc::new(store), "test", stats.clone()));
        let loader = Loader::new(engine, admission.clone(), cache, stats, services).unwrap();
        let call = CallLimits { timeout: Duration::from_secs(5), max_memory: 64 << 20, fuel: None };
        let python = loader.load(&plugin("json-summary"), &call).await.unwrap();

        let mut live = vec![python.instantiate(&call).await.unwrap()];
        let weight = 6 - admission.available();
        while admission.available() >= weight {
            live.push(python.instantiate(&call).await.expect("instantiation within the pool's capacity failed"));
        }
        assert_eq!(live.len(), 6 / weight);
        // Full: the next one waits.
        let next = tokio::time::timeout(Duration::from_millis(300), python.instantiate(&call)).await;
        assert!(next.is_err(), "instantiated past the pool's capacity: {:?}", next.map(|r| r.err()));
        // Room again: it goes through.
        live.pop();
        live.push(python.instantiate(&call).await.expect("instantiation after room was made failed"));
    });
}
