//! Zones: master-file text, parsed once by hickory-proto's zone parser, kept
//! as a compact lookup structure whose record sets are already in wire form.
//!
//! Parsing a zone costs far more than answering a query, so it happens once
//! per instance image (see the crate docs); what a query then touches is two
//! or three hash lookups of lower-cased wire names and a copy of
//! pre-serialised bytes. Every record is kept without its owner name (the
//! answer writes the owner as a compression pointer into the question), so
//! the same bytes serve exact, wildcard and CNAME-chased answers.

use std::collections::HashMap;

use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use hickory_proto::serialize::txt::Parser;

/// Type codes the answer code treats specially.
pub const TYPE_A: u16 = 1;
/// NS.
pub const TYPE_NS: u16 = 2;
/// CNAME.
pub const TYPE_CNAME: u16 = 5;
/// SOA.
pub const TYPE_SOA: u16 = 6;
/// MX.
pub const TYPE_MX: u16 = 15;
/// AAAA.
pub const TYPE_AAAA: u16 = 28;
/// DS (answered by the parent side of a zone cut).
pub const TYPE_DS: u16 = 43;

/// Every zone the plugin serves, by apex.
#[derive(Debug, Default)]
pub struct Zones {
    by_apex: HashMap<Box<[u8]>, Zone>,
}

/// One zone: its nodes by lower-cased wire name.
#[derive(Debug)]
pub struct Zone {
    /// The apex, lower-cased wire form.
    pub apex: Box<[u8]>,
    /// The SOA record for negative answers (owner omitted), with the TTL
    /// RFC 2308 asks for: the smaller of the SOA's TTL and its MINIMUM.
    pub negative_soa: RrSet,
    /// Whether any node below the apex has NS records (a delegation).
    pub has_cuts: bool,
    nodes: HashMap<Box<[u8]>, Node>,
}

/// The records of one name, or none (an empty non-terminal: a name that
/// exists only because names below it do).
#[derive(Debug, Default)]
pub struct Node {
    /// Record sets, sorted by type.
    pub sets: Vec<RrSet>,
    /// NS records below the apex: a delegation; this zone is not
    /// authoritative at or below it.
    pub cut: bool,
}

/// The records of one name and type, in wire form without owner names:
/// for each record `TYPE CLASS TTL RDLENGTH RDATA`, names in RDATA
/// uncompressed, in the case the zone file wrote them.
#[derive(Debug)]
pub struct RrSet {
    /// The record type.
    pub rtype: u16,
    /// The records, back to back.
    pub data: Box<[u8]>,
}

impl RrSet {
    /// The records as byte slices, each `TYPE CLASS TTL RDLENGTH RDATA`.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest: &[u8] = &self.data;
        std::iter::from_fn(move || {
            if rest.len() < 10 {
                return None;
            }
            let len = 10 + usize::from(u16::from_be_bytes([rest[8], rest[9]]));
            let (record, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            Some(record)
        })
    }
}

impl Node {
    /// The record set of type `rtype`.
    pub fn set(&self, rtype: u16) -> Option<&RrSet> {
        self.sets.binary_search_by_key(&rtype, |s| s.rtype).ok().map(|i| &self.sets[i])
    }
}

impl Zone {
    /// The node of a lower-cased wire name.
    pub fn node(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.get(name)
    }
}

impl Zones {
    /// Parse zones from `(config key, master-file text)` pairs. Errors name
    /// the key and, where the parser says where, the line:
    /// `zone: line 7 (`www IN A 1.2.3`): ...`.
    pub fn parse<'a>(texts: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Zones, String> {
        let mut zones = Zones::default();
        for (key, text) in texts {
            let zone = parse_zone(text).map_err(|e| format!("{key}: {e}"))?;
            if zones.by_apex.contains_key(&zone.apex) {
                return Err(format!("{key}: zone {} is given twice", display(&zone.apex)));
            }
            zones.by_apex.insert(zone.apex.clone(), zone);
        }
        if zones.by_apex.is_empty() {
            return Err("zone: no zone configured: set the config variable `zone` to a zone in master-file text, \
                        e.g. --var \"zone=$(cat example.zone)\""
                .into());
        }
        Ok(zones)
    }

    /// The most specific zone containing `name` (lower-cased wire form,
    /// labels starting at `starts`), with the offset of its apex in `name`.
    pub fn find(&self, name: &[u8], starts: &[u8]) -> Option<(&Zone, usize)> {
        starts
            .iter()
            .map(|&s| usize::from(s))
            .chain(std::iter::once(name.len() - 1))
            .find_map(|off| self.by_apex.get(&name[off..]).map(|z| (z, off)))
    }

    /// How many zones there are.
    pub fn len(&self) -> usize {
        self.by_apex.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.by_apex.is_empty()
    }
}

/// Parse one zone's text.
fn parse_zone(text: &str) -> Result<Zone, String> {
    let origin = soa_owner(text);
    let (_, sets) = Parser::new(text, None, origin.clone()).parse().map_err(|e| {
        let message = e.to_string();
        let no_origin = message == "$ORIGIN was not specified" || message == "record name not specified";
        if no_origin && origin.is_none() {
            return "no origin: start the zone with `$ORIGIN example.com.` or write the SOA owner as an \
                    absolute name (`example.com. IN SOA ...`)"
                .to_string();
        }
        match error_line(text, origin, &message) {
            Some((n, line)) => format!("line {n} (`{}`): {message}", line.trim()),
            None => message,
        }
    })?;

    let soas: Vec<&Record> =
        sets.values().filter(|s| s.record_type() == RecordType::SOA).flat_map(|s| s.records_without_rrsigs()).collect();
    let soa = match soas.as_slice() {
        [soa] => *soa,
        [] => return Err("no SOA record: a zone needs exactly one, at its apex".into()),
        _ => return Err(format!("{} SOA records: a zone needs exactly one, at its apex", soas.len())),
    };
    let apex = wire_lower(&soa.name)?;
    let minimum = match &soa.data {
        hickory_proto::rr::RData::SOA(s) => s.minimum,
        _ => soa.ttl,
    };
    let mut negative = soa.clone();
    negative.ttl = soa.ttl.min(minimum);
    let negative_soa = RrSet { rtype: TYPE_SOA, data: record_wire(&negative)?.into_boxed_slice() };

    let mut nodes: HashMap<Box<[u8]>, Node> = HashMap::new();
    for set in sets.values() {
        let mut data = Vec::new();
        let mut owner = None;
        for record in set.records_without_rrsigs() {
            if record.dns_class != DNSClass::IN {
                return Err(format!("{}: class {} is not served (only IN)", record.name, record.dns_class));
            }
            owner.get_or_insert(&record.name);
            data.extend_from_slice(&record_wire(record)?);
        }
        let Some(owner) = owner else { continue };
        let key = wire_lower(owner)?;
        if !is_at_or_below(&key, &apex) {
            return Err(format!("{owner} is outside the zone {}", soa.name));
        }
        let rtype = u16::from(set.record_type());
        let node = nodes.entry(key.clone()).or_default();
        node.sets.push(RrSet { rtype, data: data.into_boxed_slice() });
        if rtype == TYPE_NS && key != apex {
            node.cut = true;
        }
        // Every ancestor up to the apex exists (empty non-terminals answer
        // NODATA, not NXDOMAIN).
        let mut at = &key[..];
        while at.len() > apex.len() {
            at = &at[1 + usize::from(at[0])..];
            nodes.entry(at.into()).or_default();
        }
    }
    for (key, node) in &mut nodes {
        node.sets.sort_by_key(|s| s.rtype);
        if node.set(TYPE_CNAME).is_some() && node.sets.len() > 1 {
            return Err(format!("{} has a CNAME and other records: a CNAME must be alone at its name", display(key)));
        }
    }
    let has_cuts = nodes.values().any(|n| n.cut);
    Ok(Zone { apex, negative_soa, has_cuts, nodes })
}

/// The owner of the first SOA record, if the text writes it as an absolute
/// name at the start of a line: the zone's origin when there is no
/// `$ORIGIN` (a `$ORIGIN` line still overrides it from where it appears).
fn soa_owner(text: &str) -> Option<Name> {
    text.lines().find_map(|line| {
        let line = line.split(';').next().unwrap_or_default();
        if line.starts_with(char::is_whitespace) || line.starts_with('$') {
            return None;
        }
        let mut tokens = line.split_whitespace();
        let owner = tokens.next()?;
        if !tokens.take(3).any(|t| t.eq_ignore_ascii_case("SOA")) || !owner.ends_with('.') {
            return None;
        }
        Name::from_ascii(owner).ok()
    })
}

/// The first line at which the text fails to parse with `message`: the
/// parser's errors carry no position, so find the shortest prefix of whole
/// lines that fails the same way (a bisection; paid only for a bad zone).
fn error_line<'t>(text: &'t str, origin: Option<Name>, message: &str) -> Option<(usize, &'t str)> {
    let ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).chain(std::iter::once(text.len())).collect();
    let fails = |k: usize| match Parser::new(&text[..ends[k]], None, origin.clone()).parse() {
        Ok(_) => false,
        Err(e) => e.to_string() == message,
    };
    let (mut lo, mut hi) = (0, ends.len() - 1);
    if !fails(hi) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(mid) { hi = mid } else { lo = mid + 1 }
    }
    let start = if lo == 0 { 0 } else { ends[lo - 1] };
    Some((lo + 1, text[start..ends[lo]].trim_end()))
}

/// A record in wire form without its owner name: `TYPE CLASS TTL RDLENGTH
/// RDATA`, names in RDATA uncompressed.
fn record_wire(record: &Record) -> Result<Vec<u8>, String> {
    let mut rootless = record.clone();
    rootless.name = Name::root();
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    rootless.emit(&mut encoder).map_err(|e| format!("{}: cannot encode {}: {e}", record.name, record.record_type()))?;
    // The root owner is the single byte 0.
    buf.remove(0);
    Ok(buf)
}

/// A name in lower-cased, uncompressed wire form.
fn wire_lower(name: &Name) -> Result<Box<[u8]>, String> {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    name.to_lowercase().emit(&mut encoder).map_err(|e| format!("{name}: {e}"))?;
    Ok(buf.into_boxed_slice())
}

/// Whether wire name `name` is `apex` or below it (ends with it at a label
/// boundary).
pub fn is_at_or_below(name: &[u8], apex: &[u8]) -> bool {
    let mut at = name;
    loop {
        if at == apex {
            return true;
        }
        match at.first() {
            Some(&len) if len > 0 && at.len() > 1 + usize::from(len) => at = &at[1 + usize::from(len)..],
            _ => return false,
        }
    }
}

/// A wire name as text, for messages.
pub fn display(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut at = wire;
    while let Some((&len, rest)) = at.split_first() {
        if len == 0 || rest.len() < usize::from(len) {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&rest[..usize::from(len)]));
        out.push('.');
        at = &rest[usize::from(len)..];
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}
