//! Generated and hand-written bindings for the WIT world `handler`.
//!
//! `bindgen!` generates the host side of the imported `log` interface. The
//! exported `handle` is called through a typed function with a borrowed
//! request record instead of the generated owned `Request`, so a payload goes
//! from the socket buffer into guest memory with one copy and no allocation.

use wasmtime::component::{ComponentType, Lower};

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
    });
}

pub use generated::sockets::plugin::log::{Host as LogHost, Level, add_to_linker as add_log_to_linker};

/// `sockets:plugin/types.transport`.
#[derive(ComponentType, Lower, Clone, Copy, Debug, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
pub enum Transport {
    /// UDP.
    #[component(name = "udp")]
    Udp,
    /// TCP.
    #[component(name = "tcp")]
    Tcp,
}

/// `sockets:plugin/types.request`, borrowing its strings and payload.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RequestRef<'a> {
    /// How the request arrived.
    pub transport: Transport,
    /// Remote address.
    pub peer: &'a str,
    /// Local address.
    pub local: &'a str,
    /// Payload without framing.
    pub payload: &'a [u8],
}

/// The type of `handle`'s parameters.
pub type HandleParams<'a> = (RequestRef<'a>,);
/// The type of `handle`'s result: `result<option<list<u8>>, string>`.
pub type HandleResult = (Result<Option<Vec<u8>>, String>,);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}
