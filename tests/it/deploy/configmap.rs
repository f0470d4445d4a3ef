//! The plugin's reload path in a pod, run locally with the real host: a
//! ConfigMap volume updated as the kubelet updates it (an atomic `..data`
//! symlink swap), and a plugin reached through symlinks whose target is
//! rewritten in place or switched.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;

/// How long a new plugin may take to be served after its file changed.
const SWAP_SEEN_WITHIN: Duration = Duration::from_secs(20);

/// A directory laid out exactly as the kubelet mounts a ConfigMap volume:
/// `echo.wasm -> ..data/echo.wasm`, `..data -> ..2026_12_02_..`.
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    current: Option<PathBuf>,
    updates: u32,
}

impl ConfigMapVolume {
    const KEY: &str = "echo.wasm";

    fn new(plugin: &[u8]) -> Self {
        let mut volume = Self { dir: tempfile::tempdir().unwrap(), current: None, updates: 0 };
        volume.update(plugin);
        volume
    }

    /// The kubelet's atomic writer: the payload in a new timestamped
    /// directory, a `..data_tmp` link to it renamed over `..data`, the
    /// user-visible link made if missing, then the old directory removed.
    fn update(&mut self, plugin: &[u8]) {
        self.updates += 1;
        let name = format!("..2026_12_02_10_00_{:02}.{:09}", self.updates, 4_815_162 * self.updates);
        let new = self.dir.path().join(&name);
        std::fs::create_dir(&new).unwrap();
        let mut file = std::fs::File::create(new.join(Self::KEY)).unwrap();
        file.write_all(plugin).unwrap();
        file.sync_all().unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        let visible = self.dir.path().join(Self::KEY);
        if visible.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{}", Self::KEY), &visible).unwrap();
        }
        if let Some(old) = self.current.replace(new) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    fn plugin_path(&self) -> String {
        self.dir.path().join(Self::KEY).display().to_string()
    }
}

fn serves_upper(addr: SocketAddr) -> bool {
    udp_roundtrip(addr, b"probe") == b"PROBE"
}

/// Clients that keep a UDP and a TCP (lines) conversation going and check
/// that every request gets its reply, from echo or from upper.
fn traffic(host: &Host, stop: &Arc<AtomicBool>, answered: &Arc<AtomicU64>) -> Vec<std::thread::JoinHandle<()>> {
    let (udp, tcp) = (host.udp(), host.tcp());
    let (s1, a1, s2, a2) = (stop.clone(), answered.clone(), stop.clone(), answered.clone());
    let ok = |reply: &[u8], msg: &str| reply == msg.as_bytes() || reply == msg.to_uppercase().as_bytes();
    vec![
        std::thread::spawn(move || {
            for i in 0.. {
                if s1.load(Ordering::Relaxed) {
                    break;
                }
                let msg = format!("udp request {i}");
                let reply = udp_roundtrip(udp, msg.as_bytes());
                assert!(ok(&reply, &msg), "UDP request {i}: reply {:?}", String::from_utf8_lossy(&reply));
                a1.fetch_add(1, Ordering::Relaxed);
            }
        }),
        std::thread::spawn(move || {
            let mut conn = tcp_connect(tcp);
            for i in 0.. {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let msg = format!("tcp request {i}");
                let reply = line_roundtrip(&mut conn, msg.as_bytes());
                assert!(ok(&reply[..reply.len() - 1], &msg), "TCP request {i}: reply {reply:?}");
                a2.fetch_add(1, Ordering::Relaxed);
            }
        }),
    ]
}

#[test]
fn a_configmap_update_reloads_the_plugin_without_losing_a_request() {
    let (echo, upper) = (std::fs::read(plugin("echo")).unwrap(), std::fs::read(plugin("upper")).unwrap());
    let mut volume = ConfigMapVolume::new(&echo);
    // The compile cache as the pod has it: a directory the host makes in
    // an emptyDir, which the kubelet creates with mode 0777.
    let empty_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(empty_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let cache = empty_dir.path().join("compiled").display().to_string();
    let host = Host::start(&["--plugin", &volume.plugin_path(), "--listen", "127.0.0.1:0", "--cache-dir", &cache]);
    assert!(!serves_upper(host.udp()));
    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let clients = traffic(&host, &stop, &answered);
    for (update, (bytes, to_upper)) in [(&upper, true), (&echo, false)].into_iter().enumerate() {
        let before = answered.load(Ordering::Relaxed);
        volume.update(bytes);
        assert!(
            eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp()) == to_upper),
            "update {update} not served; log:\n{}",
            host.logs.lines().join("\n")
        );
        // A new connection is served by the new version too.
        let mut conn = tcp_connect(host.tcp());
        assert_eq!(line_roundtrip(&mut conn, b"new conn") == b"NEW CONN\n", to_upper);
        assert!(eventually(REPLY_TIMEOUT, || answered.load(Ordering::Relaxed) > before + 20));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client saw a lost or wrong reply");
    }
    let stats = host.stats();
    assert_eq!((stats["reloads"], stats["reload_failures"]), (2, 0), "{stats:?}");
    assert_eq!(stats["connections_closed_by_host"] + stats["traps"] + stats["timeouts"], 0, "{stats:?}");
    // Back to echo was a compile cache hit: the cache works in that layout.
    assert_eq!((stats["cache_misses"], stats["cache_hits"]), (2, 1), "{stats:?}");
    // Removing the old timestamped directory is routine, not a lost watch.
    assert_eq!(host.logs.count("paused"), 0, "{}", host.logs.lines().join("\n"));
}

/// Rewrite `path` in place (truncate, then write in chunks, as `cp` does).
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(3)) {
        file.write_all(chunk).unwrap();
    }
}

#[test]
fn a_symlinked_plugin_follows_rewrites_and_directory_switches() {
    // A volume holding releases, the plugin reached through a `current`
    // directory link and a file link: plugins/echo.wasm ->
    // ../current/echo.wasm, current -> releases/v1.
    let (echo, upper) = (std::fs::read(plugin("echo")).unwrap(), std::fs::read(plugin("upper")).unwrap());
    let root = tempfile::tempdir().unwrap();
    let at = |p: &str| root.path().join(p);
    for dir in ["releases/v1", "releases/v2", "plugins"] {
        std::fs::create_dir_all(at(dir)).unwrap();
    }
    std::fs::write(at("releases/v1/echo.wasm"), &echo).unwrap();
    std::fs::write(at("releases/v2/echo.wasm"), &echo).unwrap();
    std::os::unix::fs::symlink("releases/v1", at("current")).unwrap();
    std::os::unix::fs::symlink("../current/echo.wasm", at("plugins/echo.wasm")).unwrap();
    let path = at("plugins/echo.wasm").display().to_string();
    let host = Host::start(&["--plugin", &path, "--listen", "127.0.0.1:0"]);
    let seen = |to_upper: bool, step: &str| {
        assert!(
            eventually(SWAP_SEEN_WITHIN, || serves_upper(host.udp()) == to_upper),
            "{step} not served; log:\n{}",
            host.logs.lines().join("\n")
        );
    };
    // The file at the end of the links is rewritten in place.
    rewrite_in_place(&at("releases/v1/echo.wasm"), &upper);
    seen(true, "rewriting the target in place");
    // `current` is switched to another release, atomically.
    std::os::unix::fs::symlink("releases/v2", at("current.tmp")).unwrap();
    std::fs::rename(at("current.tmp"), at("current")).unwrap();
    seen(false, "switching the directory link");
    // The watch followed: the new release's file is the one watched now.
    rewrite_in_place(&at("releases/v2/echo.wasm"), &upper);
    seen(true, "rewriting the new target in place");
    let stats = host.stats();
    assert_eq!((stats["reloads"], stats["reload_failures"]), (3, 0), "{stats:?}");
}
