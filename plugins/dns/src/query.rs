//! Reading a query: the header, the one question (its name lower-cased for
//! lookups, its bytes kept to echo as the client wrote them) and the EDNS
//! OPT record, without allocating.
//!
//! Written against the wire format rather than through hickory-proto's
//! `Message`, which would allocate a name, a query list and a record list
//! per request, and would not keep the question's bytes; what must be
//! checked (RFC 1035 4.1, RFC 6891 6.1) is short.

/// Why a message gets no answer but an error code, or no reply at all.
#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not even a header, or a response: send nothing.
    Ignore,
    /// FORMERR: the header was readable; `question_end` is the end of the
    /// question if that parsed (to echo it), else 0.
    FormErr {
        /// End of the question in the message, or 0 if it did not parse.
        question_end: usize,
    },
    /// NOTIMP: an opcode other than QUERY.
    NotImp,
}

/// EDNS(0) from a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The UDP payload size the client can receive.
    pub udp_size: u16,
    /// The EDNS version (0 is the only one).
    pub version: u8,
}

/// The longest name in wire form (RFC 1035 2.3.4).
pub const MAX_NAME: usize = 255;

/// A parsed query.
#[derive(Debug)]
pub struct Query {
    /// The message ID.
    pub id: u16,
    /// The query's flags word (opcode, RD, CD are echoed).
    pub flags: u16,
    /// End of the question (12 + name + type + class) in the message.
    pub question_end: usize,
    /// The question name, lower-cased, wire form.
    lower: [u8; MAX_NAME],
    /// Its length, root label included.
    len: usize,
    /// Offsets of its labels (the root label not included).
    starts: [u8; 128],
    /// How many labels.
    labels: usize,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The OPT record, if any.
    pub edns: Option<Edns>,
}

impl Query {
    /// The question name, lower-cased wire form.
    pub fn name(&self) -> &[u8] {
        &self.lower[..self.len]
    }

    /// Offsets of the name's labels, first (longest suffix) first.
    pub fn starts(&self) -> &[u8] {
        &self.starts[..self.labels]
    }
}

/// The opcode of a flags word.
pub fn opcode(flags: u16) -> u16 {
    (flags >> 11) & 0xF
}

const QR: u16 = 0x8000;
/// The OPT pseudo-record type (EDNS).
pub const TYPE_OPT: u16 = 41;

/// Read a query. Anything malformed is `FormErr` once the header is
/// readable.
pub fn parse(msg: &[u8]) -> Result<Query, Reject> {
    if msg.len() < 12 {
        return Err(Reject::Ignore);
    }
    let word = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let (id, flags) = (word(0), word(2));
    if flags & QR != 0 {
        // Never answer a response: two servers would bounce it forever.
        return Err(Reject::Ignore);
    }
    if opcode(flags) != 0 {
        return Err(Reject::NotImp);
    }
    let (qd, an, ns, ar) = (word(4), word(6), word(8), word(10));
    if qd != 1 {
        return Err(Reject::FormErr { question_end: 0 });
    }
    let mut q = Query {
        id,
        flags,
        question_end: 0,
        lower: [0; MAX_NAME],
        len: 0,
        starts: [0; 128],
        labels: 0,
        qtype: 0,
        qclass: 0,
        edns: None,
    };
    let mut at = 12;
    loop {
        let Some(&len) = msg.get(at) else { return Err(Reject::FormErr { question_end: 0 }) };
        let len = usize::from(len);
        // A question name has no compression pointer to follow (there is
        // nothing before it to point at), and labels are at most 63 bytes.
        if len > 63 || q.len + 1 + len > MAX_NAME || at + 1 + len > msg.len() {
            return Err(Reject::FormErr { question_end: 0 });
        }
        if len == 0 {
            q.lower[q.len] = 0;
            q.len += 1;
            at += 1;
            break;
        }
        q.starts[q.labels] = q.len as u8;
        q.labels += 1;
        q.lower[q.len] = len as u8;
        for (dst, src) in q.lower[q.len + 1..q.len + 1 + len].iter_mut().zip(&msg[at + 1..at + 1 + len]) {
            *dst = src.to_ascii_lowercase();
        }
        q.len += 1 + len;
        at += 1 + len;
    }
    if at + 4 > msg.len() {
        return Err(Reject::FormErr { question_end: 0 });
    }
    q.qtype = word(at);
    q.qclass = word(at + 2);
    at += 4;
    q.question_end = at;
    let formerr = Reject::FormErr { question_end: q.question_end };

    // Answer and authority records in a query are unusual but legal; they
    // are checked for shape and skipped. The OPT record may only be in the
    // additional section, once, owned by the root.
    let total = usize::from(an) + usize::from(ns) + usize::from(ar);
    let first_additional = usize::from(an) + usize::from(ns);
    for i in 0..total {
        let owner_root = msg.get(at) == Some(&0);
        at = skip_name(msg, at).ok_or(Reject::FormErr { question_end: q.question_end })?;
        if at + 10 > msg.len() {
            return Err(formerr);
        }
        let (rtype, class) = (word(at), word(at + 2));
        let ttl = u32::from_be_bytes([msg[at + 4], msg[at + 5], msg[at + 6], msg[at + 7]]);
        let rdlen = usize::from(word(at + 8));
        at += 10;
        if at + rdlen > msg.len() {
            return Err(formerr);
        }
        if rtype == TYPE_OPT {
            if i < first_additional || !owner_root || q.edns.is_some() || !options_well_formed(&msg[at..at + rdlen]) {
                return Err(formerr);
            }
            q.edns = Some(Edns { udp_size: class, version: (ttl >> 16) as u8 });
        }
        at += rdlen;
    }
    if at != msg.len() {
        return Err(formerr);
    }
    Ok(q)
}

/// Skip a name that may end in a compression pointer; the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(len),
            0xC0..=0xFF => return (at + 2 <= msg.len()).then_some(at + 2),
            _ => return None,
        }
    }
    None
}

/// Whether OPT RDATA is a sequence of whole `CODE LENGTH DATA` options.
fn options_well_formed(mut rdata: &[u8]) -> bool {
    while !rdata.is_empty() {
        if rdata.len() < 4 {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([rdata[2], rdata[3]]));
        if rdata.len() < 4 + len {
            return false;
        }
        rdata = &rdata[4 + len..];
    }
    true
}
