//! What the benchmark needs from the operating system: descriptor limits,
//! a process's resident memory, and a description of the machine.

use std::fs;

use anyhow::Context as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raise the soft limit on open files to the hard limit.
///
/// The soft limit is often 1,024, too few for 10,000 TCP connections; child
/// processes inherit the raised limit. A failure only means fewer
/// connections can be opened, which the load then reports, so it is logged
/// rather than fatal.
pub fn raise_nofile_limit() {
    let raised = getrlimit(Resource::RLIMIT_NOFILE)
        .and_then(|(soft, hard)| if soft < hard { setrlimit(Resource::RLIMIT_NOFILE, hard, hard) } else { Ok(()) });
    if let Err(e) = raised {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
}

/// The resident set size of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// Clock ticks per second of the times in `/proc/PID/stat` (`USER_HZ`,
/// 100 on every Linux the kernel's ABI documents).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) of the processes of group `pgid`, or of
/// process `pid` alone when `group` is false, in seconds: what a server
/// spent, its forked workers included.
pub fn cpu_seconds(pid: u32, group: bool) -> f64 {
    let Ok(entries) = fs::read_dir("/proc") else { return 0.0 };
    let mut ticks = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(other) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if !group && other != pid {
            continue;
        }
        // A process may exit between the listing and the read: skipped.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((pgrp, used)) = parse_stat(&stat)
            && (other == pid || (group && pgrp == pid))
        {
            ticks += used;
        }
    }
    ticks as f64 / USER_HZ
}

/// The process group and utime + stime of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses: the fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), pgrp (5), ..., utime (14), stime (15).
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

/// CPU time (user + system) of this process's children that have been
/// waited for, in seconds: a client's, by the difference around its run.
pub fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// One line naming the machine: CPUs, CPU model and kernel, because every
/// number in a benchmark table belongs to the machine it came from.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel =
        fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    format!("{cpus} CPUs (nproc), {model}, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_readable_and_nonzero() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn stat_lines_give_the_group_and_the_cpu_ticks() {
        let line = "4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(line), Some((4240, 300)));
        assert_eq!(parse_stat("4242 (cut"), None);
        assert!(cpu_seconds(std::process::id(), false) >= 0.0);
    }

    #[test]
    fn machine_names_the_cpu_count() {
        assert!(machine().contains("CPUs (nproc)"));
    }
}
