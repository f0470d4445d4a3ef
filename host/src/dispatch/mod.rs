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

pub mod limits;
pub mod version;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Config;
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, CallLimits, Plugin, PluginInfo, Reply};
use crate::ratelimit::log_limited;
use crate::request::Request;
use crate::stats::Stats;

pub use limits::{ReplyLimit, call_limits};
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
        let policy = CallPolicy { limits, reuse: config.instance_reuse.max(1), stats: stats.clone() };
        Self { versions: Versions::new(plugin, policy), limits, stats }
    }

    /// The plugin versions.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The per-request limits.
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A session for requests that run one after another, such as the
    /// frames of one TCP read. In reuse mode it keeps its instance from one
    /// request to the next instead of going through the shared idle pool.
    pub fn session(&self) -> Session<'_> {
        Session { dispatcher: self, held: None }
    }

    /// Drop instances idle for too long (reuse mode); call about once a
    /// [`version::IDLE_INSTANCE_TTL`].
    pub fn expire_idle(&self) {
        let expired = self.versions.expire_idle();
        if expired > 0 {
            self.stats.instances_expired.fetch_add(expired as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Start `req` on the current version, on `held` if it is an instance of
    /// that version.
    fn call(&self, req: Request, limit: ReplyLimit, held: Option<Lease>) -> Call {
        let version = self.versions.current();
        Box::pin(async move {
            let policy = version.policy();
            Stats::incr(&policy.stats.requests);
            let max_reply = limit.cap(req.payload.len());
            let held = held.filter(|lease| lease.is_of(&version));
            let attempt = async {
                let mut instance = match held.or_else(|| version.take_idle()) {
                    Some(lease) => lease.into_instance(),
                    None => version.plugin().instantiate(&policy.limits).await?,
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
                    // over a cap, is not trusted with another request.
                    let healthy = matches!(result, Ok(None | Some(Reply::Bytes(_))));
                    let lease =
                        (healthy && instance.calls() < policy.reuse).then(|| Lease::new(version.clone(), instance));
                    (result, lease)
                }
                Some(Err(e)) => (Err(e), None),
                None => (Err(CallError::Timeout(policy.limits.timeout)), None),
            };
            (outcome(&policy.stats, &req, version.plugin().info(), &limit, result), lease)
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
            Stats::incr(&stats.replies_dropped);
            log_limited!(
                warn, %plugin, %version, %transport, %peer,
                "reply of {len} bytes not sent: {}", limit.explain(req.payload.len(), len)
            );
            return Outcome::Failed;
        }
        Ok(None) => {
            Stats::incr(&stats.no_reply);
            tracing::debug!(%plugin, %version, %peer, "no reply");
            return Outcome::NoReply;
        }
        Err(err) => {
            let counter = match &err {
                CallError::Plugin(_) => &stats.plugin_errors,
                CallError::Timeout(_) | CallError::OutOfFuel => &stats.timeouts,
                CallError::Trap(_) | CallError::Instantiate(_) => &stats.traps,
            };
            Stats::incr(counter);
            log_limited!(warn, %plugin, %version, %transport, %peer, "request failed: {err}");
            return Outcome::Failed;
        }
    };
    tracing::debug!(%plugin, %version, %transport, %peer, request = req.payload.len(), reply = reply.len(), "served");
    Outcome::Reply(reply)
}

/// Requests dispatched one after another, sharing an instance in reuse mode.
///
/// Dropping the session returns its instance to the idle pool.
pub struct Session<'d> {
    dispatcher: &'d Dispatcher,
    held: Option<Lease>,
}

impl Session<'_> {
    /// Run one request and wait for it.
    pub async fn dispatch(&mut self, req: Request, limit: ReplyLimit) -> Outcome {
        let (outcome, lease) = self.start(req, limit).await;
        self.keep(lease);
        outcome
    }

    /// Start one request on this session's instance. The caller awaits it,
    /// or moves it elsewhere, and hands the lease back with [`Self::keep`]
    /// if it finished here.
    pub fn start(&mut self, req: Request, limit: ReplyLimit) -> Call {
        self.dispatcher.call(req, limit, self.held.take())
    }

    /// Keep `lease` for the next request.
    pub fn keep(&mut self, lease: Option<Lease>) {
        self.held = lease;
    }
}
