//! The `resp` plugin (a Redis-compatible server in the connection world)
//! through the real host, spoken to by the real `redis-cli` and
//! `redis-benchmark` and by raw sockets, on the embedded store and on a
//! real `redis-server` (the `state` tests' helper).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use crate::state::Redis;
use crate::support::*;

/// The host serving `resp` on a free TCP port, on the embedded store
/// (`redis: None`) or on `redis`.
fn resp_host(redis: Option<&Redis>, extra: &[&str]) -> Host {
    let p = plugin("resp");
    let mut args: Vec<String> =
        vec!["--plugin".into(), p.to_str().unwrap().into(), "--tcp".into(), "127.0.0.1:0".into()];
    if let Some(r) = redis {
        args.extend(["--kv".into(), r.url()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    Host::start(&args)
}

/// Run the test body on the embedded store, then on a fresh redis-server.
fn on_both_backends(extra: &[&str], body: impl Fn(&Host, &str)) {
    let host = resp_host(None, extra);
    body(&host, "embedded");
    let redis = Redis::start();
    let host = resp_host(Some(&redis), extra);
    body(&host, "redis");
}

/// `redis-cli -p PORT ARGS...`: its stdout, whatever its exit status.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is not installed (scripts/setup.sh installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -p PORT < input`: its stdout.
fn cli_piped(addr: SocketAddr, input: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is not installed (scripts/setup.sh installs redis-tools)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

/// Send `request` and read exactly the bytes of `want`.
fn exchange(s: &mut TcpStream, request: &[u8], want: &[u8]) {
    s.write_all(request).unwrap();
    let got = read_n(s, want.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "reply to {:?}",
        String::from_utf8_lossy(request)
    );
}

/// A request as a RESP array of bulk strings.
fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bulk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

/// Commands piped into `redis-cli`, on keys no other command of the test
/// uses.
const PIPED: &str = "set p:n 10\nincr p:n\nget p:n\nnosuch\nquoted \"a b\"\nset p:g hi\nget p:g\n\
    echo \"x\\ty\"\nincr p:g\nincrby p:n -20\ndecr p:n\nmset p:a 1 p:b\nmset p:a 1 p:b 2\nmget p:a p:zz p:b\n\
    exists p:n p:g p:zz p:n\ndel p:n p:g p:zz p:g\nselect 0\nping\nping hi\nset p:q v nx\nset p:q w nx\n\
    set p:r v xx\nset p:q w xx\nget p:q\ndecrby p:q 1\nset p:q 1 nx xx\nset p:q 1 bogus\nget\nkeys p:[a]\nkeys none*\n\
    set p:big 9223372036854775807\nincr p:big\necho\nconfig get save\nconfig get appendonly\n\
    decrby p:n -9223372036854775808\nset p:u 18446744073709551615\nincr p:u\nauth a b\nset q 1\nkeys [q\ndel q\n\
    quit x\nping\n";

#[test]
fn redis_cli_one_shot_and_piped_on_both_backends() {
    let expected = {
        let redis = Redis::start();
        cli_piped(SocketAddr::from(([127, 0, 0, 1], redis.port)), PIPED)
    };
    assert!(expected.contains("ERR wrong number of arguments for 'mset' command"), "{expected}");
    on_both_backends(&[], |host, backend| {
        let a = host.tcp();
        let ask = |args: &[&str]| cli(a, args);
        assert_eq!(ask(&["PING"]), "PONG\n", "{backend}");
        assert_eq!(ask(&["SET", "greeting", "hello world"]), "OK\n");
        assert_eq!(ask(&["GET", "greeting"]), "hello world\n");
        assert_eq!(ask(&["GET", "missing"]), "\n");
        assert_eq!(ask(&["SET", "greeting", "x", "NX"]), "\n");
        assert_eq!(ask(&["SET", "greeting", "hi", "XX"]), "OK\n");
        assert_eq!(ask(&["INCR", "visits"]), "1\n");
        assert_eq!(ask(&["INCRBY", "visits", "41"]), "42\n");
        assert_eq!(ask(&["DECR", "visits"]), "41\n");
        // (redis-cli prints an empty line after an error.)
        assert_eq!(ask(&["INCR", "greeting"]), "ERR value is not an integer or out of range\n\n");
        assert_eq!(ask(&["MSET", "a", "1", "b", "2"]), "OK\n");
        assert_eq!(ask(&["MGET", "a", "nope", "b"]), "1\n\n2\n");
        assert_eq!(ask(&["EXISTS", "a", "b", "a", "nope"]), "3\n");
        assert_eq!(ask(&["DBSIZE"]), "4\n");
        let mut keys: Vec<String> = ask(&["KEYS", "*"]).lines().map(String::from).collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "greeting", "visits"]);
        assert_eq!(ask(&["KEYS", "[ab]"]).lines().count(), 2);
        assert_eq!(ask(&["DEL", "a", "b", "nope"]), "2\n");
        assert_eq!(ask(&["SELECT", "0"]), "OK\n");
        assert_eq!(ask(&["SELECT", "1"]), "ERR DB index is out of range\n\n");
        assert_eq!(ask(&["GET"]), "ERR wrong number of arguments for 'get' command\n\n");
        assert_eq!(ask(&["FLUSHALL", "x"]), "ERR unknown command 'FLUSHALL', with args beginning with: 'x' \n\n");
        assert_eq!(
            ask(&["SET", "k", "v", "EX", "10"]).lines().next().unwrap_or(""),
            "ERR SET options EX, PX, EXAT, PXAT, KEEPTTL and GET are not supported: keys do not expire here"
        );
        // A file of commands, as `redis-cli < file` sends it (after its
        // COMMAND DOCS), on one connection: the same output as from a real
        // redis-server.
        assert_eq!(cli_piped(a, PIPED), *expected, "{backend}");
    });
}

#[test]
fn the_redis_backend_keeps_plain_keys_readable_in_redis() {
    let redis = Redis::start();
    let host = resp_host(Some(&redis), &[]);
    assert_eq!(cli(host.tcp(), &["SET", "user:1", "ada"]), "OK\n");
    let real = SocketAddr::from(([127, 0, 0, 1], redis.port));
    assert_eq!(cli(real, &["GET", "kv:{resp/default}:user:1"]), "ada\n");
}

#[test]
fn split_pipelined_and_inline_requests_get_replies_in_order() {
    let host = resp_host(None, &[]);
    let mut stream = request(&[b"SET", b"k", b"v\r\n1"]);
    stream.extend(b"PING\r\nget k\n*1\r\n$4\r\nPING\r\n\r\n");
    stream.extend(request(&[b"ECHO", b""]));
    let want = b"+OK\r\n+PONG\r\n$4\r\nv\r\n1\r\n+PONG\r\n$0\r\n\r\n";
    // One byte per write: every split point.
    let mut s = tcp_connect(host.tcp());
    s.set_nodelay(true).unwrap();
    for b in &stream {
        s.write_all(&[*b]).unwrap();
    }
    assert_eq!(read_n(&mut s, want.len()), want);
    // Pipelined: many requests in one write.
    let mut s = tcp_connect(host.tcp());
    let n = 500;
    let mut many = Vec::new();
    let mut want = Vec::new();
    for i in 0..n {
        many.extend(request(&[b"INCR", b"c"]));
        want.extend(format!(":{}\r\n", i + 1).bytes());
    }
    s.write_all(&many).unwrap();
    assert_eq!(String::from_utf8(read_n(&mut s, want.len())).unwrap(), String::from_utf8(want).unwrap());
    // Inline as typed into nc, and QUIT closes after +OK.
    exchange(&mut s, b"PING\r\nping hello\r\nQUIT\r\n", b"+PONG\r\n$5\r\nhello\r\n+OK\r\n");
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
}

#[test]
fn unknown_commands_and_arity_errors_keep_the_connection_protocol_errors_close_it() {
    let host = resp_host(None, &[]);
    let mut s = tcp_connect(host.tcp());
    exchange(&mut s, &request(&[b"NOPE", b"a"]), b"-ERR unknown command 'NOPE', with args beginning with: 'a' \r\n");
    exchange(&mut s, &request(&[b"SET", b"k"]), b"-ERR wrong number of arguments for 'set' command\r\n");
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n");
    let cases: &[(&[u8], &[u8])] = &[
        (b"*2\r\n$3\r\nGET\r\n$99999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*99999999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\nGET\r\n", b"-ERR Protocol error: expected '$', got 'G'\r\n"),
        (b"set \"a\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        // Replies to the requests before the bad one still go out.
        (b"PING\r\n*1\r\n$-5\r\n", b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"),
    ];
    for (input, want) in cases {
        let mut s = tcp_connect(host.tcp());
        exchange(&mut s, input, want);
        assert!(closed_within(&mut s, REPLY_TIMEOUT), "{input:?}");
    }
    assert_eq!(host.stats()["plugin_errors"], 0);
}

#[test]
fn keys_and_values_are_binary_safe_on_both_backends() {
    on_both_backends(&[], |host, backend| {
        let all: Vec<u8> = (0..=255).collect();
        // Bytes that are not UTF-8 take 3 bytes each in the store's key
        // (the plugin's README says how), so 64 of them, not 128.
        let keys: Vec<Vec<u8>> = vec![
            all[..128].to_vec(),
            all[128..192].to_vec(),
            all[192..].to_vec(),
            b"a\r\n%b".to_vec(),
            b"%b:x".to_vec(),
        ];
        let mut s = tcp_connect(host.tcp());
        for key in &keys {
            exchange(&mut s, &request(&[b"SET", key, &all]), b"+OK\r\n");
            exchange(&mut s, &request(&[b"GET", key]), &bulk(&all));
        }
        let mut want = b"*2\r\n".to_vec();
        want.extend(bulk(&all));
        want.extend(b"$-1\r\n");
        exchange(&mut s, &request(&[b"MGET", &keys[1], b"nope"]), &want);
        // KEYS gives back the very bytes.
        s.write_all(&request(&[b"KEYS", b"*"])).unwrap();
        let listed_len: usize = 4 + keys.iter().map(|k| bulk(k).len()).sum::<usize>();
        let listed = read_n(&mut s, listed_len);
        for key in &keys {
            assert!(listed.windows(bulk(key).len()).any(|w| w == bulk(key)), "{backend}: {key:?} not listed");
        }
        exchange(&mut s, &request(&[b"DEL", &keys[0], &keys[1], &keys[2], &keys[3], &keys[4]]), b":5\r\n");
        // Over the host's --kv-max-key once escaped: an error reply.
        exchange(
            &mut s,
            &request(&[b"GET", &all[128..228]]),
            b"-ERR store: key of 303 bytes is over the 256-byte limit (--kv-max-key)\r\n",
        );
    });
}

#[test]
fn redis_benchmark_completes_without_errors_on_both_backends() {
    on_both_backends(&[], |host, backend| {
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &host.tcp().port().to_string()])
            .args(["-t", "set,get", "-n", "2000", "-P", "16", "-c", "8", "-q"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-benchmark is not installed (scripts/setup.sh installs redis-tools)");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {text}");
        assert!(text.contains("SET: ") && text.contains("GET: "), "{backend}: {text}");
        assert!(!text.contains("ERR") && !text.contains("WARN") && !text.contains("rror"), "{backend}: {text}");
        let stats = host.stats();
        assert_eq!((stats["plugin_errors"], stats["kv_errors"], stats["traps"]), (0, 0, 0), "{backend}");
    });
}

#[test]
fn many_tiny_pipelined_requests_are_answered_and_the_op_budget_is_an_error_reply() {
    // 8,000 inline INCRs in one write: the host hands them over in reads of
    // up to 8 KiB, over 1,000 store operations each. With the budget
    // raised, every one is answered in order. Each call then makes over
    // 1,000 writes (commits), which a loaded CI machine may not finish
    // within the default 500 ms --timeout.
    let host = resp_host(None, &["--kv-max-ops", "100000", "--timeout", "10s"]);
    let mut s = tcp_connect(host.tcp());
    let n = 8_000;
    s.write_all(&b"INCR c\r\n".repeat(n)).unwrap();
    let want: String = (1..=n).map(|i| format!(":{i}\r\n")).collect();
    assert_eq!(String::from_utf8(read_n(&mut s, want.len())).unwrap(), want);
    // With the default budget, a command past it is an error reply and the
    // rest are served; the count stays exact.
    let host = resp_host(None, &["--timeout", "10s"]);
    let mut s = tcp_connect(host.tcp());
    s.write_all(&b"INCR c\r\n".repeat(n)).unwrap();
    s.write_all(&request(&[b"ECHO", b"end"])).unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"$3\r\nend\r\n") {
        let mut buf = [0u8; 65536];
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "closed early");
        got.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8(got).unwrap();
    let ok = text.lines().filter(|l| l.starts_with(':')).count();
    let refused = text.lines().filter(|l| l.contains("(--kv-max-ops)")).count();
    assert_eq!(ok + refused, n);
    exchange(&mut s, &request(&[b"GET", b"c"]), &bulk(ok.to_string().as_bytes()));
}

#[test]
fn hostile_input_costs_bounded_memory_and_only_its_connection() {
    let host = resp_host(None, &[]);
    let before = host.rss_kib();
    // Connections that declare the largest bulk string and send half of it,
    // and connections with an unterminated inline request: held, bounded.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = tcp_connect(host.tcp());
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n").unwrap();
        s.write_all(&vec![b'x'; 512 << 10]).unwrap();
        held.push(s);
        let mut s = tcp_connect(host.tcp());
        s.write_all(&vec![b'a'; 60 << 10]).unwrap();
        held.push(s);
    }
    // Over the bounds: closed at once, with Redis's text.
    let mut s = tcp_connect(host.tcp());
    s.write_all(&vec![b'a'; 100 << 10]).unwrap();
    exchange(&mut s, b"", b"-ERR Protocol error: too big inline request\r\n");
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    let mut s = tcp_connect(host.tcp());
    exchange(&mut s, b"*1\r\n$1048577\r\n", b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    // The held connections still work once their request completes.
    let last = &mut held[0];
    last.write_all(&vec![b'x'; 512 << 10]).unwrap();
    exchange(last, b"\r\n", b"+OK\r\n");
    let grown_mib = host.rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 400, "the host grew by {grown_mib} MiB");
    let mut s = tcp_connect(host.tcp());
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n");
    let stats = host.stats();
    assert_eq!((stats["plugin_errors"], stats["traps"]), (0, 0));
    drop(held);
}

#[test]
fn value_limits_follow_the_host_flags_and_the_plugin_variables() {
    // The largest value the store takes (--kv-max-value, 1 MiB) is a reply
    // of 12 bytes more than the default --max-reply: GET of it closes the
    // connection unless --max-reply is raised.
    let big = vec![b'v'; 1 << 20];
    for (extra, served) in [(&[][..], false), (&["--max-reply", "2MiB"][..], true)] {
        let host = resp_host(None, extra);
        let mut s = tcp_connect(host.tcp());
        exchange(&mut s, &request(&[b"SET", b"big", &big]), b"+OK\r\n");
        if served {
            exchange(&mut s, &request(&[b"GET", b"big"]), &bulk(&big));
        } else {
            s.write_all(&request(&[b"GET", b"big"])).unwrap();
            assert!(closed_within(&mut s, REPLY_TIMEOUT));
        }
    }
    // One byte over --kv-max-value: the store's error, the connection stays.
    let host = resp_host(None, &["--kv-max-value", "10"]);
    let mut s = tcp_connect(host.tcp());
    exchange(
        &mut s,
        &request(&[b"SET", b"k", b"12345678901"]),
        b"-ERR store: value of 11 bytes is over the 10-byte limit (--kv-max-value)\r\n",
    );
    exchange(&mut s, b"PING\r\n", b"+PONG\r\n");
    // Over resp-max-bulk: a protocol error, and closed.
    let host = resp_host(None, &["--var", "resp-max-bulk=10"]);
    let mut s = tcp_connect(host.tcp());
    exchange(&mut s, &request(&[b"SET", b"k", b"1234567890"]), b"+OK\r\n");
    exchange(&mut s, &request(&[b"SET", b"k", b"12345678901"]), b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
}

#[test]
fn pipelined_gets_of_a_large_value_get_what_fits_then_a_close() {
    // 60 GETs of a 1,000,000-byte value in one write would be 60 MB of
    // replies: the first is sent whole (under resp-max-output, 1 MiB less
    // 16 KiB), the second would pass it, so the connection is closed.
    let host = resp_host(None, &[]);
    let big = vec![b'v'; 1_000_000];
    let mut s = tcp_connect(host.tcp());
    exchange(&mut s, &request(&[b"SET", b"big1", &big]), b"+OK\r\n");
    exchange(&mut s, &b"GET big1\r\n".repeat(60), &bulk(&big));
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    let stats = host.stats();
    assert_eq!((stats["plugin_errors"], stats["traps"]), (0, 0));
    // A larger bound (with --max-reply above it): as many whole replies
    // as fit; an MGET past it on its own is an error, then the close.
    let host = resp_host(None, &["--var", "resp-max-output=2500000", "--max-reply", "4MiB"]);
    let mut s = tcp_connect(host.tcp());
    exchange(&mut s, &request(&[b"SET", b"big1", &big]), b"+OK\r\n");
    exchange(&mut s, &b"GET big1\r\n".repeat(60), &[bulk(&big), bulk(&big)].concat());
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    let mut s = tcp_connect(host.tcp());
    exchange(
        &mut s,
        &request(&[b"MGET", b"big1", b"big1", b"big1"]),
        b"-ERR reply of more than 2500000 bytes (resp-max-output)\r\n",
    );
    assert!(closed_within(&mut s, REPLY_TIMEOUT));
    let stats = host.stats();
    assert_eq!((stats["plugin_errors"], stats["traps"]), (0, 0));
}
