//! TCP: each connection is a task; each frame of its stream is one request.
//!
//! Frames are handled in order and their replies written in order; the
//! replies to several frames that arrived in one read go out in one write.
//! An idle connection holds no read buffer: the task waits for readability
//! first and only then reserves memory to read into.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Framing;
use crate::dispatch::{Outcome, Request};
use crate::framing::{self, Decoder, FrameError};
use crate::plugin::Transport;
use crate::ratelimit::log_limited;
use crate::stats::Stats;

use super::Shared;

/// Bytes reserved per read. Larger frames reserve their full length.
const READ_CHUNK: usize = 8 << 10;
/// Pause after an accept error such as EMFILE, so the loop does not spin
/// while file descriptors are exhausted; it retries after the pause.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept connections until `shutdown`; each runs on `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let slots = Arc::new(Semaphore::new(shared.max_connections));
    loop {
        // Over --max-connections, stop accepting: new peers wait in the
        // kernel's backlog until a connection closes.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    log_limited!(warn, local, "accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        Stats::incr(&shared.dispatcher.stats().connections);
        let (shared, shutdown, local) = (shared.clone(), shutdown.clone(), local.clone());
        tracker.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, peer, local, &shared, shutdown).await {
                tracing::debug!(%peer, "connection ended: {e}");
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
    #[error("a request failed; closing the connection")]
    RequestFailed,
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: String,
    shared: &Shared,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let peer_text = peer.to_string();
    let mut decoder = Decoder::new(shared.framing, shared.max_request);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut deadline = Instant::now() + shared.idle_timeout;
    let closed_by_host = |e: ConnError| {
        if matches!(e, ConnError::Frame(_) | ConnError::Idle(_) | ConnError::RequestFailed) {
            Stats::incr(&shared.dispatcher.stats().connections_closed_by_host);
            log_limited!(info, %peer, local, "closing connection: {e}");
        }
        e
    };
    loop {
        // Wait for data, the idle deadline, or shutdown (which lets the frames
        // already read finish, then closes).
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            r = timeout_at(deadline, stream.readable()) => match r {
                Ok(r) => r?,
                Err(_) => return Err(closed_by_host(ConnError::Idle(shared.idle_timeout))),
            },
        }
        let want = match decoder.framing() {
            Framing::Raw => shared.max_request.clamp(1, READ_CHUNK),
            _ => READ_CHUNK,
        };
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let eof = match stream.try_read_buf(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        let raw = decoder.framing() == Framing::Raw;
        // The frames of one read run one after another in one session, so
        // in reuse mode they share an instance without touching the pool.
        let mut session = shared.dispatcher.session();
        let (mut frames, mut replies, mut failed) = (0, 0, false);
        loop {
            let frame = if eof { decoder.decode_eof(&mut buf) } else { decoder.decode(&mut buf) };
            let frame = match frame.map_err(|e| closed_by_host(e.into()))? {
                Some(f) => f,
                None => break,
            };
            frames += 1;
            let req = Request { transport: Transport::Tcp, peer: &peer_text, local: &local, payload: &frame };
            match session.dispatch(req).await {
                Outcome::Reply(reply) => {
                    framing::encode(decoder.framing(), &reply, &mut out).map_err(|e| closed_by_host(e.into()))?;
                    replies += 1;
                }
                Outcome::NoReply => {}
                Outcome::Failed => {
                    // Replies to earlier frames of this read still go out
                    // (below); then the connection is closed.
                    failed = true;
                    break;
                }
            }
            if raw {
                break;
            }
        }
        // No instance is held while the connection waits on the network.
        drop(session);
        if frames > 0 {
            deadline = Instant::now() + shared.idle_timeout;
        }
        shared.dispatcher.stats().replies.fetch_add(replies, std::sync::atomic::Ordering::Relaxed);
        if !out.is_empty() {
            match timeout_at(Instant::now() + shared.idle_timeout, stream.write_all(&out)).await {
                Ok(r) => r?,
                Err(_) => return Err(closed_by_host(ConnError::Idle(shared.idle_timeout))),
            }
            out.clear();
            if out.capacity() > READ_CHUNK {
                out = Vec::new();
            }
        }
        if failed {
            return Err(closed_by_host(ConnError::RequestFailed));
        }
        if eof {
            return Ok(());
        }
        if buf.is_empty() {
            // Idle connections keep no buffer.
            buf = BytesMut::new();
        }
    }
}
