//! The init step: a plugin's `wizer-initialize` runs once per load, every
//! instance starts from the snapshot, a bad init is one line (at start the
//! host exits, on reload the old version serves on), and `--var-file`
//! gives the init a file's text.

use std::time::Duration;

use crate::support::*;

const WITHIN: Duration = Duration::from_secs(20);
const RAN: &str = "ran wizer-initialize of plugin init-probe";

fn probe() -> String {
    plugin("init-probe").display().to_string()
}

fn reply(host: &Host) -> String {
    String::from_utf8_lossy(&udp_roundtrip(host.udp(), b"?")).into_owned()
}

/// A host serving init-probe on UDP, with `args` added.
fn start(args: &[&str]) -> Host {
    let probe = probe();
    let mut all = vec!["--plugin", &probe, "--udp", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Host::start(&all)
}

/// The host's one-line error at start, for init-probe with `args`.
fn start_error(args: &[&str]) -> String {
    let probe = probe();
    let data = tempfile::tempdir().unwrap();
    let data = data.path().display().to_string();
    let cache = test_cache_dir().display().to_string();
    let mut all = vec!["--plugin", &probe, "--udp", "127.0.0.1:0", "--data-dir", &data, "--cache-dir", &cache];
    all.extend_from_slice(args);
    let (code, stderr) = run_host(&all);
    assert_ne!(code, Some(0), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

#[test]
fn fresh_instances_start_from_the_initialised_state() {
    let host = start(&["--var", "text=hello", "--var", "size=100000"]);
    let sum: u64 = (0..100000u64).map(|i| (i % 251) | 1).sum();
    for _ in 0..5 {
        // Built by the init, which ran once in this memory: not per request.
        assert_eq!(reply(&host), format!("init=yes runs=1 text=hello bytes=100000 sum={sum}"));
    }
    assert_eq!(host.logs.count(RAN), 1, "{}", host.logs.lines().join("\n"));
    // The init's own log line went through wasi:logging, once.
    assert_eq!(host.logs.count("built 100000 bytes of state"), 1);
}

#[test]
fn instances_that_serve_many_requests_start_initialised_too() {
    let host = start(&["--var", "text=reused", "--instance-reuse", "100"]);
    for _ in 0..3 {
        assert_eq!(reply(&host), "init=yes runs=1 text=reused bytes=0 sum=0");
    }
}

#[test]
fn a_plugin_that_skips_its_init_builds_per_request() {
    // The fallback a plugin keeps for when it was not initialised.
    let host = start(&["--var", "mode=skip", "--var", "text=lazy"]);
    assert_eq!(reply(&host), "init=no runs=1 text=lazy bytes=0 sum=0");
}

#[test]
fn a_var_file_reaches_the_init_and_sighup_makes_a_new_version_of_a_changed_one() {
    let (dir, text) = temp_file("text.txt", b"first");
    let var = format!("text={text}");
    let host = start(&["--var-file", &var]);
    assert_eq!(reply(&host), "init=yes runs=1 text=first bytes=0 sum=0");

    // Unchanged: SIGHUP does nothing.
    host.signal(1);
    assert_eq!(host.logs.wait_for("unchanged, still version", 1, WITHIN), 1);
    assert_eq!(host.logs.count(RAN), 1);

    // Changed: a new version, initialised again with the new text.
    std::fs::write(dir.path().join("text.txt"), "second").unwrap();
    host.signal(1);
    assert_eq!(host.logs.wait_for("reloaded plugin", 1, WITHIN), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(reply(&host), "init=yes runs=1 text=second bytes=0 sum=0");
    assert_eq!(host.logs.count(RAN), 2);
}

#[test]
fn a_changed_plugin_file_is_initialised_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init-probe.wasm");
    let bytes = std::fs::read(plugin("init-probe")).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let p = path.display().to_string();
    let host = Host::start(&["--plugin", &p, "--udp", "127.0.0.1:0", "--var", "text=v"]);
    assert_eq!(host.logs.count(RAN), 1);
    let tmp = dir.path().join(".tmp");
    std::fs::write(&tmp, variant(&bytes, 1)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(host.logs.wait_for("reloaded plugin", 1, WITHIN), 1, "{}", host.logs.lines().join("\n"));
    assert_eq!(host.logs.count(RAN), 2);
    assert_eq!(reply(&host), "init=yes runs=1 text=v bytes=0 sum=0");
}

#[test]
fn a_trapping_endless_or_too_big_init_stops_the_start_in_one_line() {
    let probe = probe();
    let trapped = start_error(&["--var", "mode=trap"]);
    assert!(trapped.starts_with(&format!("error: plugin {probe}: wizer-initialize trapped: wasm trap: ")), "{trapped}");
    let endless = start_error(&["--var", "mode=loop", "--init-timeout", "300ms"]);
    assert_eq!(endless, format!("error: plugin {probe}: wizer-initialize did not finish within 300ms"));
    // --max-memory holds for the init as for requests.
    let big = start_error(&["--var", "size=20000000", "--max-memory", "8MiB"]);
    assert!(
        big.starts_with(&format!("error: plugin {probe}: wizer-initialize trapped: forcing trap when growing memory")),
        "{big}"
    );
}

#[test]
fn an_init_must_not_leave_handles_for_the_snapshot() {
    let probe = probe();
    // println! keeps a stdout stream open in the instance.
    let open = start_error(&["--var", "mode=stdout"]);
    assert!(open.starts_with(&format!("error: plugin {probe}: wizer-initialize left a WASI resource")), "{open}");
    // wasi:keyvalue is refused: the plugin sees an error and goes on.
    let host = start(&["--var", "mode=kv"]);
    assert_eq!(reply(&host), "init=yes runs=1 text= bytes=0 sum=0");
    assert_eq!(host.logs.count("wasi:keyvalue is not available in wizer-initialize"), 1);
}

#[test]
fn a_bad_init_on_reload_keeps_the_old_version() {
    let (dir, mode) = temp_file("mode", b"");
    let var = format!("mode={mode}");
    let host = start(&["--var-file", &var, "--var", "text=old", "--init-timeout", "300ms"]);
    assert_eq!(reply(&host), "init=yes runs=1 text=old bytes=0 sum=0");
    for (i, (bad, why)) in
        [("trap", "wizer-initialize trapped"), ("loop", "wizer-initialize did not finish within 300ms")]
            .into_iter()
            .enumerate()
    {
        std::fs::write(dir.path().join("mode"), bad).unwrap();
        host.signal(1);
        assert_eq!(host.logs.wait_for("reload failed, still serving version", i + 1, WITHIN), i + 1);
        let line = host.logs.lines().into_iter().rev().find(|l| l.contains("reload failed")).unwrap();
        assert!(line.contains(why), "{line}");
        assert_eq!(reply(&host), "init=yes runs=1 text=old bytes=0 sum=0");
    }
}

#[test]
fn var_file_errors_name_the_flag_and_the_file() {
    let missing = "/nonexistent/zone.txt";
    let err = start_error(&["--var-file", &format!("text={missing}")]);
    assert!(err.starts_with(&format!("error: --var-file text={missing}: cannot read: ")), "{err}");
    let (_big, big) = temp_file("big", &vec![b'a'; (1 << 20) + 1]);
    let err = start_error(&["--var-file", &format!("text={big}")]);
    assert!(err.ends_with("over the 1.0 MiB limit of a variable's file"), "{err}");
    let (_bin, bin) = temp_file("bin", b"ok\xff");
    let err = start_error(&["--var-file", &format!("text={bin}")]);
    assert!(err.ends_with("not UTF-8 text (invalid byte at offset 2)"), "{err}");
    let (_both, both) = temp_file("both", b"x");
    let err = start_error(&["--var", "text=a", "--var-file", &format!("text={both}")]);
    assert!(err.contains("variable text is given by both --var and --var-file"), "{err}");
}

#[test]
fn host_check_runs_the_init() {
    let probe = probe();
    let out = std::process::Command::new(host_bin())
        .args(["check", "--plugin", &probe, "--no-cache", "--var", "mode=trap"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("plugin {probe}: wizer-initialize trapped")), "{stderr}");
}

#[test]
fn a_plugin_without_the_export_is_unaffected() {
    use sha2::Digest as _;
    let echo = plugin("echo");
    let version = sha2::Sha256::digest(std::fs::read(&echo).unwrap());
    let version: String = version.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let host = Host::start(&["--plugin", echo.to_str().unwrap(), "--udp", "127.0.0.1:0"]);
    assert_eq!(udp_roundtrip(host.udp(), b"same"), b"same");
    assert_eq!(host.logs.count("wizer-initialize"), 0);
    assert!(host.logs.count(&format!("version {version}")) >= 1, "{}", host.logs.lines().join("\n"));
}

#[test]
fn a_services_file_gives_var_files_relative_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("conf/text.txt"), "from-the-file").unwrap();
    let file = dir.path().join("host.toml");
    let services = format!(
        "[[service]]\nname = \"probe\"\nplugin = \"{}\"\nudp = [\"127.0.0.1:0\"]\nvar-files = {{ text = \"conf/text.txt\" }}\n",
        probe()
    );
    std::fs::write(&file, services).unwrap();
    let host = Host::start(&["--config", file.to_str().unwrap()]);
    assert_eq!(reply(&host), "init=yes runs=1 text=from-the-file bytes=0 sum=0");
}
