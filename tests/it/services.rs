//! The services file (`--config`): several services in one process, the
//! file's errors, and its reload.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use host::Transport;

use crate::support::*;

/// The addresses service `name` logged (`service{service=NAME}: ...
/// listening udp|tcp ADDR`); the last start's if it was restarted.
fn addrs_of(host: &Host, name: &str) -> Vec<(Transport, SocketAddr)> {
    let tag = format!("{{service={name}}}");
    let mut addrs = Vec::new();
    let mut binding = false;
    for line in host.logs.lines().iter().filter(|l| l.contains(&tag)) {
        // A new start of the service binds again: forget the old addresses.
        let bound = line.contains(" bound ");
        if bound && !binding {
            addrs.clear();
        }
        binding = bound;
        addrs.extend(host::logline::listening(line));
    }
    addrs
}

fn addr(host: &Host, name: &str, transport: Transport) -> SocketAddr {
    addrs_of(host, name)
        .into_iter()
        .find(|(t, _)| *t == transport)
        .unwrap_or_else(|| panic!("service {name} logged no {transport} address:\n{}", host.logs.lines().join("\n")))
        .1
}

/// A services file in a temporary directory.
fn write_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("host.toml");
    // Written beside and renamed into place, as an editor or a
    // configuration manager does: the watcher sees one complete file.
    let tmp = dir.join(".host.toml.new");
    std::fs::File::create(&tmp).unwrap().write_all(text.as_bytes()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn service(name: &str, plugin_name: &str, extra: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\nplugin = \"{}\"\n{extra}\n", plugin(plugin_name).display())
}

#[test]
fn one_process_serves_a_udp_a_tcp_lines_and_a_connection_world_service() {
    let dir = tempfile::tempdir().unwrap();
    let text = [
        service("dns", "echo", "udp = [\"127.0.0.1:0\"]"),
        service("lines", "upper", "tcp = [\"127.0.0.1:0\"]\nframing = \"lines\""),
        service("conn", "line-echo", "tcp = [\"127.0.0.1:0\"]"),
    ]
    .concat();
    let file = write_file(dir.path(), &text);
    let host = Host::start(&["--config", file.to_str().unwrap()]);
    assert_eq!(host.logs.count("ready: serving 3 services: dns, lines, conn"), 1);

    assert_eq!(udp_roundtrip(addr(&host, "dns", Transport::Udp), b"ping"), b"ping");
    let mut lines = tcp_connect(addr(&host, "lines", Transport::Tcp));
    assert_eq!(line_roundtrip(&mut lines, b"hello"), b"HELLO\n");
    let mut conn = tcp_connect(addr(&host, "conn", Transport::Tcp));
    conn.write_all(b"one\ntw").unwrap();
    conn.write_all(b"o\n").unwrap();
    assert_eq!(read_n(&mut conn, 8), b"one\ntwo\n");
    // Each service has only the transports it asked for.
    assert!(addrs_of(&host, "dns").iter().all(|(t, _)| *t == Transport::Udp));
    assert!(addrs_of(&host, "lines").iter().all(|(t, _)| *t == Transport::Tcp));
}

#[test]
fn a_reload_starts_stops_and_restarts_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let keep = service("keep", "echo", "tcp = [\"127.0.0.1:0\"]");
    let gone = service("gone", "echo", "udp = [\"127.0.0.1:0\"]");
    let file = write_file(dir.path(), &[keep.clone(), gone.clone()].concat());
    let host = Host::start(&["--config", file.to_str().unwrap(), "--metrics", "127.0.0.1:0"]);
    let keep_addr = addr(&host, "keep", Transport::Tcp);
    let gone_addr = addr(&host, "gone", Transport::Udp);
    let mut kept = tcp_connect(keep_addr);
    assert_eq!(line_roundtrip(&mut kept, b"before"), b"before\n");

    // `gone` removed, `new` added, `keep` untouched.
    write_file(dir.path(), &[keep.clone(), service("new", "upper", "udp = [\"127.0.0.1:0\"]")].concat());
    assert_eq!(host.logs.wait_for("reloaded (", 1, REPLY_TIMEOUT), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(host.logs.count("stopped [gone], started [new]"), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(udp_roundtrip(addr(&host, "new", Transport::Udp), b"new"), b"NEW");
    // The untouched service kept its connection (and its socket).
    assert_eq!(line_roundtrip(&mut kept, b"after"), b"after\n");
    // The removed service's socket is closed: the kernel refuses the
    // datagram (a connected UDP socket sees the ICMP error).
    let s = udp_client(gone_addr);
    s.send(b"anyone?").unwrap();
    let mut buf = [0u8; 64];
    let err = s.recv(&mut buf).expect_err("the removed service answered");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // A changed service is restarted with its new settings on its address.
    let changed = service("keep", "upper", &format!("tcp = [\"{keep_addr}\"]"));
    write_file(dir.path(), &[changed, service("new", "upper", "udp = [\"127.0.0.1:0\"]")].concat());
    assert_eq!(host.logs.wait_for("reloaded (", 2, REPLY_TIMEOUT), 2);
    assert_eq!(host.logs.count("stopped [keep], started [keep]"), 1, "{}", host.logs.lines().join("\n"));
    let mut fresh = tcp_connect(keep_addr);
    assert_eq!(line_roundtrip(&mut fresh, b"changed"), b"CHANGED\n");
    // Its counters go on from those of its first run.
    let admin = crate::admin::admin_addr(&host);
    let (_, metrics) = crate::admin::http_get(admin, "/metrics");
    assert_eq!(crate::admin::sample(&metrics, "wasm_sockets_requests_total", &["service=\"keep\""]), Some(3.0));

    // A host-wide key waits for the next start: no service restarts.
    let unchanged = [changed_again(keep_addr), service("new", "upper", "udp = [\"127.0.0.1:0\"]")].concat();
    write_file(dir.path(), &format!("drain-timeout = \"7s\"\n{unchanged}"));
    assert_eq!(host.logs.wait_for("host-wide settings changed", 1, REPLY_TIMEOUT), 1);
    assert_eq!(host.logs.wait_for("): unchanged", 1, REPLY_TIMEOUT), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(line_roundtrip(&mut fresh, b"same"), b"SAME\n");
    let (_, status) = crate::admin::http_get(admin, "/status");
    assert!(status.contains("\"reload_failures\":0"), "{status}");
}

fn changed_again(addr: SocketAddr) -> String {
    service("keep", "upper", &format!("tcp = [\"{addr}\"]"))
}

#[test]
fn a_bad_new_file_changes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let good = service("svc", "echo", "udp = [\"127.0.0.1:0\"]");
    let file = write_file(dir.path(), &good);
    let host = Host::start(&["--config", file.to_str().unwrap(), "--no-watch"]);
    let udp = addr(&host, "svc", Transport::Udp);
    assert_eq!(udp_roundtrip(udp, b"one"), b"one");

    // An address another process holds: binding it fails before anything
    // stops.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let bad = [
        (
            [good.clone(), service("other", "upper", &format!("udp = [\"{taken_addr}\"]"))].concat(),
            "cannot listen on udp",
        ),
        (format!("{good}timeout = \"soon\"\n"), "host.toml:5:"),
        ("[[service]\n".to_string(), "host.toml:1:"),
        (service("svc", "echo", "udp = [\"127.0.0.1:0\"]").replace("echo.wasm", "nope.wasm"), "no such file"),
    ];
    for (i, (text, why)) in bad.iter().enumerate() {
        write_file(dir.path(), text);
        host.signal(1); // SIGHUP
        assert_eq!(host.logs.wait_for("services file reload failed: nothing changed: ", i + 1, REPLY_TIMEOUT), i + 1);
        let line = host.logs.lines().into_iter().rev().find(|l| l.contains("reload failed")).unwrap();
        assert!(line.contains(why), "{line}");
        assert_eq!(host.logs.count("reloaded ("), 0, "a bad file changed something");
        assert_eq!(udp_roundtrip(udp, b"still"), b"still");
    }
    // SIGHUP on an unchanged file says so.
    write_file(dir.path(), &good);
    host.signal(1);
    assert_eq!(host.logs.wait_for("reloaded (Signal): unchanged", 1, REPLY_TIMEOUT), 1);
}

#[test]
fn a_bad_file_is_refused_at_start_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[service]]\nplugin = \"x.wasm\"\n", "host.toml:2:10: plugin "),
        ("colour = 1\n", "host.toml:1:1: unknown key `colour`"),
        (&*format!("{}timeout = \"1 fortnight\"\n", service("a", "echo", "")), "host.toml:5:11: invalid value"),
        (&*format!("{}listen = [\"localhost:7000\"]\n", service("a", "echo", "")), "host.toml:5:10:"),
        (
            &*[service("a", "echo", "udp = [\"127.0.0.1:7999\"]"), service("b", "echo", "udp = [\"127.0.0.1:7999\"]")]
                .concat(),
            "services a and b both serve udp 127.0.0.1:7999",
        ),
    ];
    for (text, want) in cases {
        let file = write_file(dir.path(), text);
        let (code, stderr) = run_host(&["--config", file.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.contains(want), "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let file = write_file(dir.path(), &service("a", "echo", ""));
    let (code, stderr) = run_host(&["--config", file.to_str().unwrap(), "--timeout", "1s"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("go in the services file"), "{stderr}");
}

#[test]
fn the_example_services_file_serves() {
    let example = root().join("examples/services/host.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    // The example's own check: it parses, and its plugins exist.
    host::servicefile::load(&example).unwrap_or_else(|e| panic!("{e}"));
    // Served on free ports, with its plugins where the example says.
    let dir = tempfile::tempdir().unwrap();
    let plugins = example.parent().unwrap().canonicalize().unwrap();
    let mut served = String::new();
    for line in text.lines() {
        let line = if let Some(rest) = line.strip_prefix("plugin = \"") {
            format!("plugin = \"{}\"", plugins.join(rest.trim_end_matches('"')).display())
        } else {
            regex_free_port_zero(line)
        };
        served.push_str(&line);
        served.push('\n');
    }
    let file = write_file(dir.path(), &served);
    let host = Host::start(&["--config", file.to_str().unwrap()]);
    assert_eq!(udp_roundtrip(addr(&host, "echo", Transport::Udp), b"hi"), b"hi");
    let mut upper = tcp_connect(addr(&host, "upper", Transport::Tcp));
    assert_eq!(line_roundtrip(&mut upper, b"hi"), b"HI\n");
    let mut chat = tcp_connect(addr(&host, "chat", Transport::Tcp));
    assert_eq!(line_roundtrip(&mut chat, b"hi"), b"hi\n");
}

/// `127.0.0.1:7000` -> `127.0.0.1:0` in a line of the example.
fn regex_free_port_zero(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..i + "127.0.0.1:".len()]);
        rest = &rest[i + "127.0.0.1:".len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        out.push('0');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}
