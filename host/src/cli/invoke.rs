//! `host invoke`: one call of a plugin without sockets, as the server
//! would make it for one datagram or one connection, its reply on stdout.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;

use super::{Finished, InvokeArgs, InvokeTransport, load, world_name};
use crate::config::Framing;
use crate::dispatch::{ReplyLimit, call_limits, limits::bounded};
use crate::plugin::engine::EPOCH_TICK;
use crate::plugin::{CallError, CallLimits, Plugin, Reply, World};
use crate::request::{Request, Transport};
use crate::stats::Stats;

/// `host invoke`: one call, its reply on stdout.
pub(super) async fn invoke(args: &InvokeArgs) -> anyhow::Result<Finished> {
    let config = &args.config;
    config.validate()?;
    let payload = read_payload(args)?;
    let stats = Arc::new(Stats::default());
    let name = crate::service::service_name(config)?;
    let services = crate::service::open_services(config, &name, stats.clone()).await?;
    let loaded = load(config, services, stats).await?;
    let plugin = &loaded.plugin;
    let transport = match (plugin.world(), args.transport) {
        (World::Connection, Some(InvokeTransport::Udp)) => anyhow::bail!(
            "plugin {}: implements the world {}, which serves TCP only: leave out --transport udp",
            plugin.info().path.display(),
            world_name(World::Connection)
        ),
        (World::Connection, _) | (World::Handler, Some(InvokeTransport::Tcp)) => Transport::Tcp,
        (World::Handler, _) => Transport::Udp,
    };
    // The server drops a datagram over --max-request, or closes a TCP
    // connection sending a bigger frame; a connection-handler plugin would
    // get such a payload in several calls.
    let max_request = match transport {
        Transport::Udp => config.max_request.min(crate::config::MAX_UDP_PAYLOAD),
        Transport::Tcp => config.max_request,
    };
    if payload.len() > max_request {
        anyhow::bail!(
            "a payload of {} bytes is over --max-request ({max_request} bytes{}): the server would not pass it \
             to the plugin in one call",
            payload.len(),
            if max_request < config.max_request { ", one UDP datagram" } else { "" }
        );
    }
    let peer = args.peer;
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let limits = call_limits(config);
    let outcome = match plugin.world() {
        World::Handler => {
            let limit = match transport {
                Transport::Udp => ReplyLimit::udp(config),
                Transport::Tcp => ReplyLimit::tcp(config, config.framing),
            };
            let request = Request { transport, peer, local, payload: Bytes::from(payload), names: None };
            call_handler(plugin, &request, &limits, &limit).await
        }
        World::Connection => {
            call_session(plugin, &payload, peer, local, &limits, &ReplyLimit::tcp(config, Framing::Raw)).await
        }
    };
    Ok(report(outcome, args.hex))
}

/// What one invocation gave.
#[derive(Debug)]
enum Invoked {
    /// These bytes (for a session: everything it wrote).
    Reply(Vec<u8>),
    /// `ok(none)`, or a session that wrote nothing.
    NoReply,
    /// A reply the server would not send, and why.
    Dropped(String),
    /// The call failed.
    Failed(CallError),
}

/// What the call gave, as output and an exit code.
fn report(outcome: Invoked, hex: bool) -> Finished {
    match outcome {
        Invoked::Reply(bytes) if hex => Finished::ok(format!("{}\n", crate::plugin::hex(&bytes)).into_bytes()),
        Invoked::Reply(bytes) => Finished::ok(bytes),
        Invoked::NoReply => Finished { stderr: Some("no reply".into()), ..Finished::ok(Vec::new()) },
        Invoked::Dropped(why) => Finished::error(2, why),
        Invoked::Failed(CallError::Plugin(message)) => {
            Finished::error(1, format!("plugin returned an error: {message}"))
        }
        Invoked::Failed(e) => Finished::error(2, e.to_string()),
    }
}

/// One call of `handle` in a fresh instance, bounded as the server bounds
/// it.
async fn call_handler(plugin: &Plugin, request: &Request, limits: &CallLimits, limit: &ReplyLimit) -> Invoked {
    let len = request.payload.len();
    let call = async {
        let mut instance = plugin.instantiate(limits).await?;
        instance.call(request, limits, limit.cap(len)).await
    };
    match bounded_call(limits, call).await {
        Ok(Some(Reply::Bytes(bytes))) => Invoked::Reply(bytes),
        Ok(Some(Reply::TooLarge(size))) => Invoked::Dropped(too_large(limit, len, size)),
        Ok(None) => Invoked::NoReply,
        Err(e) => Invoked::Failed(e),
    }
}

/// A connection that sends `payload` and ends: the constructor, one
/// `on-data`, then `on-end` unless the session asked to close, then the
/// destructor.
async fn call_session(
    plugin: &Plugin,
    payload: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    limits: &CallLimits,
    limit: &ReplyLimit,
) -> Invoked {
    let permit = plugin.admit().await;
    let mut session = match bounded_call(limits, plugin.open_session(permit, &peer, &local, limits)).await {
        Ok(session) => session,
        Err(e) => return Invoked::Failed(e),
    };
    let mut written = Vec::new();
    let output = match bounded_call(limits, session.on_data(payload, limits, limit.cap(payload.len()))).await {
        Ok(output) => output,
        Err(e) => return Invoked::Failed(e),
    };
    let mut take = |reply: Reply, request: usize| match reply {
        Reply::Bytes(bytes) => {
            written.extend_from_slice(&bytes);
            Ok(())
        }
        Reply::TooLarge(size) => Err(Invoked::Dropped(too_large(limit, request, size))),
    };
    if let Err(dropped) = take(output.bytes, payload.len()) {
        return dropped;
    }
    if !output.close {
        match bounded_call(limits, session.on_end(limits, limit.cap(0))).await {
            Ok(reply) => {
                if let Err(dropped) = take(reply, 0) {
                    return dropped;
                }
            }
            Err(e) => return Invoked::Failed(e),
        }
    }
    if let Err(e) = bounded_call(limits, session.close(limits)).await {
        return Invoked::Failed(e);
    }
    if written.is_empty() { Invoked::NoReply } else { Invoked::Reply(written) }
}

/// Run one call for at most `--timeout`, as dispatch does: two epoch ticks
/// of grace let the epoch trap, with its clearer message, win; the timer
/// also stops a call blocked in a host function.
async fn bounded_call<T>(
    limits: &CallLimits,
    call: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    bounded(limits.timeout + 2 * EPOCH_TICK, call).await.unwrap_or(Err(CallError::Timeout(limits.timeout)))
}

fn too_large(limit: &ReplyLimit, request: usize, size: usize) -> String {
    format!("reply of {size} bytes not sent: {}", limit.explain(request, size))
}

/// The payload: the argument's bytes, or stdin for `-`; hex-decoded with
/// `--hex`. Reads at most a little more than `--max-request` allows, so a
/// huge stdin is refused without being held in memory.
fn read_payload(args: &InvokeArgs) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt as _;
    let max = args.config.max_request;
    let text = if args.payload == "-" {
        // Hex takes two digits a byte, and may be spread over lines.
        let cap = if args.hex { max.saturating_mul(3).saturating_add(64) } else { max.saturating_add(1) };
        let mut buf = Vec::new();
        std::io::stdin().lock().take(cap as u64).read_to_end(&mut buf).context("cannot read the payload from stdin")?;
        buf
    } else {
        args.payload.as_bytes().to_vec()
    };
    if args.hex { unhex(&text).map_err(|e| anyhow::anyhow!("--hex: {e}")) } else { Ok(text) }
}

/// Hex digits to bytes; whitespace between them is ignored.
fn unhex(text: &[u8]) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{} hex digits: an even number is needed, two a byte", digits.len()));
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Ok(d - b'0'),
        b'a'..=b'f' => Ok(d - b'a' + 10),
        b'A'..=b'F' => Ok(d - b'A' + 10),
        other => Err(format!("{:?} is not a hex digit", char::from(other))),
    };
    digits.chunks_exact(2).map(|pair| Ok(value(pair[0])? << 4 | value(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_payloads() {
        assert_eq!(unhex(b"68 65\n6c6C6f").unwrap(), b"hello");
        assert_eq!(unhex(b"").unwrap(), b"");
        assert!(unhex(b"abc").unwrap_err().contains("3 hex digits"));
        assert!(unhex(b"zz").unwrap_err().contains("'z' is not a hex digit"));
    }
}
