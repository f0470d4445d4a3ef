//! The connection world over TCP: the connection is one `session` of the
//! plugin, which frames its own protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::dispatch::{LiveSession, OpenError, Step};

use super::conn::FramedConn;
use super::{ConnError, ListenerContext, retired};

/// Serves one connection with one session: bytes in, bytes out.
pub(super) struct SessionLoop {
    conn: FramedConn,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
    /// The plugin asked to close: the host's side closes first, so the
    /// socket lingers ([`FramedConn::linger`]).
    closed_by_plugin: bool,
}

impl SessionLoop {
    pub(super) fn new(
        conn: FramedConn,
        peer: SocketAddr,
        local: SocketAddr,
        ctx: &Arc<ListenerContext>,
        shutdown: CancellationToken,
    ) -> Self {
        Self { conn, peer, local, ctx: ctx.clone(), shutdown, closed_by_plugin: false }
    }

    /// Open the session, serve the connection, and drop the session (its
    /// destructor runs) however the connection ends.
    pub(super) async fn run(mut self) -> Result<(), ConnError> {
        let ctx = self.ctx.clone();
        // An instance per connection: wait for room in the pool for as
        // long as the connection may be idle.
        let open = ctx.dispatcher.open_session(self.peer, self.local, ctx.idle_timeout);
        let opened = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(()),
            opened = open => opened,
        };
        let mut session = match opened {
            Ok(session) => session,
            Err(OpenError::NoRoom) => return Err(ConnError::NoInstance(ctx.idle_timeout)),
            Err(OpenError::Failed) => return Err(ConnError::RequestFailed),
        };
        // The idle timeout counts from when the session is ready, not from
        // the accept: waiting for an instance is the host's time.
        self.conn.extend_deadline();
        let result = self.serve(&mut session).await;
        session.close().await;
        // After the instance is back in the pool: a lingering socket holds
        // a connection slot for at most LINGER, never an instance.
        if result.is_ok() && self.closed_by_plugin {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {}
                _ = self.conn.linger() => {}
            }
        }
        result
    }

    /// Read, hand every byte to `on-data` in order, write what it returns;
    /// at end of stream, `on-end`. Ends at shutdown or retirement between
    /// two calls, never in the middle of one.
    async fn serve(&mut self, session: &mut LiveSession) -> Result<(), ConnError> {
        let ctx = self.ctx.clone();
        let version = session.version().clone();
        loop {
            let eof = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = retired(Some(&version)) => return Err(ConnError::Retired(ctx.reload_grace)),
                r = self.conn.read() => r?,
            };
            while self.conn.has_input() {
                // Many calls in a row (a small --max-request) still stop
                // for shutdown and retirement between two of them.
                if self.shutdown.is_cancelled() {
                    return Ok(());
                }
                if version.is_retired() {
                    return Err(ConnError::Retired(ctx.reload_grace));
                }
                let data = self.conn.input();
                let len = data.len();
                let step = session.data(data, &ctx.session_reply).await;
                self.conn.consume(len);
                if self.write(step).await? {
                    return Ok(());
                }
                tokio::task::coop::consume_budget().await;
            }
            if eof {
                let step = session.end(&ctx.session_reply).await;
                self.write(step).await?;
                return Ok(());
            }
            self.conn.flush().await?;
            self.conn.release_idle_buffers();
        }
    }

    /// Queue (or write, past the bound) what a call returned; `Ok(true)`
    /// when the connection is to close, after flushing.
    async fn write(&mut self, step: Step) -> Result<bool, ConnError> {
        match step {
            Step::Write { bytes, close } => {
                if !bytes.is_empty() {
                    crate::stats::Stats::incr(&self.ctx.dispatcher.stats().replies);
                    self.conn.send(&bytes).await?;
                }
                if close {
                    self.conn.flush().await?;
                    self.closed_by_plugin = true;
                }
                Ok(close)
            }
            Step::Failed => {
                // What earlier calls returned still goes out.
                self.conn.flush().await?;
                Err(ConnError::RequestFailed)
            }
        }
    }
}
