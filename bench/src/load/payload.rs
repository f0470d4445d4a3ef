//! Request payloads: a sequence number in 16 hex digits, then a fixed filler.
//!
//! Every byte is printable ASCII and none is `\n`, so each framing (`lines`
//! included) carries a payload unchanged. The sequence number lets a UDP
//! reply be matched to its request, and because the rest is fixed, any reply
//! can be checked byte for byte without keeping a copy of what was sent.
//!
//! Or, for a plugin that is not an echo, a fixed request: the same bytes
//! every time (`incr counter`), with a reply that can only be checked for
//! its form ([`ReplyCheck`]) and matched to no request in particular.

/// Bytes of the sequence-number header; the smallest payload.
pub const HEADER_LEN: usize = 16;

const FILLER: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a reply to a fixed request must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplyCheck {
    /// The request itself (an echo plugin).
    Echo,
    /// A number in decimal ASCII, such as a counter's new value.
    Integer,
    /// Any non-empty reply (a fixture whose replies are checked by its
    /// own tests, such as init-probe.wasm).
    Any,
}

impl ReplyCheck {
    /// Whether `reply` is a correct reply to `request`.
    pub fn accepts(self, request: &[u8], reply: &[u8]) -> bool {
        match self {
            ReplyCheck::Echo => reply == request,
            ReplyCheck::Integer => parse_integer(reply).is_some(),
            ReplyCheck::Any => !reply.is_empty(),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ReplyCheck::Echo => "the request",
            ReplyCheck::Integer => "a decimal number",
            ReplyCheck::Any => "any reply",
        }
    }
}

/// `reply` as a decimal number, if it is one (no sign, no spaces).
pub fn parse_integer(reply: &[u8]) -> Option<u64> {
    if reply.is_empty() || !reply.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(reply).ok()?.parse().ok()
}

/// The payloads of one load: all of one size.
#[derive(Debug)]
pub struct Payloads {
    template: Vec<u8>,
    /// For a fixed request: how its replies are checked. `None`: numbered
    /// echo payloads.
    fixed: Option<ReplyCheck>,
}

impl Payloads {
    /// Payloads of `size` bytes; `size` must be at least [`HEADER_LEN`].
    pub fn new(size: usize) -> Self {
        assert!(size >= HEADER_LEN, "payloads carry a {HEADER_LEN}-byte header");
        Self { template: FILLER.iter().copied().cycle().take(size).collect(), fixed: None }
    }

    /// `request` every time, its replies checked by `check`.
    pub fn fixed(request: &[u8], check: ReplyCheck) -> Self {
        Self { template: request.to_vec(), fixed: Some(check) }
    }

    /// How replies to a fixed request are checked; `None` for numbered payloads.
    pub fn fixed_check(&self) -> Option<ReplyCheck> {
        self.fixed
    }

    pub fn size(&self) -> usize {
        self.template.len()
    }

    /// Replace the contents of `out` with the payload of request `seq` (for
    /// a fixed request, the request whatever `seq`).
    pub fn write(&self, seq: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.template);
        if self.fixed.is_none() {
            out[..HEADER_LEN].copy_from_slice(&header(seq));
        }
    }

    /// Whether `reply` is a correct reply to the fixed request; false for
    /// numbered payloads.
    pub fn accepts_fixed(&self, reply: &[u8]) -> bool {
        self.fixed.is_some_and(|check| check.accepts(&self.template, reply))
    }

    /// The sequence number a reply's header names, if it is one.
    pub fn seq_of(reply: &[u8]) -> Option<u64> {
        let head = reply.get(..HEADER_LEN)?;
        head.iter().try_fold(0u64, |acc, &c| {
            let digit = HEX.iter().position(|&h| h == c)?;
            Some(acc << 4 | digit as u64)
        })
    }

    /// Whether `reply` is exactly the payload of request `seq`.
    pub fn is_reply_to(&self, seq: u64, reply: &[u8]) -> bool {
        reply.len() == self.template.len()
            && reply[..HEADER_LEN] == header(seq)
            && reply[HEADER_LEN..] == self.template[HEADER_LEN..]
    }
}

fn header(seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    for (i, b) in h.iter_mut().enumerate() {
        *b = HEX[(seq >> (60 - 4 * i) & 0xf) as usize];
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_its_own_reply_and_names_its_sequence_number() {
        let p = Payloads::new(64);
        let mut buf = Vec::new();
        for seq in [0, 1, 0xdead_beef, u64::MAX] {
            p.write(seq, &mut buf);
            assert_eq!(buf.len(), 64);
            assert_eq!(Payloads::seq_of(&buf), Some(seq));
            assert!(p.is_reply_to(seq, &buf));
            assert!(!p.is_reply_to(seq.wrapping_add(1), &buf));
        }
    }

    #[test]
    fn any_changed_byte_or_length_is_caught() {
        let p = Payloads::new(100);
        let mut buf = Vec::new();
        p.write(7, &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(!p.is_reply_to(7, &bad), "byte {i}");
        }
        assert!(!p.is_reply_to(7, &buf[..99]));
        assert_eq!(Payloads::seq_of(b"not hex at all!!"), None);
        assert_eq!(Payloads::seq_of(b"short"), None);
    }

    #[test]
    fn fixed_requests_are_sent_as_given_and_their_replies_checked_for_form() {
        let p = Payloads::fixed(b"incr counter", ReplyCheck::Integer);
        let mut buf = Vec::new();
        p.write(12345, &mut buf);
        assert_eq!(buf, b"incr counter");
        assert!(p.accepts_fixed(b"1") && p.accepts_fixed(b"18446744073709551615"));
        for bad in [&b""[..], b"-1", b" 1", b"1\n", b"err: other: x", b"18446744073709551616"] {
            assert!(!p.accepts_fixed(bad), "{bad:?}");
        }
        let echo = Payloads::fixed(b"incr counter", ReplyCheck::Echo);
        assert!(echo.accepts_fixed(b"incr counter") && !echo.accepts_fixed(b"incr counte"));
        assert!(!Payloads::new(64).accepts_fixed(b"1"));
        assert_eq!(parse_integer(b"0042"), Some(42));
    }

    #[test]
    fn payloads_survive_line_framing() {
        let p = Payloads::new(70_000);
        let mut buf = Vec::new();
        p.write(u64::from(b'\n'), &mut buf);
        assert!(!buf.contains(&b'\n'));
    }
}
