//! Answering a query from the zones: which RCODE, and which record sets go
//! in which section (delegations, exact names, wildcards, CNAME chains,
//! glue); `reply` writes them within the size limit.
//!
//! Record sets are copied as they were pre-serialised (see `zone`); owner
//! names are written as compression pointers to a name already in the
//! message (the question, or the target name inside an earlier record's
//! RDATA), which is what lets one copy of a record set serve every
//! spelling of the question, wildcards included.

use crate::query::{self, Edns, Query, Reject, TYPE_OPT};
use crate::reply::{Owner, Section, Targets, Writer, error_reply, lower_into, owner_at};
use crate::zone::{self, Node, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_DS, TYPE_MX, TYPE_NS, Zone, Zones};

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
/// datagrams fragment, fragments get lost, and a big answer to a small
/// spoofed query is an amplifier. 1232 as DNS Flag Day 2020 advises and
/// NSD does (`ipv4-edns-size`); a longer answer is truncated and the
/// client asks again over TCP.
pub const UDP_MAX: usize = ADVERTISED_UDP as usize;
/// The UDP payload size this server advertises in its OPT record: what it
/// sends at most, so the client's resolver sizes its buffers to match.
pub const ADVERTISED_UDP: u16 = 1232;
/// How many CNAMEs a chain may have within a zone before the answer stops.
const MAX_CHAIN: usize = 8;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_MAILB: u16 = 253;
const TYPE_MAILA: u16 = 254;
const TYPE_ANY: u16 = 255;
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
                let mut lookup =
                    Lookup { zone, q: &q, apex_at, authoritative: true, chain: [std::ptr::null(); MAX_CHAIN] };
                let rcode = lookup.answer(&mut w);
                return Some(w.finish(rcode, lookup.authoritative));
            }
            None => rcode::REFUSED,
        },
        _ => rcode::REFUSED,
    };
    Some(w.finish(rcode, false))
}

/// One lookup in one zone.
struct Lookup<'a> {
    zone: &'a Zone,
    q: &'a Query,
    /// Offset of the apex within the question name.
    apex_at: usize,
    /// AA: cleared for a referral.
    authoritative: bool,
    /// The nodes a CNAME chain has answered from, to stop at a loop.
    chain: [*const Node; MAX_CHAIN],
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
        // A CNAME loop (a -> b -> a) ends where it comes back: its records
        // are written once (chain < MAX_CHAIN: the caller stops before).
        if self.chain[..chain].contains(&std::ptr::from_ref(node)) {
            return rcode::NOERROR;
        }
        self.chain[chain] = node;
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
            // the client must retry over TCP (RFC 9471). So is the glue of
            // targets past the ones collected: say so.
            self.glue(w, targets.list(), true);
            w.truncated |= targets.overflowed();
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
            // Optional addresses are only this zone's own: not the
            // delegated child's, below a cut (a referral's glue is).
            if !required && self.zone.has_cuts && self.below_cut(target) {
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
