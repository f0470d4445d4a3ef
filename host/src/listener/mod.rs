//! Listeners: the sockets the host owns and the loops that serve them.
//!
//! Sockets are bound early, before the plugin is loaded, so that an address
//! in use is reported at once. They start serving only when the plugin is
//! ready: a TCP socket is not listening until then (a connection attempt is
//! refused, and a load balancer's health check sees a server that is not up
//! yet), and UDP datagrams wait in the kernel's receive queue.

pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Framing, TcpIsolation};
use crate::dispatch::{Dispatcher, ReplyLimit};
use crate::plugin::World;
use crate::request::Transport;

/// TCP accept backlog.
const BACKLOG: i32 = 1024;
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
        }
    }
}

/// A bound address, before it is served.
pub(crate) enum Bound {
    /// One socket per worker, all bound to the same address with SO_REUSEPORT.
    Udp(udp::UdpSockets),
    /// Bound, not yet listening.
    Tcp(Socket, SocketAddr),
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Bound::Udp(s) => s.addr,
            Bound::Tcp(_, addr) => *addr,
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
                ctx.tracker.spawn(udp::serve(sockets, ctx.clone(), shutdown));
            }
            Bound::Tcp(socket, _) => {
                socket.listen(BACKLOG).with_context(|| format!("cannot listen on {transport} {addr}"))?;
                let listener: std::net::TcpListener = socket.into();
                ctx.tracker.spawn(tcp::serve(listener, ctx.clone(), shutdown));
            }
        }
        // One parseable line per listener, e.g. `listening udp 127.0.0.1:7000`.
        tracing::info!("listening {transport} {addr}");
        Ok(())
    }
}

/// Bind `addr` for `transport`; UDP gets `udp_sockets` sockets on the same
/// address. Must run inside the tokio runtime.
pub(crate) fn bind(transport: Transport, addr: SocketAddr, udp_sockets: usize) -> anyhow::Result<Bound> {
    let bound = match transport {
        Transport::Udp => bind_udp(addr, udp_sockets.max(1)).map(Bound::Udp),
        Transport::Tcp => bind_tcp(addr).map(|(s, a)| Bound::Tcp(s, a)),
    };
    bound.with_context(|| format!("cannot listen on {transport} {addr}"))
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
/// A plain socket binds `addr` first, as a probe: it resolves port 0 and
/// fails if any other socket holds the port, even one with SO_REUSEPORT
/// (a second `host` on the same port must not silently share its traffic).
/// The group then binds the resolved address.
fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<udp::UdpSockets> {
    let probe = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    probe.bind(&addr.into())?;
    let addr = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    let pktinfo = addr.ip().is_unspecified();
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
        if i == 0 {
            warn_if_buffer_small(&socket, addr);
        }
        if pktinfo {
            // Every datagram then says which address it was sent to.
            match addr {
                SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?,
                SocketAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?,
            }
        }
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        sockets.push(tokio::net::UdpSocket::from_std(socket.into())?);
    }
    Ok(udp::UdpSockets { sockets, addr, pktinfo })
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

fn bind_tcp(addr: SocketAddr) -> std::io::Result<(Socket, SocketAddr)> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // Restart without waiting for TIME_WAIT connections to expire.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    let addr = socket.local_addr()?.as_socket().unwrap_or(addr);
    Ok((socket, addr))
}
