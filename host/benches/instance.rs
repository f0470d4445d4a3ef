//! Micro-benchmarks of the per-request path, with the engine configured as
//! the server configures it (pooling allocator, epoch interruption, limits).
//!
//! - `fresh`: a new store + instance, one call of `handle`, drop: what every
//!   request costs in the default mode.
//! - `reused`: one call on an instance kept across calls (`--instance-reuse`).
//!   Both for the Rust plugins and for the Python and JavaScript echoes
//!   (`echo-py`, `echo-js`): issue 15's "fresh instantiate + call + drop"
//!   row per language.
//! - `init-probe/fresh, ...`: a fresh instance of a plugin whose
//!   `wizer-initialize` built its state at load (none, or 4 MiB), and of
//!   the same plugin when its init did nothing and each request builds
//!   (an empty) state itself: what the init step costs a request.
//! - `kv-probe/get x1000`: one call that makes 1,000 `wasi:keyvalue` `get`s
//!   of a 100-byte value from the embedded store: divide by 1,000 for the
//!   cost of one host call (README, "State and configuration").
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
    let stats = Arc::new(host::Stats::default());
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(
        rt.block_on(host::kv::Store::open(&host::kv::Backend::Embedded(data.path().into()), limits.timeout)).unwrap(),
    );
    let services = Arc::new(host::plugin::services::Services::new(store.clone(), "bench", stats.clone()));
    let admission = Admission::new(&engine_limits);
    let loader = Loader::new(engine.clone(), admission.clone(), None, stats.clone(), services).unwrap();
    let req = Request {
        transport: Transport::Udp,
        peer: "127.0.0.1:40000".parse().unwrap(),
        local: "127.0.0.1:7000".parse().unwrap(),
        payload: bytes::Bytes::from(vec![b'x'; 64]),
        names: None,
    };

    // Rust (echo, upper), then the Python and JavaScript echo-equivalents:
    // an 18 MB componentize-py and a 12 MB componentize-js component.
    for name in ["echo", "upper", "echo-py", "echo-js"] {
        let plugin = rt.block_on(loader.load(&plugin_path(name), &limits)).unwrap();
        c.bench_function(&format!("{name}/fresh: instantiate + call + drop"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut instance = plugin.instantiate(&limits).await.unwrap();
                    instance.call(&req, &limits, 1 << 20).await.unwrap().unwrap()
                })
            })
        });
        // As the host does: an instance whose call fails (echo-js reaches
        // the memory cap after many calls: its runtime's heap only grows)
        // is replaced by a fresh one. How often is printed, as it is part
        // of the cost.
        let mut instance = rt.block_on(plugin.instantiate(&limits)).unwrap();
        let (mut calls, mut replaced) = (0u64, Vec::new());
        c.bench_function(&format!("{name}/reused: call"), |b| {
            b.iter(|| {
                calls += 1;
                match rt.block_on(instance.call(&req, &limits, 1 << 20)) {
                    Ok(reply) => reply.unwrap(),
                    Err(e) => {
                        replaced.push((instance.calls(), e.to_string()));
                        instance = rt.block_on(plugin.instantiate(&limits)).unwrap();
                        rt.block_on(instance.call(&req, &limits, 1 << 20)).unwrap().unwrap()
                    }
                }
            })
        });
        if let Some((served, why)) = replaced.first() {
            println!(
                "{name}/reused: {} of {calls} calls found their instance failed ({why}) after {served} calls, and made a fresh one",
                replaced.len()
            );
        }
    }

    // The init step: a fresh instance of a plugin whose state was built at
    // load (`size` bytes of it), against one that builds it per request.
    for (label, vars) in [
        ("init-probe/fresh, state built at load (none)", &[("size", "0")][..]),
        ("init-probe/fresh, state built at load (4 MiB)", &[("size", "4194304")][..]),
        ("init-probe/fresh, no init state (none built per request)", &[("size", "0"), ("mode", "skip")][..]),
    ] {
        let mut services = host::plugin::services::Services::new(store.clone(), "bench", stats.clone());
        services.vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let loader = Loader::new(engine.clone(), admission.clone(), None, stats.clone(), Arc::new(services)).unwrap();
        let plugin = rt.block_on(loader.load(&plugin_path("init-probe"), &limits)).unwrap();
        c.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut instance = plugin.instantiate(&limits).await.unwrap();
                    instance.call(&req, &limits, 1 << 20).await.unwrap().unwrap()
                })
            })
        });
    }

    let plugin = rt.block_on(loader.load(&plugin_path("kv-probe"), &limits)).unwrap();
    let mut instance = rt.block_on(plugin.instantiate(&limits)).unwrap();
    let command = |text: &str| Request { payload: bytes::Bytes::copy_from_slice(text.as_bytes()), ..req.clone() };
    let reply = rt.block_on(instance.call(&command("setsize loop 100"), &limits, 1 << 20)).unwrap().unwrap();
    assert_eq!(reply, host::plugin::Reply::Bytes(b"ok".to_vec()));
    let gets = command("loop 1000");
    c.bench_function("kv-probe/get x1000: one call, 1000 gets of 100 bytes", |b| {
        b.iter(|| {
            let reply = rt.block_on(instance.call(&gets, &limits, 1 << 20)).unwrap().unwrap();
            assert_eq!(reply, host::plugin::Reply::Bytes(b"ok".to_vec()));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
