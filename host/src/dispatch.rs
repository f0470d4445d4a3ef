//! Dispatch: one request in, at most one reply out.
//!
//! Picks the plugin version that is current when the request starts (a reload
//! never changes it mid-request), runs it under the request limits, checks
//! the reply against the reply caps, and counts and logs every outcome. An
//! error here is the request's alone: it never stops a listener.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, CallLimits, Plugin, RequestRef, Transport};
use crate::stats::Stats;

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

/// Shared by every listener: the current plugin and the limits.
pub struct Dispatcher {
    plugin: ArcSwap<Plugin>,
    limits: CallLimits,
    max_reply_udp: usize,
    max_reply_tcp: usize,
    max_amplification: usize,
    stats: Arc<Stats>,
}

impl Dispatcher {
    /// A dispatcher serving `plugin` under `config`'s limits.
    pub fn new(plugin: Plugin, config: &Config, stats: Arc<Stats>) -> Self {
        Self {
            plugin: ArcSwap::from_pointee(plugin),
            limits: call_limits(config),
            max_reply_udp: config.max_reply_for(Transport::Udp),
            max_reply_tcp: config.max_reply_for(Transport::Tcp),
            max_amplification: config.max_amplification as usize,
            stats,
        }
    }

    /// The version serving new requests.
    pub fn current(&self) -> Arc<Plugin> {
        self.plugin.load_full()
    }

    /// Make `plugin` serve every request that starts from now on.
    pub fn swap(&self, plugin: Plugin) -> Arc<Plugin> {
        self.plugin.swap(Arc::new(plugin))
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
        let plugin = self.plugin.load_full();
        Stats::incr(&self.stats.requests);
        let call = async {
            let mut instance = plugin.instantiate(&self.limits).await?;
            let wit = RequestRef { transport: req.transport, peer: req.peer, local: req.local, payload: req.payload };
            instance.call(wit, &self.limits).await
        };
        // The epoch deadline stops guest code; this timer also stops a call
        // that is blocked inside a host function. Two ticks of grace let the
        // epoch trap (with its clearer message) win when both fire.
        let result = match tokio::time::timeout(self.limits.timeout + 2 * EPOCH_TICK, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(self.limits.timeout)),
        };
        let info = plugin.info();
        let reply = match result {
            Ok(Some(reply)) => reply,
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
                tracing::warn!(
                    plugin = %info.name, version = %info.version, transport = %req.transport, peer = req.peer,
                    "request failed: {err}"
                );
                return match err {
                    CallError::Plugin(_) => Outcome::NoReply,
                    _ => Outcome::Failed,
                };
            }
        };
        if let Err(why) = self.check_reply(&req, reply.len()) {
            Stats::incr(&self.stats.replies_dropped);
            tracing::warn!(
                plugin = %info.name, version = %info.version, transport = %req.transport, peer = req.peer,
                "reply of {} bytes not sent: {why}", reply.len()
            );
            return Outcome::Failed;
        }
        tracing::debug!(
            plugin = %info.name, version = %info.version, transport = %req.transport, peer = req.peer,
            request = req.payload.len(), reply = reply.len(), "served"
        );
        Outcome::Reply(reply)
    }

    fn check_reply(&self, req: &Request<'_>, len: usize) -> Result<(), String> {
        let max = match req.transport {
            Transport::Udp => self.max_reply_udp,
            Transport::Tcp => self.max_reply_tcp,
        };
        if len > max {
            return Err(format!("over the limit of {max} bytes (--max-reply)"));
        }
        if req.transport == Transport::Udp && self.max_amplification > 0 {
            let cap = req.payload.len().saturating_mul(self.max_amplification);
            if len > cap {
                return Err(format!(
                    "over {}x the {}-byte request (--max-amplification)",
                    self.max_amplification,
                    req.payload.len()
                ));
            }
        }
        Ok(())
    }
}

/// The per-request limits from the configuration.
pub fn call_limits(config: &Config) -> CallLimits {
    CallLimits { timeout: config.timeout, max_memory: config.max_memory, fuel: config.fuel }
}

