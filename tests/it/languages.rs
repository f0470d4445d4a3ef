//! Every plugin under plugins/, in every language, served through the host
//! over UDP and TCP, checking the exact reply bytes: ASCII, non-ASCII UTF-8,
//! binary (not UTF-8) and empty payloads.

use std::io::Write;

use crate::support::*;

/// What a plugin must answer to a payload.
#[derive(Clone, Copy)]
enum Want {
    /// `ok(some(bytes))`: these bytes.
    Reply(&'static [u8]),
    /// `ok(none)`: nothing, and a TCP connection stays open.
    NoReply,
    /// `err(..)`: nothing, and a TCP connection is closed.
    Error,
}
use Want::*;

type Case = (&'static [u8], Want);

/// Serve `name` and check every case over UDP, TCP with newline framing
/// (cases without `\n`) and TCP with u32 length prefixes (all cases).
fn serves(name: &str, cases: &[Case]) {
    let path = plugin(name).display().to_string();
    let common = ["--plugin", path.as_str()];
    let lines = Host::start(&[&common[..], &["--listen", "127.0.0.1:0"]].concat());
    let prefixed = Host::start(&[&common[..], &["--tcp", "127.0.0.1:0", "--framing", "u32"]].concat());
    for (payload, want) in cases {
        let shown = String::from_utf8_lossy(payload);
        match want {
            Reply(want) => assert_eq!(udp_roundtrip(lines.udp(), payload), *want, "{name} over UDP, payload {shown:?}"),
            NoReply => lines.assert_no_udp_reply(payload, &["no_reply"]),
            Error => lines.assert_no_udp_reply(payload, &["plugin_errors"]),
        }

        let mut s = tcp_connect(prefixed.tcp());
        s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
        s.write_all(payload).unwrap();
        // A marker frame after it: its reply shows the first got none.
        s.write_all(b"\x00\x00\x00\x05probe").unwrap();
        if let Reply(want) = want {
            let len = u32::from_be_bytes(read_n(&mut s, 4).try_into().unwrap()) as usize;
            assert_eq!(read_n(&mut s, len), *want, "{name} over TCP u32, payload {shown:?}");
        }
        if let Error = want {
            assert!(closed_within(&mut s, REPLY_TIMEOUT), "{name}: TCP u32 not closed after err, payload {shown:?}");
        } else {
            let len = u32::from_be_bytes(read_n(&mut s, 4).try_into().unwrap()) as usize;
            read_n(&mut s, len);
        }

        let has_newline = |b: &[u8]| b.contains(&b'\n');
        if has_newline(payload) || matches!(want, Reply(w) if has_newline(w)) {
            continue;
        }
        let mut s = tcp_connect(lines.tcp());
        s.write_all(payload).unwrap();
        s.write_all(b"\nprobe\n").unwrap();
        match want {
            Reply(want) => {
                assert_eq!(read_line(&mut s), [*want, b"\n"].concat(), "{name} over TCP lines, payload {shown:?}");
                read_line(&mut s);
            }
            NoReply => {
                read_line(&mut s);
            }
            Error => assert!(closed_within(&mut s, REPLY_TIMEOUT), "{name}: TCP lines not closed after err"),
        }
    }
}

#[test]
fn rust_echo() {
    serves(
        "echo",
        &[
            (b"hello", Reply(b"hello")),
            ("héllo wörld ✓".as_bytes(), Reply("héllo wörld ✓".as_bytes())),
            (b"\x00\x01\xff\xfe binary\n", Reply(b"\x00\x01\xff\xfe binary\n")),
            (b"", Reply(b"")),
        ],
    );
}

/// A `handler` plugin built against `sockets:plugin@0.2.0` (it imports
/// `log@0.2.0`); `echo` and the others are built against 0.1.0.
#[test]
fn rust_echo_against_the_0_2_0_handler_world() {
    serves("echo-v2", &[(b"hello", Reply(b"hello")), (b"\x00\xff", Reply(b"\x00\xff")), (b"", Reply(b""))]);
}

#[test]
fn rust_upper() {
    serves(
        "upper",
        &[
            (b"hello", Reply(b"HELLO")),
            // ASCII letters only; UTF-8 sequences pass through untouched.
            ("héllo".as_bytes(), Reply("HéLLO".as_bytes())),
            (b"\x00\x01\xffabc", Reply(b"\x00\x01\xffABC")),
            // `ok(none)`: no reply to an empty payload.
            (b"", NoReply),
        ],
    );
}

#[test]
fn python_json_summary() {
    serves(
        "json-summary",
        &[
            (br#"{"a":1,"b":[1,2]}"#, Reply(br#"{"type":"object","keys":["a","b"],"bytes":17}"#)),
            (r#"{"é":"ü"}"#.as_bytes(), Reply(r#"{"type":"object","keys":["é"],"bytes":11}"#.as_bytes())),
            (b"[1, 2, 3]", Reply(br#"{"type":"array","length":3,"bytes":9}"#)),
            (b"\xff\xfe\x00", Reply(br#"{"error":"not utf-8","bytes":3}"#)),
            (b"", Reply(br#"{"error":"empty","bytes":0}"#)),
        ],
    );
}

#[test]
fn javascript_reverse() {
    serves(
        "reverse",
        &[
            (b"hello", Reply(b"olleh")),
            // Bytes are reversed, not characters: the result is not UTF-8.
            ("héllo".as_bytes(), Reply(b"oll\xa9\xc3h")),
            (b"\x00\x01\xff", Reply(b"\xff\x01\x00")),
            (b"", Reply(b"")),
        ],
    );
}

#[test]
fn c_rot13() {
    serves(
        "rot13",
        &[
            (b"Hello, World!", Reply(b"Uryyb, Jbeyq!")),
            ("héllo".as_bytes(), Reply("uéyyb".as_bytes())),
            (b"\x00\x01\xffabc\n", Reply(b"\x00\x01\xffnop\n")),
            (b"", Reply(b"")),
        ],
    );
}

/// The echo plugin in Python, the echo-equivalent `bench languages` measures.
#[test]
fn python_echo() {
    serves(
        "echo-py",
        &[
            (b"hello", Reply(b"hello")),
            ("héllo wörld ✓".as_bytes(), Reply("héllo wörld ✓".as_bytes())),
            (b"\x00\x01\xff\xfe binary\n", Reply(b"\x00\x01\xff\xfe binary\n")),
            (b"", Reply(b"")),
        ],
    );
}

/// The echo plugin in JavaScript, the echo-equivalent `bench languages` measures.
#[test]
fn javascript_echo() {
    serves(
        "echo-js",
        &[
            (b"hello", Reply(b"hello")),
            ("héllo wörld ✓".as_bytes(), Reply("héllo wörld ✓".as_bytes())),
            (b"\x00\x01\xff\xfe binary\n", Reply(b"\x00\x01\xff\xfe binary\n")),
            (b"", Reply(b"")),
        ],
    );
}

#[test]
fn a_missing_import_is_named_in_one_line() {
    // A component that needs wasi:http, which the host does not provide.
    let wat = r#"(component
        (import "wasi:http/outgoing-handler@0.2.0" (instance
            (export "handle" (func (param "x" u32) (result u32)))))
    )"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("needs-http.wasm");
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    let (code, stderr) = run_host(&["--plugin", &path.display().to_string(), "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&path.display().to_string()), "{}", errors[0]);
    assert!(errors[0].contains("wasi:http/outgoing-handler@0.2.0"), "{}", errors[0]);
}

#[test]
fn readme_example_hello() {
    serves(
        "hello",
        &[
            (b"ada", Reply(b"hello, ada!")),
            ("Grace Hopper ✓".as_bytes(), Reply("hello, Grace Hopper ✓!".as_bytes())),
            // `err(..)`: logged, nothing sent, a TCP connection is closed.
            (b"\xff\xfe", Error),
            (b"", Reply(b"hello, !")),
        ],
    );
}
