//! UDP load: each socket keeps its requests in `inflight` numbered slots.
//!
//! Slot `i` of `K` sends sequence numbers `i`, `i + K`, `i + 2K`, ..., so a
//! reply's sequence number alone names its slot (`seq % K`) and tells whether
//! it answers the slot's current request or one already given up on. A slot
//! with no reply within [`LOSS_TIMEOUT`] counts as lost and takes a new
//! request, so a dropped datagram costs throughput but never stalls the load.
//!
//! A fixed request has no sequence number: each correct reply frees the
//! slot that has waited longest. When the load stops, a socket sending a
//! fixed request waits (up to the loss timeout) for the replies to its
//! outstanding requests, unmeasured, so that [`Tally::answered`] counts
//! every reply the server sent that arrived.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Job, LOSS_TIMEOUT};
use crate::stats::Tally;

/// Requested receive buffer per socket: room for 64 in-flight replies of
/// 60 KiB, the largest load `compare` runs. The kernel may grant less
/// (`net.core.rmem_max`); replies that do not fit are counted as lost.
const RECV_BUFFER: usize = 4 << 20;
/// Large enough for any datagram.
const MAX_DATAGRAM: usize = 65_536;

/// `n` sockets on the loopback address of `addr`'s family, each connected
/// to `addr` so that it receives only the server's datagrams.
pub async fn bind_all(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let socket = bind(addr).with_context(|| format!("cannot open UDP socket {} of {n}", i + 1))?;
        socket.connect(addr).await.with_context(|| format!("cannot connect a UDP socket to {addr}"))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::LOCALHOST, 0).into(),
    };
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort, as in the host: a smaller buffer is not an error.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    UdpSocket::from_std(socket.into())
}

/// One slot's request.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Free,
    /// Sent `seq` at `sent`; its latency is timed from `timed_from`.
    Waiting {
        seq: u64,
        timed_from: Instant,
        sent: Instant,
    },
    /// The send failed at `sent`; the slot rests for one loss timeout so
    /// that a refused port does not turn the loop into a busy spin.
    Failed {
        sent: Instant,
    },
}

/// Keep `job.inflight` datagrams outstanding on `socket` until the load stops.
pub async fn drive(socket: UdpSocket, mut job: Job) -> Tally {
    let k = job.inflight;
    let mut slots = vec![Slot::Free; k];
    let mut next_seq: Vec<u64> = (0..k as u64).collect();
    let mut tally = Tally::new();
    let mut payload = Vec::with_capacity(job.payloads.size());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(LOSS_TIMEOUT / 10);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stopped = job.clock.stop.clone().cancelled_owned();
    tokio::pin!(stopped);
    let mut warm = false;
    loop {
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if !matches!(slot, Slot::Free) {
                continue;
            }
            let Some(timed_from) = job.schedule.take_due(now) else {
                break;
            };
            let seq = next_seq[i];
            next_seq[i] += k as u64;
            job.payloads.write(seq, &mut payload);
            *slot = match socket.send(&payload).await {
                Ok(_) => Slot::Waiting { seq, timed_from, sent: now },
                Err(e) => {
                    tally.error(format_args!("udp send: {e}"));
                    Slot::Failed { sent: now }
                }
            };
        }
        let has_free = slots.iter().any(|s| matches!(s, Slot::Free));
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            // Before receiving: a steady stream of replies must not starve it.
            _ = sweep.tick() => expire(&mut slots, &mut tally),
            r = socket.recv(&mut buf) => match r {
                Ok(n) => {
                    let correct = if job.payloads.fixed_check().is_some() {
                        on_fixed_reply(&buf[..n], &job, &mut slots, &mut tally, true)
                    } else {
                        on_reply(&buf[..n], &job, &mut slots, &next_seq, &mut tally)
                    };
                    if correct && !std::mem::replace(&mut warm, true) {
                        job.clock.warmed();
                    }
                }
                // E.g. ICMP port unreachable, reported on a connected socket.
                Err(e) => tally.error(format_args!("udp receive: {e}")),
            },
            _ = job.schedule.next_due(), if has_free => {}
        }
    }
    if job.payloads.fixed_check().is_some() {
        drain(&socket, &job, &mut slots, &mut buf, &mut tally).await;
    }
    tally
}

/// After the load has stopped, receive the replies to the fixed requests
/// still outstanding, for at most the loss timeout, without timing them;
/// count what is still unanswered after that as lost.
async fn drain(socket: &UdpSocket, job: &Job, slots: &mut [Slot], buf: &mut [u8], tally: &mut Tally) {
    let deadline = Instant::now() + LOSS_TIMEOUT;
    while slots.iter().any(|s| matches!(s, Slot::Waiting { .. })) {
        match tokio::time::timeout_at(deadline, socket.recv(buf)).await {
            Ok(Ok(n)) => {
                on_fixed_reply(&buf[..n], job, slots, tally, false);
            }
            Ok(Err(e)) => tally.error(format_args!("udp receive: {e}")),
            Err(_) => break,
        }
    }
    tally.lost += slots.iter().filter(|s| matches!(s, Slot::Waiting { .. })).count() as u64;
}

/// Check and count one reply to a fixed request, taking it as the reply to
/// the request that has waited longest; true if it is correct and some
/// request was waiting. Its latency is recorded if `measure` and the
/// measurement has started.
fn on_fixed_reply(reply: &[u8], job: &Job, slots: &mut [Slot], tally: &mut Tally, measure: bool) -> bool {
    let now = Instant::now();
    let correct = job.payloads.accepts_fixed(reply);
    if correct {
        tally.answered += 1;
    }
    let oldest = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Waiting { sent, timed_from, .. } => Some((i, *sent, *timed_from)),
            _ => None,
        })
        .min_by_key(|&(_, sent, _)| sent);
    // Nothing outstanding: the reply to a request already counted lost.
    let Some((i, _, timed_from)) = oldest else {
        tally.late += 1;
        return false;
    };
    slots[i] = Slot::Free;
    if !correct {
        let check = job.payloads.fixed_check().map_or("", |c| c.describe());
        let shown: String = String::from_utf8_lossy(reply).chars().take(80).collect();
        tally.error(format_args!("udp reply {shown:?} is not {check}"));
        return false;
    }
    if measure && job.clock.measures(now) {
        tally.record(now - timed_from);
    }
    true
}

/// Check and count one reply; true if it is the correct reply to a request
/// still waiting.
fn on_reply(reply: &[u8], job: &Job, slots: &mut [Slot], next_seq: &[u64], tally: &mut Tally) -> bool {
    let now = Instant::now();
    let Some(seq) = super::Payloads::seq_of(reply) else {
        tally.error(format_args!("udp reply of {} bytes has no sequence number", reply.len()));
        return false;
    };
    let i = (seq % slots.len() as u64) as usize;
    match slots[i] {
        Slot::Waiting { seq: expected, timed_from, .. } if expected == seq => {
            slots[i] = Slot::Free;
            if !job.payloads.is_reply_to(seq, reply) {
                tally.error(format_args!("udp reply to request {seq} differs from the request"));
                return false;
            }
            if job.clock.measures(now) {
                tally.record(now - timed_from);
            }
            true
        }
        // A request sent earlier from this slot and already counted lost.
        _ if seq < next_seq[i] => {
            tally.late += 1;
            false
        }
        _ => {
            tally.error(format_args!("udp reply to request {seq}, which was never sent"));
            false
        }
    }
}

/// Free the slots whose request has waited longer than the loss timeout.
fn expire(slots: &mut [Slot], tally: &mut Tally) {
    let now = Instant::now();
    for slot in slots {
        match *slot {
            Slot::Waiting { sent, .. } if now - sent >= LOSS_TIMEOUT => {
                tally.lost += 1;
                *slot = Slot::Free;
            }
            Slot::Failed { sent } if now - sent >= LOSS_TIMEOUT => *slot = Slot::Free,
            _ => {}
        }
    }
}
