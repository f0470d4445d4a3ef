//! Hot reload: swap plugin versions under load without losing a request,
//! refuse bad files, and reuse compiled code across restarts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
        overwrite(&self.path, bytes);
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

/// Truncate and rewrite `path` in place, in a few chunks (like `cp`).
fn overwrite(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(4).max(1)) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
    }
}

fn cache_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
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
    let wrong_world = wrong_world_component();
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

#[test]
fn sigterm_does_not_wait_for_a_reload_compile() {
    let (file, cache) = (PluginFile::new(&plugin("echo")), cache_dir());
    let mut host = start_watching(&file, &cache);
    // A cold JavaScript compile takes seconds, longer than the drain.
    file.replace(&std::fs::read(plugin("reverse")).unwrap());
    assert_eq!(host.logs.wait_for("compiling a ", 1, START_TIMEOUT), 1, "{}", host.logs.lines().join("\n"));
    host.sigterm();
    let status = host.wait(START_TIMEOUT).expect("host did not exit");
    assert!(status.success(), "{status:?}");
    // Every line has been read: the compile never finished into a swap.
    assert_eq!(host.logs.wait_for("<stderr closed>", 1, REPLY_TIMEOUT), 1);
    assert_eq!(host.logs.count("reloaded plugin"), 0, "{}", host.logs.lines().join("\n"));
}

/// A directory laid out as Kubernetes mounts a ConfigMap: `plugin.wasm ->
/// ..data/plugin.wasm`, `..data -> ..<timestamp>`, updated by renaming a
/// new `..data` link into place and removing the old directory.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ConfigMapDir {
    fn new(initial: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut this = Self { dir, generation: 0 };
        this.update(&std::fs::read(initial).unwrap());
        std::os::unix::fs::symlink("..data/plugin.wasm", this.dir.path().join("plugin.wasm")).unwrap();
        this
    }

    fn data_dir(&self) -> String {
        format!("..2026_11_25_10_00_{:02}.{:09}", self.generation, 123_456_789 + self.generation)
    }

    /// As the kubelet does it: a new timestamped directory, a `..data_tmp`
    /// link to it renamed over `..data` (atomic), then the old one removed.
    fn update(&mut self, bytes: &[u8]) {
        let old = (self.generation > 0).then(|| self.dir.path().join(self.data_dir()));
        self.generation += 1;
        let new = self.data_dir();
        std::fs::create_dir(self.dir.path().join(&new)).unwrap();
        std::fs::write(self.dir.path().join(&new).join("plugin.wasm"), bytes).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    fn arg(&self) -> String {
        self.dir.path().join("plugin.wasm").display().to_string()
    }
}

#[test]
fn a_configmap_style_symlink_swap_reloads() {
    let mut config_map = ConfigMapDir::new(&plugin("echo"));
    let cache = cache_dir();
    let cache_arg = cache.path().display().to_string();
    let host = Host::start(&["--plugin", &config_map.arg(), "--listen", "127.0.0.1:0", "--cache-dir", &cache_arg]);
    assert!(!serves_upper(host.udp()));
    let (echo, upper) = (std::fs::read(plugin("echo")).unwrap(), std::fs::read(plugin("upper")).unwrap());
    for swap in 0..3 {
        let to_upper = swap % 2 == 0;
        config_map.update(if to_upper { &upper } else { &echo });
        assert!(
            eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp()) == to_upper),
            "swap {swap} not seen; log:\n{}",
            host.logs.lines().join("\n")
        );
    }
    assert_eq!(host.stats()["reloads"], 3);
    // Removing each old directory is routine, not a lost watch.
    assert_eq!(host.logs.count("paused"), 0, "{}", host.logs.lines().join("\n"));
}

#[test]
fn rewriting_the_target_of_a_symlinked_plugin_reloads() {
    // links/service.wasm -> ../files/real.wasm
    let root = tempfile::tempdir().unwrap();
    let (links, files) = (root.path().join("links"), root.path().join("files"));
    std::fs::create_dir(&links).unwrap();
    std::fs::create_dir(&files).unwrap();
    std::fs::copy(plugin("echo"), files.join("real.wasm")).unwrap();
    let link = links.join("service.wasm");
    std::os::unix::fs::symlink("../files/real.wasm", &link).unwrap();
    let cache = cache_dir();
    let cache_arg = cache.path().display().to_string();
    let link_arg = link.display().to_string();
    let host = Host::start(&["--plugin", &link_arg, "--listen", "127.0.0.1:0", "--cache-dir", &cache_arg]);
    assert_eq!(host.logs.count(&format!("watching {link_arg} for changes (a symlink to ")), 1);
    for (swap, name) in ["upper", "echo"].into_iter().enumerate() {
        overwrite(&files.join("real.wasm"), &std::fs::read(plugin(name)).unwrap());
        assert!(
            eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp()) == (name == "upper")),
            "rewrite {swap} ({name}) not seen; log:\n{}",
            host.logs.lines().join("\n")
        );
    }
}

#[test]
fn the_watched_file_is_named_and_an_unchanged_sighup_says_so() {
    let (file, cache) = (PluginFile::new(&plugin("echo")), cache_dir());
    let host = start_watching(&file, &cache);
    let watching = format!("watching {} for changes (SIGHUP also reloads)", file.arg());
    assert_eq!(host.logs.count(&watching), 1, "{}", host.logs.lines().join("\n"));
    host.signal(1);
    let unchanged = format!("reload (Signal): {} unchanged, still version", file.arg());
    assert_eq!(host.logs.wait_for(&unchanged, 1, REPLY_TIMEOUT), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(host.stats()["reloads"], 0);
}

#[test]
fn a_removed_and_recreated_plugin_directory_is_watched_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("service.wasm");
    std::fs::copy(plugin("echo"), &path).unwrap();
    let (cache, arg) = (cache_dir(), path.display().to_string());
    let cache_arg = cache.path().display().to_string();
    let host = Host::start(&["--plugin", &arg, "--listen", "127.0.0.1:0", "--cache-dir", &cache_arg]);
    std::fs::remove_dir_all(&dir).unwrap();
    // The loss is reported, and the parent is watched in its place...
    let paused = format!("hot reload of {arg} paused: {} was removed", dir.display());
    assert_eq!(host.logs.wait_for(&paused, 1, REPLY_TIMEOUT), 1, "{}", host.logs.lines().join("\n"));
    // ...so the directory is watched again once it is back, and a new file
    // in it is picked up.
    std::fs::create_dir(&dir).unwrap();
    let tmp = dir.join(".service.wasm.tmp");
    std::fs::write(&tmp, std::fs::read(plugin("upper")).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp())),
        "not reloaded; log:\n{}",
        host.logs.lines().join("\n")
    );
    assert_eq!(host.logs.count(&format!("watching {arg} for changes again")), 1);
}
