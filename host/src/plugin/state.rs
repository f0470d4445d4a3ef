//! What a plugin's store holds ([`HostState`]): its limits, its WASI
//! context (built on first use), its side of the host services
//! ([`services`](super::services)) and the host side of the `log` and
//! `wasi:logging` imports.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::StoreLimitsBuilder;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::services::{LOGGING_INTERFACE, LoggingLevel, Services, ServicesState};
use super::{MAX_LOG_MESSAGE, PluginInfo, bindings, output, prefix};

/// Offer the `sockets:plugin/log` import. Hand-written rather than
/// generated, so that the message is read in place: the generated binding
/// would copy the whole string out of guest memory (up to `--max-memory`)
/// before the host could cut it.
pub(crate) fn add_log_to_linker(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime::component::WasmStr;
    for name in bindings::LOG_INTERFACES {
        let mut log = linker.instance(name)?;
        log.func_wrap("log", |store, (level, message): (bindings::Level, WasmStr)| {
            // UTF-8 (what Rust, C, Python and JavaScript components use) is
            // borrowed from guest memory; other encodings are transcoded.
            let text = message.to_str(&store)?;
            store.data().log(logging_level(level), None, &text);
            Ok(())
        })?;
    }
    // `wasi:logging`, read in place the same way; the context becomes a
    // field of the line.
    let mut logging = linker.instance(LOGGING_INTERFACE)?;
    logging.func_wrap("log", |store, (level, context, message): (LoggingLevel, WasmStr, WasmStr)| {
        let context = context.to_str(&store)?;
        let message = message.to_str(&store)?;
        store.data().log(level, Some(&context), &message);
        Ok(())
    })?;
    Ok(())
}

/// The data of one store: only what a sandboxed request needs.
///
/// Kept small because one is built per request. The WASI context is built
/// only when the plugin first calls a WASI function: most requests of most
/// plugins never do, and building it (random seeds, clocks, pipes) would
/// cost more than the call itself.
pub struct HostState {
    pub(super) limits: StoreLimits,
    info: Arc<PluginInfo>,
    /// Epoch ticks left before the current call is interrupted.
    pub(super) ticks_left: u64,
    wasi: Option<Box<WasiState>>,
    /// Open buckets and the call's key-value budget.
    pub(super) services: ServicesState,
}

/// WASI for one store: no args, no env, no files, no network; stdout and
/// stderr go to the log ([`output`]).
struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    output: output::PluginOutput,
}

impl WasiState {
    fn new(info: Arc<PluginInfo>) -> Self {
        let output = output::PluginOutput::new(info);
        // The WASI defaults grant nothing: no args, no env, no preopened
        // directories. Sockets are refused explicitly as well.
        let ctx = WasiCtx::builder()
            .stdout(output.stdout())
            .stderr(output.stderr())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self { ctx, table: ResourceTable::new(), output }
    }
}

impl HostState {
    pub(super) fn new(info: Arc<PluginInfo>, max_memory: usize, services: Arc<Services>) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(max_memory)
            // Fail loudly: a plugin that hits the cap traps instead of seeing
            // `memory.grow` fail and limping on.
            .trap_on_grow_failure(true)
            .build();
        Self { limits, info, ticks_left: 0, wasi: None, services: ServicesState::new(services, max_memory) }
    }

    /// A call of a reused instance starts: a fresh output and key-value
    /// budget. (A fresh instance starts with full budgets.)
    pub(super) fn begin_call(&mut self) {
        self.services.begin_call();
        if let Some(wasi) = &self.wasi {
            wasi.output.begin_call();
        }
    }

    /// A call ended: log what is left of the plugin's output.
    pub(super) fn end_call(&mut self) {
        if let Some(wasi) = &self.wasi {
            wasi.output.end_call();
        }
    }
}

impl HostState {
    /// What resources the plugin holds open, if any: after the init step
    /// ([`super::init`]) there must be none, as a handle in the snapshot
    /// would name nothing in the instances made from it.
    pub(super) fn open_resources(&self) -> Option<String> {
        let wasi = self.wasi.as_ref().is_some_and(|w| !w.table.is_empty());
        let buckets = self.services.open_buckets();
        match (wasi, buckets) {
            (false, 0) => None,
            (true, 0) => Some("a WASI resource (a stream, a pollable, ...)".into()),
            (false, n) => Some(format!("{n} key-value bucket(s)")),
            (true, n) => Some(format!("a WASI resource and {n} key-value bucket(s)")),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(|| Box::new(WasiState::new(self.info.clone())));
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl HostState {
    /// A line the plugin logs, through `log` (no `context`) or
    /// `wasi:logging`: `message` and `context` are still in guest memory,
    /// and only their first [`MAX_LOG_MESSAGE`] and [`MAX_LOG_CONTEXT`]
    /// bytes are copied. `critical` is logged as an error with
    /// `critical=true`.
    fn log(&self, level: LoggingLevel, context: Option<&str>, message: &str) {
        use tracing::Level as L;
        let info = &self.info;
        let (name, version, len) = (&info.name, &info.version, message.len());
        let at = match level {
            LoggingLevel::Trace => L::TRACE,
            LoggingLevel::Debug => L::DEBUG,
            LoggingLevel::Info => L::INFO,
            LoggingLevel::Warn => L::WARN,
            LoggingLevel::Error | LoggingLevel::Critical => L::ERROR,
        };
        info.log_line(at, |suppressed| {
            let message = prefix(message, MAX_LOG_MESSAGE);
            let cut = if message.len() < len { "..." } else { "" };
            // `None` fields are left out of the line.
            let context = context.map(|c| prefix(c, MAX_LOG_CONTEXT));
            let critical = (level == LoggingLevel::Critical).then_some(true);
            match at {
                L::TRACE => tracing::trace!(plugin = %name, %version, context, critical, suppressed, "{message}{cut}"),
                L::DEBUG => tracing::debug!(plugin = %name, %version, context, critical, suppressed, "{message}{cut}"),
                L::INFO => tracing::info!(plugin = %name, %version, context, critical, suppressed, "{message}{cut}"),
                L::WARN => tracing::warn!(plugin = %name, %version, context, critical, suppressed, "{message}{cut}"),
                _ => tracing::error!(plugin = %name, %version, context, critical, suppressed, "{message}{cut}"),
            }
        });
    }
}

/// The project's `log` level as the `wasi:logging` one: the same five
/// levels, and no `critical`.
fn logging_level(level: bindings::Level) -> LoggingLevel {
    use bindings::Level;
    match level {
        Level::Trace => LoggingLevel::Trace,
        Level::Debug => LoggingLevel::Debug,
        Level::Info => LoggingLevel::Info,
        Level::Warn => LoggingLevel::Warn,
        Level::Error => LoggingLevel::Error,
    }
}

/// Longest `wasi:logging` context kept, in bytes.
const MAX_LOG_CONTEXT: usize = 128;
