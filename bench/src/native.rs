//! The native baseline: the echo server a user would write by hand on tokio.
//!
//! It does what the host does minus the plugin, so the difference between
//! the two is the cost of running a WebAssembly component per request:
//! the same socket options, the same framing codec (`host::framing`), and
//! the same write pattern (the replies to the frames of one read go out in
//! one write). It logs `listening udp|tcp ADDR` lines in the host's format,
//! so whoever starts it finds its ports the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::BytesMut;
use host::framing::{self, Decoder, Framing};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

/// Largest request frame, as the host's default `--max-request`.
const MAX_FRAME: usize = 1 << 20;
/// Receive buffer requested for each UDP socket, as the host does: without
/// it the kernel default (about 200 KiB) drops bursts of large datagrams
/// that the host absorbs, and the baseline would lose for the wrong reason.
const UDP_RECV_BUFFER: usize = 4 << 20;
/// TCP accept backlog, as the host's.
const BACKLOG: i32 = 1024;
/// Free buffer space ensured before each TCP read.
const READ_CHUNK: usize = 8 << 10;

/// What to serve.
#[derive(Debug, Clone)]
pub struct Options {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub framing: Framing,
    /// UDP receive tasks per socket; the runtime has as many threads.
    pub workers: usize,
}

/// Serve echo on every address until Ctrl-C or SIGTERM.
pub async fn serve(options: Options) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut tasks = JoinSet::new();
    for addr in &options.udp {
        let socket = Arc::new(bind_udp(*addr).with_context(|| format!("cannot listen on udp {addr}"))?);
        eprintln!("listening udp {}", socket.local_addr()?);
        // One receive loop per worker on the shared socket, so that every
        // worker thread can be receiving at once.
        for _ in 0..options.workers.max(1) {
            tasks.spawn(udp_echo(socket.clone()));
        }
    }
    for addr in &options.tcp {
        let listener = bind_tcp(*addr).with_context(|| format!("cannot listen on tcp {addr}"))?;
        eprintln!("listening tcp {}", listener.local_addr()?);
        tasks.spawn(tcp_accept(listener, options.framing));
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
        // The loops only return on a fatal error.
        Some(r) = tasks.join_next() => r.context("a server task panicked")??,
    }
    Ok(())
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Send every datagram back to its sender.
async fn udp_echo(socket: Arc<UdpSocket>) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        // Errors here are about one peer (e.g. an ICMP error for an earlier
        // send); they must not stop the server.
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let _ = socket.send_to(&buf[..len], peer).await;
    }
}

async fn tcp_accept(listener: TcpListener, framing: Framing) -> anyhow::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(async move {
                    match tcp_echo(stream, framing).await {
                        Ok(()) => {}
                        // The client went away mid-reply, as a load does when it stops.
                        Err(e) if is_disconnect(&e) => {}
                        Err(e) => eprintln!("connection from {peer} closed: {e:#}"),
                    }
                });
            }
            // Out of descriptors, say: wait a little rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

fn is_disconnect(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe))
}

/// Echo each frame of one connection, replying to one read with one write.
async fn tcp_echo(mut stream: TcpStream, framing: Framing) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut decoder = Decoder::new(framing, MAX_FRAME);
    let mut input = BytesMut::new();
    let mut output = Vec::new();
    loop {
        if input.capacity() - input.len() < READ_CHUNK {
            input.reserve(READ_CHUNK);
        }
        let eof = stream.read_buf(&mut input).await? == 0;
        loop {
            let frame = if eof { decoder.decode_eof(&mut input)? } else { decoder.decode(&mut input)? };
            let Some(frame) = frame else { break };
            framing::encode(framing, &frame, &mut output)?;
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if eof {
            return Ok(());
        }
    }
}
