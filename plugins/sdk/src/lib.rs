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
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! that comes out is a component the host loads directly.
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_handler",
        default_bindings_module: "sockets_plugin::bindings",
        generate_all,
    });
}

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

/// Write to the host's log, tagged with this plugin's name and version.
pub mod log {
    use crate::bindings::sockets::plugin::log::{Level, log};

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
