//! Part of [`sockets-plugin`](../sockets_plugin/index.html), not to be used
//! directly: the bindings of world `handler` of `sockets:plugin@0.1.0`, and
//! the `log` functions over them, which `sockets-plugin` re-exports.
//!
//! They are a crate of their own so that a plugin of the other world,
//! `connection-handler`, does not link them. The bindings carry a custom
//! section describing the imports of their world, which `wasm-component-ld`
//! merges into the component's world; that world's type `request` (from
//! `use types.{request}`) is always kept, so a connection plugin that linked
//! them would import `sockets:plugin/types@0.1.0`. The object of this crate
//! is linked only when a symbol of it is used (a handler plugin's call of
//! `log`), which is why the bindings are generated without the link helpers
//! (`#[used]` statics that would link the object into every plugin). A
//! handler plugin does not need the helpers: `export!` puts the full
//! description of the world, imports and exports, into the plugin's own
//! crate.
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_handler",
        default_bindings_module: "sockets_plugin::bindings",
        generate_all,
        disable_custom_section_link_helpers: true,
    });
}

/// Write to the host's log, tagged with this plugin's name and version.
///
/// For a plugin of the `handler` world: these call `sockets:plugin/log@0.1.0`.
/// A connection plugin uses `sockets_plugin::connection::log` instead.
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
