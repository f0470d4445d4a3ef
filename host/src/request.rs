//! What a request is, independent of how it is served: a leaf module that
//! the listeners, the configuration, dispatch and the plugin bindings all
//! use, and that imports none of them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

/// The transport a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One UDP datagram is one request.
    Udp,
    /// One frame of a TCP connection is one request.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// One request: a datagram, or one frame of a TCP stream.
///
/// It owns its payload (a reference-counted [`Bytes`], so cloning it copies
/// nothing), which lets a request that has to wait move off the loop that
/// received it. The addresses are formatted for the plugin when it is
/// called, into a stack buffer, unless the request carries them formatted
/// already ([`AddrNames`]: once for all the frames of a TCP connection).
#[derive(Clone, Debug)]
pub struct Request {
    /// How it arrived.
    pub transport: Transport,
    /// The remote address.
    pub peer: SocketAddr,
    /// The local address it arrived on: for a socket bound to a wildcard
    /// address, the address the peer actually sent to.
    pub local: SocketAddr,
    /// The payload, without framing.
    pub payload: Bytes,
    /// `peer` and `local` formatted once for every request of a
    /// connection; `None`: formatted at the call.
    pub names: Option<Arc<AddrNames>>,
}

/// The two addresses of a connection as the plugin sees them, e.g.
/// `127.0.0.1:4000` and `[::1]:7000`.
#[derive(Debug, PartialEq, Eq)]
pub struct AddrNames {
    /// The remote address.
    pub peer: String,
    /// The local address.
    pub local: String,
}

impl AddrNames {
    /// Format `peer` and `local`.
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Arc<Self> {
        Arc::new(Self { peer: peer.to_string(), local: local.to_string() })
    }
}
