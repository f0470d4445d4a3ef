//! What a plugin's store holds ([`HostState`]): its limits, its WASI
//! context (built on first use) and the host side of the `log` import.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::StoreLimitsBuilder;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

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
            store.data().log(level, &text);
            Ok(())
        })?;
    }
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
    pub(super) fn new(info: Arc<PluginInfo>, max_memory: usize) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(max_memory)
            // Fail loudly: a plugin that hits the cap traps instead of seeing
            // `memory.grow` fail and limping on.
            .trap_on_grow_failure(true)
            .build();
        Self { limits, info, ticks_left: 0, wasi: None }
    }

    /// A call of a reused instance starts: a fresh output budget. (A fresh
    /// instance builds its WASI context, with a full budget, on first use.)
    pub(super) fn begin_call(&mut self) {
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

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(|| Box::new(WasiState::new(self.info.clone())));
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl HostState {
    /// The plugin's `log` import: `message` is still in guest memory, and
    /// only its first [`MAX_LOG_MESSAGE`] bytes are copied.
    fn log(&self, level: bindings::Level, message: &str) {
        use bindings::Level;
        use tracing::Level as L;
        let info = &self.info;
        let (name, version, len) = (&info.name, &info.version, message.len());
        let at = match level {
            Level::Trace => L::TRACE,
            Level::Debug => L::DEBUG,
            Level::Info => L::INFO,
            Level::Warn => L::WARN,
            Level::Error => L::ERROR,
        };
        info.log_line(at, |suppressed| {
            let message = prefix(message, MAX_LOG_MESSAGE);
            let cut = if message.len() < len { "..." } else { "" };
            match level {
                Level::Trace => tracing::trace!(plugin = %name, %version, suppressed, "{message}{cut}"),
                Level::Debug => tracing::debug!(plugin = %name, %version, suppressed, "{message}{cut}"),
                Level::Info => tracing::info!(plugin = %name, %version, suppressed, "{message}{cut}"),
                Level::Warn => tracing::warn!(plugin = %name, %version, suppressed, "{message}{cut}"),
                Level::Error => tracing::error!(plugin = %name, %version, suppressed, "{message}{cut}"),
            }
        });
    }
}
