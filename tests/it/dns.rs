//! The `dns` plugin through the real host and the real `dig` (Debian
//! `bind9-dnsutils`): every record type, negative answers, refusals,
//! malformed queries, EDNS, truncation over UDP and whole answers over TCP,
//! and random bytes. The zone is `examples/dns/example.zone`, plus a second
//! zone under `zone.net` to check that more than one is served.

use std::io::{Read, Write};
use std::process::Command;

use crate::support::*;

const SECOND_ZONE: &str =
    "example.net. 60 IN SOA ns.example.net. hm.example.net. 1 2 3 4 5\nwww 60 IN A 198.51.100.7\n";

fn example_zone() -> String {
    std::fs::read_to_string(root().join("examples/dns/example.zone")).unwrap()
}

/// A host serving the example zone (and `SECOND_ZONE` as `zone.net`) on
/// UDP and TCP with u16 framing.
fn dns_host(extra: &[&str]) -> Host {
    let p = plugin("dns");
    let mut args: Vec<String> =
        ["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0", "--framing", "u16"].map(String::from).to_vec();
    // DNS answers are often more than 3x the query: the host's
    // amplification cap would drop them.
    args.extend(["--max-amplification", "0"].map(String::from));
    args.push("--var".into());
    args.push(format!("zone={}", example_zone()));
    args.push("--var".into());
    args.push(format!("zone.net={SECOND_ZONE}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    Host::start(&args)
}

/// `dig @127.0.0.1 -p PORT ARGS +norecurse` (over TCP on the TCP port when
/// `+tcp` is in `args`); its stdout.
fn dig(host: &Host, args: &[&str]) -> String {
    let port = if args.contains(&"+tcp") { host.tcp().port() } else { host.udp().port() };
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+norecurse", "+time=5", "+tries=1"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dig (install bind9-dnsutils): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `dig +short`: the answer's RDATA, one per line.
fn short(host: &Host, name: &str, rtype: &str) -> Vec<String> {
    dig(host, &[name, rtype, "+short"]).lines().map(String::from).collect()
}

/// The `status:` and `flags:` of a dig reply.
fn status_and_flags(out: &str) -> (String, String) {
    let status = out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or_default();
    let flags = out.split("flags: ").nth(1).and_then(|s| s.split(';').next()).unwrap_or_default();
    (status.to_string(), flags.to_string())
}

/// The records of a section of dig's output (`ANSWER`, `AUTHORITY`), one
/// per line.
fn section(out: &str, name: &str) -> Vec<String> {
    let header = format!(";; {name} SECTION:");
    out.lines().skip_while(|l| *l != header).skip(1).take_while(|l| !l.is_empty()).map(String::from).collect()
}

/// A query in wire form: ID, name, type, and an OPT record with a UDP size.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0xF
}

#[test]
fn dig_gets_every_record_type_over_udp_and_tcp() {
    let host = dns_host(&[]);
    for transport in [&[][..], &["+tcp"][..]] {
        let ask = |name: &str, rtype: &str| {
            let mut args = vec![name, rtype, "+short"];
            args.extend_from_slice(transport);
            dig(&host, &args).lines().map(String::from).collect::<Vec<_>>()
        };
        assert_eq!(ask("example.com", "A"), ["192.0.2.1"]);
        assert_eq!(ask("example.com", "AAAA"), ["2001:db8::1"]);
        assert_eq!(ask("example.com", "TXT"), ["\"v=spf1 mx -all\""]);
        assert_eq!(ask("example.com", "MX"), ["10 mail.example.com.", "20 mail.backup.example.net."]);
        assert_eq!(ask("example.com", "NS"), ["ns1.example.com.", "ns2.example.com."]);
        assert_eq!(
            ask("example.com", "SOA"),
            ["ns1.example.com. hostmaster.example.com. 2024060101 7200 3600 1209600 300"]
        );
        assert_eq!(ask("www.example.com", "CNAME"), ["web.example.com."]);
        // A CNAME chain is followed within the zone.
        assert_eq!(ask("alias.example.com", "A"), ["www.example.com.", "web.example.com.", "192.0.2.80", "192.0.2.81"]);
        assert_eq!(ask("text.example.com", "TXT"), ["\"hello world\" \"second string\""]);
        assert_eq!(ask("x.y.wild.example.com", "A"), ["192.0.2.99"]);
        // The second zone, from `zone.net`.
        assert_eq!(ask("www.example.net", "A"), ["198.51.100.7"]);
    }
    // AA on answers, additional addresses for MX targets in the zone.
    let out = dig(&host, &["example.com", "MX", "+noall", "+comments", "+additional"]);
    assert!(status_and_flags(&out).1.contains("aa"), "{out}");
    assert!(out.contains("mail.example.com.\t3600\tIN\tA\t192.0.2.25"), "{out}");
}

#[test]
fn negative_answers_refusals_case_and_id() {
    let host = dns_host(&[]);
    // NXDOMAIN and NODATA carry the SOA, with the MINIMUM as its TTL.
    for (name, rtype, status) in [
        ("nope.example.com", "A", "NXDOMAIN"),
        ("text.example.com", "A", "NOERROR"),
        ("deep.example.com", "A", "NOERROR"),
    ] {
        let out = dig(&host, &[name, rtype, "+noall", "+comments", "+answer", "+authority"]);
        let (s, flags) = status_and_flags(&out);
        assert_eq!(s, status, "{out}");
        assert!(flags.contains("aa"), "{out}");
        assert!(section(&out, "ANSWER").is_empty(), "{out}");
        let authority = section(&out, "AUTHORITY");
        assert_eq!(authority.len(), 1, "{out}");
        assert!(authority[0].starts_with("example.com.\t\t300\tIN\tSOA\t"), "{out}");
    }
    // Outside every zone: REFUSED, not authoritative.
    let out = dig(&host, &["example.org", "A"]);
    assert_eq!(status_and_flags(&out).0, "REFUSED", "{out}");
    // A delegation: a referral, not authoritative, with the glue.
    let out = dig(&host, &["host.sub.example.com", "A", "+noall", "+comments", "+authority", "+additional"]);
    let (s, flags) = status_and_flags(&out);
    assert!(s == "NOERROR" && !flags.contains("aa"), "{out}");
    assert_eq!(section(&out, "AUTHORITY").len(), 2, "{out}");
    assert!(out.contains("ns.sub.example.com.\t3600\tIN\tA\t192.0.2.200"), "{out}");
    // Names are case-insensitive; the question comes back as it was asked.
    let out = dig(&host, &["WwW.ExAmPlE.CoM", "A", "+noall", "+answer"]);
    assert!(out.starts_with("WwW.ExAmPlE.CoM.\t3600\tIN\tCNAME\tweb.example.com."), "{out}");
    assert!(out.contains("192.0.2.80"), "{out}");
    // The ID and the question are echoed byte for byte.
    let q = query(0xBEEF, "MiXeD.example.COM", 1, None);
    let reply = udp_roundtrip(host.udp(), &q);
    assert_eq!(&reply[..2], &[0xBE, 0xEF]);
    assert_eq!(&reply[12..q.len()], &q[12..]);
    assert_eq!(rcode(&reply), 3);
}

#[test]
fn malformed_queries_get_formerr_notimp_or_silence() {
    let host = dns_host(&[]);
    let good = query(0x0102, "example.com", 6, None);
    // QDCOUNT 0 and 2.
    for qd in [0u8, 2] {
        let mut q = good.clone();
        q[5] = qd;
        let reply = udp_roundtrip(host.udp(), &q);
        assert_eq!((&reply[..2], rcode(&reply)), (&[1u8, 2][..], 1), "QDCOUNT {qd}");
        assert!(reply[2] & 0x80 != 0, "QR set");
    }
    // A question cut short, trailing garbage, a label pointing elsewhere.
    let mut pointer = good[..12].to_vec();
    pointer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    let mut trailing = good.clone();
    trailing.push(0);
    for bad in [&good[..good.len() - 2], &trailing[..], &pointer[..]] {
        let reply = udp_roundtrip(host.udp(), bad);
        assert_eq!((&reply[..2], rcode(&reply)), (&[1u8, 2][..], 1), "{bad:?}");
    }
    // An opcode other than QUERY: NOTIMP.
    let mut notify = good.clone();
    notify[2] = 4 << 3;
    assert_eq!(rcode(&udp_roundtrip(host.udp(), &notify)), 4);
    // Not even a header, or a response: no reply.
    host.assert_no_udp_reply(&good[..11], &["no_reply"]);
    let mut response = good.clone();
    response[2] |= 0x80;
    host.assert_no_udp_reply(&response, &["no_reply"]);
    // Over TCP too; the connection stays usable.
    let mut s = tcp_connect(host.tcp());
    let mut q = good.clone();
    q[5] = 2;
    s.write_all(&frame("u16", &q)).unwrap();
    s.write_all(&frame("u16", &good)).unwrap();
    assert_eq!(rcode(&read_frame(&mut s)), 1);
    assert_eq!(rcode(&read_frame(&mut s)), 0);
}

/// One u16-framed message.
fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
    let len = read_n(s, 2);
    read_n(s, usize::from(u16::from_be_bytes([len[0], len[1]])))
}

#[test]
fn edns_sizes_truncation_and_tcp() {
    let host = dns_host(&[]);
    // Without EDNS: 512 bytes at most, TC set.
    let out = dig(&host, &["big.example.com", "TXT", "+noedns", "+ignore"]);
    assert!(status_and_flags(&out).1.contains("tc"), "{out}");
    // With a small EDNS size: truncated; the OPT is answered.
    let out = dig(&host, &["big.example.com", "TXT", "+bufsize=1024", "+ignore"]);
    assert!(status_and_flags(&out).1.contains("tc"), "{out}");
    assert!(out.contains("EDNS: version: 0"), "{out}");
    // Above 1232 bytes, UDP answers are truncated whatever the client
    // advertises (as NSD's); over TCP they are whole.
    let out = dig(&host, &["big.example.com", "TXT", "+bufsize=4096", "+ignore"]);
    assert!(status_and_flags(&out).1.contains("tc"), "{out}");
    for args in [&["+tcp"][..], &["+tcp", "+noedns"]] {
        let mut a = vec!["big.example.com", "TXT", "+ignore"];
        a.extend_from_slice(args);
        let out = dig(&host, &a);
        assert!(!status_and_flags(&out).1.contains("tc"), "{args:?}: {out}");
        assert!(out.contains("ANSWER: 20,"), "{args:?}: {out}");
    }
    // An advertised size below 512 counts as 512; above 1232 as 1232.
    let reply = udp_roundtrip(host.udp(), &query(9, "big.example.com", 16, Some(100)));
    assert!(reply.len() <= 512 && reply[2] & 0x02 != 0, "{} bytes", reply.len());
    // EDNS version 1: BADVERS (16: 0 in the header, 1 in the OPT).
    let out = dig(&host, &["example.com", "SOA", "+edns=1", "+noednsneg"]);
    assert_eq!(status_and_flags(&out).0, "BADVERS", "{out}");
    // Several queries written at once on one connection: each answered, in
    // order.
    let mut s = tcp_connect(host.tcp());
    let mut batch = Vec::new();
    for (id, name) in [(1u16, "big.example.com"), (2, "www.example.com"), (3, "nope.example.com")] {
        batch.extend(frame("u16", &query(id, name, 16, None)));
    }
    s.write_all(&batch).unwrap();
    let replies: Vec<Vec<u8>> = (0..3).map(|_| read_frame(&mut s)).collect();
    assert_eq!(replies.iter().map(|r| r[1]).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(replies[0].len() > 1400 && replies[0][2] & 0x02 == 0, "whole over TCP");
    assert_eq!(rcode(&replies[2]), 3);
}

/// A deterministic pseudo-random sequence (xorshift64*), so a failure
/// repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() as usize) % (max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A reply to random bytes must be an error about them: FORMERR, or
/// NOTIMP for an opcode other than QUERY, with the request's ID.
fn check_error_reply(request: &[u8], reply: &[u8]) {
    assert!(reply.len() >= 12 && reply[..2] == request[..2], "{request:?} -> {reply:?}");
    assert!(matches!(rcode(reply), 1 | 4), "{request:?} -> {reply:?}");
}

#[test]
fn random_bytes_get_formerr_or_silence_and_the_host_keeps_serving() {
    let host = dns_host(&[]);
    let mut rng = Rng(0x5EED_D0D0_1234_5678);
    // UDP: batches, each waited for on the host's counters.
    let s = udp_client(host.udp());
    let mut sent = host.stats()["requests"];
    let mut replies = 0;
    let mut buf = [0u8; 2048];
    // Batches small enough for the socket buffers on both sides.
    for _ in 0..30 {
        let batch: Vec<Vec<u8>> = (0..100).map(|_| rng.bytes(300)).collect();
        for d in &batch {
            s.send(d).unwrap();
        }
        sent += batch.len() as u64;
        host.wait_stat("requests", sent);
        // Every reply has been sent once the request is counted.
        s.set_nonblocking(true).unwrap();
        while let Ok(n) = s.recv(&mut buf) {
            let request = batch.iter().find(|d| d.len() >= 2 && d[..2] == buf[..2]).expect("a reply to a request");
            check_error_reply(request, &buf[..n]);
            replies += 1;
        }
        s.set_nonblocking(false).unwrap();
    }
    assert!(replies > 1000, "only {replies} replies to 3000 datagrams");
    // TCP: random frames, then a good query; every reply before the good
    // one answers a random frame.
    for _ in 0..20 {
        let mut c = tcp_connect(host.tcp());
        let frames: Vec<Vec<u8>> = (0..25).map(|_| rng.bytes(300)).collect();
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend(frame("u16", f));
        }
        let good = query(0xD00D, "example.com", 6, None);
        bytes.extend(frame("u16", &good));
        c.write_all(&bytes).unwrap();
        loop {
            let reply = read_frame(&mut c);
            if reply[..2] == good[..2] && rcode(&reply) == 0 && reply.len() > good.len() {
                break;
            }
            let request = frames.iter().find(|f| f.len() >= 2 && f[..2] == reply[..2]).expect("a reply to a frame");
            check_error_reply(request, &reply);
        }
        let mut rest = Vec::new();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    let stats = host.stats();
    assert_eq!((stats["traps"], stats["plugin_errors"]), (0, 0), "{stats:?}");
    assert_eq!(short(&host, "www.example.com", "A").len(), 3);
}

#[test]
fn a_zone_that_does_not_parse_is_reported_with_its_line() {
    let p = plugin("dns");
    let zone = "$ORIGIN example.com.\n@ 3600 IN SOA ns hm 1 2 3 4 5\nwww 3600 IN A 1.2.3\n";
    let var = format!("zone={zone}");
    let args = ["--plugin", p.to_str().unwrap(), "--listen", "127.0.0.1:0", "--framing", "u16", "--var", &var];
    let mut host = Host::spawn_with(&args, &[], |_| {});
    // A host that runs `wizer-initialize` at load refuses the plugin; one
    // that does not serves it, and every query fails with the message.
    assert!(
        eventually(START_TIMEOUT, || !host.is_running() || host.logs.count("ready: serving") > 0),
        "neither served nor exited: {:?}",
        host.logs.lines()
    );
    match host.logs.count("ready: serving") {
        0 => {
            let status = host.wait(REPLY_TIMEOUT).expect("exited");
            assert_eq!(status.code(), Some(2), "{:?}", host.logs.lines());
        }
        _ => {
            host.wait_ready();
            host.assert_no_udp_reply(&query(1, "example.com", 6, None), &["plugin_errors", "traps"]);
        }
    }
    let needle = "zone: line 3 (`www 3600 IN A 1.2.3`): network address parse error";
    assert!(host.logs.wait_for(needle, 1, REPLY_TIMEOUT) >= 1, "{:?}", host.logs.lines());
}
