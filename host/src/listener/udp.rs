//! UDP: one datagram is one request; the reply goes back to its sender,
//! from the address it was sent to.
//!
//! Each address is served by one socket per worker, bound with
//! `SO_REUSEPORT` so the kernel spreads peers across them, and each socket
//! by a few receive loops. A loop takes up to [`BATCH`] datagrams with one
//! `recvmmsg`, starts each request in turn, and sends the replies with one
//! `sendmmsg`: under load the two system calls are shared by a whole batch
//! instead of paid per datagram.
//!
//! Most requests finish the first time they run. One that has to wait (it
//! yielded at an epoch tick, or waits in a host call) is moved off the loop
//! to a task of its own, which sends its reply when it is ready; the loop
//! goes on receiving, so a slow request never delays the other peers of its
//! socket. A batch runs inline for at most [`BATCH_BUDGET`]: the rest of
//! a batch of CPU-heavy requests goes to tasks without being run here
//! first. At most [`MAX_WAITING`] requests wait for the whole host; past
//! that a request that has to wait is dropped and counted.
//!
//! A socket bound to a wildcard address (`0.0.0.0`, `[::]`) asks the kernel
//! for each datagram's destination address (`IP_PKTINFO`,
//! `IPV6_RECVPKTINFO`): the plugin is told the address the peer really sent
//! to, and the reply leaves from that address, as the peer expects (a reply
//! from another address of a multi-homed host is dropped by the client).
//!
//! A datagram over `--max-request` is dropped whole, never truncated and
//! passed on. With `--udp-source-rate`, a datagram from a source over its
//! rate is dropped before anything else is done with it.
//!
//! At shutdown a socket shared with other hosts ([`Origin::Shared`]) leaves
//! its `SO_REUSEPORT` group (the kernel queues nothing more to it), serves
//! the datagrams already queued until none has come for
//! [`HANDOVER_QUIET`], and only then closes: none is lost.

use std::io::{self, IoSlice, IoSliceMut};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use bytes::Bytes;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrLike as _, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Call, Outcome};
use crate::ratelimit::log_limited;
use crate::request::{Request, Transport};
use crate::stats::Stats;

use super::{ListenerContext, Origin, reuseport, sleep_or_never};

/// Datagrams taken per `recvmmsg` and sent per `sendmmsg`.
const BATCH: usize = 32;
/// Receive loops per socket: quick requests of one socket run on several
/// worker threads at once.
const LOOPS_PER_SOCKET: usize = 2;
/// Largest UDP payload (65,527 bytes over IPv6) plus one byte, so that a
/// datagram that fills the buffer is known to be oversized.
const MAX_DATAGRAM: usize = 65_536;
/// UDP requests that had to wait and were moved off their receive loops,
/// for the whole host. Each holds its request and at most one instance.
pub const MAX_WAITING: usize = 256;
/// How long a receive loop runs a batch's requests itself; the rest go to
/// tasks of their own.
const BATCH_BUDGET: Duration = Duration::from_millis(1);
/// Longest a reply that is ready waits for the rest of its batch before
/// the replies so far are sent: a batch of 32 fresh instances takes a few
/// hundred microseconds, and the first reply should not wait for the last.
/// Quick requests (reuse mode: about a microsecond each) still share one
/// `sendmmsg` per batch; with fresh instances (5-10 µs each) replies leave
/// in groups of a few.
const MAX_REPLY_DELAY: Duration = Duration::from_micros(50);
/// A socket handing its address over closes once it has been empty for
/// this long after leaving its group (a datagram the kernel was queueing
/// as it left arrives within microseconds).
const HANDOVER_QUIET: Duration = Duration::from_millis(50);

/// The sockets bound to one UDP address, one per worker.
pub(crate) struct UdpSockets {
    pub sockets: Vec<UdpSocket>,
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    /// Whether the address is a wildcard, so that every datagram carries
    /// its destination address (`IP_PKTINFO`).
    pub pktinfo: bool,
    /// Whether they hand the address over at shutdown.
    pub origin: Origin,
    /// Not bound yet: they join their reuseport group when serving starts.
    pub bind_at_serve: bool,
}

/// One socket and what its receive loops share.
struct Socket {
    socket: UdpSocket,
    addr: SocketAddr,
    pktinfo: bool,
    origin: Origin,
    /// Left its reuseport group (once, whichever loop gets there first).
    left_group: std::sync::Once,
    ctx: Arc<ListenerContext>,
}

/// A reply on its way out.
struct Datagram {
    peer: SocketAddr,
    /// Where to send from (wildcard sockets only).
    source: Option<Source>,
    bytes: Vec<u8>,
}

/// The address a reply leaves from, and for IPv6 the interface (a
/// link-local address is only meaningful with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    ip: IpAddr,
    ifindex: u32,
}

/// Where a datagram was sent to, from its `IP_PKTINFO` / `IPV6_PKTINFO`.
#[derive(Debug, Clone, Copy)]
struct Destination {
    /// The address the peer sent to (told to the plugin).
    to: IpAddr,
    /// The address to reply from: `None` lets the kernel choose (a reply
    /// to a datagram sent to an IPv6 multicast group).
    reply_from: Option<Source>,
}

/// Serve `bound` until `shutdown` is cancelled.
pub(crate) async fn serve(bound: UdpSockets, ctx: Arc<ListenerContext>, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    // Which socket each loop serves, to replace a loop that panicked.
    let mut serving = std::collections::HashMap::new();
    for socket in bound.sockets {
        let socket = Arc::new(Socket {
            socket,
            addr: bound.addr,
            pktinfo: bound.pktinfo,
            origin: bound.origin,
            left_group: std::sync::Once::new(),
            ctx: ctx.clone(),
        });
        for _ in 0..LOOPS_PER_SOCKET {
            let id = tasks.spawn(receive_loop(socket.clone(), shutdown.clone()).in_current_span()).id();
            serving.insert(id, socket.clone());
        }
    }
    // A loop only ends on shutdown. If one panics (a bug, caught by tokio),
    // its socket must not lose a receiver: log it and start another.
    while let Some(ended) = tasks.join_next_with_id().await {
        let Err(e) = ended else { continue };
        let Some(socket) = serving.remove(&e.id()) else { continue };
        if e.is_panic() && !shutdown.is_cancelled() {
            tracing::error!("a UDP receive loop panicked; starting a new one: {e}");
            let id = tasks.spawn(receive_loop(socket.clone(), shutdown.clone()).in_current_span()).id();
            serving.insert(id, socket);
        }
    }
}

/// One received datagram's place in a batch.
struct Slot {
    buf: Vec<u8>,
    len: usize,
    /// Longer than the buffer: the kernel cut it (`MSG_TRUNC`).
    truncated: bool,
    peer: Option<SocketAddr>,
    /// Where it was sent to (wildcard sockets only).
    destination: Option<Destination>,
}

/// Serve `socket` until `shutdown`, then, if it is shared, hand it over.
async fn receive_loop(socket: Arc<Socket>, shutdown: CancellationToken) {
    let mut batch = Batch::new(&socket.ctx);
    batch.serve(&socket, &shutdown, None).await;
    if socket.origin != Origin::Shared || socket.ctx.handover_end.is_cancelled() {
        return;
    }
    socket.leave_group();
    batch.serve(&socket, &socket.ctx.handover_end, Some(HANDOVER_QUIET)).await;
}

/// A receive loop's buffers: the datagrams of one batch and their replies.
struct Batch {
    slots: Vec<Slot>,
    replies: Vec<Datagram>,
}

impl Batch {
    fn new(ctx: &ListenerContext) -> Batch {
        // One more byte than accepted: a datagram that fills it was too long.
        let size = ctx.max_request.saturating_add(1).min(MAX_DATAGRAM);
        let slots = (0..BATCH)
            .map(|_| Slot { buf: vec![0; size], len: 0, truncated: false, peer: None, destination: None })
            .collect();
        Batch { slots, replies: Vec::with_capacity(BATCH) }
    }

    /// Receive and serve until `stop`, or, with `quiet`, until nothing has
    /// come for that long.
    async fn serve(&mut self, socket: &Arc<Socket>, stop: &CancellationToken, quiet: Option<Duration>) {
        let ctx = &socket.ctx;
        let Batch { slots, replies } = self;
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = sleep_or_never(quiet) => return,
                r = socket.socket.async_io(Interest::READABLE, || recv_batch(socket, slots)) => r,
            };
            let n = match received {
                Ok(n) => n,
                Err(e) => {
                    // E.g. ICMP port unreachable reported for an earlier send.
                    tracing::debug!(local = %socket.addr, "udp receive error: {e}");
                    continue;
                }
            };
            // Requests of one batch run one after another in one sequence (in
            // reuse mode, on one instance): the fastest way through a batch of
            // quick requests.
            let mut sequence = ctx.dispatcher.sequence();
            let started = Instant::now();
            // When the oldest reply not yet sent was ready, and how long the
            // last request run here took (the next one likely takes as long).
            let (mut unsent_since, mut last_call) = (None, Duration::ZERO);
            for slot in &slots[..n] {
                let Some((req, source)) = socket.request(slot) else { continue };
                let peer = req.peer;
                let now = Instant::now();
                // The replies of a batch go out together, but none waits
                // past MAX_REPLY_DELAY for the requests after it: send what
                // is ready if the next request would take it past that.
                // Checked before the next request takes the instance.
                if unsent_since.is_some_and(|t| now.duration_since(t) + last_call >= MAX_REPLY_DELAY) {
                    socket.send_all(replies).await;
                    replies.clear();
                    unsent_since = None;
                }
                let mut call = sequence.start(req, ctx.udp_reply);
                let begun = Instant::now();
                if begun.duration_since(started) > BATCH_BUDGET {
                    socket.finish_elsewhere(call, peer, source);
                    continue;
                }
                match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
                    Poll::Ready((outcome, lease)) => {
                        sequence.keep(lease);
                        let done = Instant::now();
                        last_call = done.duration_since(begun);
                        if let Outcome::Reply(bytes) = outcome {
                            replies.push(Datagram { peer, source, bytes });
                            unsent_since.get_or_insert(done);
                        }
                    }
                    Poll::Pending => socket.finish_elsewhere(call, peer, source),
                }
            }
            drop(sequence);
            socket.send_all(replies).await;
            replies.clear();
        }
    }
}

impl Socket {
    /// Leave the reuseport group: the datagrams of every peer go to the
    /// other hosts' sockets from now on.
    fn leave_group(&self) {
        self.left_group.call_once(|| {
            if let Err(e) = reuseport::leave_udp_group(socket2::SockRef::from(&self.socket), self.addr) {
                tracing::warn!(
                    "udp {}: cannot hand it over to the other hosts sharing it ({e}); \
                     datagrams queued to it after it closes are lost",
                    self.addr
                );
            }
        });
    }

    /// The request in `slot`, and the address to reply from; `None` (and
    /// counted) if the datagram is not served.
    fn request(&self, slot: &Slot) -> Option<(Request, Option<Source>)> {
        let peer = slot.peer?;
        if let Some(limit) = &self.ctx.udp_source_rate
            && !limit.allow(peer.ip())
        {
            Stats::incr(&self.ctx.dispatcher.stats().udp_rate_limited);
            if limit.log_drop(peer.ip()) {
                let rate = limit.rate();
                log_limited!(warn, %peer, local = %self.addr, "datagrams dropped: source over --udp-source-rate {rate}/s");
            }
            return None;
        }
        let max = self.ctx.max_request;
        if slot.truncated || slot.len > max {
            Stats::incr(&self.ctx.dispatcher.stats().requests_dropped);
            log_limited!(warn, %peer, local = %self.addr, "datagram dropped: larger than {max} bytes (--max-request)");
            return None;
        }
        let (local, source) = match slot.destination {
            Some(d) => (SocketAddr::new(d.to, self.addr.port()), d.reply_from),
            None => (self.addr, None),
        };
        let payload = Bytes::copy_from_slice(&slot.buf[..slot.len]);
        Some((Request { transport: Transport::Udp, peer, local, payload, names: None }, source))
    }

    /// Finish a request that has to wait on a task of its own, which sends
    /// its reply; drop it if too many already wait.
    fn finish_elsewhere(self: &Arc<Self>, call: Call, peer: SocketAddr, source: Option<Source>) {
        let Ok(permit) = self.ctx.udp_waiting.clone().try_acquire_owned() else {
            Stats::incr(&self.ctx.dispatcher.stats().requests_dropped);
            log_limited!(warn, %peer, local = %self.addr, "request dropped: too many slow UDP requests already wait");
            return;
        };
        let socket = self.clone();
        // On the tracker, so that a shutdown drains it like the others.
        self.ctx.tracker.spawn(
            async move {
                let (outcome, lease) = call.await;
                drop(lease);
                drop(permit);
                if let Outcome::Reply(bytes) = outcome {
                    socket.send_all(&[Datagram { peer, source, bytes }]).await;
                }
            }
            .in_current_span(),
        );
    }

    /// Send `replies` with as few `sendmmsg` calls as the socket allows.
    async fn send_all(&self, replies: &[Datagram]) {
        let stats = self.ctx.dispatcher.stats();
        let mut rest = replies;
        while let Some(first) = rest.first() {
            // The longest run of replies from one source address.
            let run = rest.iter().take(BATCH).take_while(|d| d.source == first.source).count();
            match self.socket.async_io(Interest::WRITABLE, || send_batch(&self.socket, &rest[..run])).await {
                Ok(sent) => {
                    stats.replies.add(sent as u64);
                    rest = &rest[sent.clamp(1, rest.len())..];
                }
                Err(e) => {
                    // The first datagram failed (e.g. its peer's port is
                    // unreachable); count it, skip it and send the rest.
                    Stats::incr(&stats.udp_send_errors);
                    log_limited!(debug, peer = %first.peer, local = %self.addr, "udp send failed: {e}");
                    rest = &rest[1..];
                }
            }
        }
    }
}

/// Receive up to [`BATCH`] datagrams without blocking. Sets each slot's
/// length, peer and destination; `Ok(n)` means the first `n` slots are filled.
fn recv_batch(socket: &Socket, slots: &mut [Slot]) -> io::Result<usize> {
    type Received = (usize, bool, Option<SockaddrStorage>, Option<Destination>);
    let results: Vec<Received> = {
        let cmsg = socket.pktinfo.then(|| nix::cmsg_space!(nix::libc::in6_pktinfo));
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slots.len(), cmsg);
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = slots.iter_mut().map(|s| [IoSliceMut::new(&mut s.buf)]).collect();
        recvmmsg(socket.socket.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?
            .map(|m| {
                let destination = m.cmsgs().ok().and_then(|mut c| c.find_map(|c| destination(&c)));
                (m.bytes, m.flags.contains(MsgFlags::MSG_TRUNC), m.address, destination)
            })
            .collect()
    };
    for (slot, (bytes, truncated, address, destination)) in slots.iter_mut().zip(&results) {
        slot.len = *bytes;
        slot.truncated = *truncated;
        slot.peer = address.as_ref().and_then(to_std);
        slot.destination = *destination;
    }
    Ok(results.len())
}

/// Where a datagram was sent to, from its `IP_PKTINFO` / `IPV6_PKTINFO`
/// control message.
fn destination(cmsg: &ControlMessageOwned) -> Option<Destination> {
    match cmsg {
        ControlMessageOwned::Ipv4PacketInfo(info) => {
            let to = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
            // The local address the kernel would route a reply from: the
            // same as `to` for unicast, a real address for a broadcast.
            let from = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
            Some(Destination { to: to.into(), reply_from: Some(Source { ip: from.into(), ifindex: 0 }) })
        }
        ControlMessageOwned::Ipv6PacketInfo(info) => {
            let to = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            let reply_from = (!to.is_multicast()).then_some(Source { ip: to.into(), ifindex: info.ipi6_ifindex });
            Some(Destination { to: to.into(), reply_from })
        }
        _ => None,
    }
}

/// Send `replies`, which share one source address, with one `sendmmsg`.
fn send_batch(socket: &UdpSocket, replies: &[Datagram]) -> io::Result<usize> {
    let iovs: Vec<[IoSlice<'_>; 1]> = replies.iter().map(|d| [IoSlice::new(&d.bytes)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = replies.iter().map(|d| Some(SockaddrStorage::from(d.peer))).collect();
    // The control message, if any, borrows its pktinfo from here.
    let (v4, v6);
    let (control, space): (Option<ControlMessage<'_>>, _) = match replies.first().and_then(|d| d.source) {
        None => (None, None),
        Some(Source { ip: IpAddr::V4(ip), .. }) => {
            v4 = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from(ip).to_be() },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            (Some(ControlMessage::Ipv4PacketInfo(&v4)), Some(nix::cmsg_space!(nix::libc::in_pktinfo)))
        }
        Some(Source { ip: IpAddr::V6(ip), ifindex }) => {
            let addr = nix::libc::in6_addr { s6_addr: ip.octets() };
            v6 = nix::libc::in6_pktinfo { ipi6_addr: addr, ipi6_ifindex: ifindex };
            (Some(ControlMessage::Ipv6PacketInfo(&v6)), Some(nix::cmsg_space!(nix::libc::in6_pktinfo)))
        }
    };
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), space);
    let control = control.as_slice();
    let sent = sendmmsg(socket.as_raw_fd(), &mut headers, &iovs, addrs, control, MsgFlags::MSG_DONTWAIT)?.count();
    Ok(sent)
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    let v6 = addr.as_sockaddr_in6()?;
    // `family()` is checked by `as_sockaddr_in6`; keep the scope id.
    debug_assert!(v6.family().is_some());
    Some(SocketAddr::V6(SocketAddrV6::from(*v6)))
}
