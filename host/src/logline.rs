//! The log lines that scripts, the tests and the benchmarks read: their
//! format is part of the host's interface, so it is parsed here, beside the
//! code that writes it, and nowhere else.
//!
//! - `listening udp 127.0.0.1:7000`: one per listener, once it serves.
//! - `stats requests=10 replies=9 ...`: the counters, on SIGUSR1 and at exit.
//!
//! A line may carry any prefix (timestamp, level, target) before these words.

use std::net::SocketAddr;

use crate::request::Transport;

/// The transport and address of a `listening udp|tcp ADDR` line.
pub fn listening(line: &str) -> Option<(Transport, SocketAddr)> {
    let mut words = line.split_whitespace().skip_while(|w| *w != "listening").skip(1);
    let transport = match words.next()? {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        _ => return None,
    };
    Some((transport, words.next()?.parse().ok()?))
}

/// The `name=value` pairs of a `stats ...` line, in order.
pub fn stats(line: &str) -> Option<Vec<(&str, u64)>> {
    let mut words = line.split_whitespace().skip_while(|w| *w != "stats").skip(1).peekable();
    words.peek().filter(|w| w.contains('='))?;
    Some(words.filter_map(|kv| kv.split_once('=')).filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn reads_what_the_host_writes() {
        let line = "2026-11-25T16:02:29Z  INFO host::listener: listening tcp [::1]:7000";
        assert_eq!(listening(line), Some((Transport::Tcp, "[::1]:7000".parse().unwrap())));
        assert_eq!(listening("listening udp 127.0.0.1:0"), Some((Transport::Udp, "127.0.0.1:0".parse().unwrap())));
        assert_eq!(listening("bound tcp 127.0.0.1:1; serving once the plugin is loaded"), None);

        let stats_ = Stats::default();
        Stats::incr(&stats_.replies);
        let line = format!("INFO host: stats {}", stats_.snapshot());
        let parsed = stats(&line).unwrap();
        assert_eq!(parsed[0], ("requests", 0));
        assert_eq!(parsed[1], ("replies", 1));
        assert_eq!(stats("INFO host: stats of the day"), None);
    }
}
