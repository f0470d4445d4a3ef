//! The compile cache: compiled plugins on disk, keyed by content.
//!
//! Compiling a Python or JavaScript plugin takes seconds; loading it from
//! here takes milliseconds. Entries are named by the sha256 of the plugin
//! file and wasmtime's compatibility hash of the engine, so a changed file,
//! a new host version or different engine settings never hit a stale entry.
//!
//! The directory is bounded (`--cache-max-size`): after an entry is
//! written, the least recently used entries are deleted until the rest fit.
//! "Used" is the file's modification time, which a hit sets to now (atime is
//! unreliable: `noatime` and `relatime` mounts). A hit costs one `futimens`;
//! only a write, which follows a compile of milliseconds to seconds, scans
//! the directory. Hosts sharing the directory may evict each other's
//! entries: a file removed under a host is a miss (or, if it was already
//! mapped, keeps working: unlinking does not unmap it).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
    /// `--fuel`; the run-time limits such as `--max-memory` are not): part of
    /// every entry's name.
    engine_key: String,
    /// Most bytes the entries may take together (`--cache-max-size`).
    max_size: u64,
}

/// A temporary file left by a host that died while writing an entry is
/// removed once it is this old (a live write takes seconds at most).
const STALE_TEMP: Duration = Duration::from_secs(3600);

impl CompileCache {
    /// A cache in `dir` (created on first use) for code compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        use std::hash::Hash as _;
        let mut h = Sha256Hasher(sha2::Sha256::default());
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = hex(&sha2::Digest::finalize(h.0)[..8]);
        let max_size = crate::config::DEFAULT_CACHE_MAX_SIZE.parse::<bytesize::ByteSize>().map_or(1 << 30, |b| b.0);
        Self { dir, engine_key, max_size }
    }

    /// Keep at most `bytes` of entries (default [`crate::config::DEFAULT_CACHE_MAX_SIZE`]).
    pub fn with_max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
            Ok(c) => {
                touch(&file);
                Some(c)
            }
            // Evicted by another host between the check and the read.
            Err(_) if !file.exists() => None,
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
            let file = self.file(digest);
            tmp.persist(&file)?;
            self.evict(&file);
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache: {}", one_line(&e));
        }
    }

    /// Delete the least recently used entries until the rest fit in
    /// `max_size`, never `keep` (the entry just written, even if it alone
    /// is larger). Errors are logged, never returned: the cache is an
    /// optimisation.
    fn evict(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut total = 0u64;
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Not followed: a symlink or directory (`history/`) is not ours.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.ends_with(".cwasm") {
                total += meta.len();
                entries.push((modified, meta.len(), entry.path()));
            } else if name.starts_with(".tmp") && now.duration_since(modified).is_ok_and(|age| age > STALE_TEMP) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if total <= self.max_size {
            return;
        }
        entries.sort_unstable_by_key(|(modified, ..)| *modified);
        let (mut evicted, mut freed) = (0, 0);
        for (_, len, path) in entries {
            if total <= self.max_size {
                break;
            }
            if path == keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => (evicted, freed) = (evicted + 1, freed + len),
                // Another host sharing the directory evicted it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("compile cache: cannot evict {}: {e}", path.display());
                    continue;
                }
            }
            total -= len;
        }
        if evicted > 0 {
            tracing::info!(
                "compile cache {}: evicted {evicted} least recently used entries ({}) to stay under \
                 --cache-max-size {}",
                self.dir.display(),
                bytesize::ByteSize(freed).display().iec(),
                bytesize::ByteSize(self.max_size).display().iec(),
            );
        }
    }
}

/// Mark `file` as used now. An entry is only ever replaced whole (a temp
/// file renamed over it), so setting its modification time changes nothing
/// a reader sees.
fn touch(file: &Path) {
    // Read-only is enough: the owner may set the times of its own file.
    if let Ok(f) = std::fs::File::open(file) {
        let _ = f.set_modified(SystemTime::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes in `dir`, last used `age` ago.
    fn entry(dir: &Path, name: &str, len: usize, age: Duration) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        std::fs::File::open(&path).unwrap().set_modified(SystemTime::now() - age).unwrap();
        path
    }

    fn cache(dir: &Path, max_size: u64) -> CompileCache {
        CompileCache::new(dir.to_path_buf(), &Engine::default()).with_max_size(max_size)
    }

    #[test]
    fn the_least_recently_used_entries_go_first_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let oldest = entry(d, "a-e.cwasm", 100, Duration::from_secs(400));
        let old = entry(d, "b-e.cwasm", 100, Duration::from_secs(300));
        let recent = entry(d, "c-e.cwasm", 100, Duration::from_secs(200));
        let new = entry(d, "d-e.cwasm", 100, Duration::from_secs(0));
        // Not entries: never counted nor removed.
        let other = entry(d, "notes.txt", 1000, Duration::from_secs(900));
        std::fs::create_dir(d.join("history")).unwrap();
        cache(d, 250).evict(&new);
        assert!(!oldest.exists() && !old.exists());
        assert!(recent.exists() && new.exists() && other.exists() && d.join("history").exists());
        // Under the bound: a second pass removes nothing.
        cache(d, 250).evict(&new);
        assert!(recent.exists());
    }

    #[test]
    fn the_entry_just_written_stays_even_if_it_alone_is_too_big() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let kept = entry(d, "big-e.cwasm", 1000, Duration::from_secs(500));
        let other = entry(d, "small-e.cwasm", 10, Duration::from_secs(0));
        cache(d, 100).evict(&kept);
        assert!(kept.exists() && !other.exists());
    }

    #[test]
    fn stale_temporary_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stale = entry(d, ".tmpAbC123", 10, STALE_TEMP + Duration::from_secs(60));
        let writing = entry(d, ".tmpXyZ789", 10, Duration::from_secs(1));
        let keep = entry(d, "a-e.cwasm", 10, Duration::from_secs(0));
        cache(d, 1 << 20).evict(&keep);
        assert!(!stale.exists() && writing.exists() && keep.exists());
    }

    #[test]
    fn a_hit_makes_an_entry_recent_so_a_put_evicts_another() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let compile = |n: u32| {
            let wat = format!("(component (core module (func (export \"f{n}\"))))");
            Component::new(&engine, wat).unwrap()
        };
        let c = CompileCache::new(dir.path().join("cache"), &engine);
        let (a, b, x) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        c.put(&a, &compile(1));
        c.put(&b, &compile(2));
        let size = std::fs::metadata(c.file(&a)).unwrap().len();
        // `a` was written first, then made old; `b` is older still.
        let age = |file: PathBuf, secs| {
            std::fs::File::open(file).unwrap().set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap()
        };
        age(c.file(&a), 100);
        age(c.file(&b), 200);
        // A hit on `b` makes it the most recently used.
        assert!(c.get(&engine, &b).is_some());
        // Room for two entries of about this size: `a` goes.
        let c = c.with_max_size(2 * size + size / 2);
        c.put(&x, &compile(3));
        assert!(!c.file(&a).exists(), "the least recently used entry was kept");
        assert!(c.file(&b).exists() && c.file(&x).exists());
        // An evicted entry is a miss, not an error.
        assert!(c.get(&engine, &a).is_none());
    }
}
