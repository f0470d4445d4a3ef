//! Hot reload: replace the plugin while traffic flows.
//!
//! Triggers: a change to the plugin file, watched with `notify` through any
//! symlinks on its path (a Kubernetes ConfigMap swap included; see
//! `reload/watch.rs`), SIGHUP, or [`ReloadHandle::reload`]. A reload reads
//! the file and the `--var-file`s (which are not watched: SIGHUP picks up
//! a change to one), runs the plugin's `wizer-initialize` if it has one
//! (`plugin/init.rs`), compiles it off the request path (or takes it from
//! the compile cache), links and validates it, and only then swaps it in
//! with one atomic pointer swap ([`Versions::swap`](crate::dispatch::Versions::swap)).
//! Requests already running finish on the version they started with; open
//! TCP connections stay open and their next frames go to the new version.
//!
//! A file that cannot be read, is truncated or half-written, is not a
//! component, or does not implement the world never replaces the working
//! version: one line is logged and the host keeps serving the old one.
//!
//! Editors and `cp` write a file in several steps (truncate, write, write,
//! rename). Events are debounced: a reload starts once the file has been
//! quiet for [`DEBOUNCE`], or for only [`SETTLED_DEBOUNCE`] after an event
//! that says the file is complete (renamed into place, or closed by its
//! writer). A write that pauses longer than that is caught by validation (a
//! partial component does not compile) and picked up again at its next
//! event.
//!
//! Shutdown does not wait for a reload: a cold compile of a Python or
//! JavaScript plugin takes seconds, longer than `--drain-timeout`. The
//! reload in progress is dropped (the compile itself runs on a blocking
//! thread, which the binary does not wait for at exit) and the old version
//! stays in place until the end.

pub(crate) mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::plugin::CallLimits;
use crate::plugin::loader::{LoadError, Loader};
use crate::stats::Stats;
use watch::FileWatch;

/// How long the plugin file must be quiet before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// The same after the file was renamed into place or closed by its writer:
/// just long enough to take in the events that come with it.
pub const SETTLED_DEBOUNCE: Duration = Duration::from_millis(10);

/// Why a reload was asked for, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file changed on disk.
    FileChanged,
    /// The file was renamed into place or closed after writing: complete.
    FileSettled,
    /// SIGHUP.
    Signal,
    /// [`ReloadHandle::reload`].
    Api,
}

impl Trigger {
    fn is_file_event(self) -> bool {
        matches!(self, Trigger::FileChanged | Trigger::FileSettled)
    }
}

/// Asks the reloader to reload; cheap to clone.
#[derive(Clone, Debug)]
pub struct ReloadHandle(mpsc::UnboundedSender<Trigger>);

impl ReloadHandle {
    /// Reload the plugin file now (debounced like a file change).
    pub fn reload(&self) {
        let _ = self.0.send(Trigger::Api);
    }
}

/// Reloads one listener set's plugin.
pub(crate) struct Reloader {
    path: PathBuf,
    loader: Arc<Loader>,
    dispatcher: Arc<Dispatcher>,
    limits: CallLimits,
    stats: Arc<Stats>,
    /// The identity of the last file that failed, so each bad file is
    /// logged once.
    last_failure: Option<String>,
    tx: mpsc::UnboundedSender<Trigger>,
    rx: mpsc::UnboundedReceiver<Trigger>,
}

impl Reloader {
    pub fn new(path: PathBuf, loader: Arc<Loader>, dispatcher: Arc<Dispatcher>, stats: Arc<Stats>) -> Self {
        let limits = *dispatcher.limits();
        let (tx, rx) = mpsc::unbounded_channel();
        Self { path, loader, dispatcher, limits, stats, last_failure: None, tx, rx }
    }

    /// A handle that triggers reloads.
    pub fn handle(&self) -> ReloadHandle {
        ReloadHandle(self.tx.clone())
    }

    /// Start watching (unless `watch` is false) and listening for SIGHUP;
    /// returns the task that reloads until `shutdown`.
    pub fn start(
        mut self,
        watch: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
        let tx = self.tx.clone();
        let watch = if watch {
            Some(FileWatch::start(&self.path)?)
        } else {
            tracing::info!("not watching {} (--no-watch): SIGHUP reloads it", self.path.display());
            None
        };
        let sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let rx = std::mem::replace(&mut self.rx, mpsc::unbounded_channel().1);
        Ok(self.run(rx, tx, sighup, watch, shutdown))
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Trigger>,
        tx: mpsc::UnboundedSender<Trigger>,
        sighup: tokio::signal::unix::Signal,
        watch: Option<FileWatch>,
        shutdown: CancellationToken,
    ) {
        let changes = {
            let (tx, shutdown) = (tx.clone(), shutdown.clone());
            async move {
                if let Some(watch) = watch {
                    watch.run(tx, shutdown).await;
                }
            }
        };
        // SIGHUP is turned into a trigger like the others.
        let signals = forward_sighup(sighup, tx, shutdown.clone());
        let reloads = async {
            loop {
                let trigger = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    trigger = debounced(&mut rx) => match trigger {
                        Some(trigger) => trigger,
                        None => return,
                    },
                };
                // Shutdown abandons a reload in progress (see the module
                // doc). `biased`: once it has begun, nothing is swapped in.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    () = self.reload(trigger) => {}
                }
            }
        };
        tokio::join!(changes, signals, reloads);
    }

    /// Load the file and swap it in if it is a new, valid version.
    async fn reload(&mut self, trigger: Trigger) {
        let started = Instant::now();
        // The plugin file and the `--var-file`s: a changed variable's file
        // makes a new version of an unchanged plugin file.
        let file = match self.loader.read(&self.path).await {
            Ok(file) => file,
            Err(LoadError::Read { cause, .. }) => {
                self.failed(format!("cannot read {}: {cause}", self.path.display()), None);
                return;
            }
            Err(e) => {
                self.failed(e.to_string(), None);
                return;
            }
        };
        let digest = file.identity();
        let current = self.dispatcher.versions().current();
        let old = current.plugin().info().version.clone();
        if current.plugin().info().identity == digest {
            // Touched, or SIGHUP with no change: nothing to do. An operator
            // who sent SIGHUP is told; a file event is routine.
            if trigger.is_file_event() {
                tracing::debug!("reload ({trigger:?}): {} unchanged, still version {old}", self.path.display());
            } else {
                tracing::info!("reload ({trigger:?}): {} unchanged, still version {old}", self.path.display());
            }
            return;
        }
        drop(current);
        if self.last_failure.as_deref() == Some(digest.as_str()) && trigger.is_file_event() {
            return;
        }
        match self.loader.load_file(&self.path, file, &self.limits).await {
            Ok(plugin) if plugin.world() != self.dispatcher.versions().current().plugin().world() => {
                let (new, old) = (plugin.world(), self.dispatcher.versions().current().plugin().world());
                let why = format!(
                    "{}: the new version implements the {new} world, the one served implements {old}; \
                     a reload cannot change the world (restart the host)",
                    self.path.display()
                );
                self.failed(why, Some(digest));
            }
            Ok(plugin) => {
                let new = plugin.info().version.clone();
                self.dispatcher.versions().swap(plugin);
                self.last_failure = None;
                Stats::incr(&self.stats.reloads);
                tracing::info!(
                    "reloaded plugin {}: version {old} -> {new} in {:.1?} ({trigger:?})",
                    self.path.display(),
                    started.elapsed()
                );
            }
            Err(e) => self.failed(e.to_string(), Some(digest)),
        }
    }

    fn failed(&mut self, why: String, digest: Option<String>) {
        Stats::incr(&self.stats.reload_failures);
        let version = self.dispatcher.versions().current().plugin().info().version.clone();
        tracing::warn!("reload failed, still serving version {version}: {why}");
        self.last_failure = digest;
    }
}

/// Send a [`Trigger::Signal`] on `tx` for every SIGHUP, until `shutdown`.
pub(crate) async fn forward_sighup(
    mut sighup: tokio::signal::unix::Signal,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            s = sighup.recv() => if s.is_none() { return },
        }
        let _ = tx.send(Trigger::Signal);
    }
}

/// The next trigger, once triggers have stopped for a while (see
/// [`DEBOUNCE`]); `None` when every sender is gone.
pub(crate) async fn debounced(rx: &mut mpsc::UnboundedReceiver<Trigger>) -> Option<Trigger> {
    let mut trigger = rx.recv().await?;
    loop {
        let quiet = if trigger == Trigger::FileChanged { DEBOUNCE } else { SETTLED_DEBOUNCE };
        match tokio::time::timeout(quiet, rx.recv()).await {
            // A file event does not override a signal or API call
            // (which retry a file that failed before).
            Ok(Some(t)) if t.is_file_event() && !trigger.is_file_event() => {}
            Ok(Some(t)) if t == Trigger::FileChanged && trigger == Trigger::FileSettled => {}
            Ok(Some(t)) => trigger = t,
            Ok(None) => return None,
            Err(_) => return Some(trigger),
        }
    }
}
