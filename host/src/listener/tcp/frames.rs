//! The `handler` world over TCP: every frame of the stream is one request.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Framing, TcpIsolation};
use crate::dispatch::{Outcome, Version};
use crate::request::{AddrNames, Request, Transport};

use super::conn::FramedConn;
use super::{ConnError, ListenerContext, retired};

/// Serves one connection of the `handler` world: frames in, replies out,
/// in order.
pub(super) struct FrameLoop {
    conn: FramedConn,
    peer: SocketAddr,
    local: SocketAddr,
    /// The addresses formatted once for every frame (about a tenth of a
    /// small frame's cost when formatted per request).
    names: Arc<AddrNames>,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
}

impl FrameLoop {
    pub(super) fn new(
        conn: FramedConn,
        peer: SocketAddr,
        local: SocketAddr,
        ctx: &Arc<ListenerContext>,
        shutdown: CancellationToken,
    ) -> Self {
        Self { conn, peer, local, names: AddrNames::new(peer, local), ctx: ctx.clone(), shutdown }
    }

    /// Serve until the peer closes, a request fails, or shutdown (which
    /// lets the frames already read finish, then closes).
    ///
    /// With `--tcp-isolation request`, the frames of one read run one after
    /// another in one sequence (in reuse mode they share an instance without
    /// the pool), and no instance is held while waiting on the peer. With
    /// `--tcp-isolation connection`, one sequence, pinned to the version
    /// current at accept, serves every frame of the connection on one
    /// instance, until the connection closes or the version is retired.
    pub(super) async fn run(mut self) -> Result<(), ConnError> {
        let ctx = self.ctx.clone();
        let dispatcher = &ctx.dispatcher;
        let raw = self.conn.framing() == Framing::Raw;
        let pinned = ctx.tcp_isolation == TcpIsolation::Connection;
        let mut kept = pinned.then(|| dispatcher.pinned_sequence());
        loop {
            // A pinned sequence has a version once its first request ran.
            let version: Option<Arc<Version>> = kept.as_ref().and_then(|s| s.pinned_version().cloned());
            let eof = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = retired(version.as_deref()) => return Err(ConnError::Retired(ctx.reload_grace)),
                r = self.conn.read() => r?,
            };
            let mut sequence = kept.take().unwrap_or_else(|| dispatcher.sequence());
            let (mut failed, mut replies) = (false, 0);
            while let Some(payload) = self.conn.next_frame(eof)? {
                let names = Some(self.names.clone());
                let req = Request { transport: Transport::Tcp, peer: self.peer, local: self.local, payload, names };
                match sequence.dispatch(req, ctx.tcp_reply).await {
                    Outcome::Reply(reply) => {
                        replies += 1;
                        if !pinned && self.conn.send_writes(reply.len()) {
                            // No instance is held while waiting on the peer.
                            drop(sequence);
                            self.conn.send(&reply).await?;
                            sequence = dispatcher.sequence();
                        } else {
                            self.conn.send(&reply).await?;
                        }
                    }
                    Outcome::NoReply => {}
                    Outcome::Failed => {
                        // Replies to earlier frames still go out (below).
                        failed = true;
                        break;
                    }
                }
                if raw {
                    break;
                }
                // Many frames in one read must not hold this worker thread.
                tokio::task::coop::consume_budget().await;
            }
            if pinned {
                kept = Some(sequence);
            } else {
                drop(sequence);
            }
            dispatcher.stats().replies.add(replies);
            self.conn.flush().await?;
            if failed {
                return Err(ConnError::RequestFailed);
            }
            if eof {
                return Ok(());
            }
            self.conn.release_idle_buffers();
        }
    }
}
