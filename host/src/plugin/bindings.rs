//! Generated and hand-written bindings for the WIT worlds: `handler`
//! (0.1.0 and 0.2.0, the same shape) and `connection-handler` (0.2.0).
//!
//! `bindgen!` generates the type of the imported `log` interface's level.
//! The exports are called through typed functions with borrowed views of
//! the host's data ([`RequestText::view`], [`ConnectionInfoView`]) instead
//! of generated owned records, so a payload goes from the socket buffer
//! into guest memory with one copy and no allocation; results are lifted by
//! [`Reply`] and [`ErrorText`], which check the size of what the plugin
//! returns before copying it.
//!
//! Types are checked structurally by wasmtime: the 0.1.0 and 0.2.0
//! `handler` worlds have the same `handle`, so one typed function serves
//! both.

use wasmtime::component::{ComponentType, Lift, Lower};

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
    });
}

pub use generated::sockets::plugin::log::Level;

/// The interface names of the `log` import, one per version of the
/// contract: the host offers both.
pub const LOG_INTERFACES: [&str; 2] = ["sockets:plugin/log@0.1.0", "sockets:plugin/log@0.2.0"];

/// The interface a connection-world plugin exports.
pub const CONNECTION_INTERFACE: &str = "sockets:plugin/connection@0.2.0";

use crate::request::{Request, Transport};

/// `sockets:plugin/types.transport`, as the canonical ABI lowers it.
#[derive(ComponentType, Lower, Clone, Copy, Debug, PartialEq, Eq)]
#[component(enum)]
#[repr(u8)]
pub enum WitTransport {
    /// `udp`.
    #[component(name = "udp")]
    Udp,
    /// `tcp`.
    #[component(name = "tcp")]
    Tcp,
}

/// `sockets:plugin/types.request`, borrowing everything from a [`Request`]
/// and two formatted addresses: the payload goes from the socket buffer into
/// guest memory with one copy and no allocation.
#[derive(ComponentType, Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct RequestView<'a> {
    transport: WitTransport,
    peer: &'a str,
    local: &'a str,
    payload: &'a [u8],
}

/// The two addresses of a [`Request`], formatted for the plugin. Lives on
/// the stack of the call, so a [`RequestView`] can borrow from it.
pub struct RequestText {
    peer: AddrText,
    local: AddrText,
}

impl RequestText {
    /// Format `req`'s addresses, unless it carries them formatted.
    pub fn new(req: &Request) -> Self {
        match req.names {
            Some(_) => Self { peer: AddrText::empty(), local: AddrText::empty() },
            None => Self { peer: AddrText::new(&req.peer), local: AddrText::new(&req.local) },
        }
    }

    /// The WIT record for `req`, whose addresses this formatted.
    pub fn view<'a>(&'a self, req: &'a Request) -> RequestView<'a> {
        let transport = match req.transport {
            Transport::Udp => WitTransport::Udp,
            Transport::Tcp => WitTransport::Tcp,
        };
        let (peer, local) = match &req.names {
            Some(names) => (names.peer.as_str(), names.local.as_str()),
            None => (self.peer.as_str(), self.local.as_str()),
        };
        RequestView { transport, peer, local, payload: &req.payload }
    }
}

/// A socket address formatted into a fixed buffer, e.g. `127.0.0.1:4000` or
/// `[fe80::1%2]:4000`: the longest form (an IPv6 address with an embedded
/// IPv4 address and a scope id) is 64 bytes.
struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    fn empty() -> Self {
        AddrText { buf: [0; 64], len: 0 }
    }

    fn new(addr: &std::net::SocketAddr) -> Self {
        use std::fmt::Write as _;
        let mut text = AddrText { buf: [0; 64], len: 0 };
        // Cannot fail: every address fits (see above), and a longer one
        // would be cut, never overflow.
        let _ = write!(text, "{addr}");
        text
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `sockets:plugin/connection.connection-info`, borrowing the two formatted
/// addresses.
#[derive(ComponentType, Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct ConnectionInfoView<'a> {
    peer: &'a str,
    local: &'a str,
}

/// The two addresses of a connection, formatted for the plugin.
pub struct ConnectionText {
    peer: AddrText,
    local: AddrText,
}

impl ConnectionText {
    /// Format a connection's addresses.
    pub fn new(peer: &std::net::SocketAddr, local: &std::net::SocketAddr) -> Self {
        Self { peer: AddrText::new(peer), local: AddrText::new(local) }
    }

    /// The WIT record.
    pub fn view(&self) -> ConnectionInfoView<'_> {
        ConnectionInfoView { peer: self.peer.as_str(), local: self.local.as_str() }
    }
}

/// `sockets:plugin/connection.output`, its bytes lifted with the reply cap.
#[derive(ComponentType, Lift, Debug, PartialEq, Eq)]
#[component(record)]
pub struct SessionOutput {
    /// The bytes to write (or their size, if over the cap).
    pub bytes: Reply,
    /// Close after writing them.
    pub close: bool,
}

/// The type of the `session` constructor's parameters.
pub type OpenParams<'a> = (ConnectionInfoView<'a>,);
/// The type of its result: the `own<session>` handle.
pub type OpenResult = (wasmtime::component::ResourceAny,);
/// The type of `on-data`'s parameters: `borrow<session>` and the bytes.
pub type DataParams<'a> = (wasmtime::component::ResourceAny, &'a [u8]);
/// The type of `on-data`'s result.
pub type DataResult = (Result<SessionOutput, ErrorText>,);
/// The type of `on-end`'s parameters.
pub type EndParams = (wasmtime::component::ResourceAny,);
/// The type of `on-end`'s result.
pub type EndResult = (Result<Reply, ErrorText>,);

/// The type of `handle`'s parameters.
pub type HandleParams<'a> = (RequestView<'a>,);
/// The type of `handle`'s result: `result<option<list<u8>>, string>`, lifted
/// with the caps below.
pub type HandleResult = (Result<Option<Reply>, ErrorText>,);

// ---- Replies lifted with a cap -------------------------------------------
//
// A plugin chooses the size of its reply. Lifting `list<u8>` into a `Vec`
// would copy whatever the plugin returns (up to its whole linear memory)
// before the host could look at the length. These two types check the length
// first: a reply over the cap of the current call is never copied out of the
// guest, and an oversized error message is replaced by a short note.
//
// They implement wasmtime's `ComponentType`/`Lift` traits, whose methods are
// hidden from wasmtime's docs; that is why wasmtime is pinned to an exact
// version in Cargo.toml. The layout is the canonical ABI's for `list<u8>` and
// `string`: a (pointer, length) pair; bounds and type checks are delegated to
// wasmtime's own `WasmList` and `WasmStr`.

use std::cell::Cell;
use std::future::Future;

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{WasmList, WasmStr};

thread_local! {
    /// Longest reply the call running on this thread may return.
    static REPLY_CAP: Cell<usize> = const { Cell::new(0) };
}

/// Run `call` (a plugin call) with `cap` as its reply cap.
///
/// The cap is set on whichever thread polls the call, at every poll: an
/// async call may move between threads, and the reply is lifted on the
/// thread that polls it last.
pub async fn with_reply_cap<F: Future>(cap: usize, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        REPLY_CAP.set(cap);
        call.as_mut().poll(cx)
    })
    .await
}

/// The payload of `ok(some(..))`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The reply, copied out of guest memory.
    Bytes(Vec<u8>),
    /// A reply of this many bytes, over the cap: not copied.
    TooLarge(usize),
}

/// The message of `err(..)`, at most [`super::MAX_LOG_MESSAGE`] bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct ErrorText(pub String);

/// The canonical-ABI (pointer, length) pair of a list or string, read from
/// the flat (register) representation.
fn pair_from_flat(src: &[wasmtime::ValRaw; 2]) -> (usize, usize) {
    (src[0].get_u32() as usize, src[1].get_u32() as usize)
}

/// The same pair, read from linear memory.
fn pair_from_memory(bytes: &[u8]) -> (usize, usize) {
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
    (word(0), word(4))
}

impl Reply {
    fn lift(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> Reply {
        if len > REPLY_CAP.get() {
            return Reply::TooLarge(len);
        }
        // In bounds: checked by `WasmList` before this is called.
        Reply::Bytes(cx.memory()[ptr..ptr + len].to_vec())
    }
}

// SAFETY: same ABI and type check as `WasmList<u8>` (`list<u8>`).
unsafe impl ComponentType for Reply {
    type Lower = <WasmList<u8> as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <WasmList<u8> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmList<u8> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads exactly what `WasmList<u8>` reads, after it has checked it.
unsafe impl Lift for Reply {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        <WasmList<u8> as Lift>::linear_lift_from_flat(cx, ty, src)?;
        let (ptr, len) = pair_from_flat(src);
        Ok(Reply::lift(cx, ptr, len))
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        <WasmList<u8> as Lift>::linear_lift_from_memory(cx, ty, bytes)?;
        let (ptr, len) = pair_from_memory(bytes);
        Ok(Reply::lift(cx, ptr, len))
    }
}

/// The canonical ABI's tag for a UTF-16 string in the `latin1+utf16` encoding.
const UTF16_TAG: usize = 1 << 31;

impl ErrorText {
    fn lift(
        cx: &mut LiftContext<'_>,
        len: usize,
        full: impl FnOnce(&mut LiftContext<'_>) -> wasmtime::Result<String>,
    ) -> wasmtime::Result<Self> {
        // `len` counts code units of the component's string encoding; a
        // short message is lifted (and transcoded) by wasmtime as usual.
        // Strings of latin1+utf16 components carry a tag in the top bit.
        if len & !UTF16_TAG <= super::MAX_LOG_MESSAGE {
            return full(cx).map(ErrorText);
        }
        Ok(ErrorText(format!(
            "<an error message of {len} code units, over the {}-byte log limit>",
            super::MAX_LOG_MESSAGE
        )))
    }
}

// SAFETY: same ABI and type check as `WasmStr` (`string`).
unsafe impl ComponentType for ErrorText {
    type Lower = <WasmStr as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <WasmStr as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmStr as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: delegates every read to `WasmStr` / `String`.
unsafe impl Lift for ErrorText {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        <WasmStr as Lift>::linear_lift_from_flat(cx, ty, src)?;
        let (_, len) = pair_from_flat(src);
        ErrorText::lift(cx, len, |cx| <String as Lift>::linear_lift_from_flat(cx, ty, src))
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        <WasmStr as Lift>::linear_lift_from_memory(cx, ty, bytes)?;
        let (_, len) = pair_from_memory(bytes);
        ErrorText::lift(cx, len, |cx| <String as Lift>::linear_lift_from_memory(cx, ty, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::AddrText;

    #[test]
    fn the_longest_socket_address_fits() {
        let addr = std::net::SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap(),
            65535,
            0,
            u32::MAX,
        );
        let text = AddrText::new(&addr.into());
        assert_eq!(text.as_str(), addr.to_string());
        let v4: std::net::SocketAddr = "255.255.255.255:65535".parse().unwrap();
        assert_eq!(AddrText::new(&v4).as_str(), "255.255.255.255:65535");
    }
}
