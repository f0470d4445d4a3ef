//! The limits of one call: how big its reply may be, and how long it may
//! take.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use crate::config::{Config, MAX_UDP_PAYLOAD};
use crate::framing::Framing;
use crate::plugin::CallLimits;

/// IPv4 + UDP header bytes: what a datagram costs on the wire beyond its
/// payload (IPv6 adds 20 more; counting 28 is the stricter choice).
pub const UDP_IP_HEADERS: usize = 28;

/// The largest reply a listener may send, and why. Built once per listener
/// from the configuration; a plugin's reply over it is never copied out of
/// guest memory and is counted as `replies_dropped`.
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimit {
    /// The largest reply payload, from whichever limit is smallest.
    max: usize,
    /// The flag or fact that sets `max`, for the log.
    max_from: &'static str,
    /// UDP: reply bytes per request byte on the wire (0: no cap).
    amplification: usize,
}

impl ReplyLimit {
    /// For a UDP listener: `--max-reply`, one datagram, and
    /// `--max-amplification`.
    pub fn udp(config: &Config) -> Self {
        let (max, max_from) = if config.max_reply <= MAX_UDP_PAYLOAD {
            (config.max_reply, "--max-reply")
        } else {
            (MAX_UDP_PAYLOAD, "the largest UDP payload")
        };
        Self { max, max_from, amplification: config.max_amplification as usize }
    }

    /// For a TCP listener: `--max-reply`, and what its framing's length
    /// prefix can express (65,535 bytes for u16).
    pub fn tcp(config: &Config, framing: Framing) -> Self {
        let (max, max_from) = match framing.max_payload() {
            Some(prefix) if prefix < config.max_reply => (prefix, framing.prefix_name()),
            _ => (config.max_reply, "--max-reply"),
        };
        Self { max, max_from, amplification: 0 }
    }

    /// The largest reply to a request of `request` bytes.
    pub fn cap(&self, request: usize) -> usize {
        match self.amplification {
            0 => self.max,
            factor => self.max.min(amplification_cap(request, factor)),
        }
    }

    /// Why a reply of `len` bytes to a `request`-byte request is not sent.
    pub fn explain(&self, request: usize, len: usize) -> String {
        if len > self.max {
            format!("over the limit of {} bytes ({})", self.max, self.max_from)
        } else {
            format!(
                "over {}x the {request}-byte request, counting {UDP_IP_HEADERS} header bytes each (--max-amplification)",
                self.amplification
            )
        }
    }
}

/// The largest reply payload to a `request`-byte datagram when replies may be
/// `factor` times the request on the wire, headers included.
///
/// Counting headers is what makes the cap meaningful for small requests: an
/// attacker pays for whole packets, so a 1-byte request (29 bytes on the
/// wire) may get a 59-byte reply (87 on the wire) at factor 3, while a plain
/// 3x payload cap would refuse any useful reply to it.
pub fn amplification_cap(request: usize, factor: usize) -> usize {
    request.saturating_add(UDP_IP_HEADERS).saturating_mul(factor).saturating_sub(UDP_IP_HEADERS)
}

/// The per-request limits from the configuration.
pub fn call_limits(config: &Config) -> CallLimits {
    CallLimits { timeout: config.timeout, max_memory: config.max_memory, fuel: config.fuel }
}

/// Run `call` for at most `limit`; `None` if it ran out of time.
///
/// Most calls finish the first time they are polled (they neither yield nor
/// block), so the timer is only armed when a call has to wait: arming one
/// for every request costs a clock read, a runtime handle and a timer-wheel
/// entry, about 6% of a pipelined request. A call that yields is at most one
/// epoch tick into its budget when the timer starts.
pub async fn bounded<F: Future>(limit: Duration, call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_config as config;

    #[test]
    fn amplification_counts_headers() {
        assert_eq!(amplification_cap(0, 3), 56);
        assert_eq!(amplification_cap(1, 3), 59);
        assert_eq!(amplification_cap(100, 3), 356);
        assert_eq!(amplification_cap(100, 1), 100);
        assert_eq!(amplification_cap(usize::MAX, 3), usize::MAX - 28);
    }

    #[test]
    fn udp_replies_never_exceed_a_datagram() {
        let c = config(&["--max-reply", "10MiB", "--max-amplification", "0"]);
        assert_eq!(ReplyLimit::udp(&c).cap(100), MAX_UDP_PAYLOAD);
        assert!(ReplyLimit::udp(&c).explain(100, 70_000).contains("the largest UDP payload"));
        assert_eq!(ReplyLimit::tcp(&c, Framing::Lines).cap(100), 10 << 20);
    }

    #[test]
    fn a_length_prefix_caps_tcp_replies() {
        let c = config(&[]);
        let u16 = ReplyLimit::tcp(&c, Framing::U16);
        assert_eq!(u16.cap(1), 65_535);
        assert!(u16.explain(1, 65_536).contains("u16 length prefix"), "{}", u16.explain(1, 65_536));
        assert_eq!(ReplyLimit::tcp(&c, Framing::U32).cap(1), 1 << 20);
        let c = config(&["--max-reply", "100"]);
        assert_eq!(ReplyLimit::tcp(&c, Framing::U16).cap(1), 100);
        assert!(ReplyLimit::tcp(&c, Framing::U16).explain(1, 101).contains("--max-reply"));
    }
}
