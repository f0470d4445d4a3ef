//! Loading a plugin file: read, check, compile (or fetch from the compile
//! cache), link against the host's imports, and validate by instantiating it
//! once. Only a plugin that passes every step is ever served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::admission::Admission;
use super::cache::CompileCache;
use super::init::{self, Init};
use super::services::Services;
use super::{CallLimits, Exports, Funcs, HostState, Plugin, PluginInfo, bindings, connection, hex, one_line};
use crate::stats::Stats;

/// The worlds a plugin may implement, as users see them in errors.
pub const WORLDS: &str = "sockets:plugin/handler (0.1.0 or 0.2.0) or sockets:plugin/connection-handler@0.2.0";

/// Why a plugin file cannot be served. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {path}: cannot read: {cause}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error (not a `#[source]`: the message already says it).
        cause: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error("plugin {path}: not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// A core module: plugins must be components.
    #[error(
        "plugin {path}: is a core WebAssembly module, not a component (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The plugin file.
        path: PathBuf,
    },
    /// Compilation failed (invalid or truncated component).
    #[error("plugin {path}: invalid component: {message}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// Wasmtime's reason.
        message: String,
    },
    /// The component imports something the host does not provide.
    #[error("plugin {path}: imports something this host does not provide: {message}")]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// Names the missing import.
        message: String,
    },
    /// One instance would need more of the engine's pool than it has.
    #[error("plugin {path}: too big for this host: {message}")]
    TooBig {
        /// The plugin file.
        path: PathBuf,
        /// What it needs and what the limit is.
        message: String,
    },
    /// The component exports neither `handle` nor the connection interface
    /// with the contract's types.
    #[error("plugin {path}: does not implement a world of {WORLDS}: {message}")]
    World {
        /// The plugin file.
        path: PathBuf,
        /// What is missing or mistyped.
        message: String,
    },
    /// A `--var-file` cannot be read, is too big or is not UTF-8 text.
    #[error("{message}")]
    VarFile {
        /// Names the flag, the key and the file.
        message: String,
    },
    /// Its `wizer-initialize` is not a function `[] -> []`, trapped, ran
    /// past `--init-timeout`, or left something the snapshot cannot keep.
    #[error("plugin {path}: {message}")]
    Init {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong, starting with `wizer-initialize`.
        message: String,
    },
    /// The component traps or fails while being instantiated.
    #[error("plugin {path}: fails to instantiate: {message}")]
    Instantiate {
        /// The plugin file.
        path: PathBuf,
        /// Wasmtime's reason.
        message: String,
    },
}

/// Compiles plugin files into [`Plugin`]s. One per server; cheap to share.
pub struct Loader {
    engine: Engine,
    linker: Linker<HostState>,
    admission: Arc<Admission>,
    cache: Option<CompileCache>,
    stats: Arc<Stats>,
    services: Arc<Services>,
    init_timeout: std::time::Duration,
}

impl Loader {
    /// A loader whose linker offers WASI (no ambient authority), `log`
    /// and the host services (`services`); its plugins' instances take
    /// their room in the pool from `admission`.
    pub fn new(
        engine: Engine,
        admission: Arc<Admission>,
        cache_dir: Option<PathBuf>,
        stats: Arc<Stats>,
        services: Arc<Services>,
    ) -> anyhow::Result<Self> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        super::add_log_to_linker(&mut linker)?;
        super::services::add_to_linker(&mut linker, |s: &mut HostState| &mut s.services)?;
        let cache = cache_dir.map(|dir| CompileCache::new(dir, &engine));
        let init_timeout = humantime::parse_duration(init::DEFAULT_INIT_TIMEOUT)?;
        Ok(Self { engine, linker, admission, cache, stats, services, init_timeout })
    }

    /// The budget of a plugin's `wizer-initialize` (`--init-timeout`).
    pub fn with_init_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// Bound the compile cache to `bytes` (`--cache-max-size`).
    pub fn with_cache_max_size(mut self, bytes: usize) -> Self {
        self.cache = self.cache.map(|c| c.with_max_size(bytes as u64));
        self
    }

    /// The engine plugins are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load `path`: read, initialise, compile off the async threads,
    /// link, and validate.
    pub async fn load(&self, path: &Path, limits: &CallLimits) -> Result<Plugin, LoadError> {
        let file = self.read(path).await?;
        self.load_file(path, file, limits).await
    }

    /// Read `path` and the `--var-file`s: what a load of it would use.
    pub async fn read(&self, path: &Path) -> Result<PluginFile, LoadError> {
        let mut file = PluginFile::read(path).await.map_err(|cause| LoadError::Read { path: path.into(), cause })?;
        file.var_files = super::vars::read_files(self.services.var_files.clone())
            .await
            .map_err(|message| LoadError::VarFile { message })?;
        Ok(file)
    }

    /// Load a plugin whose bytes (and `--var-file`s) were already read
    /// from `path`.
    pub async fn load_file(&self, path: &Path, file: PluginFile, limits: &CallLimits) -> Result<Plugin, LoadError> {
        let identity = file.identity();
        let PluginFile { bytes, sha256: file_digest, var_files } = file;
        let p = || path.to_path_buf();
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule { path: p() });
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm { path: p() }),
        }
        let started = std::time::Instant::now();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let info = Arc::new(PluginInfo::new(name, file_digest, identity, p()));
        let services = if var_files.is_empty() {
            self.services.clone()
        } else {
            Arc::new(Services {
                vars: super::vars::with_files(&self.services.vars, var_files),
                ..(*self.services).clone()
            })
        };
        let bytes = Arc::new(bytes);

        // The init step (plugin/init.rs): what is compiled and served is
        // the snapshot, cached under its own digest.
        let (served, digest) = match init::has_init_export(&bytes) {
            Err(message) => return Err(LoadError::Init { path: p(), message }),
            Ok(false) => (bytes.clone(), info.sha256.clone()),
            Ok(true) => {
                let init = Init {
                    engine: self.engine.clone(),
                    linker: self.linker.clone(),
                    admission: self.admission.clone(),
                    info: info.clone(),
                    services: services.clone(),
                    timeout: self.init_timeout,
                    max_memory: limits.max_memory,
                    fuel: limits.fuel.is_some(),
                    cache: self.cache.clone(),
                };
                let snapshot =
                    init.run(bytes.clone()).await.map_err(|message| LoadError::Init { path: p(), message })?;
                tracing::info!(
                    "ran {} of plugin {} version {} in {:.1?} (instrument and compile {:.1?}, init {:.1?}, \
                     snapshot {:.1?}): snapshot of {:.2} MB (was {:.2} MB)",
                    init::INIT_EXPORT,
                    info.name,
                    info.version,
                    snapshot.prepare + snapshot.init + snapshot.snapshot,
                    snapshot.prepare,
                    snapshot.init,
                    snapshot.snapshot,
                    snapshot.wasm.len() as f64 / 1e6,
                    bytes.len() as f64 / 1e6,
                );
                let digest = hex(&Sha256::digest(&snapshot.wasm));
                (Arc::new(snapshot.wasm), digest)
            }
        };

        // Compilation takes milliseconds (Rust) to seconds (Python, JS):
        // never on the threads that serve requests.
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let b = served;
        let (component, hit) = tokio::task::spawn_blocking(move || compile(&engine, cache.as_ref(), &b, &digest))
            .await
            .map_err(|e| LoadError::Compile { path: p(), message: e.to_string() })?
            .map_err(|e| LoadError::Compile { path: p(), message: one_line(&e) })?;
        Stats::incr(if hit { &self.stats.cache_hits } else { &self.stats.cache_misses });

        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link { path: p(), message: one_line(&e) })?;
        let world_error = |message: String| LoadError::World { path: p(), message };
        let exports = match (component.get_export_index(None, "handle"), connection::Exports::find(&component)) {
            (Some(_), Some(_)) => {
                return Err(world_error(format!(
                    "it exports both `handle` and `{}`; a plugin implements one world",
                    bindings::CONNECTION_INTERFACE
                )));
            }
            (Some(handle), None) => Exports::Handler { handle },
            (None, Some(found)) => Exports::Connection(found.map_err(world_error)?),
            (None, None) => {
                return Err(world_error(format!(
                    "it exports neither `handle` nor `{}`",
                    bindings::CONNECTION_INTERFACE
                )));
            }
        };
        let weight = self.admission.weight(&component).map_err(|message| LoadError::TooBig { path: p(), message })?;
        let plugin = Plugin { info, pre, exports, admission: self.admission.clone(), weight, services };

        // Validate: instantiate once and check the types of the exports.
        let permit = super::Permit(self.admission.admit_validation(weight).await);
        let instance = plugin
            .instantiate_admitted(permit, limits)
            .await
            .map_err(|e| LoadError::Instantiate { path: p(), message: e.to_string() })?;
        match instance.funcs {
            Funcs::Handle(handle) => handle
                .typed::<bindings::HandleParams<'_>, bindings::HandleResult>(&instance.store)
                .map(drop)
                .map_err(|e| format!("`handle` has the wrong type: {}", one_line(&e))),
            Funcs::Session(funcs) => funcs.typecheck(&instance.store),
        }
        .map_err(world_error)?;
        drop(instance);
        tracing::info!(
            "loaded plugin {} ({} world) version {} from {} in {:.1?} (compile cache {})",
            plugin.info.name,
            plugin.world(),
            plugin.info.version,
            path.display(),
            started.elapsed(),
            if hit { "hit" } else { "miss" },
        );
        // Validated: keep a copy for `host rollback`.
        if let Some(cache) = &self.cache {
            super::history::record_in_background(cache.dir(), path, bytes, &plugin.info.sha256);
        }
        Ok(plugin)
    }
}

/// Compile `bytes`, or deserialize them from the cache. Returns whether the
/// cache was hit.
fn compile(
    engine: &Engine,
    cache: Option<&CompileCache>,
    bytes: &[u8],
    digest: &str,
) -> anyhow::Result<(Component, bool)> {
    if let Some(component) = cache.and_then(|c| c.get(engine, digest)) {
        return Ok((component, true));
    }
    // Big (Python, JavaScript) plugins take seconds: say so before the wait.
    if bytes.len() > 1 << 20 {
        tracing::info!(
            "compiling a {:.1} MB plugin; this takes a few seconds once, then it is cached",
            bytes.len() as f64 / 1e6
        );
    }
    let component = Component::from_binary(engine, bytes)?;
    if let Some(cache) = cache {
        cache.put(digest, &component);
    }
    Ok((component, false))
}

/// A plugin file's bytes and their sha256, and the values of the
/// `--var-file`s read with it: together, the version's identity.
#[derive(Debug)]
pub struct PluginFile {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// The sha256 of `bytes`, in lower-case hex.
    pub sha256: String,
    /// `--var-file` keys and the files' text, in the order given.
    pub var_files: Vec<(String, String)>,
}

impl PluginFile {
    /// Read and hash `path` on a blocking thread: hashing a Python or
    /// JavaScript plugin (12-18 MB) takes milliseconds that must not be
    /// taken from the threads serving requests.
    pub async fn read(path: &Path) -> std::io::Result<PluginFile> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            let sha256 = hex(&Sha256::digest(&bytes));
            Ok(PluginFile { bytes, sha256, var_files: Vec::new() })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// What identifies the version this file makes, in hex: the file's
    /// sha256 alone, or with `--var-file`s, the sha256 of it and their
    /// keys and values (a changed file makes a new version).
    pub fn identity(&self) -> String {
        if self.var_files.is_empty() {
            return self.sha256.clone();
        }
        let mut h = Sha256::new();
        h.update(self.sha256.as_bytes());
        for (key, value) in &self.var_files {
            h.update((key.len() as u64).to_le_bytes());
            h.update(key.as_bytes());
            h.update((value.len() as u64).to_le_bytes());
            h.update(value.as_bytes());
        }
        hex(&h.finalize())
    }
}
