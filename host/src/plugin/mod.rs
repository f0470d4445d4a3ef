//! Plugins: a compiled, linked component ([`Plugin`]) and one sandboxed
//! instance of it ([`Instance`]).
//!
//! A [`Plugin`] is immutable and shared by every request that uses that
//! version. An [`Instance`] owns a wasmtime `Store`: its memory, its limits
//! and its WASI context with no files, no environment and no network. By
//! default each request gets a fresh instance, so no state leaks from one
//! request to the next; a plugin of the connection world gets one instance
//! per connection, holding its `session` resource ([`connection`]).

pub mod admission;
pub mod bindings;
pub mod cache;
pub mod connection;
pub mod engine;
pub mod history;
pub mod init;
pub mod loader;
mod output;
pub mod services;
mod state;
pub mod vars;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{ComponentExportIndex, Func, InstancePre, TypedFunc};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::ratelimit::Limiter;

pub use state::HostState;
pub(crate) use state::add_log_to_linker;

pub use bindings::Reply;

use crate::request::Request;

/// Bytes of plugin stdout/stderr kept per request; the rest is dropped.
pub const MAX_PLUGIN_OUTPUT: usize = 16 << 10;
/// Longest plugin log message kept, in bytes; longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 4 << 10;

/// What identifies a loaded plugin version in logs.
#[derive(Debug)]
pub struct PluginInfo {
    /// File stem, e.g. `echo` for `echo.wasm`.
    pub name: String,
    /// First 12 hex digits of [`Self::identity`]: the version shown in
    /// logs.
    pub version: String,
    /// The file's whole sha256, in hex.
    pub sha256: String,
    /// What makes the version, in hex: the file's sha256, or with
    /// `--var-file`s, a sha256 of it and their values
    /// ([`loader::PluginFile::identity`]).
    pub identity: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Lines the plugin writes: its `log` calls, stdout and stderr.
    lines: Limiter,
    /// The host's notes about the plugin's output (bytes dropped).
    notes: Limiter,
}

/// Log lines a plugin causes are rate-limited per plugin version, not per
/// call site (`log_limited!`): a static limiter at the call site would be
/// shared by every plugin the host serves, so one noisy plugin would
/// silence what the others print. Per version, each plugin gets
/// [`crate::ratelimit::LINES_PER_SECOND`] lines a second of its own, and the
/// number of limiters is the number of loaded versions, which the operator
/// chooses. The notes about dropped output have their own limiter, so they
/// are still seen when the plugin's own lines are being cut.
impl PluginInfo {
    fn new(name: String, sha256: String, identity: String, path: PathBuf) -> Self {
        let version = identity[..12].to_string();
        Self { name, version, sha256, identity, path, lines: Limiter::new(), notes: Limiter::new() }
    }

    /// Log one line written by the plugin, if its rate limit allows:
    /// `event` gets the number of lines left out before it (`None` if none).
    /// A line below the log level costs nothing and takes no share of the
    /// limit.
    fn log_line(&self, level: tracing::Level, event: impl FnOnce(Option<u64>)) {
        if level <= tracing::level_filters::LevelFilter::current()
            && let Some(n) = self.lines.allow()
        {
            event((n > 0).then_some(n));
        }
    }

    /// Like [`Self::log_line`], for the host's notes about the plugin.
    fn log_note(&self, event: impl FnOnce(Option<u64>)) {
        if let Some(n) = self.notes.allow() {
            event((n > 0).then_some(n));
        }
    }
}

/// The world a plugin implements, which decides how the host drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `handler` (0.1.0 or 0.2.0): one call of `handle` per request.
    Handler,
    /// `connection-handler` (0.2.0): a `session` resource per TCP connection.
    Connection,
}

impl World {
    /// The world's name, as users see it in messages.
    pub fn name(self) -> &'static str {
        match self {
            World::Handler => "handler",
            World::Connection => "connection-handler",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a plugin's exports are, found once at load.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Exports {
    Handler { handle: ComponentExportIndex },
    Connection(connection::Exports),
}

/// An instance's exports, looked up once per instance.
#[derive(Debug, Clone, Copy)]
enum Funcs {
    Handle(Func),
    Session(connection::Funcs),
}

/// One compiled, linked and validated plugin version.
pub struct Plugin {
    info: Arc<PluginInfo>,
    pre: InstancePre<HostState>,
    exports: Exports,
    admission: Arc<admission::Admission>,
    weight: admission::Weight,
    services: Arc<services::Services>,
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

    /// The world it implements.
    pub fn world(&self) -> World {
        match self.exports {
            Exports::Handler { .. } => World::Handler,
            Exports::Connection(_) => World::Connection,
        }
    }

    /// The pool permits one of its instances takes ([`admission`]).
    pub fn weight(&self) -> admission::Weight {
        self.weight
    }

    /// Create a sandboxed instance.
    ///
    /// Instances are always driven by async calls, on a fiber: a plugin
    /// may block in a WASI call (a sleep, a poll) where only dropping the
    /// future can stop it, and a long-running call yields to the other
    /// requests at every epoch tick. Measured in `benches/instance.rs`, a
    /// fiber adds about 0.15 µs to a call and 0.4 µs to a fresh instance.
    ///
    /// Waits until the engine's pool has room for it ([`admission`]).
    pub async fn instantiate(&self, limits: &CallLimits) -> Result<Instance, CallError> {
        let permit = self.admit().await;
        self.instantiate_admitted(permit, limits).await
    }

    /// Wait for room in the pool for one instance.
    pub async fn admit(&self) -> Permit {
        Permit(self.admission.admit(self.weight).await)
    }

    /// Create a sandboxed instance in the room `permit` holds.
    pub async fn instantiate_admitted(&self, permit: Permit, limits: &CallLimits) -> Result<Instance, CallError> {
        let Permit(permit) = permit;
        let state = HostState::new(self.info.clone(), limits.max_memory, self.services.clone());
        let mut store = new_store(self.pre.engine(), state);
        arm(&mut store, limits)?;
        let instance = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            if e.downcast_ref::<Trap>().is_some() {
                CallError::from_wasmtime(e, limits.timeout)
            } else {
                CallError::Instantiate(e.into())
            }
        })?;
        let missing = |what| CallError::Instantiate(anyhow::anyhow!("instance has no `{what}` export"));
        let funcs = match self.exports {
            Exports::Handler { handle } => {
                Funcs::Handle(instance.get_func(&mut store, handle).ok_or_else(|| missing("handle"))?)
            }
            Exports::Connection(exports) => {
                Funcs::Session(exports.funcs(&instance, &mut store).ok_or_else(|| missing("session"))?)
            }
        };
        Ok(Instance { store, funcs, calls: 0, _permit: permit })
    }
}

/// Room in the pool for one instance of a plugin ([`Plugin::admit`]).
pub struct Permit(tokio::sync::OwnedSemaphorePermit);

/// One live instance of a plugin, with its own store and limits.
pub struct Instance {
    store: Store<HostState>,
    funcs: Funcs,
    calls: u64,
    /// This instance's room in the pool. Declared last, so it is released
    /// only after the store (and its pool slots) has been dropped.
    _permit: tokio::sync::OwnedSemaphorePermit,
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
        req: &Request,
        limits: &CallLimits,
        max_reply: usize,
    ) -> Result<Option<Reply>, CallError> {
        let Funcs::Handle(handle) = self.funcs else {
            return Err(CallError::Instantiate(anyhow::anyhow!("not a plugin of the handler world")));
        };
        self.begin_call(limits)?;
        // SAFETY: the loader checked that `handle` has exactly this type with
        // `Func::typed`; only the lifetime of the borrowed request differs,
        // which does not change the canonical ABI.
        let func: TypedFunc<bindings::HandleParams<'_>, bindings::HandleResult> =
            unsafe { TypedFunc::new_unchecked(handle) };
        let text = bindings::RequestText::new(req);
        let call = func.call_async(&mut self.store, (text.view(req),));
        let result = bindings::with_reply_cap(max_reply, call).await;
        self.store.data_mut().end_call();
        match result {
            Ok((Ok(reply),)) => Ok(reply),
            Ok((Err(message),)) => Err(CallError::Plugin(truncate(message.0, MAX_LOG_MESSAGE))),
            Err(e) => Err(CallError::from_wasmtime(e, limits.timeout)),
        }
    }
}

impl Instance {
    /// A call starts: every call after the first (which instantiation
    /// armed) gets a fresh budget and a fresh output budget.
    fn begin_call(&mut self, limits: &CallLimits) -> Result<(), CallError> {
        self.calls += 1;
        if self.calls > 1 {
            arm(&mut self.store, limits)?;
            self.store.data_mut().begin_call();
        }
        Ok(())
    }
}

/// A store for `state`, held to its memory cap, and interrupted once the
/// budget [`arm`] gives it is spent.
fn new_store(engine: &wasmtime::Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
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
    store
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
        s.truncate(prefix(&s, max).len());
        s.push_str("...");
    }
    s
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `bytes` in lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An error and its causes on one line.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    format!("{e:#}").lines().map(str::trim).collect::<Vec<_>>().join(" ")
}
