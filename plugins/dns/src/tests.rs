//! Unit tests of the zone and answer code on the example zone, natively:
//! queries are built and replies read with hickory-proto's `Message`, so
//! every reply is also checked to be a message another implementation
//! reads.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::answer::respond;
use crate::zone::Zones;

const EXAMPLE: &str = include_str!("../../../examples/dns/example.zone");

fn zones() -> Zones {
    Zones::parse([("zone", EXAMPLE)]).unwrap()
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask(zones: &Zones, name: &str, rtype: RecordType, edns: Option<u16>, tcp: bool) -> (Message, usize) {
    let reply = respond(zones, &query(name, rtype, edns), tcp).expect("a reply");
    (Message::from_vec(&reply).expect("a reply hickory reads"), reply.len())
}

#[test]
fn cname_chain_is_followed_and_the_question_keeps_its_case() {
    let (m, _) = ask(&zones(), "AlIaS.Example.COM.", RecordType::A, None, false);
    assert_eq!(m.metadata.id, 0x1234);
    assert!(m.metadata.authoritative);
    assert_eq!(m.queries[0].name().to_ascii(), "AlIaS.Example.COM.");
    let types: Vec<_> = m.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(types, [RecordType::CNAME, RecordType::CNAME, RecordType::A, RecordType::A]);
    assert_eq!(m.answers[0].name.to_ascii(), "AlIaS.Example.COM.");
    assert_eq!(m.answers[2].name.to_ascii(), "web.example.com.");
}

#[test]
fn negative_answers_carry_the_soa_with_the_minimum_ttl() {
    let z = zones();
    let (m, _) = ask(&z, "nope.example.com.", RecordType::A, None, false);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(m.authorities[0].ttl, 300);
    let (m, _) = ask(&z, "text.example.com.", RecordType::A, None, false);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    // An empty non-terminal exists: NODATA, not NXDOMAIN.
    let (m, _) = ask(&z, "deep.example.com.", RecordType::A, None, false);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn mx_answers_bring_the_addresses_of_in_zone_targets() {
    let (m, _) = ask(&zones(), "example.com.", RecordType::MX, None, false);
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.additionals.len(), 1);
    assert_eq!(m.additionals[0].name.to_ascii(), "mail.example.com.");
}

#[test]
fn a_delegation_is_a_referral_with_glue() {
    let (m, _) = ask(&zones(), "host.sub.example.com.", RecordType::A, None, false);
    assert!(!m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 2);
    assert!(matches!(m.additionals[0].data, RData::A(_)));
}

#[test]
fn wildcards_answer_with_the_question_name() {
    let (m, _) = ask(&zones(), "anything.wild.example.com.", RecordType::TXT, None, false);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].name.to_ascii(), "anything.wild.example.com.");
}

#[test]
fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let z = zones();
    let (m, len) = ask(&z, "big.example.com.", RecordType::TXT, None, false);
    assert!(m.metadata.truncation && len <= 512, "{len} bytes");
    let (m, len) = ask(&z, "big.example.com.", RecordType::TXT, Some(1000), false);
    assert!(m.metadata.truncation && len <= 1000, "{len} bytes");
    // Whatever the client advertises, UDP answers stop at 1232 bytes.
    let (m, len) = ask(&z, "big.example.com.", RecordType::TXT, Some(4096), false);
    assert!(m.metadata.truncation && len <= 1232, "{len} bytes");
    let (m, _) = ask(&z, "big.example.com.", RecordType::TXT, None, true);
    assert!(!m.metadata.truncation && m.answers.len() == 20);
}

#[test]
fn edns_is_answered_and_version_1_is_badvers() {
    let z = zones();
    let (m, _) = ask(&z, "example.com.", RecordType::SOA, Some(1232), false);
    assert_eq!(m.edns.as_ref().map(|e| e.version()), Some(0));
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::SOA));
    let mut e = Edns::new();
    e.set_version(1);
    q.set_edns(e);
    let reply = respond(&z, &q.to_vec().unwrap(), false).unwrap();
    let m = Message::from_vec(&reply).unwrap();
    // 16 is BADVERS in an OPT, BADSIG in a TSIG: hickory names it the latter.
    assert_eq!(u16::from(m.metadata.response_code), 16);
}

#[test]
fn malformed_messages_get_formerr_or_silence() {
    let z = zones();
    assert_eq!(respond(&z, &[0; 11], false), None);
    let mut header = query("example.com.", RecordType::A, None);
    header[5] = 0; // QDCOUNT 0
    let reply = respond(&z, &header, false).unwrap();
    assert_eq!(&reply[..2], &[0x12, 0x34]);
    assert_eq!(reply[3] & 0xF, 1);
    let full = query("example.com.", RecordType::A, None);
    let reply = respond(&z, &full[..full.len() - 3], false).unwrap();
    assert_eq!(reply[3] & 0xF, 1);
    let mut notify = full.clone();
    notify[2] |= 4 << 3;
    assert_eq!(respond(&z, &notify, false).unwrap()[3] & 0xF, 4);
    // A response is never answered.
    let mut response = full;
    response[2] |= 0x80;
    assert_eq!(respond(&z, &response, false), None);
}

#[test]
fn names_outside_the_zones_are_refused() {
    let (m, _) = ask(&zones(), "example.org.", RecordType::A, None, false);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
}

#[test]
fn a_bad_zone_says_which_line() {
    let text = "$ORIGIN example.com.\n@ 3600 IN SOA ns hm 1 2 3 4 5\nwww 3600 IN A 1.2.3\n";
    let e = Zones::parse([("zone", text)]).unwrap_err();
    assert!(e.starts_with("zone: line 3 (`www 3600 IN A 1.2.3`):"), "{e}");
    let e = Zones::parse([("zone.b", "www 3600 IN A 192.0.2.1\n")]).unwrap_err();
    assert!(e.starts_with("zone.b: no origin"), "{e}");
    let e = Zones::parse([("zone", "example.com. 60 IN SOA ns hm 1 2 3 4 5\nx.example.org. 60 IN A 192.0.2.1\n")])
        .unwrap_err();
    assert!(e.contains("outside the zone"), "{e}");
}

#[test]
fn the_origin_may_come_from_the_soa_owner() {
    let text = "example.net. 60 IN SOA ns hm 1 2 3 4 5\nwww 60 IN A 192.0.2.1\n";
    let z = Zones::parse([("zone", text)]).unwrap();
    let (m, _) = ask(&z, "www.example.net.", RecordType::A, None, false);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn any_gets_one_record_set() {
    let z = zones();
    let (m, _) = ask(&z, "example.com.", RecordType::ANY, None, false);
    assert_eq!(m.answers.iter().map(|r| r.record_type()).collect::<Vec<_>>(), [RecordType::SOA]);
    let (m, _) = ask(&z, "web.example.com.", RecordType::ANY, None, true);
    assert_eq!(m.answers.len(), 2);
}

#[test]
fn a_huge_answer_over_tcp_is_whole_with_glue_for_the_first_64_targets() {
    let mut text = String::from("$ORIGIN example.com.\n@ 60 IN SOA ns hm 1 2 3 4 5\n");
    for i in 0..1000 {
        text.push_str(&format!("@ 60 IN MX {i} m{i}\nm{i} 60 IN A 192.0.2.{}\n", i % 250));
    }
    let z = Zones::parse([("zone", text.as_str())]).unwrap();
    let (m, len) = ask(&z, "example.com.", RecordType::MX, None, true);
    assert!(len > 0x4000 && m.answers.len() == 1000, "{len} bytes");
    // Additional data is bounded: the addresses of the first 64 targets.
    assert_eq!(m.additionals.len(), 64);
    for glue in &m.additionals {
        let RData::A(a) = &glue.data else { panic!("{glue:?}") };
        let i: usize = glue.name.to_ascii()[1..].split('.').next().unwrap().parse().unwrap();
        assert_eq!(usize::from(a.0.octets()[3]), i % 250);
    }
}

#[test]
fn mutated_queries_never_panic() {
    // A fuzzer's poor cousin, deterministic: valid queries (with EDNS, for
    // the big set, a CNAME chain, a referral) with bytes flipped, cut and
    // appended, through the whole answer path over UDP and TCP. Every reply
    // must be a message hickory reads.
    let z = zones();
    let seeds = [
        query("big.example.com.", RecordType::TXT, Some(1232)),
        query("alias.example.com.", RecordType::A, None),
        query("x.sub.example.com.", RecordType::A, Some(512)),
        query("a.b.wild.example.com.", RecordType::MX, None),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..100_000 {
        let mut msg = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = next() as usize % msg.len();
            match next() % 4 {
                0 => msg[at] = next() as u8,
                1 => msg.truncate(at.max(1)),
                2 => msg.push(next() as u8),
                _ => msg[at] ^= 1 << (next() % 8),
            }
        }
        if let Some(reply) = respond(&z, &msg, i % 2 == 0) {
            assert!(reply.len() <= if i % 2 == 0 { 65535 } else { 1232 });
            assert_eq!(reply[..2], msg[..2]);
            Message::from_vec(&reply).unwrap_or_else(|e| panic!("{msg:?} -> {reply:?}: {e}"));
        }
    }
}

#[test]
fn a_cname_loop_is_written_once() {
    let text = "$ORIGIN example.com.\n@ 60 IN SOA ns hm 1 2 3 4 5\na 60 IN CNAME b\nb 60 IN CNAME a\n";
    let z = Zones::parse([("zone", text)]).unwrap();
    let (m, _) = ask(&z, "a.example.com.", RecordType::A, None, false);
    assert_eq!(m.answers.len(), 2, "{:?}", m.answers);
}

#[test]
fn a_referral_carries_all_its_glue_or_says_it_is_truncated() {
    let mut text = String::from("$ORIGIN example.com.\n@ 60 IN SOA ns hm 1 2 3 4 5\n");
    for i in 0..40 {
        text.push_str(&format!("sub 60 IN NS ns{i}.sub\nns{i}.sub 60 IN A 192.0.2.{i}\n"));
    }
    for i in 0..70 {
        text.push_str(&format!("wide 60 IN NS ns{i}.wide\nns{i}.wide 60 IN A 192.0.2.{i}\n"));
    }
    // A host below the cut is the child's: not in an authoritative
    // answer's additional section.
    text.push_str("h.sub 60 IN A 192.0.2.200\nmx 60 IN MX 10 h.sub\n");
    let z = Zones::parse([("zone", text.as_str())]).unwrap();
    let (m, _) = ask(&z, "x.sub.example.com.", RecordType::A, None, true);
    assert_eq!((m.authorities.len(), m.additionals.len(), m.metadata.truncation), (40, 40, false));
    let (m, _) = ask(&z, "x.wide.example.com.", RecordType::A, None, true);
    assert_eq!((m.authorities.len(), m.metadata.truncation), (70, true), "glue past the first 64 is missing");
    let (m, _) = ask(&z, "mx.example.com.", RecordType::MX, None, false);
    assert_eq!((m.answers.len(), m.additionals.len()), (1, 0), "{:?}", m.additionals);
}
