//! UDP: one datagram is one request; the reply goes back to its sender.
//!
//! Several receive loops share each socket, so a slow request occupies one
//! loop while the others keep receiving. A datagram over `--max-request` is
//! dropped whole (never truncated and passed on).

use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Outcome, Request};
use crate::plugin::Transport;
use crate::stats::Stats;

use super::Shared;

/// Receive buffer size: the largest UDP payload (65,527 bytes over IPv6)
/// plus one byte, so an oversized datagram is seen as oversized.
const RECV_BUFFER: usize = 65_536;

/// Serve `socket` until `shutdown` is cancelled, with `loops` receive loops.
pub(crate) async fn serve(socket: UdpSocket, loops: usize, shared: Arc<Shared>, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..loops.max(1) {
        tasks.spawn(receive_loop(socket.clone(), shared.clone(), shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn receive_loop(socket: Arc<UdpSocket>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let local = match socket.local_addr() {
        Ok(a) => a.to_string(),
        Err(_) => String::new(),
    };
    let max = shared.max_request;
    // One more byte than accepted: a datagram that fills it was too long.
    let mut buf = vec![0u8; (max.saturating_add(1)).min(RECV_BUFFER)];
    loop {
        let (len, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // E.g. ICMP port unreachable reported for an earlier send.
                    tracing::debug!(local, "udp receive error: {e}");
                    continue;
                }
            },
        };
        if len > max {
            Stats::incr(&shared.dispatcher.stats().requests_dropped);
            tracing::warn!(%peer, local, "datagram dropped: larger than {max} bytes (--max-request)");
            continue;
        }
        let peer_text = peer.to_string();
        let req = Request { transport: Transport::Udp, peer: &peer_text, local: &local, payload: &buf[..len] };
        // The request holds no lock and no slot other requests need; on a
        // shutdown it still finishes (the drain waits for this loop).
        if let Outcome::Reply(reply) = shared.dispatcher.dispatch(req).await {
            match socket.send_to(&reply, peer).await {
                Ok(_) => Stats::incr(&shared.dispatcher.stats().replies),
                Err(e) => tracing::debug!(%peer, local, "udp send failed: {e}"),
            }
        }
    }
}
