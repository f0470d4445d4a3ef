//! Writing a reply: the header and question copied from the query, record
//! sets appended whole or not at all within the size limit (TC when a
//! needed one does not fit), counts and flags set at the end, and the OPT
//! record for an EDNS query.

use crate::answer::ADVERTISED_UDP;
use crate::query::{self, Query, TYPE_OPT};
use crate::zone::{RrSet, TYPE_CNAME, TYPE_MX, TYPE_NS};

/// Bytes of the OPT record of a reply (root owner, no options).
const OPT_LEN: usize = 11;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const CD: u16 = 0x0010;

/// A reply with only a header (and the question when `question_end` is
/// past the header): FORMERR, NOTIMP.
pub fn error_reply(msg: &[u8], question_end: usize, rcode: u16) -> Vec<u8> {
    let end = question_end.max(12);
    let mut out = msg[..end].to_vec();
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let flags = QR | (flags & (0xF << 11 | RD | CD)) | rcode;
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[4..6].copy_from_slice(&u16::from(end > 12).to_be_bytes());
    out[6..12].fill(0);
    out
}

/// Where the owner name of a record set is in the message.
#[derive(Clone, Copy)]
pub enum Owner {
    /// A compression pointer to this offset.
    At(usize),
    /// A copy of the uncompressed name at this offset, of this length (a
    /// name past the reach of a pointer).
    Copy(usize, usize),
}

/// A pointer to the name at `at` when a pointer can reach it (offsets below
/// 0x4000), else a copy of it.
pub fn owner_at(at: usize, buf: &[u8]) -> Owner {
    if at < 0x4000 { Owner::At(at) } else { Owner::Copy(at, name_len(&buf[at..])) }
}

/// The length of an uncompressed wire name at the start of `bytes`.
fn name_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&len) = bytes.get(at) {
        at += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    at.min(bytes.len())
}

/// Lower-case the uncompressed wire name at the start of `bytes` into
/// `buf`.
pub fn lower_into<'b>(bytes: &[u8], buf: &'b mut [u8; query::MAX_NAME]) -> &'b [u8] {
    let name = &bytes[..name_len(bytes)];
    let n = name.len().min(query::MAX_NAME);
    for (d, s) in buf[..n].iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..n]
}

#[derive(Clone, Copy, PartialEq, Eq)]
/// A section of the reply, by its index among the record counts.
pub enum Section {
    /// ANCOUNT.
    Answer,
    /// NSCOUNT.
    Authority,
    /// ARCOUNT.
    Additional,
}

/// Where the target names of the NS, MX or CNAME records just written are
/// in the message (the first 64), to point at them and look them up.
pub struct Targets {
    list: [usize; 64],
    len: usize,
    /// More targets were written than collected.
    overflowed: bool,
}

impl Default for Targets {
    fn default() -> Self {
        Targets { list: [0; 64], len: 0, overflowed: false }
    }
}

impl Targets {
    /// The offsets collected.
    pub fn list(&self) -> &[usize] {
        &self.list[..self.len]
    }

    /// Whether some targets were not collected.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

/// The reply being written, and its size limit.
pub struct Writer {
    /// The message so far.
    pub buf: Vec<u8>,
    /// Bytes the message may have, not counting the OPT record.
    limit: usize,
    edns: bool,
    counts: [u16; 3],
    /// Set TC: something needed did not fit.
    pub truncated: bool,
}

impl Writer {
    /// A reply to `q`: its header and question copied from `msg`.
    pub fn new(msg: &[u8], q: &Query, limit: usize) -> Writer {
        let edns = q.edns.is_some();
        let mut buf = Vec::with_capacity(limit.min(1232));
        buf.extend_from_slice(&msg[..q.question_end]);
        Writer { buf, limit: limit - if edns { OPT_LEN } else { 0 }, edns, counts: [0; 3], truncated: false }
    }

    /// Append every record of `set` to `section`, or none of them: a set
    /// that does not fit sets TC, except in the additional section, which
    /// is optional. `targets` collects where NS/MX/CNAME targets went.
    pub fn records(&mut self, set: &RrSet, owner: Owner, section: Section, mut targets: Option<&mut Targets>) -> bool {
        let start = self.buf.len();
        let mut n = 0u16;
        for record in set.records() {
            match owner {
                Owner::At(at) => self.buf.extend_from_slice(&(0xC000 | at as u16).to_be_bytes()),
                Owner::Copy(at, len) => self.buf.extend_from_within(at..at + len),
            }
            let rdata_at = self.buf.len() + 10;
            self.buf.extend_from_slice(record);
            n += 1;
            let target = match set.rtype {
                TYPE_NS | TYPE_CNAME => Some(rdata_at),
                TYPE_MX => Some(rdata_at + 2),
                _ => None,
            };
            if let (Some(t), Some(targets)) = (target, targets.as_deref_mut()) {
                if targets.len < targets.list.len() {
                    targets.list[targets.len] = t;
                    targets.len += 1;
                } else {
                    targets.overflowed = true;
                }
            }
        }
        if self.buf.len() > self.limit {
            self.buf.truncate(start);
            if section != Section::Additional {
                self.truncated = true;
            }
            return false;
        }
        self.counts[section as usize] += n;
        true
    }

    /// The finished message.
    pub fn finish(mut self, rcode: u16, authoritative: bool) -> Vec<u8> {
        let flags = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        let mut flags = QR | (flags & (0xF << 11 | RD | CD)) | (rcode & 0xF);
        if authoritative {
            flags |= AA;
        }
        if self.truncated {
            flags |= TC;
        }
        self.buf[2..4].copy_from_slice(&flags.to_be_bytes());
        self.buf[4..6].copy_from_slice(&1u16.to_be_bytes());
        for (i, count) in self.counts.iter().enumerate() {
            let at = 6 + 2 * i;
            self.buf[at..at + 2].copy_from_slice(&count.to_be_bytes());
        }
        if self.edns {
            let ar = self.counts[2] + 1;
            self.buf[10..12].copy_from_slice(&ar.to_be_bytes());
            // Root owner, type OPT, our size, extended RCODE bits, version
            // 0, DO clear (no DNSSEC), no options.
            self.buf.push(0);
            self.buf.extend_from_slice(&TYPE_OPT.to_be_bytes());
            self.buf.extend_from_slice(&ADVERTISED_UDP.to_be_bytes());
            self.buf.push((rcode >> 4) as u8);
            self.buf.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        self.buf
    }
}
