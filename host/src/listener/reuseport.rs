//! Handing an address over to another host that shares it (`--reuse-port`),
//! without losing what is queued.
//!
//! Sockets bound with `SO_REUSEPORT` to one address by one user form a
//! group; the kernel picks one of them for each new peer. A socket that is
//! closed loses what is queued in it: datagrams in its receive queue,
//! connections in its accept queue (reset). So the old host of an upgrade
//! first makes the kernel stop choosing its sockets, then serves what they
//! hold until they are empty, then closes them (Linux 6.18, checked by
//! `tests/it/upgrade.rs`):
//!
//! - UDP: `connect()` the socket to an address no peer sends from (its own
//!   address, or loopback for a wildcard socket). The kernel's lookup skips
//!   a connected socket for every other peer, while the datagrams already
//!   queued stay readable.
//! - TCP: a listener cannot step out of its group that way. A classic BPF
//!   program attached to the group (`SO_ATTACH_REUSEPORT_CBPF`) picks the
//!   socket for each new connection by its index in the group: it picks,
//!   at random, any index but the old listener's. That index is not told by
//!   the kernel, so it is found by probing: a SYN from a probe socket is
//!   steered to index 0, 1, ...; the old listener drops the probe's SYNs
//!   with a socket filter and sees its drop count rise when the probe came
//!   to it; the probe socket drops the SYN-ACK, so a probe steered to
//!   another host never becomes a connection there.
//!
//! A new host detaches any program left on the group when it starts
//! listening: the group is back to the kernel's hash until the next drain.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::libc;
use socket2::{Domain, SockRef, Socket, Type};

/// Indices probed, at most: the hosts that may share one address.
const MAX_GROUP: u32 = 64;
/// How long a probe's SYN may take to reach a listener. On the loopback
/// interface it arrives before `connect` returns.
const PROBE_WAIT: Duration = Duration::from_millis(10);

/// Take a UDP socket out of its group: the kernel queues no more datagrams
/// to it, and the queued ones stay readable.
pub(super) fn leave_udp_group(socket: SockRef<'_>, addr: SocketAddr) -> io::Result<()> {
    // No peer sends from the socket's own address; a wildcard socket
    // connects to loopback (it becomes bound to loopback, which also takes
    // it out of the wildcard group).
    let to = SocketAddr::new(concrete(addr.ip()), addr.port());
    socket.connect(&to.into())
}

/// Steer new connections for `addr` away from `listener` to the other
/// listeners of its group. Returns how many other listeners there are
/// (0: none, nobody takes over), or why it could not.
pub(super) async fn steer_away(listener: &std::net::TcpListener, addr: SocketAddr) -> io::Result<usize> {
    let others = group_size(addr).unwrap_or(2).saturating_sub(1);
    if others == 0 {
        return Ok(0);
    }
    let Some(index) = own_index(listener, addr).await? else {
        detach_steering(listener.as_raw_fd())?;
        return Err(io::Error::other(format!("could not find its index among {} listeners", others + 1)));
    };
    attach(listener.as_raw_fd(), libc::SO_ATTACH_REUSEPORT_CBPF, &steering_program(index, others as u32))?;
    Ok(others)
}

/// Detach the steering program a drained host left on the group, if any.
pub(super) fn clear_steering(listener: &Socket) {
    if let Err(e) = detach_steering(listener.as_raw_fd()) {
        tracing::debug!("cannot detach a reuseport program: {e}");
    }
}

fn detach_steering(fd: RawFd) -> io::Result<()> {
    match setsockopt_int(fd, libc::SO_DETACH_REUSEPORT_BPF, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// This listener's index in its reuseport group, found by probing.
async fn own_index(listener: &std::net::TcpListener, addr: SocketAddr) -> io::Result<Option<u32>> {
    let target = SocketAddr::new(concrete(addr.ip()), addr.port());
    for index in 0..MAX_GROUP {
        // A second probe confirms: the drop count may rise for other reasons.
        if probe(listener, target, index).await? && probe(listener, target, index).await? {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// Whether a SYN steered to `index` reaches `listener`.
async fn probe(listener: &std::net::TcpListener, target: SocketAddr, index: u32) -> io::Result<bool> {
    let client = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    client.bind(&SocketAddr::new(target.ip(), 0).into())?;
    let port = client.local_addr()?.as_socket().map_or(0, |a| a.port());
    // Drop everything the probe receives: its handshake never completes,
    // so whichever listener it reaches gets no connection from it.
    client.attach_filter(&[ret(0)].map(to_socket2))?;
    client.set_nonblocking(true)?;
    let fd = listener.as_raw_fd();
    attach(fd, libc::SO_ATTACH_FILTER, &drop_port_program(port))?;
    attach(fd, libc::SO_ATTACH_REUSEPORT_CBPF, &probe_program(port, index, target.is_ipv6()))?;
    let before = drops(fd)?;
    let landed = match client.connect(&target.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => {
            let deadline = Instant::now() + PROBE_WAIT;
            loop {
                let landed = drops(fd)? > before;
                if landed || Instant::now() >= deadline {
                    break Ok(landed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    setsockopt_int(fd, libc::SO_DETACH_FILTER, 0)?;
    landed
}

/// The listening sockets bound to exactly `addr`: the size of its
/// reuseport group (`/proc/net/tcp`, `/proc/net/tcp6`).
fn group_size(addr: SocketAddr) -> Option<usize> {
    let table = std::fs::read_to_string(if addr.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" }).ok()?;
    Some(table.lines().skip(1).filter(|line| is_listener_on(line, addr)).count())
}

/// Whether a `/proc/net/tcp{,6}` line is a listener on `addr`: its local
/// address is `ADDR:PORT` in hex, the address as the kernel's 32-bit words
/// in host byte order, and `0A` is `TCP_LISTEN`.
fn is_listener_on(line: &str, addr: SocketAddr) -> bool {
    let mut fields = line.split_whitespace();
    let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else { return false };
    let Some((ip, port)) = local.split_once(':') else { return false };
    if state != "0A" || u16::from_str_radix(port, 16) != Ok(addr.port()) {
        return false;
    }
    let words: Option<Vec<u8>> = (0..ip.len() / 8)
        .map(|i| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
        .map(|w| w.map(u32::to_ne_bytes))
        .collect::<Option<Vec<_>>>()
        .map(|w| w.concat());
    match (words.as_deref(), addr.ip()) {
        (Some(b), IpAddr::V4(v4)) => b == v4.octets(),
        (Some(b), IpAddr::V6(v6)) => b == v6.octets(),
        _ => false,
    }
}

/// This socket's drop count (`SO_MEMINFO`): a listener's socket filter
/// dropping a SYN raises it.
fn drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most
    // that and updates `len`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let i = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (i + 1) * 4 {
        return Err(io::Error::other("SO_MEMINFO has no drop count"));
    }
    Ok(info[i])
}

/// A loopback address for a wildcard one; any other as it is.
fn concrete(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
}

// Classic BPF, as `linux/filter.h` spells it.
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_ABS: u16 = 0x20;
const BPF_ADD: u16 = 0x00;
const BPF_MOD: u16 = 0x90;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;
const BPF_A: u16 = 0x10;
/// A reuseport program's result that is no index: the kernel falls back to
/// its hash.
const NO_INDEX: u32 = u32::MAX;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret(k: u32) -> libc::sock_filter {
    insn(BPF_RET | BPF_K, 0, 0, k)
}

fn to_socket2(i: libc::sock_filter) -> socket2::SockFilter {
    socket2::SockFilter::new(i.code, i.jt, i.jf, i.k)
}

/// Reuseport program: any index in `0..=others` but `own`, at random
/// (`A = random % others; if A >= own { A += 1 }`). Once the old listener
/// has left, an index past the end makes the kernel use its hash.
fn steering_program(own: u32, others: u32) -> Vec<libc::sock_filter> {
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    vec![
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, random),
        insn(BPF_ALU | BPF_MOD | BPF_K, 0, 0, others.max(1)),
        insn(BPF_JMP | BPF_JGE | BPF_K, 0, 1, own),
        insn(BPF_ALU | BPF_ADD | BPF_K, 0, 0, 1),
        insn(BPF_RET | BPF_A, 0, 0, 0),
    ]
}

/// Reuseport program: a SYN from the probe's `port` goes to `index`, any
/// other as the kernel's hash says. The TCP source port is read from the
/// network header on: a probe's IP header has no options.
fn probe_program(port: u16, index: u32, ipv6: bool) -> Vec<libc::sock_filter> {
    let source_port = (libc::SKF_NET_OFF + if ipv6 { 40 } else { 20 }) as u32;
    vec![
        insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, source_port),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, port.into()),
        ret(index),
        ret(NO_INDEX),
    ]
}

/// Socket filter: drop segments from TCP source `port` (a listener's
/// filter sees the TCP header at offset 0), keep everything else.
fn drop_port_program(port: u16) -> Vec<libc::sock_filter> {
    vec![
        insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 0),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, port.into()),
        ret(0),
        ret(u32::MAX),
    ]
}

fn attach(fd: RawFd, option: libc::c_int, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: `prog` points to `program`, alive for the call; the kernel
    // copies the program and does not write through the pointer.
    let r = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const prog).cast(), size_of_val(&prog) as libc::socklen_t)
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn setsockopt_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live `c_int` for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of_val(&value) as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: SocketAddr) -> std::net::TcpListener {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(1024).unwrap();
        s.set_nonblocking(true).unwrap();
        s.into()
    }

    fn accept_all(l: &std::net::TcpListener) -> usize {
        std::iter::from_fn(|| l.accept().ok()).count()
    }

    /// The kernel behaviour the handover relies on: each listener of a
    /// group finds its own index by probing, probes leave no connection
    /// behind, and the steering program keeps new connections away.
    #[tokio::test]
    async fn a_listener_finds_its_index_and_steers_connections_away() {
        for first in ["127.0.0.1:0", "[::1]:0", "0.0.0.0:0", "[::]:0"] {
            let a = listener(first.parse().unwrap());
            let addr = a.local_addr().unwrap();
            let (b, c) = (listener(addr), listener(addr));
            assert_eq!(group_size(addr), Some(3), "{addr}");
            for (want, l) in [(0, &a), (1, &b), (2, &c)] {
                assert_eq!(own_index(l, addr).await.unwrap(), Some(want), "{addr}");
            }
            assert_eq!([&a, &b, &c].map(accept_all), [0, 0, 0], "a probe became a connection");

            assert_eq!(steer_away(&b, addr).await.unwrap(), 2);
            let clients: Vec<_> = (0..200).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            let (to_a, to_b, to_c) = (accept_all(&a), accept_all(&b), accept_all(&c));
            assert_eq!((to_a + to_c, to_b), (clients.len(), 0), "{addr}");
            assert!(to_a > 50 && to_c > 50, "{addr}: the others share them: {to_a} and {to_c}");
        }
    }

    fn udp_member(addr: SocketAddr) -> std::net::UdpSocket {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        s.into()
    }

    fn received(s: &std::net::UdpSocket) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 64];
        std::iter::from_fn(|| s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())).collect()
    }

    /// The kernel behaviour the UDP handover relies on: a socket that left
    /// its group keeps what was queued and gets nothing more.
    #[test]
    fn a_udp_socket_that_left_its_group_keeps_its_queue_and_gets_nothing_new() {
        for first in ["127.0.0.1:0", "0.0.0.0:0", "[::1]:0"] {
            let old = udp_member(first.parse().unwrap());
            let addr = old.local_addr().unwrap();
            let new = udp_member(addr);
            let to = SocketAddr::new(concrete(addr.ip()), addr.port());
            let bind = if to.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
            let peers: Vec<_> = (0..64).map(|_| std::net::UdpSocket::bind(bind).unwrap()).collect();
            for p in &peers {
                p.send_to(b"before", to).unwrap();
            }
            leave_udp_group(SockRef::from(&old), addr).unwrap();
            for p in &peers {
                p.send_to(b"after", to).unwrap();
            }
            let (to_old, to_new) = (received(&old), received(&new));
            assert!(to_old.iter().all(|d| d == b"before") && !to_old.is_empty(), "{first}: {to_old:?}");
            assert_eq!(to_old.len() + to_new.len(), 2 * peers.len(), "{first}");
            // And it can still answer the peers whose datagrams it holds.
            old.send_to(b"reply", peers[0].local_addr().unwrap()).unwrap();
        }
    }

    #[test]
    fn proc_net_tcp_lines_are_read() {
        let v4 = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234";
        assert!(is_listener_on(v4, "127.0.0.1:8080".parse().unwrap()));
        assert!(!is_listener_on(v4, "127.0.0.1:8081".parse().unwrap()));
        assert!(!is_listener_on(&v4.replace(" 0A ", " 01 "), "127.0.0.1:8080".parse().unwrap()));
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0";
        assert!(is_listener_on(v6, "[::1]:8080".parse().unwrap()));
        assert!(!is_listener_on(v6, "[::]:8080".parse().unwrap()));
    }
}
