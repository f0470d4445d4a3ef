//! Plugin stdout, stderr and `log` calls: they reach the host's log, never
//! trap the plugin, are bounded per request and are rate-limited.

use crate::support::*;

/// `host::ratelimit::LINES_PER_SECOND` (a private module): lines a plugin
/// version may log per second.
const LINES_PER_SECOND: usize = 100;

fn start(extra: &[&str]) -> Host {
    let plugin = plugin("hostile").display().to_string();
    let mut args = vec!["--plugin", plugin.as_str(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Host::start(&args)
}

/// Log lines up to now: the `stats` line asked for here is logged after
/// every line of the requests already answered, so none is still on its way.
fn settled_logs(host: &Host) -> (std::collections::HashMap<String, u64>, Vec<String>) {
    let stats = host.stats();
    (stats, host.logs.lines())
}

#[test]
fn a_reused_instance_prints_without_end() {
    // One instance serves every request: its output must not pile up (it
    // used to trap once 16 KiB had been printed over its lifetime).
    let host = start(&["--instance-reuse", "1000000", "--workers", "1"]);
    let mut s = tcp_connect(host.tcp());
    for i in 0..2000 {
        assert_eq!(line_roundtrip(&mut s, b"print"), b"printed\n", "printing request {i}");
    }
    let (stats, lines) = settled_logs(&host);
    assert_eq!(stats["traps"], 0, "{stats:?}");
    assert_eq!(stats["requests"], 2000, "{stats:?}");
    // 4,000 lines were printed; at least one second's worth reach the log.
    let printed = lines.iter().filter(|l| l.contains("hello from std")).count();
    assert!((LINES_PER_SECOND..=4000).contains(&printed), "{printed} printed lines logged");
    assert!(lines.iter().any(|l| l.contains("hello from stdout") && l.contains("plugin=hostile")));
    assert!(lines.iter().any(|l| l.contains("hello from stderr") && l.contains("WARN")));
}

#[test]
fn output_over_the_budget_is_cut_not_a_trap() {
    let host = start(&[]);
    assert_eq!(udp_roundtrip(host.udp(), b"print:102400"), b"printed");
    let (stats, lines) = settled_logs(&host);
    assert_eq!(stats["traps"], 0, "{stats:?}");
    // 100 KiB printed, 16 KiB kept (163 lines and the start of one more).
    let note = lines.iter().find(|l| l.contains("bytes of output dropped")).expect("no dropped-output note");
    assert!(note.contains("86016 bytes of output dropped (over 16 KiB per request)"), "{note}");
    assert!(lines.iter().any(|l| l.contains("print line 0 ")), "the first lines are logged");
    assert!(!lines.iter().any(|l| l.contains("print line 200 ")), "a line past the budget was logged");
    assert_eq!(udp_roundtrip(host.udp(), b"print"), b"printed");
}

#[test]
fn a_plugin_logging_in_a_loop_is_rate_limited() {
    let host = start(&[]);
    assert_eq!(udp_roundtrip(host.udp(), b"logspam:10000"), b"logged");
    let (stats, lines) = settled_logs(&host);
    assert_eq!(stats["traps"], 0, "{stats:?}");
    let logged = lines.iter().filter(|l| l.contains("logspam ")).count();
    // The request takes milliseconds: one second's worth, or two if it
    // straddles a second.
    assert!((1..=2 * LINES_PER_SECOND).contains(&logged), "{logged} of 10,000 log calls logged");
    assert!(lines.iter().any(|l| l.contains("logspam 0") && l.contains("plugin=hostile")));
}
