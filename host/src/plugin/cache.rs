//! The compile cache: compiled plugins on disk, keyed by content.
//!
//! Compiling a Python or JavaScript plugin takes seconds; loading it from
//! here takes milliseconds. Entries are named by the sha256 of the plugin
//! file and wasmtime's compatibility hash of the engine, so a changed file,
//! a new host version or different engine settings never hit a stale entry.
//! Nothing is ever evicted; delete the directory to clear it.

use std::io::Write as _;
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::{hex, one_line};

/// Compiled components on disk, keyed by the sha256 of the plugin file and
/// the engine's compatibility hash (wasmtime version and settings).
///
/// Deserializing compiled code runs it without validation, so the cache must
/// be a directory only the host's user can write: it is created with mode
/// 0700 and a cache directory writable by others is refused.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
    /// A stable hash of wasmtime's compatibility hash for the engine (its
    /// version and every setting that changes the compiled code, such as
    /// `--max-memory`): part of every entry's name.
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir` (created on first use) for code compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        use std::hash::Hash as _;
        let mut h = Sha256Hasher(sha2::Sha256::default());
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = hex(&sha2::Digest::finalize(h.0)[..8]);
        Self { dir, engine_key }
    }

    /// `<sha256 of the plugin>-<engine key>.cwasm`.
    fn file(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    fn safe_dir(&self) -> bool {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        match std::fs::metadata(&self.dir) {
            Ok(m) => m.is_dir() && m.permissions().mode() & 0o022 == 0 && m.uid() == nix::unistd::geteuid().as_raw(),
            Err(_) => false,
        }
    }

    pub(crate) fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let file = self.file(digest);
        if !file.exists() || !self.safe_dir() {
            return None;
        }
        // SAFETY: the file was written by `put` below into a directory only
        // this user can write (checked by `safe_dir`), from a component this
        // engine compiled; wasmtime also checks the engine compatibility.
        match unsafe { Component::deserialize_file(engine, &file) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring unusable compile cache entry: {}", one_line(&e));
                None
            }
        }
    }

    pub(crate) fn put(&self, digest: &str, component: &Component) {
        let result = (|| -> anyhow::Result<()> {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
            anyhow::ensure!(self.safe_dir(), "{} is writable by other users", self.dir.display());
            let bytes = component.serialize()?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            tmp.write_all(&bytes)?;
            tmp.persist(self.file(digest))?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache: {}", one_line(&e));
        }
    }
}

/// Feeds `Hash` into sha256: unlike `DefaultHasher`, stable across Rust
/// releases, so a toolchain update does not orphan the cache.
struct Sha256Hasher(sha2::Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the sha256 digest is used")
    }
}
