//! systemd: sockets passed by socket activation, and the readiness protocol.
//!
//! **Socket activation** (`sd_listen_fds(3)`). systemd binds the sockets a
//! `.socket` unit names and passes them to the service as file descriptors
//! 3, 4, ..., saying so in `LISTEN_PID` (the process they are for),
//! `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (their
//! `FileDescriptorName=`, colon-separated). The host adopts them once per
//! process, with close-on-exec set, and unsets the variables when `main`
//! calls [`adopt_listen_fds`] (children must not believe the sockets are
//! theirs). A listener then serves an inherited socket instead of binding
//! one when its type (stream or datagram, TCP or UDP) and its local address
//! equal an address the host was asked to serve; an address without one is
//! bound as usual, and an inherited socket no address asked for is a
//! warning (it stays open, unserved).
//!
//! Why: systemd holds the sockets while the service stops, restarts or
//! crashes, so nothing queued in them is lost (connections wait in the
//! listen backlog, datagrams in the receive queue) and the next instance
//! serves them; and the service can serve a privileged port without ever
//! having the privilege.
//!
//! **Readiness** (`sd_notify(3)`): `READY=1` once every listener serves,
//! `STOPPING=1` when draining starts, sent to `$NOTIFY_SOCKET` (a unit
//! with `Type=notify`); without that variable they do nothing.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use sd_notify::NotifyState;
use socket2::{Protocol, Socket, Type};

use crate::request::Transport;

/// A socket systemd passed to this process.
pub(crate) struct Inherited {
    /// Its descriptor number, for messages.
    pub fd: RawFd,
    /// Its `FileDescriptorName=` (`unknown` when systemd gave none).
    pub name: String,
    pub socket: Socket,
    /// What it serves; `None` if it is not a bound TCP or UDP socket.
    serves: Option<(Transport, SocketAddr)>,
}

/// The inherited sockets not yet served, or why `LISTEN_*` could not be read.
static INHERITED: OnceLock<Result<Mutex<Vec<Inherited>>, String>> = OnceLock::new();

/// Adopt the sockets systemd passed (if `LISTEN_PID` is this process) and
/// unset `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`.
///
/// Without this call the sockets are adopted all the same, when the first
/// address is bound, but the variables stay set.
///
/// # Safety
///
/// It changes the environment (`std::env::remove_var`): call it before any
/// other thread exists, first thing in `main`.
pub unsafe fn adopt_listen_fds() {
    // SAFETY: the caller guarantees that no other thread runs.
    INHERITED.get_or_init(|| adopt(unsafe { sd_notify::listen_fds_with_names_and_unset_env() }));
}

/// The inherited socket that serves `transport` on exactly `addr`, taken
/// out of the pool; `Ok(None)` if there is none.
pub(crate) fn take(transport: Transport, addr: SocketAddr) -> anyhow::Result<Option<Inherited>> {
    let pool = inherited()?;
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let found = pool.iter().position(|s| s.serves.is_some_and(|(t, a)| t == transport && same_address(a, addr)));
    Ok(found.map(|i| pool.swap_remove(i)))
}

/// Warn about every inherited socket that no address claimed. They stay
/// open: systemd holds them anyway, and what arrives there waits unserved.
pub(crate) fn warn_unclaimed() {
    let Ok(pool) = inherited() else { return };
    for s in pool.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let (fd, name) = (s.fd, &s.name);
        match s.serves {
            Some((transport, addr)) => tracing::warn!(
                "systemd passed socket {name} (fd {fd}, {transport} {addr}) but no address the host serves \
                 (--listen, --udp, --tcp) is {transport} {addr}: it is not served"
            ),
            None => tracing::warn!(
                "systemd passed socket {name} (fd {fd}), which is not a bound TCP or UDP socket: it is not served"
            ),
        }
    }
}

/// Tell systemd the service is ready (`READY=1`).
pub(crate) fn notify_ready() {
    notify(NotifyState::Ready);
}

/// Tell systemd the service is stopping (`STOPPING=1`): it drains now.
pub(crate) fn notify_stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        let socket = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
        tracing::warn!("cannot tell systemd {state} on NOTIFY_SOCKET {}: {e}", socket.to_string_lossy());
    }
}

fn inherited() -> anyhow::Result<&'static Mutex<Vec<Inherited>>> {
    // Not adopted by `main` (the library called from tests): adopt now,
    // leaving the environment as it is.
    let pool = INHERITED.get_or_init(|| adopt(sd_notify::listen_fds_with_names()));
    pool.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn adopt(fds: std::io::Result<impl Iterator<Item = (RawFd, String)>>) -> Result<Mutex<Vec<Inherited>>, String> {
    let fds = fds.map_err(|e| {
        format!("socket activation: cannot use the sockets systemd passed (LISTEN_FDS, LISTEN_FDNAMES): {e}")
    })?;
    let sockets = fds
        .map(|(fd, name)| {
            // SAFETY: under the `sd_listen_fds` protocol, descriptors 3 to
            // 3 + LISTEN_FDS - 1 are passed to this process (LISTEN_PID) for
            // it to own; `listen_fds_with_names` checked that they are open,
            // and the `OnceLock` adopts them once, so no other owner exists.
            let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let serves = serves(&socket);
            Inherited { fd, name, socket, serves }
        })
        .collect();
    Ok(Mutex::new(sockets))
}

/// What an inherited socket serves: a bound TCP or UDP socket's transport
/// and local address (`SO_TYPE`, `SO_PROTOCOL`, `getsockname`).
fn serves(socket: &Socket) -> Option<(Transport, SocketAddr)> {
    let transport = match (socket.r#type().ok()?, socket.protocol().ok()?) {
        (Type::STREAM, Some(Protocol::TCP)) => Transport::Tcp,
        (Type::DGRAM, Some(Protocol::UDP)) => Transport::Udp,
        _ => return None,
    };
    let addr = socket.local_addr().ok()?.as_socket()?;
    (addr.port() != 0).then_some((transport, addr))
}

/// The same address and port (an IPv6 flow label is not part of it).
fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    match (a, b) {
        (SocketAddr::V6(a), SocketAddr::V6(b)) => {
            a.ip() == b.ip() && a.port() == b.port() && a.scope_id() == b.scope_id()
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_socket_serves_its_transport_and_address() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        assert_eq!(serves(&Socket::from(OwnedFd::from(tcp))), Some((Transport::Tcp, addr)));
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let addr = udp.local_addr().unwrap();
        assert_eq!(serves(&Socket::from(OwnedFd::from(udp))), Some((Transport::Udp, addr)));
        // Not bound: nothing to match an address against.
        let unbound = Socket::new(socket2::Domain::IPV4, Type::DGRAM, None).unwrap();
        assert_eq!(serves(&unbound), None);
        let (unix, _) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(serves(&Socket::from(OwnedFd::from(unix))), None);
    }
}
