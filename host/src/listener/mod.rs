//! Listeners: the sockets the host owns and the loops that serve them.

pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Framing;
use crate::dispatch::Dispatcher;
use crate::plugin::Transport;

/// TCP accept backlog.
const BACKLOG: i32 = 1024;
/// Requested UDP receive buffer: absorbs bursts while plugins run. The
/// kernel may grant less (net.core.rmem_max); that is not an error.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// What every listener task shares.
pub(crate) struct Shared {
    pub dispatcher: Arc<Dispatcher>,
    pub framing: Framing,
    pub max_request: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// A bound address, before it is served.
pub(crate) enum Bound {
    /// One socket per worker, all bound to the same address with SO_REUSEPORT.
    Udp(Vec<tokio::net::UdpSocket>),
    Tcp(tokio::net::TcpListener),
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Udp(s) => s[0].local_addr(),
            Bound::Tcp(s) => s.local_addr(),
        }
    }

    pub fn transport(&self) -> Transport {
        match self {
            Bound::Udp(_) => Transport::Udp,
            Bound::Tcp(_) => Transport::Tcp,
        }
    }
}

/// Bind `addr` for `transport`; UDP gets `udp_sockets` sockets on the same
/// address. Must run inside the tokio runtime.
pub(crate) fn bind(transport: Transport, addr: SocketAddr, udp_sockets: usize) -> anyhow::Result<Bound> {
    let bound = match transport {
        Transport::Udp => bind_udp(addr, udp_sockets.max(1)).map(Bound::Udp),
        Transport::Tcp => bind_tcp(addr).map(Bound::Tcp),
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
fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<tokio::net::UdpSocket>> {
    let probe = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    probe.bind(&addr.into())?;
    let addr = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        sockets.push(tokio::net::UdpSocket::from_std(socket.into())?);
    }
    Ok(sockets)
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // Restart without waiting for TIME_WAIT connections to expire.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    tokio::net::TcpListener::from_std(socket.into())
}
