//! Plugins: a compiled, linked component ([`Plugin`]) and one sandboxed
//! instance of it ([`Instance`]).
//!
//! A [`Plugin`] is immutable and shared by every request that uses that
//! version. An [`Instance`] owns a wasmtime `Store`: its memory, its limits
//! and its WASI context with no files, no environment and no network. By
//! default each request gets a fresh instance, so no state leaks from one
//! request to the next.

pub mod bindings;
pub mod cache;
pub mod engine;
pub mod loader;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Func, InstancePre, ResourceTable, TypedFunc};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bindings::{Reply, RequestRef, Transport};

/// Bytes of plugin stdout/stderr kept per request; the rest is dropped.
pub const MAX_PLUGIN_OUTPUT: usize = 16 << 10;
/// Longest plugin log message kept, in bytes; longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 4 << 10;

/// What identifies a loaded plugin version in logs.
#[derive(Debug)]
pub struct PluginInfo {
    /// File stem, e.g. `echo` for `echo.wasm`.
    pub name: String,
    /// First 12 hex digits of the file's sha256: the version shown in logs.
    pub version: String,
    /// The file's whole sha256, in hex.
    pub sha256: String,
    /// Where it was loaded from.
    pub path: PathBuf,
}

/// One compiled, linked and validated plugin version.
pub struct Plugin {
    info: Arc<PluginInfo>,
    pre: InstancePre<HostState>,
    handle: wasmtime::component::ComponentExportIndex,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Per-request resource limits.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Wall-clock budget of one call (instantiation included).
    pub timeout: Duration,
    /// Linear memory cap of the instance.
    pub max_memory: usize,
    /// Fuel per call, if metering is on.
    pub fuel: Option<u64>,
}

/// Why a call produced no reply. Callers match on this to count and log.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin returned `err(message)`.
    #[error("plugin returned an error: {0}")]
    Plugin(String),
    /// The call ran past `--timeout`.
    #[error("cut off after {0:?} (--timeout)")]
    Timeout(Duration),
    /// The call ran out of fuel.
    #[error("ran out of fuel (--fuel)")]
    OutOfFuel,
    /// The instance trapped: a guest panic, stack overflow, memory limit, ...
    #[error("trapped: {0}")]
    Trap(String),
    /// No instance could be created (e.g. every pool slot is busy).
    #[error("cannot instantiate: {0:#}")]
    Instantiate(anyhow::Error),
}

impl CallError {
    /// Whether the instance must be thrown away (its state may be corrupt).
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, CallError::Plugin(_))
    }

    fn from_wasmtime(err: wasmtime::Error, timeout: Duration) -> Self {
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(timeout),
            Some(Trap::OutOfFuel) => CallError::OutOfFuel,
            _ => CallError::Trap(describe_trap(&err)),
        }
    }
}

impl Plugin {
    /// Metadata for logs.
    pub fn info(&self) -> &Arc<PluginInfo> {
        &self.info
    }

    /// Create a sandboxed instance.
    ///
    /// Instances are always driven by async calls, on a fiber: a plugin
    /// may block in a WASI call (a sleep, a poll) where only dropping the
    /// future can stop it, and a long-running call yields to the other
    /// requests at every epoch tick. Measured in `benches/instance.rs`, a
    /// fiber adds about 0.15 µs to a call and 0.4 µs to a fresh instance.
    pub async fn instantiate(&self, limits: &CallLimits) -> Result<Instance, CallError> {
        let mut store = Store::new(self.pre.engine(), HostState::new(self.info.clone(), limits.max_memory));
        store.limiter(|s| &mut s.limits);
        // At every epoch tick: trap once the call's tick budget (set per
        // call) is spent; until then yield to the scheduler, so that a busy
        // plugin does not starve the other requests on its thread.
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if state.ticks_left == 0 {
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks_left -= 1;
            Ok(UpdateDeadline::Yield(1))
        });
        arm(&mut store, limits)?;
        let instance = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            if e.downcast_ref::<Trap>().is_some() {
                CallError::from_wasmtime(e, limits.timeout)
            } else {
                CallError::Instantiate(e.into())
            }
        })?;
        let handle = instance
            .get_func(&mut store, self.handle)
            .ok_or_else(|| CallError::Instantiate(anyhow::anyhow!("instance has no `handle` export")))?;
        Ok(Instance { store, handle, calls: 0 })
    }
}

/// One live instance of a plugin, with its own store and limits.
pub struct Instance {
    store: Store<HostState>,
    handle: Func,
    calls: u64,
}

impl Instance {
    /// How many calls this instance has served.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Call `handle` once. On `Ok(Some(reply))` the caller gets the reply,
    /// or its size if it was over `max_reply` (then it was never copied).
    ///
    /// The caller bounds the whole call with a timer as well: the epoch
    /// deadline stops guest code, the timer also stops a call blocked in a
    /// host function.
    pub async fn call(
        &mut self,
        req: RequestRef<'_>,
        limits: &CallLimits,
        max_reply: usize,
    ) -> Result<Option<Reply>, CallError> {
        self.calls += 1;
        if self.calls > 1 {
            // A reused instance gets a fresh budget for every call.
            arm(&mut self.store, limits)?;
        }
        // SAFETY: the loader checked that `handle` has exactly this type with
        // `Func::typed`; only the lifetime of the borrowed request differs,
        // which does not change the canonical ABI.
        let func: TypedFunc<bindings::HandleParams<'_>, bindings::HandleResult> =
            unsafe { TypedFunc::new_unchecked(self.handle) };
        let result = bindings::with_reply_cap(max_reply, func.call_async(&mut self.store, (req,))).await;
        self.store.data_mut().flush_output();
        match result {
            Ok((Ok(reply),)) => Ok(reply),
            Ok((Err(message),)) => Err(CallError::Plugin(truncate(message.0, MAX_LOG_MESSAGE))),
            Err(e) => Err(CallError::from_wasmtime(e, limits.timeout)),
        }
    }
}

/// Give `store` the budget of one call: `--timeout` in epoch ticks, counted
/// from now, and `--fuel` if metering is on.
fn arm(store: &mut Store<HostState>, limits: &CallLimits) -> Result<(), CallError> {
    store.set_epoch_deadline(1);
    store.data_mut().ticks_left = ticks(limits.timeout);
    if let Some(fuel) = limits.fuel {
        store.set_fuel(fuel).map_err(|e| CallError::Instantiate(e.into()))?;
    }
    Ok(())
}

/// A trap in one line: what happened and in which guest function, e.g.
/// `wasm trap: call stack exhausted (in hostile::deep)`. Wasmtime's own
/// message carries the whole wasm backtrace, one line per frame, which is
/// thousands of lines for a stack overflow.
fn describe_trap(err: &wasmtime::Error) -> String {
    let what = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    let frame = err.downcast_ref::<wasmtime::WasmBacktrace>().and_then(|bt| bt.frames().first());
    match frame.and_then(|f| f.func_name()) {
        // `{:#}` leaves out the hash of a mangled Rust name.
        Some(func) => format!("{what} (in {:#})", rustc_demangle::demangle(func)),
        None => what,
    }
}

fn ticks(timeout: Duration) -> u64 {
    let tick = engine::EPOCH_TICK.as_nanos();
    (timeout.as_nanos().div_ceil(tick) as u64).max(1)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// The data of one store: only what a sandboxed request needs.
///
/// Kept small because one is built per request. The WASI context is built
/// only when the plugin first calls a WASI function: most requests of most
/// plugins never do, and building it (random seeds, clocks, pipes) would
/// cost more than the call itself.
pub struct HostState {
    limits: StoreLimits,
    info: Arc<PluginInfo>,
    /// Epoch ticks left before the current call is interrupted.
    ticks_left: u64,
    wasi: Option<Box<WasiState>>,
}

/// WASI for one store: no args, no env, no files, no network; stdout and
/// stderr captured for the log.
struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// How much of stdout/stderr was already logged (instances can be reused).
    logged: [usize; 2],
}

impl WasiState {
    fn new() -> Self {
        let stdout = MemoryOutputPipe::new(MAX_PLUGIN_OUTPUT);
        let stderr = MemoryOutputPipe::new(MAX_PLUGIN_OUTPUT);
        // The WASI defaults grant nothing: no args, no env, no preopened
        // directories. Sockets are refused explicitly as well.
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self { ctx, table: ResourceTable::new(), stdout, stderr, logged: [0; 2] }
    }
}

impl HostState {
    fn new(info: Arc<PluginInfo>, max_memory: usize) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(max_memory)
            // Fail loudly: a plugin that hits the cap traps instead of seeing
            // `memory.grow` fail and limping on.
            .trap_on_grow_failure(true)
            .build();
        Self { limits, info, ticks_left: 0, wasi: None }
    }

    /// Send what the plugin printed to the host's log, one event per line.
    fn flush_output(&mut self) {
        let Some(wasi) = self.wasi.as_deref_mut() else {
            return;
        };
        for (i, pipe) in [&wasi.stdout, &wasi.stderr].into_iter().enumerate() {
            let bytes = pipe.contents();
            let new = &bytes[wasi.logged[i].min(bytes.len())..];
            if new.is_empty() {
                continue;
            }
            wasi.logged[i] = bytes.len();
            let (name, version) = (&self.info.name, &self.info.version);
            for line in String::from_utf8_lossy(new).lines() {
                if i == 0 {
                    tracing::info!(plugin = %name, %version, stream = "stdout", "{line}");
                } else {
                    tracing::warn!(plugin = %name, %version, stream = "stderr", "{line}");
                }
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(|| Box::new(WasiState::new()));
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl bindings::LogHost for HostState {
    fn log(&mut self, level: bindings::Level, message: String) {
        use bindings::Level;
        let message = truncate(message, MAX_LOG_MESSAGE);
        let (name, version) = (&self.info.name, &self.info.version);
        match level {
            Level::Trace => tracing::trace!(plugin = %name, %version, "{message}"),
            Level::Debug => tracing::debug!(plugin = %name, %version, "{message}"),
            Level::Info => tracing::info!(plugin = %name, %version, "{message}"),
            Level::Warn => tracing::warn!(plugin = %name, %version, "{message}"),
            Level::Error => tracing::error!(plugin = %name, %version, "{message}"),
        }
    }
}
