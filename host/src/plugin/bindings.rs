//! Generated and hand-written bindings for the WIT world `handler`.
//!
//! `bindgen!` generates the host side of the imported `log` interface. The
//! exported `handle` is called through a typed function with a borrowed
//! request record instead of the generated owned `Request`, so a payload goes
//! from the socket buffer into guest memory with one copy and no allocation;
//! its result is lifted by [`Reply`] and [`ErrorText`], which check the size
//! of what the plugin returns before copying it.

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
#[derive(ComponentType, Lower, Clone, Copy, Debug)]
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
/// The type of `handle`'s result: `result<option<list<u8>>, string>`, lifted
/// with the caps below.
pub type HandleResult = (Result<Option<Reply>, ErrorText>,);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

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
use wasmtime::component::{Lift, WasmList, WasmStr};

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

impl ErrorText {
    fn lift(
        cx: &mut LiftContext<'_>,
        len: usize,
        full: impl FnOnce(&mut LiftContext<'_>) -> wasmtime::Result<String>,
    ) -> wasmtime::Result<Self> {
        // `len` counts code units of the component's string encoding; a
        // short message is lifted (and transcoded) by wasmtime as usual.
        if len <= super::MAX_LOG_MESSAGE {
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
