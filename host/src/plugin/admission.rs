//! Admission: how many plugin instances may be alive at once.
//!
//! The engine's pooling allocator has a fixed number of slots for component
//! instances, linear memories and tables ([`super::engine`]). An
//! instantiation that finds no free slot fails, which a request would see
//! as a trap. Admission makes it wait instead: every instance holds permits
//! from one semaphore for as long as it lives, and a plugin's instances take
//! as many permits as their share of the pool needs. A component with five
//! memories (a Python plugin has several) takes three permits, so no mix of
//! live instances can ever ask the pool for more than it has.
//!
//! The loader validates a new version by instantiating it once. That
//! instance takes its room from a reserve of [`VALIDATION_SLOTS`] slots the
//! engine has beyond `--max-instances`: with an instance per connection,
//! every slot of the pool can be held by open connections for as long as
//! they stay open, and a reload must not wait for them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Component;

use super::engine::{EngineLimits, MEMORIES_PER_SLOT, TABLES_PER_SLOT};

/// Slots the engine has beyond `--max-instances`, for validating new
/// versions (one at a time). Enough for a Python or JavaScript component;
/// a bigger one is validated with room from the shared pool.
pub const VALIDATION_SLOTS: u32 = 8;

/// The instance slots of one engine. Shared by every plugin version loaded
/// into it.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    capacity: u32,
    /// The reserve for validation instances.
    validation: Arc<Semaphore>,
}

/// What one instance of a plugin needs from the pool, in permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(u32);

impl Admission {
    /// Slots for the engine built with `limits`.
    pub fn new(limits: &EngineLimits) -> Arc<Self> {
        let capacity = limits.max_instances.max(1);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            validation: Arc::new(Semaphore::new(VALIDATION_SLOTS as usize)),
        })
    }

    /// The permits one instance of `component` takes, or an error saying
    /// why it can never be instantiated under these limits.
    pub fn weight(&self, component: &Component) -> Result<Weight, String> {
        // `None`: the component instantiates modules it imports, whose
        // needs are not known; plugins never do, so this is only a fallback.
        let needs = component.resources_required();
        let (memories, tables) = needs.map_or((u32::MAX, u32::MAX), |r| (r.num_memories, r.num_tables));
        let weight = 1.max(memories.div_ceil(MEMORIES_PER_SLOT)).max(tables.div_ceil(TABLES_PER_SLOT));
        if weight > self.capacity {
            return Err(format!(
                "one instance needs {memories} memories and {tables} tables, {weight} instance slots, \
                 but --max-instances is {}",
                self.capacity
            ));
        }
        Ok(Weight(weight))
    }

    /// Wait until an instance of `weight` fits; the permit is its room in
    /// the pool until it is dropped.
    pub async fn admit(&self, weight: Weight) -> OwnedSemaphorePermit {
        self.permits.clone().acquire_many_owned(weight.0).await.expect("the admission semaphore is never closed")
    }

    /// Room for the instance that validates a new version: from the
    /// reserve, so that a reload never waits for connections to close.
    pub async fn admit_validation(&self, weight: Weight) -> OwnedSemaphorePermit {
        let reserve = if weight.0 <= VALIDATION_SLOTS { &self.validation } else { &self.permits };
        reserve.clone().acquire_many_owned(weight.0).await.expect("the admission semaphores are never closed")
    }

    /// Permits free right now (for tests and counters).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Weight {
    /// Permits per instance.
    pub fn permits(self) -> u32 {
        self.0
    }
}
