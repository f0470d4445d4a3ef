//! The one wasmtime [`Engine`] of the process, and its epoch ticker.
//!
//! Every engine setting lives here, each with the reason for it, so the
//! performance and isolation properties of the host can be read in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config as WasmConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the ticker advances the epoch. A request's deadline is counted
/// in ticks, so this is the resolution of `--timeout`; it is also how often a
/// running plugin yields to the scheduler so that one busy plugin cannot
/// starve the other requests on its thread.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Wasm stack for one call. Deep recursion traps cleanly at this depth.
pub const MAX_WASM_STACK: usize = 1 << 20;

/// Native stack for one async call: wasm stack plus room for host functions
/// (WASI, the canonical ABI) that run on the same fiber.
pub const ASYNC_STACK: usize = MAX_WASM_STACK + (1 << 20);

/// Core wasm instances in one component. Rust components have a handful;
/// componentize-py and componentize-js components have a dozen or more.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories in one component (Python/JS components carry several).
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
/// Pool memories per instance slot (`--max-instances`). A component with more
/// takes several slots ([`super::admission`]), so the pool never runs out of
/// memories before it runs out of slots.
pub(crate) const MEMORIES_PER_SLOT: u32 = 2;
/// Pool tables per instance slot, likewise.
pub(crate) const TABLES_PER_SLOT: u32 = 4;
/// Tables in one component.
const MAX_TABLES_PER_COMPONENT: u32 = 32;
/// Elements per table: generous for interpreters' big indirect-call tables.
const TABLE_ELEMENTS: usize = 100_000;
/// Metadata size of one core instance (globals, vmctx). The default 1 MiB is
/// plenty for compiled Rust; interpreters with thousands of functions need more.
const MAX_CORE_INSTANCE_SIZE: usize = 4 << 20;
/// Freed memory slots kept warm for reuse (copy-on-write reset is cheaper
/// than a fresh mapping).
const MAX_UNUSED_WARM_SLOTS: u32 = 100;
/// Bytes of each linear memory and table slot kept mapped when an instance is
/// dropped. With `pagemap_scan` (Linux 6.7+) only the pages a request
/// actually dirtied are reset, with `memset`, and stay resident: no
/// `madvise`, and no page faults in the next instance. This is what makes a
/// fresh instance cost ~3.5 µs instead of ~13 µs (benches/instance.rs).
const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
/// Bytes of each fiber stack kept mapped between calls, for the same reason.
const STACK_KEEP_RESIDENT: usize = 64 << 10;

/// Limits that size the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Largest linear memory of any instance.
    pub max_memory: usize,
    /// Component instances alive at once.
    pub max_instances: u32,
    /// Whether fuel metering is on.
    pub fuel: bool,
}

/// Build the engine. Called once per server.
pub fn new_engine(limits: EngineLimits) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    // The reserve validates new versions while connections hold the rest.
    let instances = limits.max_instances.max(1).saturating_add(super::admission::VALIDATION_SLOTS);
    pool.total_component_instances(instances)
        // Core instances only count (their metadata is allocated per
        // instance), so allow every component its maximum. Memories and
        // tables are reserved slots: budget per instance slot, and let
        // admission give bigger components several slots.
        .total_core_instances(instances.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_SLOT))
        .total_tables(instances.saturating_mul(TABLES_PER_SLOT))
        // One fiber stack per async call in flight.
        .total_stacks(instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memories_per_module(2)
        .table_elements(TABLE_ELEMENTS)
        .max_core_instance_size(MAX_CORE_INSTANCE_SIZE)
        // Enforced again per store by `StoreLimits`; the pool's hard cap.
        .max_memory_size(limits.max_memory)
        .max_unused_warm_slots(MAX_UNUSED_WARM_SLOTS)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(MEMORY_KEEP_RESIDENT)
        .async_stack_keep_resident(STACK_KEEP_RESIDENT)
        // Reset only dirty pages where the kernel can tell which they are;
        // on older kernels this falls back to memset + madvise.
        .pagemap_scan(wasmtime::Enabled::Auto);

    let mut config = WasmConfig::new();
    config
        // Plugins are components: the WIT contract is checked at link time.
        .wasm_component_model(true)
        // Pre-allocated slots make instantiation a few microseconds, which is
        // what makes a fresh instance per request affordable.
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Initial memory is mapped copy-on-write from the compiled image
        // instead of copied: big (Python/JS) plugins instantiate in microseconds.
        .memory_init_cow(true)
        // Deadlines: a single ticker thread bumps the epoch; generated code
        // checks it at loop headers and function entries (cheaper than fuel).
        .epoch_interruption(true)
        .consume_fuel(limits.fuel)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        // Compilation uses all cores; it runs off the request path.
        .parallel_compilation(true);
    Engine::new(&config).map_err(|e| anyhow::Error::from(e).context("cannot configure the WebAssembly engine"))
}

/// The single thread that advances the engine's epoch every [`EPOCH_TICK`].
///
/// Stopped and joined when dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Start ticking `engine`.
    pub fn start(engine: &Engine) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("cannot start the epoch ticker thread")?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
