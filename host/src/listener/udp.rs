//! UDP: one datagram is one request; the reply goes back to its sender.
//!
//! Each address is served by one socket per worker, bound with
//! `SO_REUSEPORT` so the kernel spreads peers across them, and each socket
//! by a few receive loops. A loop takes up to [`BATCH`] datagrams with one
//! `recvmmsg`, runs them through the plugin (see [`serve_batch`]), and sends
//! the replies with one `sendmmsg`: under load the two system calls are
//! shared by a whole batch instead of paid per datagram.
//!
//! A datagram over `--max-request` is dropped whole, never truncated and
//! passed on.

use std::fmt::Write as _;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use std::task::Poll;

use futures_util::FutureExt as _;
use futures_util::future::Either;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrLike as _, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Outcome, Request};
use crate::plugin::Transport;
use crate::ratelimit::log_limited;
use crate::stats::Stats;

use super::Shared;

/// Datagrams taken per `recvmmsg` and sent per `sendmmsg`.
const BATCH: usize = 32;
/// Receive loops per socket: a slow request holds up only its own loop's
/// batch while the others keep receiving.
const LOOPS_PER_SOCKET: usize = 2;
/// Largest UDP payload (65,527 bytes over IPv6) plus one byte, so that a
/// datagram that fills the buffer is known to be oversized.
const MAX_DATAGRAM: usize = 65_536;

/// Serve `sockets` (one address) until `shutdown` is cancelled.
pub(crate) async fn serve(sockets: Vec<UdpSocket>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    // Which socket each loop serves, to replace a loop that panicked.
    let mut serving = std::collections::HashMap::new();
    for socket in sockets {
        let socket = Arc::new(socket);
        for _ in 0..LOOPS_PER_SOCKET {
            let id = tasks.spawn(receive_loop(socket.clone(), shared.clone(), shutdown.clone())).id();
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
            let id = tasks.spawn(receive_loop(socket.clone(), shared.clone(), shutdown.clone())).id();
            serving.insert(id, socket);
        }
    }
}

/// One received datagram's slot in a batch.
struct Slot {
    buf: Vec<u8>,
    len: usize,
    peer: Option<SocketAddr>,
    /// `peer` formatted for the plugin, reusing its allocation.
    peer_text: String,
}

async fn receive_loop(socket: Arc<UdpSocket>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let local = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let max = shared.max_request;
    // One more byte than accepted: a datagram that fills it was too long.
    let size = max.saturating_add(1).min(MAX_DATAGRAM);
    let mut slots: Vec<Slot> =
        (0..BATCH).map(|_| Slot { buf: vec![0; size], len: 0, peer: None, peer_text: String::new() }).collect();
    let stats = shared.dispatcher.stats();
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = socket.async_io(Interest::READABLE, || recv_batch(&socket, &mut slots)) => r,
        };
        let n = match received {
            Ok(n) => n,
            Err(e) => {
                // E.g. ICMP port unreachable reported for an earlier send.
                tracing::debug!(local, "udp receive error: {e}");
                continue;
            }
        };
        // Check and address every datagram of the batch first.
        let mut valid = 0;
        for slot in &mut slots[..n] {
            let Some(peer) = slot.peer else { continue };
            if slot.len > max {
                slot.peer = None;
                Stats::incr(&stats.requests_dropped);
                log_limited!(warn, %peer, local, "datagram dropped: larger than {max} bytes (--max-request)");
                continue;
            }
            slot.peer_text.clear();
            let _ = write!(slot.peer_text, "{peer}");
            valid += 1;
        }
        let requests = slots[..n].iter().filter_map(|slot| {
            let peer = slot.peer?;
            let req = Request {
                transport: Transport::Udp,
                peer: &slot.peer_text,
                local: &local,
                payload: &slot.buf[..slot.len],
            };
            Some((peer, req))
        });
        serve_batch(&shared, requests, valid, &socket, &local).await;
    }
}

/// Serve one batch and send its replies.
///
/// Requests run one after another in one session (in reuse mode, on one
/// instance), which is the fastest way through a batch of quick requests.
/// The first request that does not finish at once (it yielded at an epoch
/// tick, or waits in a host call) is finished concurrently with the rest of
/// the batch, so one slow or hostile request delays the others by nothing
/// more than its own first slice; their replies go out as they are ready.
/// The batch is done (and on a shutdown, drained) before the loop receives
/// again.
async fn serve_batch<'a>(
    shared: &Shared,
    mut requests: impl Iterator<Item = (SocketAddr, Request<'a>)>,
    count: usize,
    socket: &UdpSocket,
    local: &str,
) {
    let stats = shared.dispatcher.stats();
    let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(count);
    let mut session = shared.dispatcher.session();
    while let Some((peer, req)) = requests.next() {
        let mut call = std::pin::pin!(session.dispatch(req));
        let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(outcome) = polled {
            collect((peer, outcome), &mut replies);
            continue;
        }
        // A slow request: send what is ready, then run it alongside the rest.
        send_all(socket, &replies, local, stats).await;
        replies.clear();
        let mut calls = FuturesUnordered::new();
        calls.push(Either::Left(async move { (peer, call.await) }));
        for (peer, req) in requests.by_ref() {
            let dispatcher = &shared.dispatcher;
            calls.push(Either::Right(async move { (peer, dispatcher.dispatch(req).await) }));
        }
        while let Some(first) = calls.next().await {
            collect(first, &mut replies);
            while let Some(Some(ready)) = calls.next().now_or_never() {
                collect(ready, &mut replies);
            }
            send_all(socket, &replies, local, stats).await;
            replies.clear();
        }
        return;
    }
    drop(session);
    send_all(socket, &replies, local, stats).await;
}

fn collect((peer, outcome): (SocketAddr, Outcome), replies: &mut Vec<(SocketAddr, Vec<u8>)>) {
    if let Outcome::Reply(reply) = outcome {
        replies.push((peer, reply));
    }
}

/// Receive up to [`BATCH`] datagrams without blocking. Sets each slot's
/// length and peer; `Ok(n)` means the first `n` slots are filled.
fn recv_batch(socket: &UdpSocket, slots: &mut [Slot]) -> io::Result<usize> {
    let results: Vec<(usize, Option<SockaddrStorage>, bool)> = {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slots.len(), None);
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = slots.iter_mut().map(|s| [IoSliceMut::new(&mut s.buf)]).collect();
        recvmmsg(socket.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?
            .map(|m| (m.bytes, m.address, m.flags.contains(MsgFlags::MSG_TRUNC)))
            .collect()
    };
    for (slot, (bytes, address, truncated)) in slots.iter_mut().zip(&results) {
        // A truncated datagram was longer than the buffer: report it as
        // such so that it is dropped, never served cut short.
        slot.len = if *truncated { slot.buf.len() + 1 } else { *bytes };
        slot.peer = address.as_ref().and_then(to_std);
    }
    Ok(results.len())
}

/// Send `replies` with as few `sendmmsg` calls as the socket allows.
async fn send_all(socket: &UdpSocket, replies: &[(SocketAddr, Vec<u8>)], local: &str, stats: &Stats) {
    let mut rest = replies;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        match socket.async_io(Interest::WRITABLE, || send_batch(socket, chunk)).await {
            Ok(sent) => {
                stats.replies.fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
                rest = &rest[sent.max(1).min(rest.len())..];
            }
            Err(e) => {
                // The first datagram failed (e.g. its peer's port is
                // unreachable); skip it and send the rest.
                tracing::debug!(peer = %rest[0].0, local, "udp send failed: {e}");
                rest = &rest[1..];
            }
        }
    }
}

fn send_batch(socket: &UdpSocket, replies: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
    let iovs: Vec<[IoSlice<'_>; 1]> = replies.iter().map(|(_, r)| [IoSlice::new(r)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = replies.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))).collect();
    let sent = sendmmsg(socket.as_raw_fd(), &mut headers, &iovs, addrs, [], MsgFlags::MSG_DONTWAIT)?.count();
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
