//! Dispatch: one request in, at most one reply out.
//!
//! Picks the plugin version that is current when the request starts (a reload
//! never changes it mid-request), takes an instance ([`version`]), runs the
//! plugin under the request's limits ([`limits`]), and counts and logs the
//! outcome. An error here is the request's alone: it never stops a listener.
//!
//! A call is a `'static` future that owns its request, so a listener can
//! start it inline (most calls finish at the first poll) and move it to a
//! task of its own if it has to wait.
//!
//! The connection world is dispatched per connection instead ([`session`]):
//! a connection gets an instance of its own, of the version current once
//! there is room for it, and keeps both until it closes.

pub mod limits;
pub mod session;
pub mod version;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Config;
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, CallLimits, Plugin, PluginInfo, Reply};
use crate::ratelimit::log_limited;
use crate::request::Request;
use crate::stats::{Snapshot, Stats};

pub use limits::{ReplyLimit, call_limits};
pub use session::{LiveSession, OpenError, Step};
pub use version::{CallPolicy, Lease, Version, Versions};

/// What the listener does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send nothing and keep the connection: the plugin returned `ok(none)`.
    NoReply,
    /// Send nothing; a TCP connection is closed after the replies before
    /// it (the plugin returned `err`, trapped, timed out, or its reply was
    /// over a cap): the peer expected a reply, and a pipelining peer would
    /// pair every later reply with the wrong request.
    Failed,
}

/// A call in progress: owns everything it uses, so it can move to a task.
/// Yields the outcome and, in reuse mode, the instance for the next call.
pub type Call = Pin<Box<dyn Future<Output = (Outcome, Option<Lease>)> + Send>>;

/// Shared by every listener: the plugin versions and the limits.
pub struct Dispatcher {
    versions: Versions,
    limits: CallLimits,
    stats: Arc<Stats>,
}

impl Dispatcher {
    /// A dispatcher serving `plugin` under `config`'s limits.
    pub fn new(plugin: Plugin, config: &Config, stats: Arc<Stats>) -> Self {
        let limits = call_limits(config);
        let policy =
            CallPolicy { limits, reuse: config.instance_reuse.max(1), stats: Arc::default(), timings: Arc::default() };
        Self { versions: Versions::new(plugin, policy, config.reload_grace), limits, stats }
    }

    /// The plugin versions.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The per-request limits.
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// The service's own counters: what listeners, reloads and the
    /// key-value store count. The outcome of each call is counted on its
    /// version; [`Self::totals`] adds everything up.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Every counter of the service: its own and every version's, dropped
    /// versions included.
    pub fn totals(&self) -> Snapshot {
        self.report().0
    }

    /// [`Self::totals`], and the live versions with their own counters
    /// (the current one first).
    pub fn report(&self) -> (Snapshot, Vec<crate::status::VersionStatus>) {
        let (mut total, versions) = self.versions.report();
        total += self.stats.snapshot();
        (total, versions)
    }

    /// A sequence of requests that run one after another, such as the
    /// frames of one TCP read. In reuse mode it keeps its instance from one
    /// request to the next instead of going through the shared idle pool.
    pub fn sequence(&self) -> Sequence<'_> {
        Sequence { dispatcher: self, held: None, pinned: None, pin: false }
    }

    /// The requests of one connection with an instance of its own
    /// (`--tcp-isolation connection`): every request goes to one instance,
    /// created at the first request (of the version current then) and
    /// dropped with the sequence (never pooled, never shared).
    pub fn pinned_sequence(&self) -> Sequence<'_> {
        Sequence { dispatcher: self, held: None, pinned: None, pin: true }
    }

    /// Drop instances idle for too long (reuse mode); call about once a
    /// [`version::IDLE_INSTANCE_TTL`].
    pub fn expire_idle(&self) {
        let expired = self.versions.expire_idle();
        if expired > 0 {
            self.stats.instances_expired.add(expired as u64);
        }
    }

    /// Start `req` on `pinned`, or else the current version, on `held` if it
    /// is an instance of that version; `keep`: the instance serves one
    /// connection to its end (a pinned sequence).
    fn call(
        &self,
        req: Request,
        limit: ReplyLimit,
        held: Option<Lease>,
        keep: bool,
        pinned: Option<Arc<Version>>,
    ) -> Call {
        let version = pinned.unwrap_or_else(|| self.versions.current());
        Box::pin(async move {
            let policy = version.policy();
            let started = std::time::Instant::now();
            Stats::incr(&policy.stats.requests);
            let max_reply = limit.cap(req.payload.len());
            let held = held.filter(|lease| lease.is_of(&version));
            let attempt = async {
                // A pinned sequence's instance is fresh: never one that
                // served other peers in reuse mode.
                let idle = || if keep { None } else { version.take_idle() };
                let mut instance = match held.or_else(idle) {
                    Some(lease) => lease.into_instance(),
                    None => {
                        let begun = std::time::Instant::now();
                        let instance = version.plugin().instantiate(&policy.limits).await?;
                        policy.timings.instantiation.observe(begun.elapsed());
                        instance
                    }
                };
                let result = instance.call(&req, &policy.limits, max_reply).await;
                Ok::<_, CallError>((result, instance))
            };
            // The epoch deadline stops guest code; this timer also stops a
            // call that is blocked inside a host function (or waiting for
            // room in the pool). Two ticks of grace let the epoch trap (with
            // its clearer message) win when both fire.
            let (result, lease) = match limits::bounded(policy.limits.timeout + 2 * EPOCH_TICK, attempt).await {
                Some(Ok((result, instance))) => {
                    // An instance that failed in any way, or returned a reply
                    // over a cap, is not trusted with another request. A
                    // pinned one serves its connection to the end.
                    let healthy = matches!(result, Ok(None | Some(Reply::Bytes(_))));
                    let lease = (healthy && (keep || instance.calls() < policy.reuse))
                        .then(|| Lease::new(version.clone(), instance, !keep));
                    (result, lease)
                }
                Some(Err(e)) => (Err(e), None),
                None => (Err(CallError::Timeout(policy.limits.timeout)), None),
            };
            let outcome = outcome(&policy.stats, &req, version.plugin().info(), &limit, result);
            policy.timings.latency.observe(started.elapsed());
            (outcome, lease)
        })
    }
}

/// Count and log what a call gave, and say what the listener does next.
fn outcome(
    stats: &Stats,
    req: &Request,
    info: &PluginInfo,
    limit: &ReplyLimit,
    result: Result<Option<Reply>, CallError>,
) -> Outcome {
    let (plugin, version, transport, peer) = (&info.name, &info.version, req.transport, req.peer);
    let reply = match result {
        Ok(Some(Reply::Bytes(reply))) => reply,
        Ok(Some(Reply::TooLarge(len))) => {
            reply_too_large(stats, info, transport, &peer, len, &limit.explain(req.payload.len(), len));
            return Outcome::Failed;
        }
        Ok(None) => {
            Stats::incr(&stats.no_reply);
            tracing::debug!(%plugin, %version, %peer, "no reply");
            return Outcome::NoReply;
        }
        Err(err) => {
            call_failed(stats, info, transport, &peer, "request", &err);
            return Outcome::Failed;
        }
    };
    tracing::debug!(%plugin, %version, %transport, %peer, request = req.payload.len(), reply = reply.len(), "served");
    Outcome::Reply(reply)
}

/// Count and log a reply over its cap.
fn reply_too_large(
    stats: &Stats,
    info: &PluginInfo,
    transport: crate::Transport,
    peer: &std::net::SocketAddr,
    len: usize,
    why: &str,
) {
    let (plugin, version) = (&info.name, &info.version);
    Stats::incr(&stats.replies_dropped);
    log_limited!(warn, %plugin, %version, %transport, %peer, "reply of {len} bytes not sent: {why}");
}

/// Count and log a failed call; `what` says which (`request`, `session
/// constructor`, ...).
fn call_failed(
    stats: &Stats,
    info: &PluginInfo,
    transport: crate::Transport,
    peer: &std::net::SocketAddr,
    what: &str,
    err: &CallError,
) {
    let (plugin, version) = (&info.name, &info.version);
    let counter = match err {
        CallError::Plugin(_) => &stats.plugin_errors,
        CallError::Timeout(_) | CallError::OutOfFuel => &stats.timeouts,
        CallError::Trap(_) | CallError::Instantiate(_) => &stats.traps,
    };
    Stats::incr(counter);
    log_limited!(warn, %plugin, %version, %transport, %peer, "{what} failed: {err}");
}

/// Requests dispatched one after another, sharing an instance in reuse mode
/// or when pinned to a connection.
///
/// Dropping the sequence returns its instance to the idle pool, or drops
/// it if pinned.
pub struct Sequence<'d> {
    dispatcher: &'d Dispatcher,
    held: Option<Lease>,
    /// Keep one instance for every request (`pinned_sequence`).
    pin: bool,
    /// The version of that instance, once the first request chose it.
    pinned: Option<Arc<Version>>,
}

impl Sequence<'_> {
    /// The version a pinned sequence serves.
    pub fn pinned_version(&self) -> Option<&Arc<Version>> {
        self.pinned.as_ref()
    }

    /// Run one request and wait for it.
    pub async fn dispatch(&mut self, req: Request, limit: ReplyLimit) -> Outcome {
        let (outcome, lease) = self.start(req, limit).await;
        self.keep(lease);
        outcome
    }

    /// Start one request on this sequence's instance. The caller awaits it,
    /// or moves it elsewhere, and hands the lease back with [`Self::keep`]
    /// if it finished here.
    pub fn start(&mut self, req: Request, limit: ReplyLimit) -> Call {
        self.dispatcher.call(req, limit, self.held.take(), self.pin, self.pinned.clone())
    }

    /// Keep `lease` for the next request; a pinned sequence's first lease
    /// pins its version.
    pub fn keep(&mut self, lease: Option<Lease>) {
        if self.pin && self.pinned.is_none() {
            self.pinned = lease.as_ref().map(|l| l.version().clone());
        }
        self.held = lease;
    }
}
