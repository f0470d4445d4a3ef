//! TCP: each connection is a task; each frame of its stream is one request.
//!
//! A [`FramedConn`] owns the socket, the read buffer, the decoder and the
//! replies not yet written, with their bound; [`Handler::run`] is the loop
//! that drives it: read, run every complete frame through the plugin in
//! order, write the replies in order.
//!
//! Memory per connection is bounded whatever the peer sends or the plugin
//! returns. Replies collect in the output buffer up to [`OUTPUT_HIGH_WATER`]
//! and are written out as they pass it (a bigger reply is written straight
//! from where the plugin's reply was copied to); while output is being
//! written, nothing more is read from the peer (backpressure: a peer that
//! does not read its replies stops being served, and is closed after
//! `--idle-timeout`). An idle connection holds no read buffer: the task
//! waits for readability first and only then reserves memory to read into.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::config::Framing;
use crate::dispatch::Outcome;
use crate::framing::{self, Decoder, FrameError};
use crate::ratelimit::log_limited;
use crate::request::{Request, Transport};
use crate::stats::Stats;

use super::ListenerContext;

/// Bytes reserved per read. Larger frames reserve their full length.
const READ_CHUNK: usize = 8 << 10;
/// Reply bytes a connection collects before writing them out.
pub const OUTPUT_HIGH_WATER: usize = 64 << 10;
/// Pause after an accept error such as EMFILE, so the loop does not spin
/// while file descriptors are exhausted; it retries after the pause.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept connections until `shutdown`; each runs on the context's tracker.
///
/// `--max-connections` is one limit for every listener of the host, so a
/// listener takes a connection slot only once a peer is waiting on it:
/// holding a slot while waiting in `accept` would starve the other
/// listeners.
pub(crate) async fn serve(listener: std::net::TcpListener, ctx: Arc<ListenerContext>, shutdown: CancellationToken) {
    let listening = listener.local_addr().ok();
    // SAFETY: the `AsyncFd` owns the listener, a `std::net::TcpListener`
    // whose `OwnedFd` stays open, and is the same descriptor, until the
    // listener is dropped with the `AsyncFd`.
    let listener = match unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) } {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(local = ?listening, "cannot serve: {e}");
            return;
        }
    };
    loop {
        let mut ready = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.readable() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(local = ?listening, "cannot serve: {e}");
                    return;
                }
            },
        };
        // Over --max-connections, stop accepting: new peers wait in the
        // kernel's backlog until a connection closes.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = ctx.connections.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let accepted = match ready.try_io(|l| l.get_ref().accept()) {
            Ok(accepted) => accepted.and_then(|(s, peer)| {
                s.set_nonblocking(true)?;
                Ok((TcpStream::from_std(s)?, peer))
            }),
            // Another wake-up, or the peer gave up: wait again, without the slot.
            Err(_would_block) => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                log_limited!(warn, local = ?listening, "accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                drop(permit);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let stats = ctx.dispatcher.stats();
        Stats::incr(&stats.connections);
        let (ctx2, shutdown) = (ctx.clone(), shutdown.clone());
        ctx.tracker.spawn(async move {
            let _permit = permit;
            let ctx = ctx2;
            let result = match Handler::new(stream, peer, &ctx, shutdown) {
                Ok(handler) => handler.run().await,
                Err(e) => Err(e),
            };
            let stats = ctx.dispatcher.stats();
            Stats::incr(&stats.connections_closed);
            match result {
                Ok(()) => {}
                Err(e) if e.closed_by_host() => {
                    Stats::incr(&stats.connections_closed_by_host);
                    log_limited!(info, %peer, "closing connection: {e}");
                }
                Err(e) => tracing::debug!(%peer, "connection ended: {e}"),
            }
        });
    }
}

/// Why a connection ended other than a clean close.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("no complete frame for {0:?} (--idle-timeout)")]
    Idle(Duration),
    #[error("the peer did not take its replies for {0:?} (--idle-timeout)")]
    Stalled(Duration),
    #[error("a request failed; closing the connection")]
    RequestFailed,
}

impl ConnError {
    /// Whether the host chose to close (counted), rather than the peer or
    /// the network.
    fn closed_by_host(&self) -> bool {
        !matches!(self, ConnError::Io(_))
    }
}

/// One connection's socket, read buffer, decoder and pending output.
struct FramedConn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    /// Replies not yet written; at most [`OUTPUT_HIGH_WATER`] bytes.
    out: Vec<u8>,
    /// How long a read may wait for a frame, and a write for the peer.
    idle_timeout: Duration,
    /// When the connection is closed if no frame completes.
    deadline: Instant,
}

impl FramedConn {
    fn new(stream: TcpStream, framing: Framing, max_request: usize, idle_timeout: Duration) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(framing, max_request),
            out: Vec::new(),
            idle_timeout,
            deadline: Instant::now() + idle_timeout,
        })
    }

    /// Wait until the peer sends more (until the idle deadline) and read it.
    /// `Ok(true)` at end of stream.
    async fn read(&mut self) -> Result<bool, ConnError> {
        loop {
            match timeout_at(self.deadline, self.stream.readable()).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnError::Idle(self.idle_timeout)),
            }
            let want = match self.decoder.framing() {
                Framing::Raw => self.decoder.max().clamp(1, READ_CHUNK),
                _ => READ_CHUNK,
            };
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next complete frame of what was read; at end of stream, what is
    /// left ends the last frame or is an error.
    fn next_frame(&mut self, eof: bool) -> Result<Option<Bytes>, FrameError> {
        let frame = if eof { self.decoder.decode_eof(&mut self.buf) } else { self.decoder.decode(&mut self.buf) }?;
        if frame.is_some() {
            self.deadline = Instant::now() + self.idle_timeout;
        }
        Ok(frame)
    }

    /// Whether sending a reply of `len` bytes writes to the peer (and may
    /// wait for it) instead of only queueing it.
    fn send_writes(&self, len: usize) -> bool {
        self.out.len() + framing::overhead(self.decoder.framing()) + len > OUTPUT_HIGH_WATER
    }

    /// Queue `reply`, framed. Pending output past [`OUTPUT_HIGH_WATER`] is
    /// written first; a reply that big on its own is written without being
    /// copied.
    async fn send(&mut self, reply: &[u8]) -> Result<(), ConnError> {
        let (prefix, suffix) = framing::envelope(self.decoder.framing(), reply.len())?;
        let framed = prefix.len() + reply.len() + suffix.len();
        if self.send_writes(reply.len()) {
            self.flush().await?;
        }
        if framed <= OUTPUT_HIGH_WATER {
            self.out.extend_from_slice(&prefix);
            self.out.extend_from_slice(reply);
            self.out.extend_from_slice(suffix);
            return Ok(());
        }
        for part in [&prefix[..], reply, suffix] {
            self.write(part).await?;
        }
        Ok(())
    }

    /// Write the pending output.
    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        self.write(&out).await?;
        self.out = out;
        self.out.clear();
        Ok(())
    }

    /// Write `bytes`; a peer that takes none of them for the idle timeout
    /// is given up on.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match timeout(self.idle_timeout, self.stream.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::Stalled(self.idle_timeout)),
        }
    }

    /// Between reads, keep no memory the connection is not using.
    fn release_idle_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > READ_CHUNK {
            self.out = Vec::new();
        }
    }
}

/// Serves one connection: frames in, replies out, in order.
struct Handler {
    conn: FramedConn,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
}

impl Handler {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        ctx: &Arc<ListenerContext>,
        shutdown: CancellationToken,
    ) -> Result<Self, ConnError> {
        // The address the peer connected to: on a wildcard listener, one of
        // the host's real addresses.
        let local = stream.local_addr()?;
        let conn = FramedConn::new(stream, ctx.framing, ctx.max_request, ctx.idle_timeout)?;
        Ok(Self { conn, peer, local, ctx: ctx.clone(), shutdown })
    }

    /// Serve until the peer closes, a request fails, or shutdown (which
    /// lets the frames already read finish, then closes).
    async fn run(mut self) -> Result<(), ConnError> {
        let ctx = self.ctx.clone();
        let dispatcher = &ctx.dispatcher;
        let raw = self.conn.decoder.framing() == Framing::Raw;
        loop {
            let eof = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                r = self.conn.read() => r?,
            };
            // The frames of one read run one after another in one session,
            // so in reuse mode they share an instance without the pool.
            let mut session = dispatcher.session();
            let (mut failed, mut replies) = (false, 0);
            while let Some(payload) = self.conn.next_frame(eof)? {
                let req = Request { transport: Transport::Tcp, peer: self.peer, local: self.local, payload };
                match session.dispatch(req, ctx.tcp_reply).await {
                    Outcome::Reply(reply) => {
                        replies += 1;
                        if self.conn.send_writes(reply.len()) {
                            // No instance is held while waiting on the peer.
                            drop(session);
                            self.conn.send(&reply).await?;
                            session = dispatcher.session();
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
            drop(session);
            dispatcher.stats().replies.fetch_add(replies, std::sync::atomic::Ordering::Relaxed);
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
