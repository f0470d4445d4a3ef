//! What a request is, independent of how it is served: a leaf module that
//! the listeners, the configuration, dispatch and the plugin bindings all
//! use, and that imports none of them.

use std::fmt;
use std::net::SocketAddr;

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
/// received it. The addresses are formatted for the plugin only when it is
/// called, into a stack buffer.
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
}
