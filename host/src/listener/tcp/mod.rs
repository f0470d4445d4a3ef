//! TCP: each connection is a task.
//!
//! A [`FramedConn`](conn::FramedConn) owns the socket, the read buffer, the
//! decoder and the bytes not yet written, with their bound. Two loops drive
//! it, one per world:
//!
//! - `handler` ([`frames`]): every frame of the stream is one request; read,
//!   run every complete frame through the plugin in order, write the replies
//!   in order.
//! - `connection-handler` ([`session`]): the connection is one `session` of
//!   the plugin; whatever bytes arrive go to `on-data`, and what it returns
//!   is written.
//!
//! Memory per connection is bounded whatever the peer sends or the plugin
//! returns. Output collects up to [`OUTPUT_HIGH_WATER`] bytes and is written
//! out as it passes that (a bigger reply is written straight from where the
//! plugin's reply was copied to); while output is being written, nothing
//! more is read from the peer (backpressure: a peer that does not read its
//! replies stops being served, and is closed after `--idle-timeout`). An
//! idle connection holds no read buffer: the task waits for readability
//! first and only then reserves memory to read into.

mod conn;
mod frames;
mod session;

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::framing::FrameError;
use crate::plugin::World;
use crate::ratelimit::log_limited;
use crate::stats::Stats;

use super::{ListenerContext, Origin, reuseport, sleep_or_never};

/// Reply bytes a connection collects before writing them out.
pub const OUTPUT_HIGH_WATER: usize = 64 << 10;
/// Pause after an accept error such as EMFILE, so the loop does not spin
/// while file descriptors are exhausted; it retries after the pause.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// A listener handing its address over closes once no connection has come
/// for this long after new ones were steered away: connections whose
/// handshake was under way complete within a round trip. One whose SYN-ACK
/// is lost takes a second or more, and is reset (unless
/// `net.ipv4.tcp_migrate_req` moves it to another listener).
pub const HANDOVER_QUIET: Duration = Duration::from_millis(1000);

/// Accept connections until `shutdown`; each runs on the context's tracker.
///
/// `--max-connections` is one limit for every listener of the host, so a
/// listener takes a connection slot only once a peer is waiting on it:
/// holding a slot while waiting in `accept` would starve the other
/// listeners.
///
/// A listener shared with other hosts ([`Origin::Shared`]) then hands its
/// address over: new connections are steered to the other listeners of
/// its group, and this one accepts what is queued in it and on its way to
/// it until none has come for [`HANDOVER_QUIET`]; its connections are
/// served until their peers close them (or the drain ends). With no other
/// listener in the group it closes at once and ends its connections
/// between requests, as a listener of its own does.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    origin: Origin,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
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
    // A child token: a shared listener with nobody to hand over to ends its
    // connections at shutdown, without ending the other listeners' handover.
    let connections = if origin == Origin::Shared { ctx.handover_end.child_token() } else { shutdown.clone() };
    let accepting = Accepting { listener: &listener, listening, ctx: &ctx, connections };
    accepting.run(&shutdown, None).await;
    let Some(addr) = listening.filter(|_| origin == Origin::Shared && !ctx.handover_end.is_cancelled()) else {
        return;
    };
    match reuseport::steer_away(listener.get_ref(), addr).await {
        // Nobody takes over: close now, as without --reuse-port, rather than
        // accept until a quiet second (never, under load) or the drain's end.
        Ok(0) => {
            tracing::info!("tcp {addr}: no other host listens on it; new connections are refused from now");
            accepting.connections.cancel();
            return;
        }
        Ok(n) => {
            tracing::info!("tcp {addr}: new connections go to the {n} other listener(s) of its SO_REUSEPORT group")
        }
        Err(e) => tracing::warn!(
            "tcp {addr}: cannot steer new connections to the other hosts sharing it ({e}); \
             connections that reach it after it closes are reset"
        ),
    }
    accepting.run(&ctx.handover_end, Some(HANDOVER_QUIET)).await;
}

/// The accept loop of one listener.
struct Accepting<'a> {
    listener: &'a AsyncFd<std::net::TcpListener>,
    listening: Option<std::net::SocketAddr>,
    ctx: &'a Arc<ListenerContext>,
    /// Ends the accepted connections (between two requests).
    connections: CancellationToken,
}

impl Accepting<'_> {
    /// Accept until `stop`, or, with `quiet`, until none came for that long.
    async fn run(&self, stop: &CancellationToken, quiet: Option<Duration>) {
        let (ctx, listening) = (self.ctx, self.listening);
        loop {
            let mut ready = tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep_or_never(quiet) => return,
                r = self.listener.readable() => match r {
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
                _ = stop.cancelled() => return,
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
            let (ctx, shutdown) = (ctx.clone(), self.connections.clone());
            self.ctx.tracker.spawn(
                async move {
                    let _permit = permit;
                    let result = serve_connection(stream, peer, &ctx, shutdown).await;
                    let stats = ctx.dispatcher.stats();
                    Stats::incr(&stats.connections_closed);
                    match result {
                        Ok(()) => {}
                        Err(e) if e.closed_by_host() => {
                            Stats::incr(&stats.connections_closed_by_host);
                            if let ConnError::Retired(_) = e {
                                Stats::incr(&stats.connections_retired);
                            }
                            log_limited!(info, %peer, "closing connection: {e}");
                        }
                        Err(e) => tracing::debug!(%peer, "connection ended: {e}"),
                    }
                }
                .in_current_span(),
            );
        }
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
    #[error("nothing received for {0:?} (--idle-timeout)")]
    Silent(Duration),
    #[error("no plugin instance free within {0:?} (--max-instances)")]
    NoInstance(Duration),
    #[error("the peer did not take its replies for {0:?} (--idle-timeout)")]
    Stalled(Duration),
    #[error("a plugin call failed; closing the connection")]
    RequestFailed,
    #[error("its plugin version was replaced more than {0:?} ago (--reload-grace)")]
    Retired(Duration),
}

impl ConnError {
    /// Whether the host chose to close (counted), rather than the peer or
    /// the network.
    fn closed_by_host(&self) -> bool {
        !matches!(self, ConnError::Io(_))
    }
}

/// Serve one accepted connection with the loop of the plugin's world.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    ctx: &Arc<ListenerContext>,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    // The address the peer connected to: on a wildcard listener, one of
    // the host's real addresses.
    let local = stream.local_addr()?;
    let (max, idle) = (ctx.max_request, ctx.idle_timeout);
    match ctx.world {
        World::Handler => {
            let conn = conn::FramedConn::new(stream, ctx.framing, max, idle)?;
            frames::FrameLoop::new(conn, peer, local, ctx, shutdown).run().await
        }
        World::Connection => {
            // No framing: the plugin sees the stream as it comes, at most
            // `--max-request` bytes per call.
            let conn = conn::FramedConn::new(stream, crate::config::Framing::Raw, max, idle)?;
            session::SessionLoop::new(conn, peer, local, ctx, shutdown).run().await
        }
    }
}

/// Completes when `version` is retired; never if there is none.
async fn retired(version: Option<&crate::dispatch::Version>) {
    match version {
        Some(v) => v.retired().await,
        None => std::future::pending().await,
    }
}
