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
    fn machine_names_the_cpu_count() {
        assert!(machine().contains("CPUs (nproc)"));
    }
}
