//! Watching the plugin file for changes, through symlinks.
//!
//! A file is not watched directly: editors and `mv` replace it, which would
//! end a watch on the old inode. The directories that hold it are watched
//! instead, and an event counts when it names an entry of the plugin path's
//! *symlink chain*: the path itself, every symlink followed to reach the
//! file (the path's own, and any in its directories), and the file reached.
//! That is what a Kubernetes ConfigMap update needs: `plugin.wasm ->
//! ..data/plugin.wasm` and `..data -> ..2026_11_25_xx` are switched by
//! renaming a new `..data` into place, an event that does not name
//! `plugin.wasm`, and the file that is then read lives in a new directory.
//! So the chain is resolved again after every event that can change it, and
//! the set of watched directories follows it.
//!
//! A watch can be lost: a watched directory is removed (or moved away), or
//! the watcher reports an error. Hot reload must not stop silently: each
//! error is logged (rate-limited), a lost directory is logged once and its
//! nearest existing ancestor is watched until it comes back, and a watch
//! that cannot be added is retried every [`RETRY`]. SIGHUP reloads
//! throughout.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Trigger;
use crate::ratelimit::log_limited;

/// How often a directory that could not be watched is tried again.
pub const RETRY: Duration = Duration::from_secs(2);

/// Symlinks followed at most while resolving the chain (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// Watches the directories of the plugin path's symlink chain and turns the
/// events that concern it into [`Trigger`]s.
pub(crate) struct FileWatch {
    /// The plugin path, absolute.
    path: PathBuf,
    watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    /// Every entry whose change changes what `path` reads (see
    /// [`symlink_chain`]).
    chain: Vec<PathBuf>,
    /// Missing directories of the chain, each just below the ancestor that
    /// is watched in its place: their creation resumes the watch.
    awaited: Vec<PathBuf>,
    /// The directories watched now.
    watched: BTreeSet<PathBuf>,
    /// Why hot reload is not fully working, as last logged; `None` if it is.
    degraded: Option<String>,
    /// The watch just came back from a degraded state.
    resumed: bool,
    /// Some directory could not be watched: retry after [`RETRY`].
    retry: bool,
}

impl FileWatch {
    /// Watch `path`. Fails if the watcher cannot start or a directory that
    /// exists cannot be watched.
    pub fn start(path: &Path) -> anyhow::Result<FileWatch> {
        let path = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
        let (tx, events) = mpsc::unbounded_channel();
        // The callback runs on the watcher's thread: it only forwards, since
        // changing the watch set from there would wait on that same thread.
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .context("cannot start the file watcher")?;
        let mut watch = FileWatch {
            path,
            watcher,
            events,
            chain: Vec::new(),
            awaited: Vec::new(),
            watched: BTreeSet::new(),
            degraded: None,
            resumed: false,
            retry: false,
        };
        if let Some((dir, e)) = watch.resync().into_iter().next() {
            return Err(e).with_context(|| format!("cannot watch {} for plugin changes", dir.display()));
        }
        let target = watch.chain.last().filter(|t| **t != watch.path);
        match target {
            Some(t) => tracing::info!(
                "watching {} for changes (a symlink to {}; SIGHUP also reloads)",
                watch.path.display(),
                t.display()
            ),
            None => tracing::info!("watching {} for changes (SIGHUP also reloads)", watch.path.display()),
        }
        Ok(watch)
    }

    /// Send a trigger for each change until `shutdown`.
    pub async fn run(mut self, tx: mpsc::UnboundedSender<Trigger>, shutdown: CancellationToken) {
        // One timer across loop passes: a busy directory (events more often
        // than RETRY) must not keep postponing the retry.
        let mut retry_timer = tokio::time::interval(RETRY);
        retry_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = self.retry;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event, &tx),
                    None => {
                        tracing::warn!(
                            "the file watcher stopped: hot reload of {} is off (SIGHUP still reloads)",
                            self.path.display()
                        );
                        return;
                    }
                },
                _ = retry_timer.tick(), if retry => {
                    self.resync();
                    self.check_after_resume(&tx);
                }
            }
        }
    }

    fn handle(&mut self, event: notify::Result<notify::Event>, tx: &mpsc::UnboundedSender<Trigger>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                // Events may have been lost: look again, and check the file.
                log_limited!(
                    warn,
                    "file watcher error while watching {}: {e}; checking the plugin file (SIGHUP also reloads)",
                    self.path.display()
                );
                self.resync();
                let _ = tx.send(Trigger::FileChanged);
                return;
            }
        };
        if event.need_rescan() {
            log_limited!(warn, "file watcher queue overflowed: checking {} for changes", self.path.display());
            self.resync();
            let _ = tx.send(Trigger::FileChanged);
            return;
        }
        let names = |set: &[PathBuf]| event.paths.iter().any(|p| set.contains(p));
        let in_chain = names(&self.chain);
        let awaited = names(&self.awaited);
        // A watched directory removed or moved away: its watch is gone (or
        // now reports a different place).
        let lost: Vec<PathBuf> = match event.kind {
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                event.paths.iter().filter(|p| self.watched.contains(*p)).cloned().collect()
            }
            _ => Vec::new(),
        };
        for dir in &lost {
            self.watched.remove(dir);
            let _ = self.watcher.unwatch(dir);
        }
        let trigger = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(Trigger::FileSettled),
            EventKind::Access(_) => None,
            _ => Some(Trigger::FileChanged),
        };
        // Writes do not change the chain; anything else on it may.
        let data_only = matches!(event.kind, EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_)));
        if !lost.is_empty() || awaited || (in_chain && !data_only) {
            self.resync();
            self.check_after_resume(tx);
        }
        // A directory still on the chain that was back in time to be watched
        // again at once: the file may have changed unseen in between.
        if let Some(dir) = lost.iter().find(|d| self.watched.contains(*d)) {
            tracing::warn!("the watch on {} was lost ({:?}); watching it again", dir.display(), event.kind);
            let _ = tx.send(Trigger::FileChanged);
        }
        if in_chain && let Some(trigger) = trigger {
            let _ = tx.send(trigger);
        }
    }

    /// After a lost watch is back, the file may have changed unseen.
    fn check_after_resume(&mut self, tx: &mpsc::UnboundedSender<Trigger>) {
        if std::mem::take(&mut self.resumed) && self.path.exists() {
            let _ = tx.send(Trigger::FileChanged);
        }
    }

    /// Resolve the chain again and make the watched directories follow it.
    /// Returns the directories that could not be watched.
    fn resync(&mut self) -> Vec<(PathBuf, notify::Error)> {
        let chain = symlink_chain(&self.path);
        let mut wanted = BTreeSet::new();
        let mut awaited = Vec::new();
        for entry in &chain {
            let Some(mut dir) = entry.parent().map(Path::to_path_buf) else { continue };
            let mut below = None;
            while !dir.is_dir()
                && let Some(up) = dir.parent()
            {
                below = Some(dir.clone());
                dir = up.to_path_buf();
            }
            awaited.extend(below);
            wanted.insert(dir);
        }
        for dir in self.watched.difference(&wanted).cloned().collect::<Vec<_>>() {
            // Fails if the directory is already gone, which ends its watch.
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let mut failed = Vec::new();
        for dir in wanted {
            if self.watched.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => failed.push((dir, e)),
            }
        }
        self.retry = !failed.is_empty();
        let degraded = if let Some((dir, e)) = failed.first() {
            Some(format!("cannot watch {}: {e}; trying again every {RETRY:?}", dir.display()))
        } else {
            awaited.first().map(|missing| {
                let watching = missing.parent().unwrap_or(Path::new("/"));
                format!("{} was removed; watching {} until it is back", missing.display(), watching.display())
            })
        };
        if let Some(why) = &degraded
            && self.degraded.as_ref() != Some(why)
        {
            tracing::warn!("hot reload of {} paused: {why} (SIGHUP still reloads)", self.path.display());
        }
        if self.degraded.is_some() && degraded.is_none() {
            tracing::info!("watching {} for changes again", self.path.display());
            self.resumed = true;
        }
        self.degraded = degraded;
        self.chain = chain;
        self.awaited = awaited;
        failed
    }
}

/// One step of path resolution.
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Up),
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// The entries a change to which changes what the absolute `path` reads:
/// every symlink followed while resolving it (the path itself when it is
/// one), then the file it resolves to. Each entry is named by the resolved
/// path of its directory, as the watcher names it in events. A missing
/// entry ends resolution of its branch as a plain name.
pub(super) fn symlink_chain(path: &Path) -> Vec<PathBuf> {
    let mut todo: VecDeque<Step> = steps(path).collect();
    let mut current = PathBuf::from("/");
    let mut chain = Vec::new();
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Root => current = PathBuf::from("/"),
            Step::Up => {
                current.pop();
            }
            Step::Name(name) => {
                current.push(name);
                if chain.len() < MAX_SYMLINKS
                    && let Ok(target) = std::fs::read_link(&current)
                {
                    chain.push(current.clone());
                    current.pop();
                    for step in steps(&target).rev() {
                        todo.push_front(step);
                    }
                }
            }
        }
    }
    chain.push(current);
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_plain_file_is_its_own_chain() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let file = dir.join("plugin.wasm");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(symlink_chain(&file), [file]);
        // A missing file resolves to its name.
        let missing = dir.join("nope/../missing.wasm");
        assert_eq!(symlink_chain(&missing), [dir.join("missing.wasm")]);
    }

    #[test]
    fn a_configmap_layout_names_every_link() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let data = dir.join("..2026_11_25_01");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("plugin.wasm"), b"x").unwrap();
        symlink("..2026_11_25_01", dir.join("..data")).unwrap();
        symlink("..data/plugin.wasm", dir.join("plugin.wasm")).unwrap();
        assert_eq!(
            symlink_chain(&dir.join("plugin.wasm")),
            [dir.join("plugin.wasm"), dir.join("..data"), data.join("plugin.wasm")]
        );
    }

    #[test]
    fn links_in_directories_and_loops_are_followed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("real")).unwrap();
        symlink(dir.join("real"), dir.join("alias")).unwrap();
        assert_eq!(symlink_chain(&dir.join("alias/f")), [dir.join("alias"), dir.join("real/f")]);
        symlink("b", dir.join("a")).unwrap();
        symlink("a", dir.join("b")).unwrap();
        assert_eq!(symlink_chain(&dir.join("a")).len(), MAX_SYMLINKS + 1);
    }
}
