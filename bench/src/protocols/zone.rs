//! The zone both DNS servers serve, and the dnsperf query file made from it.
//!
//! The zone file is parsed once with hickory-proto's master-file parser
//! (the one the DNS plugin uses) for two things: its origin, which NSD's
//! configuration names, and its record sets, each of which becomes one
//! query, so that every query has an answer (NOERROR) from both servers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::txt::Parser;

/// The record types the DNS plugin answers; sets of other types (none in
/// the example zone) are left out of the queries.
const ASKED: [RecordType; 7] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::TXT,
    RecordType::MX,
    RecordType::NS,
    RecordType::SOA,
    RecordType::CNAME,
];

/// A zone file, read and parsed.
#[derive(Debug)]
pub struct Zone {
    pub path: PathBuf,
    /// The file's text, handed to the plugin as the `zone` variable.
    pub text: String,
    pub origin: Name,
    /// One `NAME TYPE` per record set, in dnsperf's query-file format.
    pub queries: Vec<String>,
}

/// Read and parse the zone file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Zone> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the zone file {}", path.display()))?;
    let (origin, sets) = Parser::new(text.as_str(), Some(path.to_path_buf()), None)
        .parse()
        .with_context(|| format!("cannot parse the zone file {}", path.display()))?;
    let queries: Vec<String> = sets
        .keys()
        .filter(|key| ASKED.contains(&key.record_type))
        .map(|key| format!("{} {}", key.name, key.record_type))
        .collect();
    ensure!(!queries.is_empty(), "the zone file {} has no record of {ASKED:?}", path.display());
    Ok(Zone { path: path.to_path_buf(), text, origin, queries })
}

impl Zone {
    /// The query file: every query once, in the zone's order. dnsperf
    /// cycles through it.
    pub fn query_file(&self) -> String {
        self.queries.iter().fold(String::new(), |mut s, q| {
            let _ = writeln!(s, "{q}");
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_set_of_an_asked_type_is_a_query() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.zone");
        std::fs::write(
            &path,
            "$ORIGIN example.org.\n$TTL 300\n@ IN SOA ns1 host ( 1 7200 3600 1209600 300 )\n  IN NS ns1\n\
             ns1 IN A 192.0.2.1\nwww IN A 192.0.2.2\nwww IN AAAA 2001:db8::2\nalias IN CNAME www\n\
             @ IN HINFO \"x\" \"y\"\n",
        )
        .unwrap();
        let zone = load(&path).unwrap();
        assert_eq!(zone.origin.to_string(), "example.org.");
        let mut queries = zone.queries.clone();
        queries.sort();
        assert_eq!(
            queries,
            [
                "alias.example.org. CNAME",
                "example.org. NS",
                "example.org. SOA",
                "ns1.example.org. A",
                "www.example.org. A",
                "www.example.org. AAAA"
            ]
        );
        assert_eq!(zone.query_file().lines().count(), 6);
    }
}
