//! The reload prober: a UDP request about every millisecond, each reply
//! recognised as the old or the new version's answer to one request.
//!
//! Each request carries its sequence number in the one key of a small JSON
//! object, `{"seq00000042":"bench reload"}`, which every plugin swapped
//! between answers differently but recognisably (echo, upper case, reversed,
//! a JSON summary that lists the key). Both versions' answers to every
//! request are known in advance, so a reply is matched to its request and
//! version with one lookup, and anything else is wrong. A reload is then
//! seen as the first reply by the new version; and "no request lost or
//! wrong" means every request got exactly one reply, by either version.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until, timeout_at};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::compare::loopback;
use crate::plugins::Answer;

/// How often a request is sent (tokio's timer rounds to whole milliseconds):
/// the resolution of the measurement.
const INTERVAL: Duration = Duration::from_millis(1);
/// Requests left unanswered at once before sending pauses. A slow version
/// (the Python plugin takes 1-2 ms a request) must not build a queue in
/// the host, or the time to the new version's first reply would include
/// draining it.
const MAX_IN_FLIGHT: usize = 4;
/// A request unanswered for this long no longer holds back sending; if no
/// reply ever comes it is counted as lost at the end.
const LOSS_TIMEOUT: Duration = Duration::from_millis(500);
/// Large enough for any datagram.
const MAX_DATAGRAM: usize = 65_536;

/// Which plugin version answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Old,
    New,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::Old => "old",
            Version::New => "new",
        })
    }
}

/// One recognised reply.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub version: Version,
    /// When its request was sent.
    pub sent: Instant,
    /// When the reply was received.
    pub received: Instant,
}

/// Every request of a prober's life, and what came back.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub sent: u64,
    /// Requests answered by each version.
    pub old: u64,
    pub new: u64,
    /// Requests never answered.
    pub lost: u64,
    /// Replies that are neither version's answer to any request.
    pub wrong: u64,
    /// Second replies to a request already answered.
    pub duplicates: u64,
    /// Send and receive errors.
    pub errors: u64,
    /// Ticks with no request sent, because [`MAX_IN_FLIGHT`] were unanswered.
    pub held: u64,
    /// How often the answering version changes, taking the requests in the
    /// order they were sent: once per swap if every swap is atomic as seen
    /// from the client, more if an old reply follows a new one.
    pub version_changes: u64,
    pub first_error: Option<String>,
}

impl Tally {
    /// Every request got exactly one reply, by either version.
    pub fn clean(&self) -> bool {
        self.lost + self.wrong + self.duplicates + self.errors == 0
    }

    fn error(&mut self, why: impl FnOnce() -> String) {
        self.first_error.get_or_insert_with(why);
    }
}

/// A running prober; dropping it stops the requests.
pub struct Prober {
    replies: mpsc::UnboundedReceiver<Reply>,
    stop: CancellationToken,
    task: JoinHandle<Tally>,
    _stop_on_drop: DropGuard,
}

impl Prober {
    /// Start probing `server`, whose old and new versions answer `old` and `new`.
    pub async fn start(server: SocketAddr, old: Answer, new: Answer) -> anyhow::Result<Self> {
        // Fail now, not with every reply "wrong", if the answers cannot be told apart.
        let sample = payload(0);
        match (old.reply(&sample), new.reply(&sample)) {
            (Some(a), Some(b)) => ensure!(a != b, "{old:?} and {new:?} answer alike: a swap could not be seen"),
            _ => bail!("the answers of {old:?} or {new:?} to {:?} are not known", sample.escape_ascii().to_string()),
        }
        let socket = UdpSocket::bind(loopback(0)).await.context("cannot open the probe socket")?;
        socket.connect(server).await.with_context(|| format!("cannot connect the probe socket to {server}"))?;
        let (tx, replies) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(probe(socket, [old, new], tx, stop.clone()));
        Ok(Self { replies, _stop_on_drop: stop.clone().drop_guard(), stop, task })
    }

    /// The first reply by `version` to a request sent at or after `since`,
    /// waiting at most until `deadline`. Replies before it are passed over.
    pub async fn wait_for(&mut self, version: Version, since: Instant, deadline: Instant) -> anyhow::Result<Reply> {
        loop {
            match timeout_at(deadline, self.replies.recv()).await {
                Ok(Some(r)) if r.version == version && r.sent >= since => return Ok(r),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the prober stopped"),
                Err(_) => bail!("no reply by the {version} version within {:?}", deadline - since),
            }
        }
    }

    /// Stop sending, give the last replies [`LOSS_TIMEOUT`] to come in, and
    /// count.
    pub async fn finish(self) -> Tally {
        self.stop.cancel();
        self.task.await.unwrap_or_else(|e| Tally {
            errors: 1,
            first_error: Some(format!("the prober failed: {e}")),
            ..Tally::default()
        })
    }
}

/// Request `seq`: its number is the JSON object's one key, so that each
/// plugin's answer (even json-summary's, which lists the keys) names it.
fn payload(seq: u64) -> Vec<u8> {
    format!(r#"{{"seq{seq:08}":"bench reload"}}"#).into_bytes()
}

/// What the prober knows of the requests it sent.
struct Requests {
    answers: [Answer; 2],
    /// Both versions' answer to every request sent, to its number and version.
    expected: HashMap<Vec<u8>, (usize, Version)>,
    sent: Vec<Instant>,
    answered: Vec<Option<Version>>,
    /// Requests sent recently and not answered yet, oldest first.
    in_flight: VecDeque<usize>,
    tally: Tally,
}

impl Requests {
    fn new(answers: [Answer; 2]) -> Self {
        let (expected, sent, answered, in_flight) = Default::default();
        Self { answers, expected, sent, answered, in_flight, tally: Tally::default() }
    }

    /// The next request, or `None` while too many are unanswered.
    fn next(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (sent, answered) = (&self.sent, &self.answered);
        self.in_flight.retain(|&s| answered[s].is_none() && now.saturating_duration_since(sent[s]) < LOSS_TIMEOUT);
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.tally.held += 1;
            return None;
        }
        let seq = self.sent.len();
        let payload = payload(seq as u64);
        for (answer, version) in self.answers.into_iter().zip([Version::Old, Version::New]) {
            // `start` checked that both answers are known and differ.
            if let Some(reply) = answer.reply(&payload) {
                self.expected.insert(reply, (seq, version));
            }
        }
        self.sent.push(now);
        self.answered.push(None);
        self.in_flight.push_back(seq);
        self.tally.sent += 1;
        Some(payload)
    }

    /// Match a reply to its request; `Some` the first time a request is answered.
    fn reply(&mut self, bytes: &[u8], received: Instant) -> Option<Reply> {
        let Some(&(seq, version)) = self.expected.get(bytes) else {
            self.tally.wrong += 1;
            self.tally.error(|| format!("a reply that answers no request: {:?}", shorten(bytes)));
            return None;
        };
        if let Some(first) = self.answered[seq] {
            self.tally.duplicates += 1;
            self.tally.error(|| format!("request {seq} answered twice, by the {first} then the {version} version"));
            return None;
        }
        self.answered[seq] = Some(version);
        match version {
            Version::Old => self.tally.old += 1,
            Version::New => self.tally.new += 1,
        }
        Some(Reply { version, sent: self.sent[seq], received })
    }

    fn io_error(&mut self, what: &str, e: std::io::Error) {
        self.tally.errors += 1;
        self.tally.error(|| format!("{what}: {e}"));
    }

    fn into_tally(mut self) -> Tally {
        let answered: Vec<Version> = self.answered.iter().flatten().copied().collect();
        self.tally.lost = (self.answered.len() - answered.len()) as u64;
        self.tally.version_changes = answered.windows(2).filter(|w| w[0] != w[1]).count() as u64;
        self.tally
    }
}

/// The prober's task: send on every tick and match every reply until
/// `stop`, then only listen for [`LOSS_TIMEOUT`] more.
async fn probe(
    socket: UdpSocket,
    answers: [Answer; 2],
    replies: mpsc::UnboundedSender<Reply>,
    stop: CancellationToken,
) -> Tally {
    let mut requests = Requests::new(answers);
    let mut tick = interval(INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_call = None;
    loop {
        tokio::select! {
            // Replies first: their receive time is the measurement.
            biased;
            r = socket.recv(&mut buf) => match r {
                Ok(n) => {
                    if let Some(reply) = requests.reply(&buf[..n], Instant::now()) {
                        // Nobody listening any more is fine: the case is over.
                        let _ = replies.send(reply);
                    }
                }
                // If the host is gone, the kernel answers each request with
                // "port unreachable", which a later receive reports.
                Err(e) => requests.io_error("receive", e),
            },
            _ = stop.cancelled(), if last_call.is_none() => last_call = Some(Instant::now() + LOSS_TIMEOUT),
            _ = tick.tick(), if last_call.is_none() => {
                if let Some(payload) = requests.next(Instant::now())
                    && let Err(e) = socket.send(&payload).await
                {
                    requests.io_error("send", e);
                }
            }
            _ = sleep_until(last_call.unwrap_or_else(Instant::now)), if last_call.is_some() => break,
        }
    }
    requests.into_tally()
}

/// A reply short enough to quote in a report.
fn shorten(bytes: &[u8]) -> String {
    let text = bytes.escape_ascii().to_string();
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_to_their_request_and_version_once() {
        let mut r = Requests::new([Answer::Echo, Answer::Reverse]);
        let t0 = Instant::now();
        let first = r.next(t0).unwrap();
        let second = r.next(t0).unwrap();
        assert_eq!(r.reply(&first, t0).map(|x| x.version), Some(Version::Old));
        let reversed: Vec<u8> = second.iter().rev().copied().collect();
        assert_eq!(r.reply(&reversed, t0).map(|x| x.version), Some(Version::New));
        assert!(r.reply(&second, t0).is_none(), "a second answer to request 1");
        assert!(r.reply(b"nonsense", t0).is_none());
        let third = r.next(t0).unwrap();
        assert_eq!(r.reply(&third, t0).map(|x| x.version), Some(Version::Old));
        r.next(t0).unwrap();
        let tally = r.into_tally();
        assert_eq!((tally.sent, tally.old, tally.new), (4, 2, 1));
        assert_eq!((tally.lost, tally.wrong, tally.duplicates), (1, 1, 1));
        // old, new, old in the order sent.
        assert_eq!(tally.version_changes, 2);
        assert!(!tally.clean());
    }

    #[test]
    fn sending_holds_back_while_too_many_are_unanswered() {
        let mut r = Requests::new([Answer::Echo, Answer::Upper]);
        let t0 = Instant::now();
        let sent: Vec<Vec<u8>> = (0..MAX_IN_FLIGHT).map(|_| r.next(t0).unwrap()).collect();
        assert!(r.next(t0).is_none());
        r.reply(&sent[0], t0);
        assert!(r.next(t0).is_some());
        // Long unanswered requests stop counting.
        assert!(r.next(t0 + LOSS_TIMEOUT).is_some());
        assert_eq!(r.into_tally().held, 1);
    }

    #[test]
    fn every_swap_is_visible_in_the_payload_answers() {
        for new in [Answer::Upper, Answer::Reverse, Answer::JsonSummary] {
            let p = payload(12_345_678);
            assert_ne!(Answer::Echo.reply(&p), new.reply(&p));
            assert!(new.reply(&p).is_some());
        }
    }
}
