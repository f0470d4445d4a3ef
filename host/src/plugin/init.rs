//! The init step: a plugin that exports `wizer-initialize: func()` has it
//! run once when the host loads it, and the instance it ran in is
//! snapshotted into a new component, which is what the host then compiles
//! and serves. Every instance, fresh per request or reused, starts from
//! the initialised image without running the init again: a plugin can
//! parse its configuration (a DNS zone, a routing table) once per load
//! instead of once per request.
//!
//! The export's name and the snapshot are those of
//! [wasmtime-wizer](https://docs.rs/wasmtime-wizer), so a component can be
//! pre-initialised ahead of time with `wasmtime wizer` instead (it then no
//! longer exports `wizer-initialize`, and the host has nothing to do).
//! Only the crate's two halves are used ([`Wizer::instrument_component`],
//! [`Wizer::snapshot_component`]), not `run_component`: that one lives
//! behind the crate's `wasmtime` feature, which turns on wasmtime's `gc`
//! and `threads` for the whole host, and it unwraps the results of the
//! calls that read the instance's state.
//!
//! The init runs in a store like a request's: the service's imports, its
//! `--var` and `--var-file` values through `wasi:config`, its log, the
//! memory cap of `--max-memory`, but a budget of its own
//! (`--init-timeout`, fuel unlimited under `--fuel`). It may not use
//! `wasi:keyvalue` (refused: a bucket handle would not exist in the
//! instances made from the snapshot), and it must drop every WASI resource
//! it opened (a stdout stream included): a handle left in the snapshot
//! would name nothing, or something else, in every instance. The
//! snapshot keeps everything in memory, the seeds of hash maps included:
//! every instance of a version shares them.
//!
//! Everything runs on a blocking thread: instrumenting and compiling take
//! tens of milliseconds to seconds, the init as long as it likes up to its
//! deadline, and a panic in the snapshot code becomes an error, not a
//! dead host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Instance, Lift, Linker, WasmList, types::ComponentItem};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::admission::Admission;
use super::{CallLimits, HostState, PluginInfo, describe_trap, hex, one_line, services::Services};

/// The export the host runs at load, as `wasmtime wizer` names it.
pub const INIT_EXPORT: &str = "wizer-initialize";

/// The default of `--init-timeout`.
pub const DEFAULT_INIT_TIMEOUT: &str = "10s";

/// Whether `wasm`, a component, exports a top-level `wizer-initialize`.
/// `Err` if it exports something of that name that is not a function.
/// Reads the top level only, skipping the nested modules and components
/// (most of a Python or JavaScript plugin's 12-18 MB): no compilation.
pub fn has_init_export(mut wasm: &[u8]) -> Result<bool, String> {
    use wasmparser::{Chunk, ComponentExternalKind, Parser, Payload};
    let mut parser = Parser::new(0);
    loop {
        // An invalid component is reported by the compile that follows.
        let Ok(Chunk::Parsed { consumed, payload }) = parser.parse(wasm, true) else { return Ok(false) };
        wasm = &wasm[consumed..];
        match payload {
            // The outer parser goes on after the nested one's bytes.
            Payload::ModuleSection { unchecked_range: range, .. }
            | Payload::ComponentSection { unchecked_range: range, .. } => {
                let Some(rest) = wasm.get(range.len()..) else { return Ok(false) };
                wasm = rest;
            }
            Payload::ComponentExportSection(exports) => {
                for export in exports.into_iter().flatten() {
                    if export.name.name == INIT_EXPORT {
                        return match export.kind {
                            ComponentExternalKind::Func => Ok(true),
                            _ => Err(format!("{INIT_EXPORT} is not a function [] -> []")),
                        };
                    }
                }
            }
            Payload::End(_) => return Ok(false),
            _ => {}
        }
    }
}

/// What the init step needs from the loader.
pub(crate) struct Init {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    pub admission: Arc<Admission>,
    pub info: Arc<PluginInfo>,
    pub services: Arc<Services>,
    /// `--init-timeout`.
    pub timeout: Duration,
    /// `--max-memory`.
    pub max_memory: usize,
    /// Whether the engine meters fuel (`--fuel`).
    pub fuel: bool,
    /// Where the compiled instrumented component is kept.
    pub cache: Option<super::cache::CompileCache>,
}

/// The snapshot, and how long each part of the step took.
pub(crate) struct Snapshot {
    pub wasm: Vec<u8>,
    /// Instrumenting the component and compiling it (or taking it from
    /// the compile cache).
    pub prepare: Duration,
    /// Instantiating it and running `wizer-initialize`.
    pub init: Duration,
    /// Reading the state and writing the new component.
    pub snapshot: Duration,
}

impl Init {
    /// Run `wasm`'s `wizer-initialize` and snapshot it. The error is one
    /// line without the plugin's path (the caller adds it).
    pub async fn run(self, wasm: Arc<Vec<u8>>) -> Result<Snapshot, String> {
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(self.run_blocking(&wasm))).await.map_err(|e| {
            match e.try_into_panic() {
                Ok(panic) => format!("{INIT_EXPORT}: the snapshot failed: {}", panic_message(&panic)),
                Err(e) => format!("{INIT_EXPORT}: {e}"),
            }
        })?
    }

    async fn run_blocking(self, wasm: &[u8]) -> Result<Snapshot, String> {
        let started = Instant::now();
        let mut wizer = Wizer::new();
        // Without this, wizer 48.0.8 removes the core module's export
        // `wizer-initialize` but keeps the component's lift of it: the
        // snapshot of a wit-bindgen component, whose core export has that
        // name too, is invalid. The snapshot keeps exporting it; the host
        // never calls it there.
        wizer.keep_init_func(true);
        let (cx, instrumented) = wizer
            .instrument_component(wasm)
            .map_err(|e| format!("{INIT_EXPORT}: this component cannot be snapshotted: {}", one_line(&e)))?;
        // Instrumenting is deterministic: a restart takes the compiled
        // code from the cache.
        let digest = hex(&sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&instrumented)));
        let component = match self.cache.as_ref().and_then(|c| c.get(&self.engine, &digest)) {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, &instrumented).map_err(|e| {
                    format!("{INIT_EXPORT}: cannot compile the instrumented component: {}", one_line(&e))
                })?;
                if let Some(cache) = &self.cache {
                    cache.put(&digest, &component);
                }
                component
            }
        };
        let prepared = Instant::now();
        let not_a_func = || format!("{INIT_EXPORT} is not a function [] -> []");
        let index = match component.get_export(None, INIT_EXPORT) {
            Some((ComponentItem::ComponentFunc(ty), index)) if ty.params().len() == 0 && ty.results().len() == 0 => {
                index
            }
            _ => return Err(not_a_func()),
        };
        let weight = self.admission.weight(&component).map_err(|e| format!("{INIT_EXPORT}: too big: {e}"))?;
        let _permit = self.admission.admit_validation(weight).await;

        let mut state = HostState::new(self.info.clone(), self.max_memory, self.services.clone());
        state.services.refuse_keyvalue();
        let mut store = super::new_store(&self.engine, state);
        let limits =
            CallLimits { timeout: self.timeout, max_memory: self.max_memory, fuel: self.fuel.then_some(u64::MAX) };
        super::arm(&mut store, &limits).map_err(|e| e.to_string())?;

        let timeout = self.timeout;
        let failed = move |e: wasmtime::Error| match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("{INIT_EXPORT} did not finish within {}", humantime::format_duration(timeout))
            }
            // A trap, or an error of the same kind from the host (the
            // memory cap): as requests' are described.
            _ => format!("{INIT_EXPORT} trapped: {}", describe_trap(&e)),
        };
        // The epoch deadline stops guest code; the timer also stops an init
        // blocked in a host call (a WASI sleep).
        let ran = tokio::time::timeout(timeout + Duration::from_secs(1), async {
            let instance = self.linker.instantiate_async(&mut store, &component).await.map_err(failed)?;
            let func = instance
                .get_typed_func::<(), ()>(&mut store, index)
                .map_err(|e| format!("{}: {}", not_a_func(), one_line(&e)))?;
            func.call_async(&mut store, ()).await.map_err(failed)?;
            Ok::<_, String>(instance)
        })
        .await;
        let instance = match ran {
            Ok(result) => result?,
            Err(_) => {
                return Err(format!("{INIT_EXPORT} did not finish within {}", humantime::format_duration(timeout)));
            }
        };
        let initialised = Instant::now();
        if let Some(open) = store.data().open_resources() {
            return Err(format!(
                "{INIT_EXPORT} left {open} open: the handle would name nothing in the instances made from the \
                 snapshot (drop it before returning; write log lines with wasi:logging, not stdout)"
            ));
        }
        // The reads of the state get a budget of their own.
        super::arm(&mut store, &limits).map_err(|e| e.to_string())?;
        let mut access = Access { store: &mut store, instance, error: None };
        let snapshot = wizer.snapshot_component(&cx, &mut access).await;
        if let Some(error) = access.error {
            return Err(format!("{INIT_EXPORT}: cannot read the initialised state: {error}"));
        }
        let wasm = snapshot.map_err(|e| format!("{INIT_EXPORT}: the snapshot failed: {}", one_line(&e)))?;
        Ok(Snapshot {
            wasm,
            prepare: prepared - started,
            init: initialised - prepared,
            snapshot: initialised.elapsed(),
        })
    }
}

/// The instance after its init, as wizer reads it: through the accessor
/// functions the instrumentation exported. wizer's trait has no way to
/// return an error, so the first one is kept here and the snapshot thrown
/// away by the caller.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    error: Option<String>,
}

impl Access<'_> {
    async fn call<R: Lift + Send + Sync + 'static>(&mut self, interface: &str, func: &str) -> Option<R> {
        let result = async {
            let store = &mut *self.store;
            let (_, iface) = self.instance.get_export(&mut *store, None, interface).ok_or("no accessor instance")?;
            let (_, export) = self.instance.get_export(&mut *store, Some(&iface), func).ok_or("no accessor")?;
            let typed =
                self.instance.get_typed_func::<(), (R,)>(&mut *store, export).map_err(|e| one_line(&e).to_string())?;
            typed.call_async(&mut *store, ()).await.map(|(r,)| r).map_err(|e| describe_trap(&e))
        }
        .await;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.error.get_or_insert_with(|| format!("{interface}#{func}: {e}"));
                None
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            // Thrown away by the caller; the snapshot code may still
            // expect its callback to run.
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.map_or(0, f64::to_bits)
    }
}

/// A panic's message, on one line.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    one_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).expect("valid wat")
    }

    #[test]
    fn finds_a_top_level_init_function() {
        let with = component(
            r#"(component
                (core module $m (func (export "i")))
                (core instance $i (instantiate $m))
                (func (export "wizer-initialize") (canon lift (core func $i "i"))))"#,
        );
        assert_eq!(has_init_export(&with), Ok(true));
        let without = component(r#"(component (core module $m (func (export "wizer-initialize"))))"#);
        assert_eq!(has_init_export(&without), Ok(false));
        let not_a_func = component(
            r#"(component
                (component $c)
                (instance $x (instantiate $c))
                (export "wizer-initialize" (instance $x)))"#,
        );
        assert_eq!(has_init_export(&not_a_func), Err("wizer-initialize is not a function [] -> []".into()));
    }
}
