//! TCP load: each connection pipelines `inflight` framed requests.
//!
//! Replies come back in request order, so the requests outstanding are a
//! queue. One task per connection waits for readability and writability
//! together, never blocking on a write while the server may be blocked
//! writing to it: with large payloads and many requests in flight, both
//! sides' socket buffers can fill, and a client that only writes would then
//! deadlock with the server.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use host::framing::{self, Decoder, Framing};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use super::{Job, Payloads};
use crate::stats::Tally;

/// Handshakes in progress at once. The server's accept backlog is 1,024;
/// more at once would overflow it, and a dropped SYN is retried only after
/// a second, which would make 10,000 connections take minutes.
const CONNECT_CONCURRENCY: usize = 256;
/// A connect, or the first round trip on a new connection, may take this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Free buffer space ensured before each read.
const READ_CHUNK: usize = 64 << 10;
/// Failed connections after which [`first_replies`] gives up.
const FIRST_REPLY_MAX_ERRORS: u64 = 10;

/// Open `n` connections to `addr`, at most [`CONNECT_CONCURRENCY`] at a
/// time, and make one echo round trip on each; return them in no
/// particular order.
///
/// The round trip proves that the server has accepted the connection. A
/// client's connect completes before that, as soon as the kernel queues the
/// connection for `accept`; opening connections faster than the server
/// accepts them overflows its backlog, and the kernel then stalls those
/// connections for a second or more of SYN-ACK retries, which would show up
/// as latency of the load. It also means that a server holding idle
/// connections has served one request on each, as real clients would.
///
/// The first failure fails the whole set: a server that refuses connections
/// is not measured.
pub async fn connect_all(addr: SocketAddr, framing: Framing, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        // Collect what has finished while waiting for a free slot.
        let permit = loop {
            tokio::select! {
                p = limit.clone().acquire_owned() => break p.expect("the semaphore is never closed"),
                Some(done) = tasks.join_next() => streams.push(done.context("a connect task panicked")??),
            }
        };
        tasks.spawn(async move {
            let _permit = permit;
            let mut stream = timeout(STEP_TIMEOUT, TcpStream::connect(addr))
                .await
                .with_context(|| format!("connect to {addr} timed out after {STEP_TIMEOUT:?}"))?
                .with_context(|| format!("cannot connect to {addr}"))?;
            // Requests are small and latency-bound: do not let Nagle hold them.
            stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
            timeout(STEP_TIMEOUT, round_trip(&mut stream, framing, &Payloads::new(super::HEADER_LEN), 0))
                .await
                .with_context(|| format!("no echo from {addr} within {STEP_TIMEOUT:?} of connecting"))??;
            anyhow::Ok(stream)
        });
    }
    while let Some(done) = tasks.join_next().await {
        streams.push(done.context("a connect task panicked")??);
    }
    Ok(streams)
}

/// Open `warmup + n` connections to `addr`, one after another; on each,
/// send one request of `size` bytes, read its reply and close. The tally
/// has the time from the start of each of the last `n` connects to the
/// reply. A connection that fails is an error of the tally; after
/// [`FIRST_REPLY_MAX_ERRORS`] of them the rest are not tried.
pub async fn first_replies(
    addr: SocketAddr,
    framing: Framing,
    size: usize,
    warmup: usize,
    n: usize,
) -> anyhow::Result<Tally> {
    anyhow::ensure!(addr.ip().is_loopback(), "{addr} is not a loopback address");
    let payloads = Payloads::new(size);
    let mut tally = Tally::new();
    for seq in 0..(warmup + n) as u64 {
        let start = Instant::now();
        let once = async {
            let mut stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
            stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
            round_trip(&mut stream, framing, &payloads, seq).await
            // Dropping the stream closes it: the server sees the end of
            // the stream as the next connection starts.
        };
        match timeout(STEP_TIMEOUT, once).await {
            Ok(Ok(())) if seq >= warmup as u64 => tally.record(start.elapsed()),
            Ok(Ok(())) => {}
            Ok(Err(e)) => tally.error(format_args!("connection {seq}: {e:#}")),
            Err(_) => tally.error(format_args!("connection {seq}: no reply within {STEP_TIMEOUT:?}")),
        }
        if tally.errors >= FIRST_REPLY_MAX_ERRORS {
            break;
        }
    }
    Ok(tally)
}

/// Send request `seq` of `payloads` on `stream` and check its reply.
async fn round_trip(stream: &mut TcpStream, framing: Framing, payloads: &Payloads, seq: u64) -> anyhow::Result<()> {
    let mut payload = Vec::with_capacity(payloads.size());
    payloads.write(seq, &mut payload);
    let mut out = Vec::with_capacity(payloads.size() + 4);
    framing::encode(framing, &payload, &mut out)?;
    stream.write_all(&out).await.context("cannot send a request")?;
    let mut decoder = ReplyDecoder::new(framing, payloads.size());
    let mut buf = BytesMut::with_capacity(payloads.size() + 4);
    loop {
        if let Some(reply) = decoder.decode(&mut buf)? {
            anyhow::ensure!(payloads.is_reply_to(seq, &reply), "the reply differs from the request");
            return Ok(());
        }
        if stream.read_buf(&mut buf).await.context("cannot read a reply")? == 0 {
            bail!("the server closed the connection before replying");
        }
    }
}

/// Pipeline requests on `stream` until the load stops.
pub async fn drive(stream: TcpStream, mut job: Job) -> Tally {
    let mut tally = Tally::new();
    if let Err(e) = pipeline(&stream, &mut job, &mut tally).await {
        tally.error(format_args!("tcp: {e:#}"));
    }
    tally
}

async fn pipeline(stream: &TcpStream, job: &mut Job, tally: &mut Tally) -> anyhow::Result<()> {
    let mut decoder = ReplyDecoder::new(job.framing, job.payloads.size());
    // (sequence number, when its latency is timed from) of each request
    // awaiting its reply, oldest first.
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::with_capacity(job.inflight);
    let mut next_seq = 0;
    let mut payload = Vec::with_capacity(job.payloads.size());
    let (mut input, mut output, mut written) = (BytesMut::new(), Vec::new(), 0);
    let stopped = job.clock.stop.clone().cancelled_owned();
    tokio::pin!(stopped);
    let mut warm = false;
    loop {
        let now = Instant::now();
        while outstanding.len() < job.inflight {
            let Some(timed_from) = job.schedule.take_due(now) else {
                break;
            };
            job.payloads.write(next_seq, &mut payload);
            framing::encode(job.framing, &payload, &mut output)?;
            outstanding.push_back((next_seq, timed_from));
            next_seq += 1;
        }
        // Write what is pending now; wait for writability only if the
        // socket buffer is full.
        if written < output.len() {
            match stream.try_write(&output[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("write failed"),
            }
            if written == output.len() {
                output.clear();
                written = 0;
            }
        }
        let may_send = outstanding.len() < job.inflight;
        tokio::select! {
            biased;
            _ = &mut stopped => return Ok(()),
            r = stream.readable() => {
                r.context("waiting to read")?;
                if input.capacity() - input.len() < READ_CHUNK / 4 {
                    input.reserve(READ_CHUNK);
                }
                match stream.try_read_buf(&mut input) {
                    Ok(0) => bail!("the server closed the connection"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e).context("read failed"),
                }
                let now = Instant::now();
                while let Some(reply) = decoder.decode(&mut input)? {
                    let Some((seq, timed_from)) = outstanding.pop_front() else {
                        bail!("a reply to no request");
                    };
                    if !job.payloads.is_reply_to(seq, &reply) {
                        tally.error(format_args!("tcp reply to request {seq} differs from the request"));
                        continue;
                    }
                    if job.clock.measures(now) {
                        tally.record(now - timed_from);
                    } else if !std::mem::replace(&mut warm, true) {
                        job.clock.warmed();
                    }
                }
            }
            // Writable again: the write is retried at the top of the loop.
            r = stream.writable(), if written < output.len() => r.context("waiting to write")?,
            _ = job.schedule.next_due(), if may_send => {}
        }
    }
}

/// Cuts the reply stream into payloads: the host's own decoder, except for
/// `raw` framing, where the stream has no boundaries and replies are cut at
/// the request size (an echo's reply is as long as its request).
enum ReplyDecoder {
    Framed(Decoder),
    Fixed(usize),
}

impl ReplyDecoder {
    fn new(framing: Framing, size: usize) -> Self {
        match framing {
            Framing::Raw => ReplyDecoder::Fixed(size),
            // A reply longer than the request is wrong; refusing it early
            // also bounds the buffer.
            _ => ReplyDecoder::Framed(Decoder::new(framing, size)),
        }
    }

    fn decode(&mut self, buf: &mut BytesMut) -> anyhow::Result<Option<Bytes>> {
        match self {
            ReplyDecoder::Framed(d) => d.decode(buf).context("bad reply framing"),
            ReplyDecoder::Fixed(size) if buf.len() >= *size => Ok(Some(buf.split_to(*size).freeze())),
            ReplyDecoder::Fixed(_) => Ok(None),
        }
    }
}
