//! Dispatch for the connection world: one [`LiveSession`] per connection.
//!
//! A connection gets the version that is current when it is accepted and a
//! `session` in a fresh instance of it; it keeps both until it closes (or
//! until the version is retired, `--reload-grace` after a reload). Every
//! call runs under the per-call limits and is counted like a request:
//! `requests` per call of `on-data` or `on-end`, `no_reply` when it gave no
//! bytes, and the usual error counters when it (or the constructor, or the
//! destructor) failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::limits::{ReplyLimit, bounded};
use super::version::Version;
use super::{Dispatcher, call_failed, reply_too_large};
use crate::plugin::connection::{Output, Session};
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, Reply};
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

/// One connection's session, with the version it belongs to.
pub struct LiveSession {
    version: Arc<Version>,
    session: Session,
    peer: SocketAddr,
}

impl Dispatcher {
    /// Open a session for a connection `peer` -> `local` on the current
    /// version. Waits up to `wait` for room in the pool (an instance per
    /// connection), then the constructor runs under `--timeout`. `None` if
    /// either failed (counted and logged).
    pub async fn open_session(&self, peer: SocketAddr, local: SocketAddr, wait: Duration) -> Option<LiveSession> {
        let version = self.versions.current();
        let policy = version.policy();
        let open = version.plugin().open_session(&peer, &local, &policy.limits);
        let result = match bounded(wait + policy.limits.timeout + 2 * EPOCH_TICK, open).await {
            Some(result) => result,
            None => Err(CallError::Instantiate(anyhow::anyhow!("no room for an instance within {wait:?}"))),
        };
        match result {
            Ok(session) => Some(LiveSession { version, session, peer }),
            Err(err) => {
                call_failed(&policy.stats, version.plugin().info(), Transport::Tcp, &peer, &err);
                None
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
        let (version, max_reply) = (self.version.clone(), limit.cap(data.len()));
        let limits = version.policy().limits;
        let call = self.session.on_data(data, &limits, max_reply);
        let result = finish(bounded(limits.timeout + 2 * EPOCH_TICK, call).await, limits.timeout);
        match result {
            Ok(Output { bytes, close }) => self.write(bytes, close, limit, data.len()),
            Err(err) => self.failed(&err),
        }
    }

    /// Tell `on-end` the peer closed its side.
    pub async fn end(&mut self, limit: &ReplyLimit) -> Step {
        let (version, max_reply) = (self.version.clone(), limit.cap(0));
        let limits = version.policy().limits;
        let call = self.session.on_end(&limits, max_reply);
        let result = finish(bounded(limits.timeout + 2 * EPOCH_TICK, call).await, limits.timeout);
        match result {
            Ok(bytes) => self.write(bytes, true, limit, 0),
            Err(err) => self.failed(&err),
        }
    }

    /// Drop the session: the plugin's destructor runs (under `--timeout`)
    /// unless the instance failed; then the instance is dropped. Counted as
    /// `sessions_closed` when the destructor ran.
    pub async fn close(self) {
        let LiveSession { version, session, peer } = self;
        let (policy, info) = (version.policy(), version.plugin().info());
        if session.is_poisoned() {
            return;
        }
        match bounded(policy.limits.timeout + 2 * EPOCH_TICK, session.close(&policy.limits)).await {
            Some(Ok(())) => Stats::incr(&policy.stats.sessions_closed),
            Some(Err(err)) => call_failed(&policy.stats, info, Transport::Tcp, &peer, &err),
            None => call_failed(&policy.stats, info, Transport::Tcp, &peer, &CallError::Timeout(policy.limits.timeout)),
        }
    }

    fn write(&self, reply: Reply, close: bool, limit: &ReplyLimit, request: usize) -> Step {
        let stats = &self.version.policy().stats;
        Stats::incr(&stats.requests);
        match reply {
            Reply::Bytes(bytes) => {
                if bytes.is_empty() {
                    Stats::incr(&stats.no_reply);
                }
                Step::Write { bytes, close }
            }
            Reply::TooLarge(len) => {
                let info = self.version.plugin().info();
                reply_too_large(stats, info, Transport::Tcp, &self.peer, len, &limit.explain(request, len));
                Step::Failed
            }
        }
    }

    fn failed(&self, err: &CallError) -> Step {
        let stats = &self.version.policy().stats;
        Stats::incr(&stats.requests);
        call_failed(stats, self.version.plugin().info(), Transport::Tcp, &self.peer, err);
        Step::Failed
    }
}

/// A bounded call's result; `None` (the timer fired) is a timeout.
fn finish<T>(result: Option<Result<T, CallError>>, timeout: Duration) -> Result<T, CallError> {
    result.unwrap_or(Err(CallError::Timeout(timeout)))
}
