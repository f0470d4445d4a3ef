//! [`FramedConn`]: one connection's socket, read buffer, decoder and
//! pending output, shared by both worlds' loops.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::config::Framing;
use crate::framing::{self, Decoder, FrameError};

use super::{ConnError, OUTPUT_HIGH_WATER};

/// Bytes reserved per read. Larger frames reserve their full length.
const READ_CHUNK: usize = 8 << 10;
/// How long [`FramedConn::linger`] reads what the peer still sends after
/// the host has closed its side.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// One connection's socket, read buffer, decoder and pending output.
pub(super) struct FramedConn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    /// Replies not yet written; at most [`OUTPUT_HIGH_WATER`] bytes.
    out: Vec<u8>,
    /// How long a read may wait for a frame, and a write for the peer.
    idle_timeout: Duration,
    /// When the connection is closed if no frame completes.
    deadline: Instant,
}

impl FramedConn {
    pub(super) fn new(
        stream: TcpStream,
        framing: Framing,
        max_request: usize,
        idle_timeout: Duration,
    ) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(framing, max_request),
            out: Vec::new(),
            idle_timeout,
            deadline: Instant::now() + idle_timeout,
        })
    }

    /// Wait until the peer sends more (until the idle deadline) and read it.
    /// `Ok(true)` at end of stream.
    pub(super) async fn read(&mut self) -> Result<bool, ConnError> {
        loop {
            match timeout_at(self.deadline, self.stream.readable()).await {
                Ok(r) => r?,
                Err(_) if self.decoder.framing() == Framing::Raw => return Err(ConnError::Silent(self.idle_timeout)),
                Err(_) => return Err(ConnError::Idle(self.idle_timeout)),
            }
            let want = match self.decoder.framing() {
                Framing::Raw => self.decoder.max().clamp(1, READ_CHUNK),
                _ => READ_CHUNK,
            };
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next complete frame of what was read; at end of stream, what is
    /// left ends the last frame or is an error.
    pub(super) fn next_frame(&mut self, eof: bool) -> Result<Option<Bytes>, FrameError> {
        let frame = if eof { self.decoder.decode_eof(&mut self.buf) } else { self.decoder.decode(&mut self.buf) }?;
        if frame.is_some() {
            self.deadline = Instant::now() + self.idle_timeout;
        }
        Ok(frame)
    }

    /// Whether sending a reply of `len` bytes writes to the peer (and may
    /// wait for it) instead of only queueing it.
    pub(super) fn send_writes(&self, len: usize) -> bool {
        self.out.len() + framing::overhead(self.decoder.framing()) + len > OUTPUT_HIGH_WATER
    }

    /// Queue `reply`, framed. Pending output past [`OUTPUT_HIGH_WATER`] is
    /// written first; a reply that big on its own is written without being
    /// copied.
    pub(super) async fn send(&mut self, reply: &[u8]) -> Result<(), ConnError> {
        let (prefix, suffix) = framing::envelope(self.decoder.framing(), reply.len())?;
        let framed = prefix.len() + reply.len() + suffix.len();
        if self.send_writes(reply.len()) {
            self.flush().await?;
        }
        if framed <= OUTPUT_HIGH_WATER {
            self.out.extend_from_slice(&prefix);
            self.out.extend_from_slice(reply);
            self.out.extend_from_slice(suffix);
            return Ok(());
        }
        for part in [&prefix[..], reply, suffix] {
            self.write(part).await?;
        }
        Ok(())
    }

    /// Write the pending output.
    pub(super) async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        self.write(&out).await?;
        self.out = out;
        self.out.clear();
        Ok(())
    }

    /// Close as a server that answers before it has read the whole request
    /// must (RFC 9112 section 9.6; nginx's lingering close): send FIN, then
    /// read and discard what the peer still sends until it closes too, or
    /// for [`LINGER`] at most. Dropping a socket with unread input makes the
    /// kernel send a reset, and a reset can destroy the reply still in
    /// flight: a client uploading a body the plugin refused (HTTP 413)
    /// would see "connection reset" instead of the answer.
    pub(super) async fn linger(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        self.buf.clear();
        self.buf.reserve(READ_CHUNK);
        let _ = timeout(LINGER, async {
            loop {
                self.buf.clear();
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Write `bytes`; a peer that takes none of them for the idle timeout
    /// is given up on.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match timeout(self.idle_timeout, self.stream.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::Stalled(self.idle_timeout)),
        }
    }

    /// The framing in use.
    pub(super) fn framing(&self) -> Framing {
        self.decoder.framing()
    }

    /// Give the peer a whole `--idle-timeout` from now.
    pub(super) fn extend_deadline(&mut self) {
        self.deadline = Instant::now() + self.idle_timeout;
    }

    /// Unframed input (connection world): what has been read and not
    /// consumed, at most the decoder's limit (`--max-request`) at a time.
    /// Bytes arriving count as activity for the idle timeout.
    pub(super) fn input(&mut self) -> &[u8] {
        self.extend_deadline();
        let n = self.buf.len().min(self.decoder.max().max(1));
        &self.buf[..n]
    }

    /// Drop the first `n` bytes of the input: the plugin has them.
    pub(super) fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Whether input is waiting to be consumed.
    pub(super) fn has_input(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Between reads, keep no memory the connection is not using.
    pub(super) fn release_idle_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > READ_CHUNK {
            self.out = Vec::new();
        }
    }
}
