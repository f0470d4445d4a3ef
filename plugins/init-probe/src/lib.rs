//! init-probe: a test and benchmark fixture for the host's init step
//! (README, "Initialising a plugin once at load").
//!
//! It exports `wizer-initialize`, which the host runs once when it loads
//! the plugin, before snapshotting the instance's memory; every instance
//! then starts from that image. The init reads `wasi:config` variables:
//!
//! | variable | effect |
//! |---|---|
//! | `text` | kept in the state and echoed by every request |
//! | `size` | bytes of state to build (a pattern, not zeros), default 0 |
//! | `mode` | `trap`: the init panics; `loop`: it never returns; `kv`: it opens a bucket; `stdout`: it prints; `skip`: it does nothing (requests then build the state themselves) |
//!
//! Each request replies one line: `init=yes|no runs=N text=T bytes=B
//! sum=S`, where `init=yes` means the state was built by the init (`no`:
//! this request built it), `runs` how many times the init ran in this
//! instance's memory (1 from a snapshot), `bytes` and `sum` the size and a
//! checksum of the state.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sockets_plugin::{Plugin, Request, config, logging};

/// The `wizer-initialize` export: a world of its own, which
/// `wasm-component-ld` merges with the SDK's `handler` world.
mod init {
    wit_bindgen::generate!({
        inline: "package local:init-probe; world init { export wizer-initialize: func(); }",
        export_macro_name: "export_init",
    });
}

/// What the init builds.
struct State {
    text: String,
    blob: Vec<u8>,
    sum: u64,
}

static STATE: OnceLock<State> = OnceLock::new();
static INIT_RUNS: AtomicU32 = AtomicU32::new(0);

fn build() -> State {
    let text = config::get("text").ok().flatten().unwrap_or_default();
    let size = config::get("size").ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0usize);
    // A pattern, not zeros: the snapshot keeps only non-zero bytes.
    let blob: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
    let sum = blob.iter().map(|&b| b as u64).sum();
    State { text, blob, sum }
}

struct Init;

impl init::Guest for Init {
    fn wizer_initialize() {
        INIT_RUNS.fetch_add(1, Ordering::Relaxed);
        match config::get("mode").ok().flatten().as_deref() {
            Some("trap") => panic!("init-probe: asked to trap"),
            Some("loop") => loop {
                std::hint::spin_loop();
            },
            Some("kv") => {
                if let Err(e) = sockets_plugin::keyvalue::store::open("default") {
                    logging::log(logging::Level::Warn, "init", &format!("cannot open a bucket: {e:?}"));
                }
            }
            Some("stdout") => println!("init-probe: printing at init"),
            Some("skip") => return,
            _ => {}
        }
        let state = build();
        logging::log(logging::Level::Info, "init", &format!("built {} bytes of state", state.blob.len()));
        let _ = STATE.set(state);
    }
}

init::export_init!(Init with_types_in init);

struct InitProbe;

impl Plugin for InitProbe {
    fn handle(_req: Request) -> Result<Option<Vec<u8>>, String> {
        let (state, at_init) = match STATE.get() {
            Some(state) => (state, true),
            None => (&*Box::leak(Box::new(build())), false),
        };
        let reply = format!(
            "init={} runs={} text={} bytes={} sum={}",
            if at_init { "yes" } else { "no" },
            INIT_RUNS.load(Ordering::Relaxed),
            state.text,
            state.blob.len(),
            state.sum
        );
        Ok(Some(reply.into_bytes()))
    }
}

sockets_plugin::export!(InitProbe);
