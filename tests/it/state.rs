//! The host services: `wasi:keyvalue` on the embedded store and on a real
//! `redis-server` (started here on a free port), `wasi:config` and
//! `wasi:logging`, through the kv-probe fixture (see its source for the
//! commands) and the Python (visits) and JavaScript (notes) plugins.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn kv_host(extra: &[&str]) -> Host {
    let p = plugin("kv-probe");
    let mut args = vec!["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Host::start(&args)
}

/// One kv-probe command on a new TCP connection; the reply as text. (Not
/// UDP: some error texts are more than three times the size of their
/// command, which UDP's amplification limit would not send.)
fn ask(host: &Host, command: &str) -> String {
    ask_tcp(&mut tcp_connect(host.tcp()), command).unwrap()
}

/// One kv-probe command over a TCP connection (line framing).
fn ask_tcp(s: &mut TcpStream, command: &str) -> std::io::Result<String> {
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&mut *s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(line.trim_end().to_string())
}

#[test]
fn a_counter_survives_requests_a_reload_and_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let (file_dir, file) = temp_file("service.wasm", &std::fs::read(plugin("kv-probe")).unwrap());
    let start = || Host::start(&["--plugin", &file, "--listen", "127.0.0.1:0", "--data-dir", dir]);
    let host = start();
    assert_eq!(ask(&host, "incr visits"), "1");
    assert_eq!(ask(&host, "incr visits"), "2");
    assert_eq!(ask(&host, "set greeting hello there"), "ok");
    // A new version of the plugin sees the same data.
    std::fs::write(&file, variant(&std::fs::read(plugin("kv-probe")).unwrap(), 1)).unwrap();
    host.signal(1); // SIGHUP
    host.wait_stat("reloads", 1);
    assert_eq!(ask(&host, "incr visits"), "3");
    host.sigterm();
    drop(host);
    // So does the next process on the same data directory.
    let host = start();
    assert_eq!(ask(&host, "incr visits"), "4");
    assert_eq!(ask(&host, "get greeting"), "hello there");
    // Counters are decimal text: `get` reads what `increment` wrote.
    assert_eq!(ask(&host, "get visits"), "4");
    assert!(data.path().join("kv.sqlite3").exists());
    drop(file_dir);
}

#[test]
fn an_acknowledged_set_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let host = kv_host(&["--data-dir", dir]);
    for i in 0..200 {
        assert_eq!(ask(&host, &format!("set k{i} value-{i}")), "ok");
    }
    host.signal(9);
    drop(host);
    let host = kv_host(&["--data-dir", dir]);
    for i in 0..200 {
        assert_eq!(ask(&host, &format!("get k{i}")), format!("value-{i}"), "k{i} lost");
    }
}

#[test]
fn increments_are_atomic_across_workers_and_connections() {
    let host = kv_host(&["--workers", "2"]);
    let addr = host.tcp();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = tcp_connect(addr);
                (0..250).map(|_| ask_tcp(&mut s, "incr c").unwrap().parse::<u64>().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=1000).collect::<Vec<_>>(), "every increment returned a distinct value");
    assert_eq!(ask(&host, "get c"), "1000");
}

#[test]
fn a_plugin_opens_only_granted_buckets_and_services_never_share_keys() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let a = kv_host(&["--data-dir", dir, "--name", "svc-a", "--kv-bucket", "default", "--kv-bucket", "sessions"]);
    let b = kv_host(&["--data-dir", dir, "--name", "svc-b"]);
    assert_eq!(ask(&a, "in sessions set s1 alice"), "ok");
    assert_eq!(ask(&a, "in sessions get s1"), "alice");
    assert_eq!(ask(&a, "in secrets get s1"), "err: access-denied");
    assert_eq!(ask(&b, "in sessions get s1"), "err: access-denied", "svc-b is granted only default");
    assert_eq!(ask(&a, "set shared from-a"), "ok");
    assert_eq!(ask(&b, "get shared"), "(nil)", "two services on one store never see each other's keys");
    assert_eq!(ask(&b, "keys"), "0 keys:");
    // Two hosts of the same service do share them.
    let a2 = kv_host(&["--data-dir", dir, "--name", "svc-a"]);
    assert_eq!(ask(&a2, "get shared"), "from-a");
    assert!(a.stats()["kv_errors"] >= 1);
}

#[test]
fn limits_are_error_values_never_traps() {
    let host = kv_host(&["--kv-max-bucket-bytes", "1KiB", "--kv-max-ops", "10", "--kv-max-value", "700"]);
    assert_eq!(ask(&host, "keysize 256"), "ok");
    assert_eq!(ask(&host, "keysize 257"), "err: other: key of 257 bytes is over the 256-byte limit (--kv-max-key)");
    assert_eq!(
        ask(&host, "setsize big 701"),
        "err: other: value of 701 bytes is over the 700-byte limit (--kv-max-value)"
    );
    assert_eq!(ask(&host, "setsize a 600"), "ok");
    let over = ask(&host, "setsize b 600");
    assert!(
        over.starts_with("err: other: bucket \"default\" would hold") && over.contains("--kv-max-bucket-bytes"),
        "{over}"
    );
    // Shrinking a value always fits; deleting makes room.
    assert_eq!(ask(&host, "setsize a 10"), "ok");
    assert_eq!(ask(&host, "setsize b 600"), "ok");
    assert_eq!(ask(&host, "loop 10"), "ok");
    assert_eq!(ask(&host, "loop 11"), "err: other: over 10 key-value operations in one call (--kv-max-ops)");
    assert!(ask(&host, "setmany a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9 j=10 k=11").contains("--kv-max-ops"));
    assert_eq!(ask(&host, "set counter text"), "ok");
    assert_eq!(ask(&host, "incr counter"), "err: other: the value of key \"counter\" is not a decimal counter");
    let stats = host.stats();
    assert_eq!((stats["traps"], stats["plugin_errors"]), (0, 0));
    assert_eq!(ask(&host, "get a"), "vvvvvvvvvv", "the host still serves");
}

#[test]
fn values_read_in_one_call_are_capped_at_the_instance_memory() {
    let redis = Redis::start();
    let url = redis.url();
    for backend in [&[][..], &["--kv", url.as_str()][..]] {
        let mut args = vec!["--max-memory", "16MiB"];
        args.extend_from_slice(backend);
        let host = kv_host(&args);
        assert_eq!(ask(&host, "setsize big 1048576"), "ok");
        let many = format!("getmany{}", " big".repeat(17));
        let refused = ask(&host, &many);
        assert!(refused.ends_with("add up to more than 16777216 bytes (--max-memory)"), "{backend:?}: {refused}");
        assert_eq!(host.stats()["traps"], 0);
        assert!(host.peak_rss_kib() < 200 << 10, "the host read the values anyway");
    }
}

/// Another process holding the SQLite write lock (a second host, a backup
/// tool) delays writes, which are cut off at --timeout, but never the
/// worker threads: reads and requests that do not use the store go on.
#[test]
fn a_locked_store_delays_writes_only() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let host = kv_host(&["--data-dir", dir, "--timeout", "300ms", "--workers", "1"]);
    assert_eq!(ask(&host, "set k before"), "ok");
    let script = "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\n";
    let db = data.path().join("kv.sqlite3");
    let mut locker =
        Command::new("python3").args(["-c", script, db.to_str().unwrap(), "5"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let started = Instant::now();
    let s = udp_client(host.udp());
    s.send(b"set k during").unwrap();
    // One worker thread: if the write blocked it, these would wait too.
    assert_eq!(ask(&host, "var x"), "(none)");
    assert_eq!(ask(&host, "get k"), "before");
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    host.wait_stat("timeouts", 1);
    let _ = locker.kill();
    let _ = locker.wait();
}

#[test]
fn config_variables_and_wasi_logging_reach_the_plugin_and_the_log() {
    let host = kv_host(&["--var", "greeting=hi there", "--var", "url=a=b", "--var", "greeting=hello"]);
    assert_eq!(ask(&host, "var greeting"), "hello", "the last value of a name wins");
    assert_eq!(ask(&host, "var url"), "a=b");
    assert_eq!(ask(&host, "var missing"), "(none)");
    assert_eq!(ask(&host, "vars"), "greeting=hello url=a=b");
    assert_eq!(ask(&host, "log warn billing card declined"), "ok");
    assert_eq!(ask(&host, "log critical db it is gone"), "ok");
    assert_eq!(host.logs.wait_for("card declined", 1, REPLY_TIMEOUT), 1);
    let lines = host.logs.lines();
    let line = lines.iter().find(|l| l.contains("card declined")).unwrap();
    assert!(
        line.contains("WARN") && line.contains("context=\"billing\"") && line.contains("plugin=kv-probe"),
        "{line}"
    );
    assert_eq!(host.logs.wait_for("it is gone", 1, REPLY_TIMEOUT), 1);
    let line = host.logs.lines().into_iter().find(|l| l.contains("it is gone")).unwrap();
    assert!(line.contains("ERROR") && line.contains("critical=true") && line.contains("context=\"db\""), "{line}");
}

#[test]
fn batch_operations_and_list_pages() {
    let host = kv_host(&["--kv-max-ops", "5000"]);
    assert_eq!(ask(&host, "setmany a=1 b=2 c=3"), "ok");
    assert_eq!(ask(&host, "getmany a b zz c"), "a=1 b=2 zz=(nil) c=3");
    assert_eq!(ask(&host, "delmany a c"), "ok");
    assert_eq!(ask(&host, "keys"), "1 keys: b");
    // More keys than one page: the cursor reaches every one.
    let mut s = tcp_connect(host.tcp());
    for chunk in 0..3 {
        let pairs: Vec<String> = (0..500).map(|i| format!("k{:04}=v", chunk * 500 + i)).collect();
        assert_eq!(ask_tcp(&mut s, &format!("setmany {}", pairs.join(" "))).unwrap(), "ok");
    }
    assert!(ask_tcp(&mut s, "keys").unwrap().starts_with("1501 keys: b k0000 k0001"));
}

#[test]
fn bad_store_settings_are_refused_with_the_reason() {
    let p = plugin("kv-probe");
    let p = p.to_str().unwrap();
    let (code, err) = run_host(&["--plugin", p, "--kv", "http://127.0.0.1:6379"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a Redis URL"), "{err}");
    let (code, err) = run_host(&["--plugin", p, "--listen", "127.0.0.1:0", "--data-dir", "/proc/1/no-such-dir/kv"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot create the data directory /proc/1/no-such-dir/kv"), "{err}");
    let (code, err) = run_host(&["--plugin", p, "--kv-bucket", "a/b"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a valid name"), "{err}");
}

#[test]
fn an_unusable_default_data_directory_costs_only_the_store() {
    let p = plugin("kv-probe");
    let env = [("XDG_DATA_HOME", "/proc/1/no-such-dir")];
    let host = Host::start_env(&["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0"], &env);
    assert_eq!(host.logs.count("key-value store unavailable: cannot create the data directory"), 1);
    assert!(ask(&host, "incr n").starts_with("err: other: no key-value store: cannot create the data directory"));
    assert_eq!(ask(&host, "var x"), "(none)");
}

#[test]
fn python_plugin_counts_visits_with_a_configured_greeting() {
    let p = plugin("visits");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0", "--var", "greeting=hey"]);
    let mut s = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut s, b"ada"), b"hey, ada! visit 1\n");
    assert_eq!(line_roundtrip(&mut s, b"ada"), b"hey, ada! visit 2\n");
    assert_eq!(udp_roundtrip(host.udp(), b"bob"), b"hey, bob! visit 1");
    assert_eq!(host.logs.wait_for("ada visit 2", 1, REPLY_TIMEOUT), 1);
    let line = host.logs.lines().into_iter().find(|l| l.contains("ada visit 2")).unwrap();
    assert!(line.contains("context=\"visits\""), "{line}");
}

#[test]
fn javascript_plugin_keeps_notes_in_the_store() {
    let p = plugin("notes");
    let host = Host::start(&["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0", "--var", "motd=be kind"]);
    let mut s = tcp_connect(host.tcp());
    for (command, reply) in [
        ("get a", "(nil)"),
        ("set a hello world", "OK"),
        ("get a", "hello world"),
        ("incr n", "1"),
        ("incr n", "2"),
        ("keys", "a n"),
        ("var motd", "be kind"),
        ("var nope", "(none)"),
        ("del a", "OK"),
        ("get a", "(nil)"),
        ("frobnicate", "ERR unknown command"),
    ] {
        assert_eq!(
            String::from_utf8(line_roundtrip(&mut s, command.as_bytes())).unwrap(),
            format!("{reply}\n"),
            "{command}"
        );
    }
}

/// A `redis-server` of our own on a free loopback port, stopped when
/// dropped. (Also used by the `resp` tests.)
pub(crate) struct Redis {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { child: None, port, dir: tempfile::tempdir().unwrap() };
        redis.run();
        redis
    }

    /// An address where nothing listens (yet).
    fn unstarted() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis { child: None, port, dir: tempfile::tempdir().unwrap() }
    }

    /// Start (again) on the same port.
    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (scripts/setup.sh installs it)");
        self.child = Some(child);
        assert!(eventually(REPLY_TIMEOUT, || self.ping()), "redis-server did not start on port {}", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr()) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = s.write_all(b"PING\r\n");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) server must be woken to die promptly.
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.stop();
    }
}

fn redis_host(redis: &Redis, extra: &[&str]) -> Host {
    let url = redis.url();
    let mut args = vec!["--kv", url.as_str()];
    args.extend_from_slice(extra);
    kv_host(&args)
}

#[test]
fn redis_backend_shares_state_between_hosts_and_keeps_services_apart() {
    let redis = Redis::start();
    let a = redis_host(&redis, &["--name", "svc"]);
    let b = redis_host(&redis, &["--name", "svc"]);
    let other = redis_host(&redis, &["--name", "other"]);
    assert_eq!(a.logs.count(&format!("Redis at 127.0.0.1:{}/0 answers", redis.port)), 1);
    assert_eq!(ask(&a, "incr hits"), "1");
    assert_eq!(ask(&b, "incr hits 41"), "42");
    assert_eq!(ask(&a, "get hits"), "42");
    assert_eq!(ask(&other, "get hits"), "(nil)");
    assert_eq!(ask(&a, "set k binary safe value"), "ok");
    assert_eq!(ask(&b, "exists k"), "true");
    assert_eq!(ask(&b, "setmany x=1 y=2"), "ok");
    assert_eq!(ask(&a, "getmany x y z"), "x=1 y=2 z=(nil)");
    assert_eq!(ask(&a, "keys"), "4 keys: hits k x y");
    assert_eq!(ask(&a, "delmany x y"), "ok");
    assert_eq!(ask(&a, "del k"), "ok");
    assert_eq!(ask(&other, "keys"), "0 keys:");
    assert_eq!(ask(&a, "in elsewhere get k"), "err: access-denied");
    // The bucket cap holds on Redis too.
    let capped = redis_host(&redis, &["--name", "capped", "--kv-max-bucket-bytes", "100"]);
    assert_eq!(ask(&capped, "setsize a 90"), "ok");
    assert!(ask(&capped, "setsize b 20").contains("--kv-max-bucket-bytes"));
    // A counter takes the room of its digits: 91 + 2 bytes fit, 91 + 11 do not.
    assert_eq!(ask(&capped, "incr n"), "1");
    assert!(ask(&capped, "incr n 1000000000").contains("--kv-max-bucket-bytes"));
    assert_eq!(ask(&capped, "get n"), "1", "a refused increment leaves the counter as it was");
    assert_eq!(ask(&capped, "del a"), "ok");
    assert_eq!(ask(&capped, "incr n 1000000000"), "1000000001");
    assert_eq!(ask(&capped, "set text abc"), "ok");
    assert!(ask(&capped, "incr text").contains("not a decimal counter"));
}

#[test]
fn redis_down_at_start_away_and_back_is_an_error_value_then_served_again() {
    let mut redis = Redis::unstarted();
    let host = redis_host(&redis, &["--timeout", "2s"]);
    let says = format!("Redis at 127.0.0.1:{}/0 is not reachable", redis.port);
    assert_eq!(host.logs.count(&says), 1, "{}", host.logs.lines().join("\n"));
    let down = ask(&host, "incr n");
    assert!(down.starts_with("err: other: redis: "), "{down}");
    assert_eq!(ask(&host, "var x"), "(none)", "requests that do not use the store are served");
    redis.run();
    assert!(eventually(REPLY_TIMEOUT, || ask(&host, "incr n") == "1"), "the host did not reconnect");
    redis.stop();
    assert!(ask(&host, "incr n").starts_with("err: other: redis: "));
    redis.run();
    // The data was not persisted (--save ""): the counter starts over.
    assert!(eventually(REPLY_TIMEOUT, || ask(&host, "incr n") == "1"), "the host did not reconnect again");
    assert_eq!(host.stats()["traps"], 0);
}

#[test]
fn a_call_blocked_on_a_stalled_redis_is_cut_off_by_the_timeout() {
    let redis = Redis::start();
    let host = redis_host(&redis, &["--timeout", "300ms"]);
    assert_eq!(ask(&host, "incr n"), "1");
    redis.signal("-STOP");
    let started = Instant::now();
    host.assert_no_udp_reply(b"incr n", &["timeouts"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ask(&host, "var x"), "(none)", "other requests are served meanwhile");
    redis.signal("-CONT");
    assert!(eventually(REPLY_TIMEOUT, || ask(&host, "get n").parse::<u64>().is_ok()));
}

/// The scale-out test: two hosts share one Redis; 10,000
/// increments spread over both end at exactly 10,000; then one host is
/// killed mid-stream and no acknowledged increment is lost.
#[test]
fn two_hosts_on_one_redis_count_exactly_and_survive_losing_one() {
    let redis = Redis::start();
    let hosts = [redis_host(&redis, &["--name", "count"]), redis_host(&redis, &["--name", "count"])];
    let addrs = [hosts[0].tcp(), hosts[1].tcp()];
    let run = |per_thread: usize| -> Vec<std::thread::JoinHandle<(Vec<u64>, usize)>> {
        (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut conns: Vec<Option<TcpStream>> = addrs.iter().map(|a| Some(tcp_connect(*a))).collect();
                    let (mut acked, mut unacked) = (Vec::new(), 0);
                    for i in 0..per_thread {
                        let pick = (t + i) % 2;
                        let pick = if conns[pick].is_some() { pick } else { 1 - pick };
                        match ask_tcp(conns[pick].as_mut().unwrap(), "incr total") {
                            Ok(n) => acked.push(n.parse::<u64>().unwrap()),
                            Err(_) => {
                                // That host is gone: this increment may or may
                                // not have been made, and was not acknowledged.
                                conns[pick] = None;
                                unacked += 1;
                            }
                        }
                    }
                    (acked, unacked)
                })
            })
            .collect()
    };
    let acked: Vec<u64> = run(2_500).into_iter().flat_map(|t| t.join().unwrap().0).collect();
    assert_eq!(acked.len(), 10_000);
    let mut b = tcp_connect(addrs[0]);
    assert_eq!(ask_tcp(&mut b, "get total").unwrap(), "10000");

    let second = run(1_000);
    let killed = hosts[1].pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new("kill").args(["-KILL", &killed.to_string()]).status();
    });
    let (mut acked, mut unacked) = (Vec::new(), 0);
    for t in second {
        let (a, u) = t.join().unwrap();
        acked.extend(a);
        unacked += u;
    }
    killer.join().unwrap();
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(acked.len() + unacked, 4_000, "every acknowledged value is distinct");
    let total: u64 = ask_tcp(&mut b, "get total").unwrap().parse().unwrap();
    assert!(total >= 10_000 + acked.len() as u64, "acknowledged increments lost: {total}");
    assert!(total <= 14_000);
    assert!(acked.last().copied().unwrap_or(0) <= total);
}

/// The README's example is this file, and it shares its data with the
/// Python plugin of the same protocol: a reload from one language to the
/// other keeps the counts.
#[test]
fn the_readme_example_continues_the_python_plugins_counts_after_a_reload() {
    let source = std::fs::read_to_string(root().join("examples/visits-rs/src/lib.rs")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains(&source), "README's host-services example differs from examples/visits-rs");

    let (dir, file) = temp_file("visits.wasm", &std::fs::read(plugin("visits")).unwrap());
    let host = Host::start(&["--plugin", &file, "--listen", "127.0.0.1:0", "--var", "greeting=hi", "--no-watch"]);
    assert_eq!(udp_roundtrip(host.udp(), b"ada"), b"hi, ada! visit 1");
    std::fs::write(&file, std::fs::read(plugin("visits-rs")).unwrap()).unwrap();
    host.signal(1); // SIGHUP
    host.wait_stat("reloads", 1);
    assert_eq!(udp_roundtrip(host.udp(), b"ada"), b"hi, ada! visit 2");
    drop(dir);
}
