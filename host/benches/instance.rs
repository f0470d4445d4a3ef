//! Micro-benchmarks of the per-request path, with the engine configured as
//! the server configures it (pooling allocator, epoch interruption, limits).
//!
//! - `fresh`: a new store + instance, one call of `handle`, drop: what every
//!   request costs in the default mode.
//! - `reused`: one call on an instance kept across calls (`--instance-reuse`).
//!
//! Run: `cargo bench -p host --bench instance` (plugins built first with
//! `scripts/build-plugins.sh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use host::plugin::CallLimits;
use host::plugin::admission::Admission;
use host::plugin::engine::{EngineLimits, EpochTicker, new_engine};
use host::plugin::loader::Loader;
use host::{Request, Transport};

fn plugin_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins.sh first", path.display());
    path
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let limits = CallLimits { timeout: Duration::from_millis(500), max_memory: 64 << 20, fuel: None };
    let engine_limits = EngineLimits { max_memory: limits.max_memory, max_instances: 100, fuel: false };
    let engine = new_engine(engine_limits).unwrap();
    let _ticker = EpochTicker::start(&engine).unwrap();
    let loader = Loader::new(engine, Admission::new(&engine_limits), None, Arc::new(host::Stats::default())).unwrap();
    let req = Request {
        transport: Transport::Udp,
        peer: "127.0.0.1:40000".parse().unwrap(),
        local: "127.0.0.1:7000".parse().unwrap(),
        payload: bytes::Bytes::from(vec![b'x'; 64]),
        names: None,
    };

    for name in ["echo", "upper"] {
        let plugin = rt.block_on(loader.load(&plugin_path(name), &limits)).unwrap();
        c.bench_function(&format!("{name}/fresh: instantiate + call + drop"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut instance = plugin.instantiate(&limits).await.unwrap();
                    instance.call(&req, &limits, 1 << 20).await.unwrap().unwrap()
                })
            })
        });
        let mut instance = rt.block_on(plugin.instantiate(&limits)).unwrap();
        c.bench_function(&format!("{name}/reused: call"), |b| {
            b.iter(|| rt.block_on(instance.call(&req, &limits, 1 << 20)).unwrap().unwrap())
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
