//! Dispatch for the connection world: one [`LiveSession`] per connection.
//!
//! A connection waits for room in the pool, then gets the version that is
//! current at that moment and a `session` in a fresh instance of it; it
//! keeps both until it closes (or until the version is retired,
//! `--reload-grace` after a reload). Every call runs under the per-call
//! limits and is counted like a request: `requests` per call of `on-data` or
//! `on-end`, `no_reply` when it gave no bytes, and the usual error counters
//! when it (or the constructor, or the destructor) failed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::limits::{ReplyLimit, bounded};
use super::version::Version;
use super::{Dispatcher, call_failed, reply_too_large};
use crate::plugin::connection::{Output, Session};
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, CallLimits, Reply};
use crate::ratelimit::log_limited;
use crate::request::Transport;
use crate::stats::Stats;

/// What the connection does after a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes (possibly none); then close if `close`.
    Write {
        /// The bytes to write.
        bytes: Vec<u8>,
        /// Close after writing them.
        close: bool,
    },
    /// The call failed (counted and logged): close the connection.
    Failed,
}

/// Why no session was opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// No room in the pool within the wait (counted as `requests_dropped`).
    NoRoom,
    /// The instance or its constructor failed (counted and logged).
    Failed,
}

/// One connection's session, with the version it belongs to.
pub struct LiveSession {
    version: Arc<Version>,
    session: Session,
    peer: SocketAddr,
}

impl Dispatcher {
    /// Open a session for a connection `peer` -> `local`: wait up to `wait`
    /// for room in the pool for its instance, then create it, of the version
    /// current at that moment, and run the constructor under `--timeout`.
    pub async fn open_session(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        wait: Duration,
    ) -> Result<LiveSession, OpenError> {
        let deadline = tokio::time::Instant::now() + wait;
        // The version is chosen once there is room: a connection that
        // waited across a reload starts on the new version.
        let (version, permit) = loop {
            let version = self.versions.current();
            let Ok(permit) = tokio::time::timeout_at(deadline, version.plugin().admit()).await else {
                Stats::incr(&self.stats.requests_dropped);
                log_limited!(warn, %peer, "no plugin instance free within {wait:?} for a new connection (--max-instances)");
                return Err(OpenError::NoRoom);
            };
            if Arc::ptr_eq(&version, &self.versions.current()) {
                break (version, permit);
            }
        };
        let policy = version.policy();
        let begun = std::time::Instant::now();
        let open = version.plugin().open_session(permit, &peer, &local, &policy.limits);
        match bounded_call(&policy.limits, open).await {
            Ok(session) => {
                policy.timings.instantiation.observe(begun.elapsed());
                Ok(LiveSession { version, session, peer })
            }
            Err(err) => {
                call_failed(&policy.stats, version.plugin().info(), Transport::Tcp, &peer, "session constructor", &err);
                Err(OpenError::Failed)
            }
        }
    }
}

impl LiveSession {
    /// The version this connection keeps.
    pub fn version(&self) -> &Arc<Version> {
        &self.version
    }

    /// Hand bytes from the peer to `on-data`.
    pub async fn data(&mut self, data: &[u8], limit: &ReplyLimit) -> Step {
        let (limits, started) = (self.version.policy().limits, std::time::Instant::now());
        let result = bounded_call(&limits, self.session.on_data(data, &limits, limit.cap(data.len()))).await;
        self.step(result.map(|Output { bytes, close }| (bytes, close)), limit, data.len(), started)
    }

    /// Tell `on-end` the peer closed its side; its bytes are the last.
    pub async fn end(&mut self, limit: &ReplyLimit) -> Step {
        let (limits, started) = (self.version.policy().limits, std::time::Instant::now());
        let result = bounded_call(&limits, self.session.on_end(&limits, limit.cap(0))).await;
        self.step(result.map(|bytes| (bytes, true)), limit, 0, started)
    }

    /// Drop the session: the plugin's destructor runs (under `--timeout`)
    /// unless the instance failed (a trap, a timeout); then the instance is
    /// dropped. Counted as `sessions_closed` when the destructor ran.
    pub async fn close(self) {
        let LiveSession { version, session, peer } = self;
        let policy = version.policy();
        if session.is_poisoned() {
            return;
        }
        match bounded_call(&policy.limits, session.close(&policy.limits)).await {
            Ok(()) => Stats::incr(&policy.stats.sessions_closed),
            Err(err) => {
                call_failed(&policy.stats, version.plugin().info(), Transport::Tcp, &peer, "session destructor", &err)
            }
        }
    }

    /// Count a call, and say what the connection does next.
    fn step(
        &self,
        result: Result<(Reply, bool), CallError>,
        limit: &ReplyLimit,
        request: usize,
        started: std::time::Instant,
    ) -> Step {
        let policy = self.version.policy();
        let (stats, info) = (&policy.stats, self.version.plugin().info());
        Stats::incr(&stats.requests);
        policy.timings.latency.observe(started.elapsed());
        match result {
            Ok((Reply::Bytes(bytes), close)) => {
                if bytes.is_empty() {
                    Stats::incr(&stats.no_reply);
                }
                Step::Write { bytes, close }
            }
            Ok((Reply::TooLarge(len), _)) => {
                reply_too_large(stats, info, Transport::Tcp, &self.peer, len, &limit.explain(request, len));
                Step::Failed
            }
            Err(err) => {
                call_failed(stats, info, Transport::Tcp, &self.peer, "session call", &err);
                Step::Failed
            }
        }
    }
}

/// Run one call of a session for at most `--timeout` (two epoch ticks of
/// grace let the epoch trap, with its clearer message, win); the timer also
/// stops a call blocked in a host function.
async fn bounded_call<T>(
    limits: &CallLimits,
    call: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    bounded(limits.timeout + 2 * EPOCH_TICK, call).await.unwrap_or(Err(CallError::Timeout(limits.timeout)))
}
