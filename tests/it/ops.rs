//! Operations: rolling back to the previous plugin version, dropping root
//! after binding (`--user`), and per-source UDP rate limits
//! (`--udp-source-rate`).

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// How long a deploy or rollback may take to be served.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

fn echo() -> String {
    plugin("echo").display().to_string()
}

fn version_of(file: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(std::fs::read(file).unwrap());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[test]
fn rollback_puts_the_previous_version_back_and_the_host_serves_it() {
    let (work, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let path = work.path().join("service.wasm");
    std::fs::copy(plugin("echo"), &path).unwrap();
    let cache_arg = cache.path().display().to_string();
    let host =
        Host::start(&["--plugin", &path.display().to_string(), "--udp", "127.0.0.1:0", "--cache-dir", &cache_arg]);
    let serves_upper = || udp_roundtrip(host.udp(), b"probe") == b"PROBE";
    assert!(!serves_upper());

    // Deploy upper the simplest way: copy it over the file.
    std::fs::copy(plugin("upper"), &path).unwrap();
    assert!(eventually(SEEN_WITHIN, serves_upper), "upper was not served");
    // The history is written in the background after each load.
    let recorded = || host::plugin::history::versions(cache.path(), &path).unwrap().len();
    assert!(eventually(SEEN_WITHIN, || recorded() == 2), "{} versions recorded", recorded());

    let done = host::plugin::history::rollback(&path, Some(cache.path())).unwrap();
    assert_eq!(done.restored.version, version_of(&plugin("echo")));
    assert_eq!(done.replaced, Some(version_of(&plugin("upper"))));
    assert!(eventually(SEEN_WITHIN, || !serves_upper()), "the rollback to echo was not served");
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(plugin("echo")).unwrap());

    // A second rollback, with the command an operator types, returns to
    // the version the first one replaced.
    let out = Command::new(host_bin())
        .args(["rollback", "--plugin", &path.display().to_string(), "--cache-dir", &cache_arg])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&version_of(&plugin("upper"))), "{stdout}");
    assert!(eventually(SEEN_WITHIN, serves_upper), "the second rollback was not served");
    assert_eq!(host.stats()["reloads"], 3);
}

#[test]
fn udp_source_rate_limits_each_source_alone() {
    let host = Host::start(&["--plugin", &echo(), "--udp", "127.0.0.1:0", "--udp-source-rate", "10"]);
    let client = udp_client(host.udp());
    const SENT: u64 = 50;
    for i in 0..SENT {
        client.send(format!("burst {i}").as_bytes()).unwrap();
    }
    // Every datagram is either served or counted as limited.
    let seen = || host.stat_sum(&["requests", "udp_rate_limited"]);
    assert!(eventually(REPLY_TIMEOUT, || seen() >= SENT), "only {} of {SENT} datagrams counted", seen());
    let stats = host.stats();
    let (served, limited) = (stats["requests"], stats["udp_rate_limited"]);
    assert_eq!(served + limited, SENT, "{stats:?}");
    // A burst of 10, and one more per 100 ms the burst took to arrive.
    assert!((10..=13).contains(&served), "{served} served of a burst of {SENT}");
    assert_eq!(stats["requests_dropped"], 0, "{stats:?}");
    // The drops are logged once a second for this source, not 40 times.
    let lines = host.logs.count("datagrams dropped: source over --udp-source-rate 10/s");
    assert!((1..=2).contains(&lines), "{lines} lines about the drops");
    let mut buf = [0u8; 64];
    for _ in 0..served {
        let n = client.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"burst "));
    }
    assert_eq!(host.wait_stat("replies", served), served);
    assert_no_datagram(&client);

    // Another source address is not limited by the first one's burst.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    other.connect(host.udp()).unwrap();
    for i in 0..5 {
        let msg = format!("other source {i}");
        other.send(msg.as_bytes()).unwrap();
        let n = other.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    assert_eq!(host.stats()["udp_rate_limited"], limited);
}

/// nobody's (uid, gid), when this test runs as root (as CI does); `None`,
/// and a line saying the test is skipped, otherwise.
fn nobody_if_root(test: &str) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: --user needs the test to run as root");
        return None;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a user nobody");
    Some((nobody.uid.as_raw(), nobody.gid.as_raw()))
}

/// A directory `nobody` owns, with a copy of echo, a cache and a data
/// directory in it: (the directory, plugin, cache dir, data dir).
fn nobodys_dir(uid: u32, gid: u32) -> (tempfile::TempDir, String, String, String) {
    let work = tempfile::tempdir().unwrap();
    let (cache, data) = (work.path().join("cache"), work.path().join("data"));
    let plugin_path = work.path().join("echo.wasm");
    std::fs::copy(plugin("echo"), &plugin_path).unwrap();
    for path in [work.path(), &cache, &data, &plugin_path] {
        if !path.exists() {
            std::fs::create_dir(path).unwrap();
        }
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
    let s = |p: &Path| p.display().to_string();
    (work, s(&plugin_path), s(&cache), s(&data))
}

/// The ids on the `Uid:`, `Gid:` and `Groups:` lines of a status file.
fn ids(status: &str, field: &str) -> Vec<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().map(|id| id.parse().unwrap()).collect()
}

#[test]
fn user_drops_root_after_binding_and_serves() {
    let Some((uid, gid)) = nobody_if_root("user_drops_root_after_binding_and_serves") else { return };
    let (_work, plugin_path, cache, data) = nobodys_dir(uid, gid);
    let host = Host::start(&[
        "--plugin",
        &plugin_path,
        "--listen",
        "127.0.0.1:0",
        "--user",
        "nobody",
        "--cache-dir",
        &cache,
        "--data-dir",
        &data,
    ]);
    assert_eq!(udp_roundtrip(host.udp(), b"as nobody"), b"as nobody");
    let mut tcp = tcp_connect(host.tcp());
    assert_eq!(line_roundtrip(&mut tcp, b"as nobody"), b"as nobody\n");
    assert_eq!(host.logs.count("running from now on as user nobody (uid 65534"), 1, "{}", host.logs.lines().join("\n"));

    // Every thread: real, effective, saved and filesystem ids, and no
    // supplementary group of root's.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", host.pid())).unwrap().flatten().collect();
    assert!(tasks.len() > 1);
    for task in tasks {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        assert_eq!(ids(&status, "Uid:"), [uid; 4], "thread {:?}", task.file_name());
        assert_eq!(ids(&status, "Gid:"), [gid; 4], "thread {:?}", task.file_name());
        assert!(!ids(&status, "Groups:").contains(&0), "thread {:?} kept group 0", task.file_name());
    }

    // What the host wrote after binding belongs to nobody: the compile
    // cache entry (so it is used), the plugin history, the store.
    use std::os::unix::fs::MetadataExt as _;
    let owned = |dir: &str| -> Vec<u32> {
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().unwrap().uid()).collect()
    };
    assert!(eventually(REPLY_TIMEOUT, || Path::new(&cache).join("history").exists()), "no history");
    let cache_files = owned(&cache);
    assert!(cache_files.len() >= 2 && cache_files.iter().all(|&u| u == uid), "{cache_files:?}");
    let data_files = owned(&data);
    assert!(data_files.iter().all(|&u| u == uid), "{data_files:?}");
}

#[test]
fn user_without_root_is_refused_and_as_that_user_is_a_no_op() {
    use std::os::unix::process::CommandExt as _;
    let Some((uid, gid)) = nobody_if_root("user_without_root_is_refused_and_as_that_user_is_a_no_op") else {
        return;
    };
    let (_work, plugin_path, cache, data) = nobodys_dir(uid, gid);
    let args = |user: &'static str| {
        let mut a = vec!["--plugin", &plugin_path, "--udp", "127.0.0.1:0", "--cache-dir", &cache, "--data-dir", &data];
        a.extend(["--user", user]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let as_nobody = |cmd: &mut Command| {
        cmd.uid(uid).gid(gid);
    };
    // Started as nobody, it cannot become daemon.
    let mut refused = Host::spawn_with(&args("daemon"), &[], as_nobody);
    let status = refused.wait(REPLY_TIMEOUT).expect("the host did not exit");
    refused.logs.wait_for("<stderr closed>", 1, REPLY_TIMEOUT);
    assert_eq!(status.code(), Some(2));
    let error = refused.logs.lines().into_iter().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(
        error.contains("--user daemon: switching user takes root, and the host runs as uid 65534"),
        "{}",
        refused.logs.lines().join("\n")
    );
    // Started as nobody with --user nobody, it serves.
    let host = Host::start_with(&args("nobody"), &[], as_nobody);
    assert_eq!(udp_roundtrip(host.udp(), b"still nobody"), b"still nobody");
    assert_eq!(host.logs.count("already running as user nobody (uid 65534, gid 65534)"), 1);
}
