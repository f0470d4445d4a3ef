//! Hot reload: swap plugin versions under load without losing a request,
//! refuse bad files, and reuse compiled code across restarts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// How long a swap may take to be seen by new requests.
const SWAP_SEEN_WITHIN: Duration = Duration::from_secs(10);

/// A plugin file in a temp dir, replaced by rename (as deploy tools do) or
/// by writing in place (as `cp` does).
struct PluginFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl PluginFile {
    fn new(initial: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.wasm");
        std::fs::copy(initial, &path).unwrap();
        Self { dir, path }
    }

    /// Write `bytes` to a temp file and rename it over the plugin.
    fn replace(&self, bytes: &[u8]) {
        let tmp = self.dir.path().join(".service.wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Truncate and rewrite the plugin in place, in a few chunks (like `cp`).
    fn overwrite(&self, bytes: &[u8]) {
        let mut f = std::fs::File::create(&self.path).unwrap();
        for chunk in bytes.chunks(bytes.len().div_ceil(4).max(1)) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
        }
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

fn cache_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Wait until `probe` returns true, polling; false on timeout.
fn eventually(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A host serving `file` on loopback, with its own compile cache.
fn start_watching(file: &PluginFile, cache: &tempfile::TempDir) -> Host {
    let cache = cache.path().display().to_string();
    Host::start(&["--plugin", &file.arg(), "--listen", "127.0.0.1:0", "--cache-dir", &cache])
}

fn serves_upper(addr: SocketAddr) -> bool {
    udp_roundtrip(addr, b"probe") == b"PROBE"
}

#[test]
fn twenty_swaps_under_load_lose_nothing() {
    let (file, cache) = (PluginFile::new(&plugin("echo")), cache_dir());
    let host = start_watching(&file, &cache);
    let (udp, tcp) = (host.udp(), host.tcp());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // Clients send as fast as they can; every reply must be the request
    // (echo) or the request in upper case (upper), exactly once, in order.
    let mut clients = Vec::new();
    for c in 0..3 {
        let (stop, answered) = (stop.clone(), answered.clone());
        clients.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("udp client {c} request {i}");
                let reply = udp_roundtrip(udp, msg.as_bytes());
                assert!(reply == msg.as_bytes() || reply == msg.to_uppercase().as_bytes(), "bad reply {reply:?}");
                answered.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for c in 0..3 {
        let (stop, answered) = (stop.clone(), answered.clone());
        clients.push(std::thread::spawn(move || {
            // One connection for the whole test: it must never be closed.
            let mut s = tcp_connect(tcp);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Pipelined: four frames per write.
                let msgs: Vec<String> = (0..4).map(|k| format!("tcp client {c} request {i}.{k}")).collect();
                s.write_all(msgs.iter().map(|m| format!("{m}\n")).collect::<String>().as_bytes()).unwrap();
                for m in &msgs {
                    let reply = read_line(&mut s);
                    let reply = &reply[..reply.len() - 1];
                    assert!(reply == m.as_bytes() || reply == m.to_uppercase().as_bytes(), "bad reply {reply:?}");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let echo = std::fs::read(plugin("echo")).unwrap();
    let upper = std::fs::read(plugin("upper")).unwrap();
    for swap in 0..20 {
        let to_upper = swap % 2 == 0;
        let bytes = if to_upper { &upper } else { &echo };
        // Half the swaps rename a new file over the old, half rewrite it in
        // place (the reload must not act on the partial file).
        if swap % 4 < 2 {
            file.replace(bytes)
        } else {
            file.overwrite(bytes)
        }
        assert!(
            eventually(SWAP_SEEN_WITHIN, || serves_upper(udp) == to_upper),
            "swap {swap} not seen within {SWAP_SEEN_WITHIN:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client saw a lost or wrong reply");
    }
    assert!(answered.load(Ordering::Relaxed) > 1000, "too little load: {}", answered.load(Ordering::Relaxed));
    let stats = host.stats();
    assert_eq!(stats["reloads"], 20, "{stats:?}");
    assert_eq!(stats["connections_closed_by_host"], 0);
    assert_eq!(stats["traps"] + stats["timeouts"] + stats["replies_dropped"], 0, "{stats:?}");
    // Both versions were compiled once; every later swap hit the cache.
    assert_eq!(stats["cache_misses"], 2, "{stats:?}");
}

#[test]
fn bad_files_never_replace_the_working_version() {
    let (file, cache) = (PluginFile::new(&plugin("echo")), cache_dir());
    let host = start_watching(&file, &cache);
    let good = GoodTraffic::start(&host);
    let echo = std::fs::read(plugin("echo")).unwrap();
    let wrong_world = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 7))
            (core instance $i (instantiate $m))
            (func (export "handle") (result u32) (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let bad: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", b"this is not wasm".to_vec(), "not a WebAssembly file"),
        ("truncated copy", echo[..echo.len() / 3].to_vec(), "invalid component"),
        ("core module", wat::parse_str("(module)").unwrap(), "core WebAssembly module, not a component"),
        ("wrong world", wrong_world, "`handle` has the wrong type"),
    ];
    for (i, (what, bytes, message)) in bad.iter().enumerate() {
        file.replace(bytes);
        assert_eq!(
            host.logs.wait_for("reload failed, still serving version", i + 1, SWAP_SEEN_WITHIN),
            i + 1,
            "{what}: no failure logged"
        );
        let line = host.logs.lines().into_iter().rev().find(|l| l.contains("reload failed")).unwrap();
        assert!(line.contains(message) && line.contains(&file.arg()), "{what}: {line}");
        assert_eq!(udp_roundtrip(host.udp(), b"still echo"), b"still echo", "{what} took effect");
    }
    // Each failure was logged once, even though the watcher saw several events.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(host.logs.count("reload failed"), 4, "{}", host.logs.lines().join("\n"));
    // The good (echo) clients were answered correctly through all of it.
    assert!(good.finish() > 0);
    // The next good file is picked up.
    file.replace(&std::fs::read(plugin("upper")).unwrap());
    assert!(eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp())));
}

#[test]
fn sighup_reloads_and_a_restart_hits_the_compile_cache() {
    let file = PluginFile::new(&plugin("echo"));
    let cache = cache_dir();
    let cache_arg = cache.path().display().to_string();
    let args = ["--plugin", &file.arg(), "--listen", "127.0.0.1:0", "--cache-dir", &cache_arg, "--no-watch"];
    let mut host = Host::start(&args);
    assert_eq!(host.logs.count("(compile cache miss)"), 1);
    // --no-watch: a changed file is not picked up by itself...
    file.replace(&std::fs::read(plugin("upper")).unwrap());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(udp_roundtrip(host.udp(), b"x"), b"x");
    // ...but SIGHUP reloads it.
    host.signal(1);
    assert!(eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp())));
    // The swap happens just before its log line.
    assert_eq!(host.logs.wait_for("(Signal)", 1, REPLY_TIMEOUT), 1);
    host.sigterm();
    host.wait(Duration::from_secs(10)).expect("host did not exit");
    // A restart loads the same version from the cache, without compiling.
    let host = Host::start(&args);
    assert_eq!(host.logs.count("(compile cache hit)"), 1, "{}", host.logs.lines().join("\n"));
    let stats = host.stats();
    assert_eq!((stats["cache_hits"], stats["cache_misses"]), (1, 0));
    assert!(serves_upper(host.udp()));
}

#[test]
fn each_version_is_named_in_the_logs() {
    let file = PluginFile::new(&plugin("echo"));
    let host = Host::start_env(
        &["--plugin", &file.arg(), "--listen", "127.0.0.1:0", "--no-cache"],
        &[("RUST_LOG", "info,host::dispatch=debug")],
    );
    let sha = |p: &str| {
        use std::process::Command;
        let out = Command::new("sha256sum").arg(plugin(p)).output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..12].to_string()
    };
    let (echo_v, upper_v) = (sha("echo"), sha("upper"));
    assert!(host.logs.wait_for(&format!("version {echo_v}"), 1, REPLY_TIMEOUT) >= 1);
    udp_roundtrip(host.udp(), b"one");
    file.replace(&std::fs::read(plugin("upper")).unwrap());
    assert!(eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp())));
    assert_eq!(host.logs.wait_for(&format!("version {echo_v} -> {upper_v}"), 1, REPLY_TIMEOUT), 1);
    // Per-request debug lines name the version that served each request.
    assert!(host.logs.wait_for(&format!("version={upper_v}"), 1, REPLY_TIMEOUT) >= 1);
    assert!(host.logs.wait_for(&format!("version={echo_v}"), 1, REPLY_TIMEOUT) >= 1);
}
