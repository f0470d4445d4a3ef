//! The command line as a user meets it: `host check`, `host invoke`, the
//! refusal of flag values that could not serve, and the log's formats and
//! filter. Each test runs the real binary.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use crate::support::*;

/// Run `host ARGS` to completion with a temporary data directory, the
/// test run's compile cache, `stdin` on its standard input, and `env`.
fn host(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let data = tempfile::Builder::new().prefix("host-data-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cmd = Command::new(host_bin());
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if !args.iter().any(|a| *a == "--no-cache" || *a == "--cache-dir") {
        cmd.arg("--cache-dir").arg(test_cache_dir());
    }
    if !args.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(data.path());
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn host");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one `error: ...` line of a run that exited with `code`.
fn error_line(out: &Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{stderr}");
    // The host's own panic starts a line; a plugin's is inside a log line.
    assert!(!stderr.lines().any(|l| l.starts_with("thread '")), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    errors[0].to_string()
}

// ---- host check ----

#[test]
fn check_says_what_the_plugin_implements_and_exits_0() {
    let echo = plugin("echo");
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let first = host(&["check", "--plugin", echo.to_str().unwrap(), "--cache-dir", cache], b"", &[]);
    let again = host(&["check", "--plugin", echo.to_str().unwrap(), "--cache-dir", cache], b"", &[]);
    for (out, how) in [(&first, "(compiled in "), (&again, "(from cache)")] {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let want = format!("{}: ok: implements sockets:plugin/handler, version ", echo.display());
        assert!(stdout.starts_with(&want) && stdout.contains(how), "{stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(out.stderr.is_empty(), "check is quiet: {}", text(&out.stderr));
    }
    let counter = plugin("counter");
    let out = host(&["check", "--plugin", counter.to_str().unwrap(), "--tcp", "127.0.0.1:7000"], b"", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok: implements sockets:plugin/connection-handler@0.2.0, version "));
}

#[test]
fn check_refuses_what_the_server_would_refuse_with_one_line_and_exit_2() {
    let (_d, bad) = temp_file("text.wasm", b"hello, I am text\n");
    let counter = plugin("counter");
    let echo = plugin("echo");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--plugin", &bad], &[&bad, "not a WebAssembly file"]),
        (&["--plugin", "/nonexistent/p.wasm"], &["/nonexistent/p.wasm", "cannot read"]),
        (&["--plugin", counter.to_str().unwrap(), "--udp", "127.0.0.1:53"], &["serves TCP only", "--udp 127.0.0.1:53"]),
        (&["--plugin", echo.to_str().unwrap(), "--udp", "127.0.0.1:53", "--framing", "u16"], &["--framing u16"]),
        (&["--plugin", echo.to_str().unwrap(), "--timeout", "0s"], &["--timeout"]),
    ];
    for (args, needles) in cases {
        let out = host(&[&["check"], *args].concat(), b"", &[]);
        let line = error_line(&out, 2);
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        for n in *needles {
            assert!(line.contains(n), "{args:?}: {line:?} lacks {n:?}");
        }
    }
}

#[test]
fn check_a_services_file_reports_each_service() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.toml");
    let (echo, counter) = (plugin("echo"), plugin("counter"));
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"a\"\nplugin = {:?}\nudp = [\"127.0.0.1:7001\"]\n\n\
             [[service]]\nname = \"b\"\nplugin = {:?}\ntcp = [\"127.0.0.1:7002\"]\n",
            echo.display(),
            counter.display()
        ),
    )
    .unwrap();
    let out = host(&["check", "--config", file.to_str().unwrap()], b"", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(&format!(
        "{}: service a: {}: ok: implements sockets:plugin/handler",
        file.display(),
        echo.display()
    )));
    assert!(lines[1].contains("service b: ") && lines[1].contains("connection-handler@0.2.0"), "{stdout}");

    // A connection-world service on UDP: the lines before it, then its error.
    let text_ =
        std::fs::read_to_string(&file).unwrap().replace("tcp = [\"127.0.0.1:7002\"]", "udp = [\"127.0.0.1:7002\"]");
    std::fs::write(&file, text_).unwrap();
    let out = host(&["check", "--config", file.to_str().unwrap()], b"", &[]);
    let line = error_line(&out, 2);
    assert!(line.contains("serves TCP only"), "{line}");
    assert_eq!(text(&out.stdout).lines().count(), 1, "service a is still reported");
}

// ---- host invoke ----

#[test]
fn invoke_prints_the_reply_exactly() {
    let echo = plugin("echo");
    let echo = echo.to_str().unwrap();
    let out = host(&["invoke", "--plugin", echo, "hello"], b"", &[]);
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), &b"hello"[..]), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    // From stdin, bytes as they are; and hex both ways.
    let binary = b"\x00\xff line\n\r\n";
    let out = host(&["invoke", "--plugin", echo, "-"], binary, &[]);
    assert_eq!(out.stdout, binary);
    let out = host(&["invoke", "--plugin", echo, "--hex", "00ff 0a"], b"", &[]);
    assert_eq!(text(&out.stdout), "00ff0a\n");
    let out = host(&["invoke", "--plugin", echo, "--hex", "-"], b"6869\n", &[]);
    assert_eq!(text(&out.stdout), "6869\n");
    let line = error_line(&host(&["invoke", "--plugin", echo, "--hex", "abc"], b"", &[]), 2);
    assert!(line.contains("--hex: 3 hex digits"), "{line}");
}

#[test]
fn invoke_shows_the_plugin_the_transport_and_peer_given() {
    let hostile = plugin("hostile");
    let hostile = hostile.to_str().unwrap();
    let out = host(&["invoke", "--plugin", hostile, "whoami"], b"", &[]);
    assert_eq!(text(&out.stdout), "udp 127.0.0.1:0 127.0.0.1:0");
    let args = ["invoke", "--plugin", hostile, "--transport", "tcp", "--peer", "[::1]:4000", "whoami"];
    assert_eq!(text(&host(&args, b"", &[]).stdout), "tcp [::1]:4000 127.0.0.1:0");
}

#[test]
fn invoke_exit_codes_say_how_the_call_ended() {
    let hostile = plugin("hostile");
    let hostile = hostile.to_str().unwrap();
    let out = host(&["invoke", "--plugin", hostile, "none"], b"", &[]);
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(0), "no reply\n".to_string()));
    assert!(out.stdout.is_empty());

    let line = error_line(&host(&["invoke", "--plugin", hostile, "err"], b"", &[]), 1);
    assert_eq!(line, "error: plugin returned an error: refused");
    let line = error_line(&host(&["invoke", "--plugin", hostile, "--timeout", "100ms", "loop"], b"", &[]), 2);
    assert!(line.contains("cut off after 100ms (--timeout)"), "{line}");
    let out = host(&["invoke", "--plugin", hostile, "panic"], b"", &[]);
    let line = error_line(&out, 2);
    assert!(line.starts_with("error: trapped: "), "{line}");
    // The plugin's own lines come first, the verdict last.
    assert!(text(&out.stderr).contains("asked to panic"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).trim_end().ends_with(&line), "{}", text(&out.stderr));
    // A reply over a limit is not printed, as the server would not send it.
    let line = error_line(&host(&["invoke", "--plugin", hostile, "--max-reply", "100", "big:1000"], b"", &[]), 2);
    assert!(line.contains("reply of 1000 bytes not sent") && line.contains("--max-reply"), "{line}");
    let line = error_line(&host(&["invoke", "--plugin", hostile, "big:1000"], b"", &[]), 2);
    assert!(line.contains("--max-amplification"), "a UDP reply is capped: {line}");
    let out = host(&["invoke", "--plugin", hostile, "--transport", "tcp", "big:1000"], b"", &[]);
    assert_eq!(out.stdout.len(), 1000, "{}", text(&out.stderr));
    let line = error_line(&host(&["invoke", "--plugin", hostile, "--max-request", "4", "whoami"], b"", &[]), 2);
    assert!(line.contains("over --max-request"), "{line}");
}

#[test]
fn invoke_a_connection_plugin_feeds_one_stream() {
    let counter = plugin("counter");
    let out = host(&["invoke", "--plugin", counter.to_str().unwrap(), "-"], b"hi\nyo\n", &[]);
    assert_eq!(text(&out.stdout), "1 hi\n2 yo\n", "{}", text(&out.stderr));
    let line =
        error_line(&host(&["invoke", "--plugin", counter.to_str().unwrap(), "--transport", "udp", "x"], b"", &[]), 2);
    assert!(line.contains("serves TCP only"), "{line}");
}

#[test]
fn invoke_uses_the_services_the_server_would_give() {
    let probe = plugin("kv-probe");
    let probe = probe.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    for want in ["1", "2"] {
        let out = host(&["invoke", "--plugin", probe, "--data-dir", data, "incr hits"], b"", &[]);
        assert_eq!(text(&out.stdout), want, "{}", text(&out.stderr));
    }
    let out = host(&["invoke", "--plugin", probe, "--var", "greeting=hi", "var greeting"], b"", &[]);
    assert_eq!(text(&out.stdout), "hi");
    // The plugin's log lines are shown; the host's own start-up lines are not.
    let out = host(&["invoke", "--plugin", probe, "log info ctx hello there"], b"", &[]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("hello there") && !stderr.contains("loaded plugin"), "{stderr}");
}

#[test]
fn invoke_refuses_the_flags_about_sockets() {
    let echo = plugin("echo");
    for flag in [["--listen", "127.0.0.1:0"], ["--workers", "2"], ["--idle-timeout", "1s"]] {
        let line =
            error_line(&host(&["invoke", "--plugin", echo.to_str().unwrap(), flag[0], flag[1], "x"], b"", &[]), 2);
        assert!(line.contains(&format!("{} has no effect on host invoke", flag[0])), "{line}");
    }
}

// ---- flag validation ----

#[test]
fn flag_values_that_cannot_serve_are_refused_before_starting() {
    let echo = plugin("echo");
    let echo = echo.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--workers", "0"], &["--workers", "at least 1"]),
        (&["--max-instances", "0"], &["--max-instances", "at least 1"]),
        (&["--max-connections", "0"], &["--max-connections", "at least 1"]),
        (&["--timeout", "0s"], &["--timeout", "more than 0"]),
        (&["--idle-timeout", "0s"], &["--idle-timeout", "more than 0"]),
        (&["--udp", "127.0.0.1:0", "--framing", "u16"], &["--framing u16 has no effect"]),
        (&["--udp", "127.0.0.1:0", "--tcp-isolation", "connection"], &["--tcp-isolation connection has no effect"]),
        (&["--listen", "7000"], &["--listen", "127.0.0.1:7000", "[::1]:7000", "0.0.0.0:7000"]),
        (&["--listen", "localhost:7000"], &["--listen", "not resolved", "127.0.0.1:7000"]),
        (&["--max-memory", "8GiB"], &["--max-memory", "8.0 GiB", "4GiB"]),
        (&["--max-instances", "100000"], &["--max-instances", "at most 10800"]),
        (&["--instance-reuse", "0"], &["--instance-reuse"]),
        (&["--listen", "127.0.0.1:7000", "--udp", "127.0.0.1:7000"], &["udp 127.0.0.1:7000 is given twice"]),
    ];
    for (args, needles) in cases {
        let (code, stderr) = run_host(&[&["--plugin", echo], *args].concat());
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, nothing started:\n{stderr}");
        assert!(lines[0].starts_with("error") && !lines[0].contains("0x"), "{args:?}: {stderr}");
        for n in *needles {
            assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
        }
    }
}

#[test]
fn documented_zeros_start_and_serve() {
    let help = text(&Command::new(host_bin()).arg("--help").output().unwrap().stdout);
    assert!(help.contains("0 exits at once") && help.contains("0 closes them at once"), "{help}");
    let echo = plugin("echo");
    let args =
        ["--plugin", echo.to_str().unwrap(), "--udp", "127.0.0.1:0", "--drain-timeout", "0s", "--reload-grace", "0s"];
    let mut h = Host::start(&args);
    assert_eq!(udp_roundtrip(h.udp(), b"zero"), b"zero");
    h.sigterm();
    assert_eq!(h.wait(REPLY_TIMEOUT).and_then(|s| s.code()), Some(0));
}

// ---- logs ----

#[test]
fn json_logs_are_one_object_a_line_with_the_service_span() {
    let echo = plugin("echo");
    let args = ["--plugin", echo.to_str().unwrap(), "--udp", "127.0.0.1:0", "--log-format", "json"];
    let mut h = Host::spawn_with(&args, &[("RUST_LOG", "debug")], |_| {});
    assert!(h.logs.wait_for("ready: serving", 1, START_TIMEOUT) >= 1, "{}", h.logs.lines().join("\n"));
    let message = |line: &serde_json::Value| line["fields"]["message"].as_str().unwrap_or_default().to_string();
    let parsed = |h: &Host| -> Vec<serde_json::Value> {
        h.logs
            .lines()
            .iter()
            .filter(|l| *l != "<stderr closed>")
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let listening = parsed(&h).into_iter().find(|l| message(l).starts_with("listening udp")).expect("a listening line");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "host::listener");
    assert_eq!(listening["spans"][0]["service"], "echo", "{listening}");
    let (_, addr) = host::logline::listening(&message(&listening)).unwrap();

    assert_eq!(udp_roundtrip(addr, b"json"), b"json");
    assert!(h.logs.wait_for("served", 1, REPLY_TIMEOUT) >= 1, "{}", h.logs.lines().join("\n"));
    let served = parsed(&h).into_iter().find(|l| message(l) == "served").unwrap();
    assert_eq!(served["level"], "DEBUG");
    for field in ["plugin", "version", "peer", "transport"] {
        assert!(served["fields"][field].is_string(), "{field} in {served}");
    }
    h.sigterm();
    assert!(h.wait(REPLY_TIMEOUT).is_some());
}

#[test]
fn rust_log_debug_is_the_hosts_debug_not_the_compilers() {
    let echo = plugin("echo");
    // --no-cache: the plugin is compiled, which is when cranelift logs.
    let args = ["--plugin", echo.to_str().unwrap(), "--udp", "127.0.0.1:0", "--no-cache"];
    let h = Host::start_env(&args, &[("RUST_LOG", "debug")]);
    assert_eq!(udp_roundtrip(h.udp(), b"dbg"), b"dbg");
    assert!(h.logs.wait_for(" served", 1, REPLY_TIMEOUT) >= 1, "the host's debug lines are on");
    let lines = h.logs.lines();
    let foreign: Vec<&String> = lines.iter().filter(|l| l.contains("cranelift") || l.contains("wasmtime")).collect();
    assert!(foreign.is_empty(), "{} lines of dependencies, e.g. {:?}", foreign.len(), foreign.first());
    assert!(lines.len() < 50, "{} lines", lines.len());
}
