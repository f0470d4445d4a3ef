//! Plugin history: the last versions of each plugin file that loaded, so
//! that one command (`host rollback --plugin PATH`) puts the previous one
//! back.
//!
//! Every version the loader has validated (at start and on each reload) is
//! copied into `<cache dir>/history/<key>/<time>-<version>.wasm`, where the
//! key is the first 16 hex digits of the sha256 of the plugin path (its
//! directory resolved, its file name kept: a symlinked plugin such as a
//! Kubernetes ConfigMap keeps one history while its target changes) and the
//! version is the first 12 hex digits of the file's sha256, as in the logs.
//! A version loaded again is moved to the front rather than copied again,
//! and only the newest [`KEEP`] are kept. Directories are 0700, files 0600;
//! a `path` file in each directory names the plugin path it belongs to.
//! `history/` and the plugin's directory in it must be directories (not
//! symlinks) owned by the user running the command and writable by no
//! other, or nothing is recorded there or rolled back from there: another
//! user's files must not be written over a plugin by `sudo host rollback`.
//!
//! [`rollback`] writes the most recently loaded version that differs from
//! the file at the plugin path now back over it, atomically (a temporary
//! file in the same directory, synced, renamed over it); a running host
//! sees the rename like any deploy and reloads. Since the rolled-back
//! version is recorded again when it loads, a second rollback returns to the
//! version the first one replaced, as `cd -` does.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use super::{hex, one_line};

/// Versions kept per plugin path.
pub const KEEP: usize = 5;

/// Digits of the time in a history file's name (microseconds since 1970,
/// zero-padded so that names sort by time).
const STAMP_DIGITS: usize = 20;
/// 9999-12-31T23:59:59Z in seconds since 1970: the last time shown.
const LAST_SHOWN: u64 = 253_402_300_799;
/// Hex digits of the version in a history file's name.
const VERSION_DIGITS: usize = 12;

/// One recorded version of a plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The first 12 hex digits of the file's sha256 (the version in logs).
    pub version: String,
    /// When a host last loaded it.
    pub loaded: SystemTime,
    /// The copy in the history directory.
    pub file: PathBuf,
    stamp: u64,
}

/// What [`rollback`] did.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The plugin path written.
    pub plugin: PathBuf,
    /// The version that was there before (`None` if it was missing or
    /// unreadable).
    pub replaced: Option<String>,
    /// The version written.
    pub restored: Version,
}

impl std::fmt::Display for RolledBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // humantime shows years 1970 to 9999 only (an error past that would
        // make `format!` panic); a file name can say any time.
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_SHOWN);
        let loaded = humantime::format_rfc3339_seconds(self.restored.loaded.clamp(SystemTime::UNIX_EPOCH, last));
        write!(
            f,
            "rolled back {}: version {} -> {} (last loaded {loaded}); a host watching the file reloads it now \
             (with --no-watch, send it SIGHUP)",
            self.plugin.display(),
            self.replaced.as_deref().unwrap_or("(none)"),
            self.restored.version,
        )
    }
}

/// The history directory of `plugin` under `cache_dir`.
pub fn dir_for(cache_dir: &Path, plugin: &Path) -> anyhow::Result<PathBuf> {
    let key = hex(&Sha256::digest(canonical(plugin)?.as_os_str().as_encoded_bytes())[..8]);
    Ok(cache_dir.join("history").join(key))
}

/// `plugin` with its directory resolved (symlinks, `..`) and its file name
/// as given: the name a deploy replaces.
fn canonical(plugin: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::path::absolute(plugin).with_context(|| format!("cannot resolve {}", plugin.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        bail!("{}: not a file path", plugin.display());
    };
    let parent = parent.canonicalize().with_context(|| format!("cannot resolve {}", parent.display()))?;
    Ok(parent.join(name))
}

/// The versions recorded for `plugin`, newest first; empty if none.
pub fn versions(cache_dir: &Path, plugin: &Path) -> anyhow::Result<Vec<Version>> {
    list(&dir_for(cache_dir, plugin)?)
}

fn list(dir: &Path) -> anyhow::Result<Vec<Version>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut versions: Vec<Version> = entries.flatten().filter_map(|e| parse_name(&e.path())).collect();
    versions.sort_unstable_by_key(|v| std::cmp::Reverse(v.stamp));
    Ok(versions)
}

/// `<stamp>-<version>.wasm`, or `None` for any other file.
fn parse_name(file: &Path) -> Option<Version> {
    let name = file.file_name()?.to_str()?.strip_suffix(".wasm")?;
    let (stamp, version) = name.split_once('-')?;
    if stamp.len() != STAMP_DIGITS
        || version.len() != VERSION_DIGITS
        || !version.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let stamp: u64 = stamp.parse().ok()?;
    let loaded = SystemTime::UNIX_EPOCH + Duration::from_micros(stamp);
    Some(Version { version: version.to_string(), loaded, file: file.to_path_buf(), stamp })
}

/// Record a version of `plugin` (its bytes and their sha256 in hex) that
/// loaded, on a blocking thread, without waiting: a failure is logged, and
/// never delays or fails the load.
pub(crate) fn record_in_background(cache_dir: &Path, plugin: &Path, bytes: std::sync::Arc<Vec<u8>>, sha256: &str) {
    let (cache_dir, plugin, sha256) = (cache_dir.to_path_buf(), plugin.to_path_buf(), sha256.to_string());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = record(&cache_dir, &plugin, &bytes, &sha256) {
            tracing::warn!("plugin history: cannot record {}: {}", plugin.display(), one_line(&e));
        }
    });
}

/// Record a version of `plugin` that loaded: its bytes and their sha256 in
/// hex. Keeps the newest [`KEEP`] versions.
pub fn record(cache_dir: &Path, plugin: &Path, bytes: &[u8], sha256: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dir_for(cache_dir, plugin)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    check_private(&dir)?;
    let label = dir.join("path");
    if !label.exists() {
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        writeln!(tmp, "{}", canonical(plugin)?.display())?;
        tmp.persist(&label)?;
    }
    let version = sha256.get(..VERSION_DIGITS).context("not a sha256")?;
    let versions = list(&dir)?;
    if versions.first().is_some_and(|v| v.version == version) {
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    // Strictly after the newest, even if the clock went back (a file named
    // with the largest stamp makes this one share it: no overflow).
    let stamp = versions.first().map_or(now, |v| now.max(v.stamp.saturating_add(1)));
    let file = dir.join(format!("{stamp:0STAMP_DIGITS$}-{version}.wasm"));
    match versions.iter().find(|v| v.version == version) {
        // Loaded before: move it to the front instead of copying it again.
        Some(old) => std::fs::rename(&old.file, &file)?,
        None => {
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            tmp.write_all(bytes)?;
            tmp.persist(&file)?;
        }
    }
    for old in list(&dir)?.iter().skip(KEEP) {
        let _ = std::fs::remove_file(&old.file);
    }
    Ok(())
}

/// Refuse a history directory (the key directory `dir` and the `history/`
/// above it) that other users could have written into: its versions are
/// written back over the plugin by [`rollback`], often as root. Each must
/// be a directory itself (not a symlink to one elsewhere), owned by this
/// user, and not writable by group or others, as the compile cache is.
fn check_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = nix::unistd::geteuid().as_raw();
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let meta = std::fs::symlink_metadata(d).with_context(|| format!("cannot read {}", d.display()))?;
        if meta.file_type().is_symlink() {
            bail!("{} is a symlink; the plugin history must be a directory of its own (remove it)", d.display());
        }
        if !meta.is_dir() {
            bail!("{} is not a directory (remove it)", d.display());
        }
        if meta.uid() != me {
            bail!(
                "{} is owned by uid {}, not by this user (uid {me}); its files would be written over the plugin \
                 (run this as the user the host runs as, or remove it)",
                d.display(),
                meta.uid()
            );
        }
        if meta.permissions().mode() & 0o022 != 0 {
            bail!("{} is writable by other users (chmod go-w it)", d.display());
        }
    }
    Ok(())
}

/// Write the most recently loaded version of `plugin` that differs from
/// the file there now back over it, atomically. `cache_dir` is the host's
/// `--cache-dir` (default: the host's default cache directory).
///
/// The replaced file's mode (and owner, when run as root) carry over to the
/// new one. A plugin path that is a symlink is replaced by a regular file;
/// its target is not touched.
pub fn rollback(plugin: &Path, cache_dir: Option<&Path>) -> anyhow::Result<RolledBack> {
    let cache_dir = match cache_dir {
        Some(dir) => dir.to_path_buf(),
        None => crate::config::default_cache_dir()
            .context("no cache directory (HOME is not set): give the host's --cache-dir DIR")?,
    };
    let dir = dir_for(&cache_dir, plugin)?;
    let versions = list(&dir)?;
    if versions.is_empty() {
        bail!(
            "{}: no versions recorded in {}: a host records each version it loads there (give the host's \
             --cache-dir; nothing is recorded with --no-cache)",
            plugin.display(),
            dir.display()
        );
    }
    check_private(&dir)?;
    let current = std::fs::read(plugin).ok().map(|b| hex(&Sha256::digest(&b))[..VERSION_DIGITS].to_string());
    let Some(target) = versions.iter().find(|v| Some(&v.version) != current.as_ref()) else {
        bail!(
            "{}: only version {} has been loaded; there is no earlier version to roll back to",
            plugin.display(),
            versions[0].version
        );
    };
    let bytes = std::fs::read(&target.file).with_context(|| format!("cannot read {}", target.file.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    if !digest.starts_with(&target.version) {
        bail!("{}: damaged (its sha256 is {digest}, not {}...)", target.file.display(), target.version);
    }
    replace(plugin, &bytes).with_context(|| format!("cannot write {}", plugin.display()))?;
    Ok(RolledBack { plugin: plugin.to_path_buf(), replaced: current, restored: target.clone() })
}

/// Replace `path` with `bytes` atomically: a reader (the host's reload)
/// sees the old file or the new one, never a part, and a crash leaves one
/// of the two.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".rollback-").tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    let file = tmp.as_file();
    match std::fs::metadata(path) {
        Ok(old) => {
            file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()))?;
            }
        }
        // A plugin is not a secret by default; the host may run as another user.
        Err(_) => file.set_permissions(std::fs::Permissions::from_mode(0o644))?,
    }
    file.sync_all()?;
    tmp.persist(path)?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A plugin path in `dir` holding `bytes`, recorded as loaded.
    fn load(cache: &Path, plugin: &Path, bytes: &[u8]) {
        std::fs::write(plugin, bytes).unwrap();
        record(cache, plugin, bytes, &sha(bytes)).unwrap();
    }

    #[test]
    fn rollback_writes_the_previous_version_and_a_second_one_returns() {
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        load(cache.path(), &plugin, b"version one");
        load(cache.path(), &plugin, b"version two");
        let done = rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!(std::fs::read(&plugin).unwrap(), b"version one");
        assert_eq!(done.replaced.as_deref(), Some(&sha(b"version two")[..12]));
        assert_eq!(done.restored.version, sha(b"version one")[..12]);
        assert!(done.to_string().contains(&format!("-> {}", &sha(b"version one")[..12])), "{done}");
        // The host loads it and records it again; a second rollback goes
        // back to two.
        record(cache.path(), &plugin, b"version one", &sha(b"version one")).unwrap();
        rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!(std::fs::read(&plugin).unwrap(), b"version two");
        // Each version is kept once.
        assert_eq!(versions(cache.path(), &plugin).unwrap().len(), 2);
        // No temporary file is left beside the plugin.
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bad_file_at_the_path_is_replaced_by_the_last_version_that_loaded() {
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        load(cache.path(), &plugin, b"one");
        load(cache.path(), &plugin, b"two");
        // A broken deploy that never loaded: the running version comes back.
        std::fs::write(&plugin, b"broken").unwrap();
        rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!(std::fs::read(&plugin).unwrap(), b"two");
        // A missing file too.
        std::fs::remove_file(&plugin).unwrap();
        let done = rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!((done.replaced, std::fs::read(&plugin).unwrap()), (None, b"two".to_vec()));
    }

    #[test]
    fn nothing_to_roll_back_to_is_one_clear_line() {
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        std::fs::write(&plugin, b"one").unwrap();
        let e = rollback(&plugin, Some(cache.path())).unwrap_err().to_string();
        assert!(e.contains("p.wasm: no versions recorded in") && e.contains("--cache-dir"), "{e}");
        record(cache.path(), &plugin, b"one", &sha(b"one")).unwrap();
        let e = rollback(&plugin, Some(cache.path())).unwrap_err().to_string();
        assert!(e.contains(&format!("only version {} has been loaded", &sha(b"one")[..12])), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(std::fs::read(&plugin).unwrap(), b"one");
    }

    #[test]
    fn the_newest_five_are_kept_private_and_a_damaged_copy_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        for i in 0..8 {
            load(cache.path(), &plugin, format!("v{i}").as_bytes());
        }
        let kept = versions(cache.path(), &plugin).unwrap();
        let want: Vec<String> = (3..8).rev().map(|i| sha(format!("v{i}").as_bytes())[..12].to_string()).collect();
        assert_eq!(kept.iter().map(|v| v.version.clone()).collect::<Vec<_>>(), want);
        let dir = dir_for(cache.path(), &plugin).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&kept[0].file).unwrap().permissions().mode() & 0o777, 0o600);
        let label = std::fs::read_to_string(dir.join("path")).unwrap();
        assert_eq!(label.trim(), work.path().canonicalize().unwrap().join("p.wasm").display().to_string());
        // The same path through a symlinked directory shares the history.
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(work.path(), link.path().join("w")).unwrap();
        assert_eq!(dir_for(cache.path(), &link.path().join("w/p.wasm")).unwrap(), dir);
        // A copy that no longer matches its name is not written back.
        std::fs::write(&kept[1].file, b"tampered").unwrap();
        let e = rollback(&plugin, Some(cache.path())).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        assert_eq!(std::fs::read(&plugin).unwrap(), b"v7");
    }

    /// A history directory that is a symlink, or that another user owns,
    /// may hold that user's files: they are not written over the plugin.
    #[test]
    fn a_history_directory_that_is_a_symlink_or_not_ours_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        load(cache.path(), &plugin, b"one");
        load(cache.path(), &plugin, b"two");
        let dir = dir_for(cache.path(), &plugin).unwrap();
        // Linked to a private directory elsewhere (another user's, say).
        let elsewhere = tempfile::tempdir().unwrap();
        let moved = elsewhere.path().join("key");
        std::fs::rename(&dir, &moved).unwrap();
        std::fs::set_permissions(&moved, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        let e = rollback(&plugin, Some(cache.path())).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is a symlink", dir.display())) && !e.contains('\n'), "{e}");
        let e = record(cache.path(), &plugin, b"three", &sha(b"three")).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is a symlink", dir.display())), "{e}");
        assert_eq!(std::fs::read(&plugin).unwrap(), b"two");
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&moved, &dir).unwrap();
        rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!(std::fs::read(&plugin).unwrap(), b"one");

        // Owned by another user (only root can give a directory away).
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let nobody = 65534;
        for d in [dir.clone(), dir.parent().unwrap().to_path_buf()] {
            std::os::unix::fs::chown(&d, Some(nobody), Some(nobody)).unwrap();
            let e = rollback(&plugin, Some(cache.path())).unwrap_err().to_string();
            let want = format!("{} is owned by uid {nobody}", d.display());
            assert!(e.contains(&want) && !e.contains('\n'), "{e}");
            let e = record(cache.path(), &plugin, b"three", &sha(b"three")).unwrap_err().to_string();
            assert!(e.contains(&want), "{e}");
            std::os::unix::fs::chown(&d, Some(0), Some(0)).unwrap();
        }
        assert_eq!(std::fs::read(&plugin).unwrap(), b"one");
    }

    /// A history file named with a time past year 9999 (humantime cannot
    /// show it) or the largest stamp (the next is one more) panics nothing.
    #[test]
    fn out_of_range_times_in_the_history_do_not_panic() {
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        load(cache.path(), &plugin, b"now");
        let dir = dir_for(cache.path(), &plugin).unwrap();
        std::fs::write(dir.join(format!("00300000000000000000-{}.wasm", &sha(b"far")[..12])), b"far").unwrap();
        let done = rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!(std::fs::read(&plugin).unwrap(), b"far");
        let shown = format!("{done}");
        assert!(shown.contains("(last loaded 9999-12-31T23:59:59Z)"), "{shown}");

        std::fs::write(dir.join(format!("18446744073709551615-{}.wasm", &sha(b"last")[..12])), b"last").unwrap();
        load(cache.path(), &plugin, b"newer");
        let kept: Vec<String> = versions(cache.path(), &plugin).unwrap().into_iter().map(|v| v.version).collect();
        assert!(kept.contains(&sha(b"newer")[..12].to_string()), "{kept:?}");
        let done = rollback(&plugin, Some(cache.path())).unwrap();
        assert!(format!("{done}").contains("9999-12-31T23:59:59Z"), "{done}");
    }

    #[test]
    fn the_replaced_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (cache, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plugin = work.path().join("p.wasm");
        load(cache.path(), &plugin, b"one");
        load(cache.path(), &plugin, b"two");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o640)).unwrap();
        rollback(&plugin, Some(cache.path())).unwrap();
        assert_eq!(std::fs::metadata(&plugin).unwrap().permissions().mode() & 0o777, 0o640);
    }
}
