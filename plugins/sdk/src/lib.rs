//! The Rust guest SDK for `host` plugins.
//!
//! A plugin is a type that implements [`Plugin`] plus one [`export!`] line:
//!
//! ```no_run
//! use sockets_plugin::{Plugin, Request};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
//!         Ok(Some(req.payload))
//!     }
//! }
//!
//! sockets_plugin::export!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (once:
//! `rustup target add wasm32-wasip2`); the `.wasm` that comes out is a
//! component the host loads directly.
//!
//! # In a project of your own
//!
//! This directory is the whole SDK: the crate, its `handler/` crate and the
//! WIT both bind (`wit/` and `handler/wit/`, copies of the repository's
//! `wit/`). Copy it into your project (`cp -r plugins/sdk sockets-plugin`)
//! and depend on it by path, `sockets-plugin = { path = "sockets-plugin" }`,
//! in a crate with `crate-type = ["cdylib"]`; nothing else of the repository
//! is needed. The README's "Writing a plugin in Rust" shows the whole
//! project.
//!
//! # Connection plugins
//!
//! A plugin that keeps state for a TCP connection, and does its own framing,
//! implements [`connection::Connection`] instead (world `connection-handler`
//! of `sockets:plugin@0.2.0`): one value per connection, fed the bytes of
//! the stream as they arrive, split anywhere. This one answers every complete
//! line with its number on the connection:
//!
//! ```no_run
//! use sockets_plugin::connection::{Connection, ConnectionInfo, Output};
//!
//! #[derive(Default)]
//! struct Numbered { partial: Vec<u8>, lines: u64 }
//!
//! impl Connection for Numbered {
//!     fn new(_info: ConnectionInfo) -> Self {
//!         Self::default()
//!     }
//!     fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
//!         self.partial.extend_from_slice(&data);
//!         let mut reply = Vec::new();
//!         while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
//!             self.partial.drain(..=end);
//!             self.lines += 1;
//!             reply.extend_from_slice(format!("line {}\n", self.lines).as_bytes());
//!         }
//!         Ok(Output::reply(reply))
//!     }
//! }
//!
//! sockets_plugin::export_connection!(Numbered);
//! ```
//!
//! A component exports one world: a crate uses [`export!`] or
//! [`export_connection!`], not both.
#![deny(missing_docs)]

/// The bindings of world `handler` (0.1.0), in a crate of their own: see
/// there why.
#[doc(hidden)]
pub use sockets_plugin_handler::bindings;

/// The trait a plugin implements: `handle` is called once per request.
///
/// Return `Ok(Some(bytes))` to reply, `Ok(None)` to send nothing, and
/// `Err(message)` to have the host log `message` and send nothing (on TCP it
/// then closes the connection: the peer expected a reply).
pub use bindings::Guest as Plugin;
/// One request: transport, peer and local address, and the payload.
pub use bindings::sockets::plugin::types::Request;
/// UDP or TCP.
pub use bindings::sockets::plugin::types::Transport;

/// Export a type implementing [`Plugin`] as this component's `handle`.
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        $crate::bindings::__export_handler!($plugin with_types_in $crate::bindings);
    };
}

#[doc(inline)]
pub use sockets_plugin_handler::log;

/// Bindings of world `connection-handler` of `sockets:plugin@0.2.0`; use
/// [`connection`] instead.
#[doc(hidden)]
pub mod connection_bindings {
    wit_bindgen::generate!({
        world: "connection-handler",
        path: "wit/0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_connection_handler",
        default_bindings_module: "sockets_plugin::connection_bindings",
        additional_derives: [PartialEq, Eq],
    });
}

/// Bindings of the host services (world `imports` of
/// `sockets:services@0.1.0`); use [`keyvalue`], [`config`] and [`logging`].
#[doc(hidden)]
pub mod services_bindings {
    wit_bindgen::generate!({
        world: "sockets:services/imports",
        path: "wit/services",
        // The interfaces are `wasi:` ones, which wit-bindgen otherwise
        // expects from the `wasi` crate; that crate has no keyvalue,
        // config or logging.
        generate_all,
    });
}

pub mod keyvalue {
    //! `wasi:keyvalue@0.2.0-draft`: durable buckets shared by every
    //! instance, every version of the plugin and (on Redis) every host.
    //!
    //! ```no_run
    //! use sockets_plugin::keyvalue::{atomics, store};
    //!
    //! fn visits() -> Result<u64, store::Error> {
    //!     let bucket = store::open("default")?;
    //!     atomics::increment(&bucket, "visits", 1)
    //! }
    //! ```
    //!
    //! A plugin may open the buckets the operator granted (`default`
    //! unless `--kv-bucket` says otherwise); others are
    //! `Error::AccessDenied`. Keys, values, bytes per bucket and operations
    //! per call are capped: over a cap is `Error::Other` saying which.
    //! A component imports only the interfaces its code calls.
    pub use crate::services_bindings::wasi::keyvalue::{atomics, batch, store};
}

/// `wasi:config/store@0.2.0-rc.1`: the variables the operator set with
/// `--var KEY=VALUE`; `get` of a name not set is `Ok(None)`.
pub use services_bindings::wasi::config::store as config;

/// `wasi:logging/logging@0.1.0-draft`: `log(level, context, message)`
/// writes a line to the host's log, with `context` as a field. Works in
/// both worlds.
pub use services_bindings::wasi::logging::logging;

pub mod connection {
    //! Connection plugins: world `connection-handler` of `sockets:plugin@0.2.0`.
    //!
    //! The host creates one value of the plugin's [`Connection`] type when it
    //! accepts a TCP connection ([`Connection::new`]), calls
    //! [`on_data`](Connection::on_data) with the bytes of the stream as they
    //! arrive, [`on_end`](Connection::on_end) when the peer closes its side, and
    //! drops the value when the connection ends, whichever way it ends (so a
    //! [`Drop`] impl runs then, unless the instance trapped). Every connection
    //! gets an instance of its own: statics are not shared between connections.
    //!
    //! The data of a call is the next piece of the stream, split anywhere: a
    //! message can arrive over many calls and one call can hold many messages.
    //! Keep the unused rest (a partial message) in the value, and bound it: the
    //! host does not limit how much a plugin buffers beyond `--max-memory`.
    //!
    //! A connection plugin logs with this module's [`log`], not with the
    //! [top-level `log`](crate::log) (its documentation says why).

    use std::cell::RefCell;
    use std::marker::PhantomData;

    use crate::connection_bindings::exports::sockets::plugin::connection as wit;

    /// The two ends of the connection: `peer` (the remote address, e.g.
    /// `127.0.0.1:4000` or `[::1]:4000`) and `local` (the address the peer
    /// connected to, in the same form).
    pub use wit::ConnectionInfo;
    /// What to do after [`Connection::on_data`]: the `bytes` to write, and
    /// whether to `close` the connection after them. Build one with
    /// [`Output::none`], [`Output::reply`] or [`Output::reply_and_close`].
    pub use wit::Output;

    /// The trait a connection plugin implements: one value per TCP
    /// connection.
    ///
    /// Calls never overlap. A call that returns `Err(message)`, panics or
    /// runs past the host's `--timeout` ends its connection (and only its
    /// connection); the host logs the message or the trap.
    pub trait Connection: 'static {
        /// A connection was accepted. A panic here closes it at once.
        fn new(info: ConnectionInfo) -> Self;

        /// The next bytes of the stream (at least one, at most the host's
        /// `--max-request`), in order, split anywhere.
        ///
        /// `Ok(output)`: the host writes `output.bytes` and, if
        /// `output.close`, closes the connection after them (nothing more is
        /// read; [`on_end`](Connection::on_end) is not called). `Err(message)`:
        /// the host logs `message`, writes nothing more and closes the
        /// connection. To answer bad input and keep the connection, reply
        /// with the protocol's error message instead.
        fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String>;

        /// The peer closed its side of the stream: no more data will come.
        /// Called at most once. The host writes the bytes returned, then
        /// closes the connection. The default writes nothing.
        fn on_end(&mut self) -> Result<Vec<u8>, String> {
            Ok(Vec::new())
        }
    }

    impl Default for Output {
        /// [`Output::none`].
        fn default() -> Self {
            Output::none()
        }
    }

    impl Output {
        /// Write nothing, keep the connection open (the protocol has
        /// nothing to say yet, e.g. a message is still partial).
        pub fn none() -> Self {
            Output { bytes: Vec::new(), close: false }
        }

        /// Write `bytes` (may be empty), keep the connection open.
        pub fn reply(bytes: impl Into<Vec<u8>>) -> Self {
            Output { bytes: bytes.into(), close: false }
        }

        /// Write `bytes` (may be empty), then close the connection: the
        /// answer to `QUIT`, `Connection: close`, or a protocol error after
        /// which the stream cannot be read on.
        pub fn reply_and_close(bytes: impl Into<Vec<u8>>) -> Self {
            Output { bytes: bytes.into(), close: true }
        }
    }

    /// The generated `session` resource, whose methods take `&self`, over a
    /// [`Connection`], whose methods take `&mut self`. Calls never overlap,
    /// so the `RefCell` is never borrowed twice.
    #[doc(hidden)]
    pub struct Session<C>(RefCell<C>);

    impl<C: Connection> wit::GuestSession for Session<C> {
        fn new(info: ConnectionInfo) -> Self {
            Session(RefCell::new(C::new(info)))
        }
        fn on_data(&self, data: Vec<u8>) -> Result<Output, String> {
            self.0.borrow_mut().on_data(data)
        }
        fn on_end(&self) -> Result<Vec<u8>, String> {
            self.0.borrow_mut().on_end()
        }
    }

    /// The type [`export_connection!`](crate::export_connection) exports:
    /// interface `connection` with `session` = [`Session<C>`].
    #[doc(hidden)]
    pub struct Export<C>(PhantomData<C>);

    impl<C: Connection> wit::Guest for Export<C> {
        type Session = Session<C>;
    }

    /// Write to the host's log, tagged with this plugin's name and version.
    ///
    /// The same functions as the crate's top-level [`log`](crate::log), but
    /// through the `log` interface of `sockets:plugin@0.2.0`, the version that
    /// defines the connection world, where the top-level `log` calls the one
    /// of 0.1.0 (the `handler` world's). A component imports what its code
    /// calls: a connection plugin that logs through this module imports only
    /// `sockets:plugin/log@0.2.0` besides WASI, one version of the contract,
    /// while the top-level `log` would add imports of
    /// `sockets:plugin/log@0.1.0` and `sockets:plugin/types@0.1.0`, which a
    /// host serving only 0.2.0 would refuse.
    ///
    /// Built for a target other than wasm32 (the unit tests of a plugin), the
    /// messages go to stderr instead of panicking for want of a host.
    pub mod log {
        #[cfg(target_arch = "wasm32")]
        use crate::connection_bindings::sockets::plugin::log::{Level, log};

        #[cfg(not(target_arch = "wasm32"))]
        use self::native::{Level, log};

        #[cfg(not(target_arch = "wasm32"))]
        mod native {
            pub use crate::connection_bindings::sockets::plugin::log::Level;
            pub fn log(level: Level, message: &str) {
                eprintln!("{level:?}: {message}");
            }
        }

        /// Log at trace level.
        pub fn trace(message: &str) {
            log(Level::Trace, message)
        }
        /// Log at debug level.
        pub fn debug(message: &str) {
            log(Level::Debug, message)
        }
        /// Log at info level.
        pub fn info(message: &str) {
            log(Level::Info, message)
        }
        /// Log at warn level.
        pub fn warn(message: &str) {
            log(Level::Warn, message)
        }
        /// Log at error level.
        pub fn error(message: &str) {
            log(Level::Error, message)
        }
    }
}

/// Export a type implementing [`connection::Connection`] as this component's
/// `sockets:plugin/connection@0.2.0` interface (world `connection-handler`).
///
/// ```no_run
/// # use sockets_plugin::connection::{Connection, ConnectionInfo, Output};
/// struct Echo;
/// impl Connection for Echo {
///     fn new(_: ConnectionInfo) -> Self {
///         Echo
///     }
///     fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
///         Ok(Output::reply(data))
///     }
/// }
/// sockets_plugin::export_connection!(Echo);
/// ```
#[macro_export]
macro_rules! export_connection {
    ($connection:ty) => {
        const _: () = {
            type __SocketsPluginConnection = $crate::connection::Export<$connection>;
            $crate::connection_bindings::__export_connection_handler!(
                __SocketsPluginConnection with_types_in $crate::connection_bindings
            );
        };
    };
}
