//! Dispatch: one request in, at most one reply out.
//!
//! Picks the plugin version that is current when the request starts (a reload
//! never changes it mid-request), takes an instance slot, runs the plugin
//! under the request limits, checks the reply against the reply caps, and
//! counts and logs every outcome. An error here is the request's alone: it
//! never stops a listener.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, CallLimits, Instance, Plugin, Reply, RequestRef, Transport};
use crate::ratelimit::log_limited;
use crate::stats::Stats;

/// Idle instances kept per plugin version in reuse mode. More than the
/// requests that run at once on a small machine; each one holds a pool slot.
const MAX_IDLE_INSTANCES: usize = 64;

/// One request as the listeners see it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// How it arrived.
    pub transport: Transport,
    /// Remote address, formatted once per connection or datagram.
    pub peer: &'a str,
    /// Local address.
    pub local: &'a str,
    /// Payload without framing.
    pub payload: &'a [u8],
}

/// What the listener does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send nothing; keep the connection (the plugin said `none` or `err`).
    NoReply,
    /// Send nothing; a TCP connection is closed (trap, timeout, reply over a cap),
    /// because its request/reply pairing can no longer be trusted.
    Failed,
}

/// A plugin version and, in reuse mode, its idle instances.
///
/// Requests hold an `Arc<Version>` while they run, so an old version (and
/// its instances) lives until its last request is done, then is dropped.
pub struct Version {
    plugin: Plugin,
    idle: Mutex<Vec<(Instance, OwnedSemaphorePermit)>>,
}

impl Version {
    /// The plugin of this version.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}

/// Shared by every listener: the current plugin and the limits.
pub struct Dispatcher {
    current: ArcSwap<Version>,
    limits: CallLimits,
    /// Live instances (running or idle) at once; sized like the engine's
    /// instance pool so that a request waits for a slot instead of failing
    /// to instantiate.
    slots: Arc<Semaphore>,
    /// Requests one instance may serve (1: a fresh instance per request).
    reuse: u64,
    max_reply_udp: usize,
    max_reply_tcp: usize,
    max_amplification: usize,
    stats: Arc<Stats>,
}

impl Dispatcher {
    /// A dispatcher serving `plugin` under `config`'s limits.
    pub fn new(plugin: Plugin, config: &Config, stats: Arc<Stats>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Version { plugin, idle: Mutex::default() }),
            limits: call_limits(config),
            slots: Arc::new(Semaphore::new(config.max_instances as usize)),
            reuse: config.instance_reuse.max(1),
            max_reply_udp: config.max_reply_for(Transport::Udp),
            max_reply_tcp: config.max_reply_for(Transport::Tcp),
            max_amplification: config.max_amplification as usize,
            stats,
        }
    }

    /// The version serving new requests.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Make `plugin` serve every request that starts from now on. Requests
    /// already running finish on the version they started with.
    pub fn swap(&self, plugin: Plugin) -> Arc<Version> {
        self.current.swap(Arc::new(Version { plugin, idle: Mutex::default() }))
    }

    /// The per-request limits.
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Run one request through the current plugin.
    pub async fn dispatch(&self, req: Request<'_>) -> Outcome {
        self.session().dispatch(req).await
    }

    /// A session for requests that run one after another, such as the
    /// frames of one TCP read. In reuse mode it keeps its instance from one
    /// request to the next instead of going through the shared idle pool.
    pub fn session(&self) -> Session<'_> {
        Session { dispatcher: self, held: None }
    }

    fn outcome(
        &self,
        req: &Request<'_>,
        info: &crate::plugin::PluginInfo,
        result: Result<Option<Reply>, CallError>,
    ) -> Outcome {
        let reply = match result {
            Ok(Some(Reply::Bytes(reply))) => reply,
            Ok(Some(Reply::TooLarge(len))) => {
                Stats::incr(&self.stats.replies_dropped);
                log_limited!(
                    warn,
                    plugin = %info.name, version = %info.version, transport = %req.transport, peer = req.peer,
                    "reply of {len} bytes not sent: {}", self.why_too_large(req, len)
                );
                return Outcome::Failed;
            }
            Ok(None) => {
                Stats::incr(&self.stats.no_reply);
                tracing::debug!(plugin = %info.name, version = %info.version, peer = req.peer, "no reply");
                return Outcome::NoReply;
            }
            Err(err) => {
                let counter = match &err {
                    CallError::Plugin(_) => &self.stats.plugin_errors,
                    CallError::Timeout(_) | CallError::OutOfFuel => &self.stats.timeouts,
                    CallError::Trap(_) | CallError::Instantiate(_) => &self.stats.traps,
                };
                Stats::incr(counter);
                log_limited!(
                    warn,
                    plugin = %info.name, version = %info.version, transport = %req.transport, peer = req.peer,
                    "request failed: {err}"
                );
                return match err {
                    CallError::Plugin(_) => Outcome::NoReply,
                    _ => Outcome::Failed,
                };
            }
        };
        tracing::debug!(
            plugin = %info.name, version = %info.version, transport = %req.transport, peer = req.peer,
            request = req.payload.len(), reply = reply.len(), "served"
        );
        Outcome::Reply(reply)
    }

    /// An idle instance of `version` (reuse mode), or a fresh one.
    async fn checkout(&self, version: &Version) -> Result<(Instance, OwnedSemaphorePermit), CallError> {
        if self.reuse > 1
            && let Some(idle) = version.idle.lock().expect("idle pool lock").pop()
        {
            return Ok(idle);
        }
        let permit = self.slots.clone().acquire_owned().await.expect("slot semaphore is never closed");
        let instance = version.plugin.instantiate(&self.limits).await?;
        Ok((instance, permit))
    }

    /// Whether `instance` may serve another request: reuse allows it and
    /// the last call left it in a known state.
    fn reusable<T>(&self, instance: &Instance, result: &Result<T, CallError>) -> bool {
        let healthy = match result {
            Ok(_) => true,
            Err(e) => !e.poisons_instance(),
        };
        healthy && instance.calls() < self.reuse
    }

    /// Return an instance to its version's idle pool (dropped if it is full).
    fn checkin(version: &Version, instance: Instance, permit: OwnedSemaphorePermit) {
        let mut idle = version.idle.lock().expect("idle pool lock");
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push((instance, permit));
        }
    }

    /// The largest reply `req` may get: `--max-reply`, and for UDP also the
    /// datagram limit and the amplification cap.
    fn reply_cap(&self, req: &Request<'_>) -> usize {
        let max = self.max_reply(req.transport);
        match req.transport {
            Transport::Udp if self.max_amplification > 0 => {
                max.min(amplification_cap(req.payload.len(), self.max_amplification))
            }
            _ => max,
        }
    }

    /// `--max-reply` for `transport` (UDP: never above one datagram).
    fn max_reply(&self, transport: Transport) -> usize {
        match transport {
            Transport::Udp => self.max_reply_udp,
            Transport::Tcp => self.max_reply_tcp,
        }
    }

    fn why_too_large(&self, req: &Request<'_>, len: usize) -> String {
        let max = self.max_reply(req.transport);
        if len > max {
            format!("over the limit of {max} bytes (--max-reply)")
        } else {
            format!(
                "over {}x the {}-byte request, counting {UDP_IP_HEADERS} header bytes each (--max-amplification)",
                self.max_amplification,
                req.payload.len()
            )
        }
    }
}

/// IPv4 + UDP header bytes: what a datagram costs on the wire beyond its
/// payload (IPv6 adds 20 more; counting 28 is the stricter choice).
pub const UDP_IP_HEADERS: usize = 28;

/// The largest reply payload to a `request`-byte datagram when replies may be
/// `factor` times the request on the wire, headers included.
///
/// Counting headers is what makes the cap meaningful for small requests: an
/// attacker pays for whole packets, so a 1-byte request (29 bytes on the
/// wire) may get a 59-byte reply (87 on the wire) at factor 3, while a plain
/// 3x payload cap would refuse any useful reply to it.
pub fn amplification_cap(request: usize, factor: usize) -> usize {
    request.saturating_add(UDP_IP_HEADERS).saturating_mul(factor).saturating_sub(UDP_IP_HEADERS)
}

/// Requests dispatched one after another, sharing an instance in reuse mode.
///
/// Dropping the session returns its instance to the idle pool.
pub struct Session<'d> {
    dispatcher: &'d Dispatcher,
    held: Option<Held>,
}

/// An instance a session keeps between its requests.
struct Held {
    version: Arc<Version>,
    instance: Instance,
    permit: OwnedSemaphorePermit,
}

impl Session<'_> {
    /// Run one request through the current plugin.
    pub async fn dispatch(&mut self, req: Request<'_>) -> Outcome {
        let d = self.dispatcher;
        let version = d.current.load_full();
        Stats::incr(&d.stats.requests);
        let max_reply = d.reply_cap(&req);
        let wit = RequestRef { transport: req.transport, peer: req.peer, local: req.local, payload: req.payload };
        // The instance this session holds, if it is of the current version.
        let held = match self.held.take() {
            Some(h) if Arc::ptr_eq(&h.version, &version) => Some((h.instance, h.permit)),
            Some(h) => {
                Dispatcher::checkin(&h.version, h.instance, h.permit);
                None
            }
            None => None,
        };
        let call = async {
            let (mut instance, permit) = match held {
                Some(held) => held,
                None => d.checkout(&version).await?,
            };
            let result = instance.call(wit, &d.limits, max_reply).await;
            Ok::<_, CallError>((result, instance, permit))
        };
        // The epoch deadline stops guest code; this timer also stops a call
        // that is blocked inside a host function (or waiting for a slot).
        // Two ticks of grace let the epoch trap (with its clearer message)
        // win when both fire.
        let result = match bounded(d.limits.timeout + 2 * EPOCH_TICK, call).await {
            Some(Ok((result, instance, permit))) => {
                if d.reusable(&instance, &result) {
                    self.held = Some(Held { version: version.clone(), instance, permit });
                }
                result
            }
            Some(Err(e)) => Err(e),
            None => Err(CallError::Timeout(d.limits.timeout)),
        };
        d.outcome(&req, version.plugin.info(), result)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            Dispatcher::checkin(&h.version, h.instance, h.permit);
        }
    }
}

/// Run `call` for at most `limit`; `None` if it ran out of time.
///
/// Most calls finish the first time they are polled (they neither yield nor
/// block), so the timer is only armed when a call has to wait: arming one
/// for every request costs a clock read, a runtime handle and a timer-wheel
/// entry, about 6% of a pipelined request. A call that yields is at most one
/// epoch tick into its budget when the timer starts.
async fn bounded<F: std::future::Future>(limit: std::time::Duration, call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = call.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The per-request limits from the configuration.
pub fn call_limits(config: &Config) -> CallLimits {
    CallLimits { timeout: config.timeout, max_memory: config.max_memory, fuel: config.fuel }
}

#[cfg(test)]
mod tests {
    use super::amplification_cap;

    #[test]
    fn amplification_counts_headers() {
        assert_eq!(amplification_cap(0, 3), 56);
        assert_eq!(amplification_cap(1, 3), 59);
        assert_eq!(amplification_cap(100, 3), 356);
        assert_eq!(amplification_cap(100, 1), 100);
        assert_eq!(amplification_cap(usize::MAX, 3), usize::MAX - 28);
    }
}
