//! TCP framing: bytes to frames and back. Pure code, no I/O.
//!
//! The host owns framing so that one `handle` serves UDP and TCP alike. The
//! decoder works on the connection's read buffer in place: a frame is split
//! off the front of the buffer without copying, and the work done is linear
//! in the bytes received (a line that arrives one byte at a time is scanned
//! once, not once per read). Every size is checked against the limit before
//! any memory is reserved for it.

use bytes::{Buf, Bytes, BytesMut};

/// How a TCP byte stream is cut into requests, and how replies are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// A frame is the bytes up to `\n` (not included); replies get `\n` appended.
    Lines,
    /// A big-endian u16 length, then that many bytes (DNS over TCP).
    U16,
    /// A big-endian u32 length, then that many bytes.
    U32,
    /// Each read is one request, split wherever the stream was split (at
    /// most `--max-request` bytes); replies are written as they are. A
    /// stream protocol needs a `connection-handler` plugin instead.
    Raw,
}

impl Framing {
    /// The largest payload this framing can carry in one frame, if it has a
    /// length prefix.
    pub fn max_payload(self) -> Option<usize> {
        match self {
            Framing::U16 => Some(u16::MAX as usize),
            Framing::U32 => Some(u32::MAX as usize),
            Framing::Lines | Framing::Raw => None,
        }
    }

    /// How the length prefix is named in messages.
    pub fn prefix_name(self) -> &'static str {
        match self {
            Framing::U16 => "a u16 length prefix",
            Framing::U32 => "a u32 length prefix",
            Framing::Lines | Framing::Raw => "no length prefix",
        }
    }
}

/// Why a stream cannot be framed. The connection is closed on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A request frame longer than `--max-request`.
    #[error("frame of {len} bytes or more exceeds the limit of {max} bytes")]
    TooLong {
        /// The size announced by a length prefix, or buffered without a newline.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A reply that does not fit the length prefix (u16 framing, > 65,535 bytes).
    #[error("reply of {len} bytes does not fit a {framing:?} length prefix")]
    ReplyTooLong {
        /// Reply size.
        len: usize,
        /// The framing in use.
        framing: Framing,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed with {0} bytes of an incomplete frame")]
    Truncated(usize),
}

/// Cuts a TCP byte stream into request payloads.
#[derive(Debug, Clone)]
pub struct Decoder {
    framing: Framing,
    max: usize,
    /// Lines: how many buffered bytes are known to contain no `\n`.
    scanned: usize,
}

impl Decoder {
    /// A decoder for `framing` that rejects frames longer than `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Self {
        Self { framing, max, scanned: 0 }
    }

    /// The largest frame it accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The framing this decoder implements.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Split the next complete frame off the front of `buf`, without its framing.
    ///
    /// `Ok(None)` means more bytes are needed; for length-prefixed framing the
    /// buffer has then been reserved for the whole frame, so the next reads
    /// land in place.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.framing {
            Framing::Lines => self.decode_line(buf),
            Framing::U16 => self.decode_prefixed(buf, 2),
            Framing::U32 => self.decode_prefixed(buf, 4),
            Framing::Raw if buf.is_empty() => Ok(None),
            Framing::Raw => Ok(Some(buf.split().freeze())),
        }
    }

    /// Called at end of stream: what is left in `buf` either ends the last
    /// frame (an unterminated last line counts as a line) or is an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        match self.framing {
            _ if buf.is_empty() => Ok(None),
            Framing::Lines => {
                self.scanned = 0;
                Ok(Some(buf.split().freeze()))
            }
            _ => Err(FrameError::Truncated(buf.len())),
        }
    }

    fn decode_line(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match memchr::memchr(b'\n', &buf[self.scanned..]) {
            Some(i) if self.scanned + i > self.max => {
                // A whole over-long line can arrive in one read.
                Err(FrameError::TooLong { len: self.scanned + i, max: self.max })
            }
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                Ok(Some(line.freeze()))
            }
            None if buf.len() > self.max => Err(FrameError::TooLong { len: buf.len(), max: self.max }),
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_prefixed(&mut self, buf: &mut BytesMut, header: usize) -> Result<Option<Bytes>, FrameError> {
        if buf.len() < header {
            return Ok(None);
        }
        let len = match header {
            2 => u16::from_be_bytes([buf[0], buf[1]]) as usize,
            _ => u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
        };
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        if buf.len() < header + len {
            buf.reserve(header + len - buf.len());
            return Ok(None);
        }
        buf.advance(header);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// Append `payload` to `out` with the framing `framing` adds to replies.
pub fn encode(framing: Framing, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let (prefix, suffix) = envelope(framing, payload.len())?;
    out.reserve(prefix.len() + payload.len() + suffix.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    out.extend_from_slice(suffix);
    Ok(())
}

/// What the framing puts before and after a reply of `len` bytes: so a big
/// reply can be written around, without copying it into an output buffer.
pub fn envelope(framing: Framing, len: usize) -> Result<(Prefix, &'static [u8]), FrameError> {
    let too_long = || FrameError::ReplyTooLong { len, framing };
    Ok(match framing {
        Framing::Lines => (Prefix::default(), b"\n"),
        Framing::U16 => (Prefix::new(&u16::try_from(len).map_err(|_| too_long())?.to_be_bytes()), b""),
        Framing::U32 => (Prefix::new(&u32::try_from(len).map_err(|_| too_long())?.to_be_bytes()), b""),
        Framing::Raw => (Prefix::default(), b""),
    })
}

/// A length prefix of up to four bytes, on the stack.
#[derive(Debug, Default, Clone, Copy)]
pub struct Prefix {
    bytes: [u8; 4],
    len: usize,
}

impl Prefix {
    fn new(bytes: &[u8]) -> Self {
        let mut prefix = Prefix { bytes: [0; 4], len: bytes.len() };
        prefix.bytes[..bytes.len()].copy_from_slice(bytes);
        prefix
    }
}

impl std::ops::Deref for Prefix {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The framing overhead `encode` adds to a reply.
pub fn overhead(framing: Framing) -> usize {
    match framing {
        Framing::Lines => 1,
        Framing::U16 => 2,
        Framing::U32 => 4,
        Framing::Raw => 0,
    }
}

/// The framing fuzz target's body, shared by `fuzz/fuzz_targets/framing.rs`
/// and by a unit test that replays the committed corpus.
///
/// Input: byte 0 picks the framing, bytes 1-2 the limit (big-endian), byte 3
/// seeds the read sizes, the rest is the stream. Checks that decoding never
/// panics, never yields a frame over the limit, never reserves much more
/// than one frame, and that whatever the split, the frames are the same.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    const FRAMINGS: [Framing; 4] = [Framing::Lines, Framing::U16, Framing::U32, Framing::Raw];
    let [f, hi, lo, seed, stream @ ..] = data else { return };
    let framing = FRAMINGS[*f as usize % 4];
    let max = u16::from_be_bytes([*hi, *lo]) as usize;
    // The whole stream in one read, then in reads of pseudo-random sizes.
    let whole = fuzz_feed(framing, max, stream, &mut || stream.len().max(1));
    let mut x = u32::from(*seed) | 1;
    let split = fuzz_feed(framing, max, stream, &mut || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x % 64) as usize + 1
    });
    // Raw frames are the reads themselves; every other framing must not
    // depend on how the stream was cut: the same frames, or an error either
    // way (its details, such as how much was buffered, may differ).
    match (whole, split) {
        _ if framing == Framing::Raw => {}
        (Ok(whole), Ok(split)) => assert_eq!(whole, split, "{framing:?}: frames depend on the read sizes"),
        (Err(_), Err(_)) => {}
        (whole, split) => panic!("{framing:?}: whole stream gives {whole:?}, split gives {split:?}"),
    }
}

fn fuzz_feed(
    framing: Framing,
    max: usize,
    stream: &[u8],
    read_size: &mut dyn FnMut() -> usize,
) -> Result<Vec<Bytes>, FrameError> {
    let header = overhead(framing);
    let mut dec = Decoder::new(framing, max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = read_size().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(frame) = dec.decode(&mut buf)? {
            assert!(framing == Framing::Raw || frame.len() <= max, "{framing:?}: frame of {} > {max}", frame.len());
            frames.push(frame);
            if framing == Framing::Raw {
                break;
            }
        }
        // At most one frame (and one read) is ever reserved, doubled at worst
        // by the allocator's growth policy.
        let bound = 2 * (max + header + stream.len().min(64)) + 64;
        assert!(buf.capacity() <= bound.max(64), "{framing:?}: {} bytes reserved for max {max}", buf.capacity());
    }
    while let Some(frame) = dec.decode_eof(&mut buf)? {
        frames.push(frame);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Framing; 4] = [Framing::Lines, Framing::U16, Framing::U32, Framing::Raw];

    /// Feed `stream` to a decoder in reads of the given sizes; collect frames.
    fn feed(framing: Framing, max: usize, stream: &[u8], reads: &[usize]) -> Result<Vec<Vec<u8>>, FrameError> {
        // The fuzz target's reader, which also checks its invariants.
        let mut sizes = reads.iter().cycle();
        let frames = fuzz_feed(framing, max, stream, &mut || (*sizes.next().unwrap()).max(1))?;
        Ok(frames.iter().map(|f| f.to_vec()).collect())
    }

    fn encoded(framing: Framing, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(framing, p, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn every_split_of_the_stream_gives_the_same_frames() {
        let payloads: [&[u8]; 4] = [b"hello", b"", b"\x00\xff binary", b"last"];
        for framing in [Framing::Lines, Framing::U16, Framing::U32] {
            let stream = encoded(framing, &payloads);
            for read in 1..=stream.len() {
                let frames = feed(framing, 1024, &stream, &[read]).unwrap();
                assert_eq!(frames, payloads.map(<[u8]>::to_vec), "{framing:?} read={read}");
            }
        }
    }

    #[test]
    fn several_frames_in_one_read() {
        let frames = feed(Framing::Lines, 64, b"a\nb\nc\n", &[100]).unwrap();
        assert_eq!(frames, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn unterminated_last_line_is_a_frame_but_a_partial_prefix_is_an_error() {
        assert_eq!(feed(Framing::Lines, 64, b"a\nbc", &[1]).unwrap(), [b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(feed(Framing::U16, 64, b"\x00\x05abc", &[8]), Err(FrameError::Truncated(5)));
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut dec = Decoder::new(Framing::U32, 1000);
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xff"[..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::TooLong { len: u32::MAX as usize, max: 1000 }));
        assert!(buf.capacity() < 1000, "reserved {} bytes for a refused frame", buf.capacity());

        let line = vec![b'x'; 11];
        assert_eq!(feed(Framing::Lines, 10, &line, &[3]), Err(FrameError::TooLong { len: 11, max: 10 }));
        // Also when the whole over-long line, newline included, is one read
        // (found by the fuzz target).
        assert_eq!(feed(Framing::Lines, 4, b"toolong\n", &[100]), Err(FrameError::TooLong { len: 7, max: 4 }));
        // Exactly the limit is fine.
        assert_eq!(feed(Framing::Lines, 10, b"0123456789\n", &[3]).unwrap(), [b"0123456789".to_vec()]);
    }

    #[test]
    fn a_length_prefix_reserves_the_whole_frame_once() {
        let mut dec = Decoder::new(Framing::U16, 4096);
        let mut buf = BytesMut::from(&b"\x0f\xa0ab"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= 4002);
    }

    #[test]
    fn raw_passes_each_read_through() {
        assert_eq!(feed(Framing::Raw, 64, b"abcdef", &[4]).unwrap(), [b"abcd".to_vec(), b"ef".to_vec()]);
    }

    #[test]
    fn encode_adds_the_framing() {
        assert_eq!(encoded(Framing::Lines, &[b"hi"]), b"hi\n");
        assert_eq!(encoded(Framing::U16, &[b"hi"]), b"\x00\x02hi");
        assert_eq!(encoded(Framing::U32, &[b"hi"]), b"\x00\x00\x00\x02hi");
        assert_eq!(encoded(Framing::Raw, &[b"hi"]), b"hi");
        let big = vec![0; 70_000];
        assert!(matches!(encode(Framing::U16, &big, &mut Vec::new()), Err(FrameError::ReplyTooLong { .. })));
        for f in ALL {
            assert_eq!(encoded(f, &[b""]).len(), overhead(f));
        }
    }

    /// Every input in the fuzz target's committed corpus (and any crash it
    /// found since fixed) passes the fuzz checks.
    #[test]
    fn fuzz_corpus_replays_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/framing");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/framing") {
            let path = entry.unwrap().path();
            fuzz_decode(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n >= 10, "only {n} corpus files in {}", dir.display());
    }

    /// Arbitrary bytes in arbitrary splits: never a panic, never a frame over
    /// the limit. The `fuzz/` target explores this space further.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2_000 {
            let len = (next() % 300) as usize;
            let stream: Vec<u8> = (0..len).map(|_| (next() % 4) as u8 * 5).collect(); // 0, 5, 10 (\n), 15
            let reads: Vec<usize> = (0..4).map(|_| (next() % 40) as usize + 1).collect();
            for framing in ALL {
                if let Ok(frames) = feed(framing, 32, &stream, &reads) {
                    assert!(frames.iter().all(|f| f.len() <= 32 || framing == Framing::Raw));
                }
            }
        }
    }
}
