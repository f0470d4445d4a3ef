//! Listeners: the sockets the host owns and the loops that serve them.
//!
//! Sockets are bound early, before the plugin is loaded, so that an address
//! in use is reported at once. They start serving only when the plugin is
//! ready: a TCP socket is not listening until then (a connection attempt is
//! refused, and a load balancer's health check sees a server that is not up
//! yet), and UDP datagrams wait in the kernel's receive queue.
//!
//! A socket systemd passed (socket activation, [`crate::systemd`]) is
//! served instead of binding one when it is the requested transport on
//! the requested address. With `--reuse-port`, sockets are bound with
//! `SO_REUSEPORT` so that another host can share the address, and a
//! shutdown hands the address over to it ([`reuseport`]).

mod reuseport;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use anyhow::Context as _;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Framing, TcpIsolation};
use crate::dispatch::{Dispatcher, ReplyLimit};
use crate::plugin::World;
use crate::request::Transport;
use crate::systemd;

/// TCP accept backlog.
const BACKLOG: i32 = 1024;
/// How long before `--drain-timeout` runs out the connections a handover
/// kept open are closed (each between two requests).
const HANDOVER_CLOSE_GRACE: Duration = Duration::from_millis(500);
/// Requested UDP receive buffer: absorbs bursts while plugins run. The
/// kernel may grant less (`net.core.rmem_max`): then a warning says so.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// What every listener of one server uses: the dispatcher, the limits, and
/// the host-wide connection slots.
pub(crate) struct ListenerContext {
    pub dispatcher: Arc<Dispatcher>,
    /// The plugin's world (a reload never changes it).
    pub world: World,
    pub framing: Framing,
    pub tcp_isolation: TcpIsolation,
    pub reload_grace: Duration,
    pub max_request: usize,
    pub idle_timeout: Duration,
    /// `--max-connections`, for every TCP listener of the host together.
    pub connections: Arc<Semaphore>,
    pub udp_reply: ReplyLimit,
    pub tcp_reply: ReplyLimit,
    /// Replies of the connection world: `--max-reply`, no framing.
    pub session_reply: ReplyLimit,
    /// Room for UDP requests moved off their receive loop, for the whole
    /// host ([`udp::MAX_WAITING`], at most half of `--max-instances`, so
    /// a flood of slow datagrams leaves room for TCP).
    pub udp_waiting: Arc<Semaphore>,
    /// `--udp-source-rate`: datagrams per second per source, if limited.
    pub udp_source_rate: Option<crate::ratelimit::SourceLimits>,
    /// Connections and requests moved off a receive loop run here, so that
    /// a shutdown drains them.
    pub tracker: TaskTracker,
    /// Ends what a handover keeps going after shutdown: the connections of
    /// a listener shared with another host, served until their peers close
    /// them, and the loops emptying shared sockets. [`drain`] cancels it
    /// shortly before `--drain-timeout` runs out.
    pub handover_end: CancellationToken,
}

impl ListenerContext {
    pub fn new(config: &Config, dispatcher: Arc<Dispatcher>, tracker: TaskTracker) -> Self {
        Self {
            world: dispatcher.versions().current().plugin().world(),
            dispatcher,
            framing: config.framing,
            tcp_isolation: config.tcp_isolation,
            reload_grace: config.reload_grace,
            max_request: config.max_request,
            idle_timeout: config.idle_timeout,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            udp_reply: ReplyLimit::udp(config),
            tcp_reply: ReplyLimit::tcp(config, config.framing),
            session_reply: ReplyLimit::tcp(config, Framing::Raw),
            udp_waiting: Arc::new(Semaphore::new(udp::MAX_WAITING.min((config.max_instances as usize / 2).max(1)))),
            udp_source_rate: crate::ratelimit::SourceLimits::new(config.udp_source_rate),
            tracker,
            handover_end: CancellationToken::new(),
        }
    }
}

/// Where a socket came from, which decides how it drains at shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Bound by this host alone: nobody else serves the address, so it
    /// stops at once, and open connections close between two requests.
    Own,
    /// Bound with `SO_REUSEPORT` (`--reuse-port`): it hands the address
    /// over to the other hosts of its group, serves what is queued in it,
    /// and serves open connections until their peers close them.
    Shared,
    /// Passed by systemd, which keeps it open: it stops at once, and what
    /// is queued waits in it for the next instance.
    Inherited,
}

/// A bound address, before it is served.
pub(crate) enum Bound {
    /// One socket per worker, all bound to the same address with SO_REUSEPORT.
    Udp(udp::UdpSockets),
    /// Bound, not yet listening (unless systemd passed it listening).
    Tcp(Socket, SocketAddr, Origin),
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Bound::Udp(s) => s.addr,
            Bound::Tcp(_, addr, _) => *addr,
        }
    }

    pub fn transport(&self) -> Transport {
        match self {
            Bound::Udp(_) => Transport::Udp,
            Bound::Tcp(..) => Transport::Tcp,
        }
    }

    /// Start serving; runs on `ctx.tracker` until `shutdown`.
    pub fn serve(self, ctx: &Arc<ListenerContext>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (transport, addr) = (self.transport(), self.local_addr());
        match self {
            Bound::Udp(sockets) => {
                if sockets.bind_at_serve {
                    for socket in &sockets.sockets {
                        SockRef::from(socket)
                            .bind(&addr.into())
                            .with_context(|| format!("cannot listen on {transport} {addr}"))?;
                    }
                }
                ctx.tracker.spawn(udp::serve(sockets, ctx.clone(), shutdown).in_current_span());
            }
            Bound::Tcp(socket, _, origin) => {
                // A socket systemd passed may listen already, with the
                // unit's `Backlog=`: keep it.
                if !(origin == Origin::Inherited && socket.is_listener().unwrap_or(false)) {
                    socket.listen(BACKLOG).with_context(|| format!("cannot listen on {transport} {addr}"))?;
                }
                if origin == Origin::Shared {
                    reuseport::clear_steering(&socket);
                }
                let listener: std::net::TcpListener = socket.into();
                ctx.tracker.spawn(tcp::serve(listener, origin, ctx.clone(), shutdown).in_current_span());
            }
        }
        // One parseable line per listener, e.g. `listening udp 127.0.0.1:7000`.
        tracing::info!("listening {transport} {addr}");
        Ok(())
    }
}

/// Bind `addr` for `transport`, or take the socket systemd passed for it;
/// UDP gets `udp_sockets` sockets on the same address (one if systemd
/// passed it). With `reuse_port`, another host may share the address.
/// Must run inside the tokio runtime.
pub(crate) fn bind(
    transport: Transport,
    addr: SocketAddr,
    udp_sockets: usize,
    reuse_port: bool,
) -> anyhow::Result<Bound> {
    if let Some(inherited) = systemd::take(transport, addr)? {
        return adopt(inherited, transport, addr);
    }
    let bound = match transport {
        Transport::Udp => bind_udp(addr, udp_sockets.max(1), reuse_port).map(Bound::Udp),
        Transport::Tcp => bind_tcp(addr, reuse_port).map(|(s, a)| Bound::Tcp(s, a, origin(reuse_port))),
    };
    bound.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse && !reuse_port {
            " (another process serves it; to share it with another host, start both with --reuse-port)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {transport} {addr}: {e}{hint}")
    })
}

/// Serve a socket systemd passed for `transport` on `addr`.
fn adopt(inherited: systemd::Inherited, transport: Transport, addr: SocketAddr) -> anyhow::Result<Bound> {
    let systemd::Inherited { fd, name, socket, .. } = inherited;
    let what = format!("{transport} {addr} (socket {name}, fd {fd}, passed by systemd)");
    socket.set_nonblocking(true).with_context(|| format!("cannot serve {what}"))?;
    tracing::info!(
        "serving {what}{}",
        if transport == Transport::Udp { ": one socket, not one per worker" } else { "" }
    );
    match transport {
        Transport::Tcp => Ok(Bound::Tcp(socket, addr, Origin::Inherited)),
        Transport::Udp => {
            let pktinfo = addr.ip().is_unspecified();
            // Raise the receive buffer, never lower what the unit's
            // `ReceiveBuffer=` set.
            if socket.recv_buffer_size().is_ok_and(|n| n < 2 * UDP_RECV_BUFFER) {
                let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
            }
            warn_if_buffer_small(&socket, addr);
            set_pktinfo(&socket, addr, pktinfo).with_context(|| format!("cannot serve {what}"))?;
            let socket =
                tokio::net::UdpSocket::from_std(socket.into()).with_context(|| format!("cannot serve {what}"))?;
            Ok(Bound::Udp(udp::UdpSockets {
                sockets: vec![socket],
                addr,
                pktinfo,
                origin: Origin::Inherited,
                bind_at_serve: false,
            }))
        }
    }
}

/// Completes after `duration`; never without one.
async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn origin(reuse_port: bool) -> Origin {
    if reuse_port { Origin::Shared } else { Origin::Own }
}

/// Wait for the tasks of `tracker` (closed) to end, at most `timeout`;
/// what a handover keeps going ends a little before, between requests,
/// rather than being cut at the deadline. Returns when all ended or the
/// time is up (then what still runs is abandoned, and said so).
pub(crate) async fn drain(ctx: &ListenerContext, tracker: &TaskTracker, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let handover_end = deadline - HANDOVER_CLOSE_GRACE.min(timeout / 2);
    if tokio::time::timeout_at(handover_end, tracker.wait()).await.is_ok() {
        return;
    }
    ctx.handover_end.cancel();
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        tracing::warn!("drain timeout: {} tasks still running are abandoned", tracker.len());
    }
}

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv6 only, so `0.0.0.0` can be bound beside it.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A group of sockets on one address with SO_REUSEPORT; the kernel spreads
/// peers across them by address hash.
///
/// Without `reuse_port`, a plain socket binds `addr` first, as a probe: it
/// resolves port 0 and fails if any other socket holds the port, even one
/// with SO_REUSEPORT (a second `host` on the same port must not silently
/// share its traffic).
///
/// With `reuse_port`, the sockets of a given port are bound when serving
/// starts, not now: a bound socket joins the group at once, and the kernel
/// would queue datagrams to a host that is still loading its plugin, and
/// lose them if it then fails to start. On port 0 they are bound now (the
/// first resolves the port; nobody else can be in a group it just made).
fn bind_udp(addr: SocketAddr, count: usize, reuse_port: bool) -> std::io::Result<udp::UdpSockets> {
    let mut addr = addr;
    if !reuse_port {
        let probe = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        probe.bind(&addr.into())?;
        addr = probe.local_addr()?.as_socket().unwrap_or(addr);
    }
    let join_later = reuse_port && addr.port() != 0;
    let pktinfo = addr.ip().is_unspecified();
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
        set_pktinfo(&socket, addr, pktinfo)?;
        socket.set_reuse_port(true)?;
        if !join_later {
            socket.bind(&addr.into())?;
            addr = socket.local_addr()?.as_socket().unwrap_or(addr);
        }
        if i == 0 {
            warn_if_buffer_small(&socket, addr);
        }
        sockets.push(tokio::net::UdpSocket::from_std(socket.into())?);
    }
    Ok(udp::UdpSockets { sockets, addr, pktinfo, origin: origin(reuse_port), bind_at_serve: join_later })
}

/// On a wildcard socket, have every datagram say which address it was sent to.
fn set_pktinfo(socket: &Socket, addr: SocketAddr, pktinfo: bool) -> std::io::Result<()> {
    match addr {
        _ if !pktinfo => {}
        SocketAddr::V4(_) => setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?,
        SocketAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    Ok(())
}

/// Say so when the kernel grants a smaller UDP receive buffer than asked
/// for: bursts beyond it are dropped by the kernel, uncounted by the host.
fn warn_if_buffer_small(socket: &Socket, addr: SocketAddr) {
    // Linux grants twice what it is asked for (the other half is for its
    // bookkeeping) and reports that: compare like with like.
    let Ok(reported) = socket.recv_buffer_size() else { return };
    if reported < 2 * UDP_RECV_BUFFER {
        tracing::warn!(
            "udp {addr}: the kernel granted a receive buffer of {} KiB, less than the {} KiB asked for; \
             bursts beyond it are dropped (raise net.core.rmem_max)",
            (reported / 2) >> 10,
            UDP_RECV_BUFFER >> 10
        );
    }
}

fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<(Socket, SocketAddr)> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // Restart without waiting for TIME_WAIT connections to expire.
    socket.set_reuse_address(true)?;
    // The socket joins the group when it listens, once the plugin is ready.
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&addr.into())?;
    let addr = socket.local_addr()?.as_socket().unwrap_or(addr);
    Ok((socket, addr))
}
