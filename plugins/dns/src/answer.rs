//! Answering a query from the zones: the lookup (delegations, exact names,
//! wildcards, CNAME chains) and the writing of the reply with its size
//! limit (truncation with TC over UDP).
//!
//! Record sets are copied as they were pre-serialised (see `zone`); owner
//! names are written as compression pointers to a name already in the
//! message (the question, or the target name inside an earlier record's
//! RDATA), which is what lets one copy of a record set serve every
//! spelling of the question, wildcards included.

use crate::query::{self, Edns, Query, Reject};
use crate::zone::{self, Node, RrSet, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_DS, TYPE_MX, TYPE_NS, Zone, Zones};

/// Response codes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// Format error.
    pub const FORMERR: u16 = 1;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused.
    pub const REFUSED: u16 = 5;
    /// Bad EDNS version (extended: 16, upper bits in the OPT record).
    pub const BADVERS: u16 = 16;
}

/// The UDP payload size a client gets without EDNS (RFC 1035).
pub const UDP_PLAIN: usize = 512;
/// The largest UDP payload sent whatever the client advertises: larger
/// datagrams fragment, and fragments get lost (DNS Flag Day 2020 advises
/// even less; the client chooses within these bounds).
pub const UDP_MAX: usize = 4096;
/// The UDP payload size this server advertises in its OPT record.
pub const ADVERTISED_UDP: u16 = 1232;
/// How many CNAMEs a chain may have within a zone before the answer stops.
const MAX_CHAIN: usize = 8;
/// Bytes of the OPT record of a reply (root owner, no options).
const OPT_LEN: usize = 11;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const CD: u16 = 0x0010;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_MAILB: u16 = 253;
const TYPE_MAILA: u16 = 254;
const TYPE_ANY: u16 = 255;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// The reply to one message, or `None` for silence. `tcp` lifts the UDP
/// size limit.
pub fn respond(zones: &Zones, msg: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = match query::parse(msg) {
        Ok(q) => q,
        Err(Reject::Ignore) => return None,
        Err(Reject::NotImp) => return Some(error_reply(msg, 0, rcode::NOTIMP)),
        Err(Reject::FormErr { question_end }) => return Some(error_reply(msg, question_end, rcode::FORMERR)),
    };
    if q.qtype == TYPE_OPT {
        return Some(error_reply(msg, q.question_end, rcode::FORMERR));
    }
    let limit = match (tcp, q.edns) {
        (true, _) => usize::from(u16::MAX),
        (false, None) => UDP_PLAIN,
        (false, Some(e)) => usize::from(e.udp_size).clamp(UDP_PLAIN, UDP_MAX),
    };
    let mut w = Writer::new(msg, &q, limit);
    if let Some(Edns { version: 1.., .. }) = q.edns {
        return Some(w.finish(rcode::BADVERS, false));
    }
    let rcode = match (q.qclass, q.qtype) {
        (CLASS_IN, TYPE_MAILA | TYPE_MAILB) => rcode::NOTIMP,
        // Zone transfers are not offered.
        (CLASS_IN, TYPE_AXFR | TYPE_IXFR) => rcode::REFUSED,
        (CLASS_IN, _) => match zones.find(q.name(), q.starts()) {
            Some((zone, apex_at)) => {
                let mut lookup = Lookup { zone, q: &q, apex_at, authoritative: true };
                let rcode = lookup.answer(&mut w);
                return Some(w.finish(rcode, lookup.authoritative));
            }
            None => rcode::REFUSED,
        },
        _ => rcode::REFUSED,
    };
    Some(w.finish(rcode, false))
}

/// A reply with only a header (and the question when `question_end` is
/// past the header): FORMERR, NOTIMP.
fn error_reply(msg: &[u8], question_end: usize, rcode: u16) -> Vec<u8> {
    let end = question_end.max(12);
    let mut out = msg[..end].to_vec();
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let flags = QR | (flags & (0xF << 11 | RD | CD)) | rcode;
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[4..6].copy_from_slice(&u16::from(end > 12).to_be_bytes());
    out[6..12].fill(0);
    out
}

/// One lookup in one zone.
struct Lookup<'a> {
    zone: &'a Zone,
    q: &'a Query,
    /// Offset of the apex within the question name.
    apex_at: usize,
    /// AA: cleared for a referral.
    authoritative: bool,
}

/// Where the owner name of a record set is in the message.
#[derive(Clone, Copy)]
enum Owner {
    /// A compression pointer to this offset.
    At(usize),
    /// A copy of the uncompressed name at this offset, of this length (a
    /// name past the reach of a pointer).
    Copy(usize, usize),
}

impl Lookup<'_> {
    /// Answer the question; the RCODE.
    fn answer(&mut self, w: &mut Writer) -> u16 {
        let name = self.q.name();
        let starts = self.q.starts();
        // Labels strictly below the apex, from just below it to the name.
        let below: &[u8] =
            &starts[..starts.iter().position(|&s| usize::from(s) == self.apex_at).unwrap_or(starts.len())];
        if self.zone.has_cuts {
            for &s in below.iter().rev() {
                let s = usize::from(s);
                if let Some(node) = self.zone.node(&name[s..])
                    && node.cut
                    && !(s == 0 && self.q.qtype == TYPE_DS)
                {
                    return self.referral(w, node, s);
                }
            }
        }
        let owner = Owner::At(12);
        if let Some(node) = self.zone.node(name) {
            return self.answer_node(w, node, owner, name, 0);
        }
        // The closest encloser: the longest existing ancestor (the apex
        // always exists). A wildcard directly below it answers (RFC 4592).
        let encloser = below.iter().skip(1).map(|&s| usize::from(s)).find(|&s| self.zone.node(&name[s..]).is_some());
        let encloser = &name[encloser.unwrap_or(self.apex_at)..];
        let mut wild = [0u8; query::MAX_NAME + 2];
        if let Some(node) = self.zone.node(wildcard(encloser, &mut wild)) {
            return self.answer_node(w, node, owner, name, 0);
        }
        self.negative(w);
        rcode::NXDOMAIN
    }

    /// Answer from `node`, whose records are written with owner `owner`;
    /// `name` is its name (lower-cased wire), `chain` the CNAMEs so far.
    fn answer_node(&mut self, w: &mut Writer, node: &Node, owner: Owner, name: &[u8], chain: usize) -> u16 {
        let qtype = self.q.qtype;
        if qtype == TYPE_ANY && !node.sets.is_empty() {
            // RFC 8482: one record set, not all (as NSD does): the SOA at
            // the apex, else the first by type.
            let set = node.set(zone::TYPE_SOA).unwrap_or(&node.sets[0]);
            w.records(set, owner, Section::Answer, None);
            return rcode::NOERROR;
        }
        let mut targets = Targets::default();
        if let Some(set) = node.set(qtype) {
            if w.records(set, owner, Section::Answer, Some(&mut targets))
                && (set.rtype == TYPE_NS || set.rtype == TYPE_MX)
            {
                self.glue(w, targets.list(), false);
            }
            return rcode::NOERROR;
        }
        let Some(cname) = node.set(TYPE_CNAME) else {
            self.negative(w);
            return rcode::NOERROR;
        };
        if !w.records(cname, owner, Section::Answer, Some(&mut targets)) {
            return rcode::NOERROR;
        }
        let Some(&target_at) = targets.list().first() else { return rcode::NOERROR };
        let mut lower = [0u8; query::MAX_NAME];
        let target = lower_into(&w.buf[target_at..], &mut lower);
        // A chain out of the zone, into a delegation, too long, or onto
        // itself ends here; the resolver follows it.
        if chain + 1 >= MAX_CHAIN
            || target == name
            || !zone::is_at_or_below(target, &self.zone.apex)
            || (self.zone.has_cuts && self.below_cut(target))
        {
            return rcode::NOERROR;
        }
        let owner = owner_at(target_at, &w.buf);
        if let Some(node) = self.zone.node(target) {
            return self.answer_node(w, node, owner, target, chain + 1);
        }
        // A wildcard may answer the target; otherwise the target does not
        // exist, which RFC 6604 reports as NXDOMAIN.
        let mut at = target;
        while at.len() > self.zone.apex.len() {
            at = &at[1 + usize::from(at[0])..];
            if self.zone.node(at).is_some() {
                let mut wild = [0u8; query::MAX_NAME + 2];
                if let Some(node) = self.zone.node(wildcard(at, &mut wild)) {
                    return self.answer_node(w, node, owner, target, chain + 1);
                }
                break;
            }
        }
        self.negative(w);
        rcode::NXDOMAIN
    }

    /// Whether `name` (in this zone) is at or below a delegation.
    fn below_cut(&self, name: &[u8]) -> bool {
        let mut at = name;
        while at.len() > self.zone.apex.len() {
            if self.zone.node(at).is_some_and(|n| n.cut) {
                return true;
            }
            at = &at[1 + usize::from(at[0])..];
        }
        false
    }

    /// NXDOMAIN or NODATA: the SOA in the authority section.
    fn negative(&self, w: &mut Writer) {
        w.records(&self.zone.negative_soa, Owner::At(12 + self.apex_at), Section::Authority, None);
    }

    /// A delegation at `node`, the name's suffix at offset `at`: not
    /// authoritative, the NS records in authority, their addresses in the
    /// zone as glue.
    fn referral(&mut self, w: &mut Writer, node: &Node, at: usize) -> u16 {
        self.authoritative = false;
        let Some(ns) = node.set(TYPE_NS) else { return rcode::NOERROR };
        let mut targets = Targets::default();
        if w.records(ns, Owner::At(12 + at), Section::Authority, Some(&mut targets)) {
            // Glue is needed to follow the referral: without room for it
            // the client must retry over TCP (RFC 9471).
            self.glue(w, targets.list(), true);
        }
        rcode::NOERROR
    }

    /// A and AAAA records of the names at `targets` (offsets into the
    /// message) that are in this zone. Left out when there is no room,
    /// unless `required`: then TC is set.
    fn glue(&self, w: &mut Writer, targets: &[usize], required: bool) {
        for &at in targets {
            let mut lower = [0u8; query::MAX_NAME];
            let target = lower_into(&w.buf[at..], &mut lower);
            if !zone::is_at_or_below(target, &self.zone.apex) {
                continue;
            }
            let Some(node) = self.zone.node(target) else { continue };
            for rtype in [TYPE_A, TYPE_AAAA] {
                if let Some(set) = node.set(rtype)
                    && !w.records(set, owner_at(at, &w.buf), Section::Additional, None)
                {
                    w.truncated |= required;
                    return;
                }
            }
        }
    }
}

/// `*.` and `encloser` in `buf`.
fn wildcard<'b>(encloser: &[u8], buf: &'b mut [u8; query::MAX_NAME + 2]) -> &'b [u8] {
    buf[..2].copy_from_slice(b"\x01*");
    buf[2..2 + encloser.len()].copy_from_slice(encloser);
    &buf[..2 + encloser.len()]
}

/// A pointer to the name at `at` when a pointer can reach it (offsets below
/// 0x4000), else a copy of it.
fn owner_at(at: usize, buf: &[u8]) -> Owner {
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
fn lower_into<'b>(bytes: &[u8], buf: &'b mut [u8; query::MAX_NAME]) -> &'b [u8] {
    let name = &bytes[..name_len(bytes)];
    let n = name.len().min(query::MAX_NAME);
    for (d, s) in buf[..n].iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..n]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Answer,
    Authority,
    Additional,
}

/// Where the target names of the NS, MX or CNAME records just written are
/// in the message (the first 16), to point at them and look them up.
#[derive(Default)]
struct Targets {
    list: [usize; 16],
    len: usize,
}

impl Targets {
    fn list(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

/// The reply being written, and its size limit.
struct Writer {
    buf: Vec<u8>,
    /// Bytes the message may have, not counting the OPT record.
    limit: usize,
    edns: bool,
    counts: [u16; 3],
    truncated: bool,
}

impl Writer {
    /// A reply to `q`: its header and question copied from `msg`.
    fn new(msg: &[u8], q: &Query, limit: usize) -> Writer {
        let edns = q.edns.is_some();
        let mut buf = Vec::with_capacity(limit.min(1232));
        buf.extend_from_slice(&msg[..q.question_end]);
        Writer { buf, limit: limit - if edns { OPT_LEN } else { 0 }, edns, counts: [0; 3], truncated: false }
    }

    /// Append every record of `set` to `section`, or none of them: a set
    /// that does not fit sets TC, except in the additional section, which
    /// is optional. `targets` collects where NS/MX/CNAME targets went.
    fn records(&mut self, set: &RrSet, owner: Owner, section: Section, mut targets: Option<&mut Targets>) -> bool {
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
            if let (Some(t), Some(targets)) = (target, targets.as_deref_mut())
                && targets.len < targets.list.len()
            {
                targets.list[targets.len] = t;
                targets.len += 1;
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
    fn finish(mut self, rcode: u16, authoritative: bool) -> Vec<u8> {
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
