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

/// A bound socket, before it is served.
pub(crate) enum Bound {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpListener),
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Udp(s) => s.local_addr(),
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

/// Bind `addr` for `transport`. Must run inside the tokio runtime.
pub(crate) fn bind(transport: Transport, addr: SocketAddr) -> anyhow::Result<Bound> {
    let inner = || -> std::io::Result<Bound> {
        let domain = Domain::for_address(addr);
        let (ty, proto) = match transport {
            Transport::Udp => (Type::DGRAM, Protocol::UDP),
            Transport::Tcp => (Type::STREAM, Protocol::TCP),
        };
        let socket = Socket::new(domain, ty, Some(proto))?;
        if addr.is_ipv6() {
            // `[::]` serves IPv6 only, so `0.0.0.0` can be bound beside it.
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        match transport {
            Transport::Udp => {
                let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
                socket.bind(&addr.into())?;
                Ok(Bound::Udp(tokio::net::UdpSocket::from_std(socket.into())?))
            }
            Transport::Tcp => {
                // Restart without waiting for TIME_WAIT connections to expire.
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(BACKLOG)?;
                Ok(Bound::Tcp(tokio::net::TcpListener::from_std(socket.into())?))
            }
        }
    };
    inner().with_context(|| format!("cannot listen on {transport} {addr}"))
}
